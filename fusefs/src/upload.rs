//! The mount's side of the upload conversation (`netdisk_protocol::upload`): it drives the conversation with the
//! bytes of a staging file, answering a challenge on the connection that asked it and sending the chunks the server
//! lacks over several pooled connections at once. What the upload means for names and attributes is `fs.rs`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use netdisk_protocol::upload::{Carry, Next, Upload, UploadError};
use netdisk_protocol::{chunk_crc, Attr, UploadChunk, UploadFile, WireError, MAX_INLINE_UPLOAD};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Remote, Session};
use crate::error::{FsError, Result};
use crate::handles::Staging;

pub struct Uploader {
    remote: Arc<Remote>,
    /// Chunks of one file sent at once.
    parallelism: usize,
}

impl Uploader {
    pub fn new(remote: Arc<Remote>, parallelism: usize) -> Uploader {
        Uploader { remote, parallelism: parallelism.max(1) }
    }

    /// Puts the content staged in `s` at `request.path`: whole in one round trip when small, else named by its
    /// hashes (instant when the server holds it, after a proof when another user does) and then the chunks it
    /// lacks. `sent` counts the bytes the server has (for `status`). Returns the file's attributes and, when the
    /// server sent them, its directory's.
    pub async fn send(
        &self,
        request: UploadFile,
        proof_tag: String,
        s: &Staging,
        sent: &Arc<AtomicU64>,
    ) -> Result<(Attr, Option<Attr>)> {
        let carry = if s.size > 0 && s.size <= MAX_INLINE_UPLOAD as u64 { Carry::Inline } else { Carry::ByHash };
        let mut up = Upload::new(request, proof_tag, carry);
        let mut next = up.start().map_err(conversation)?;
        // The connection the last `UploadFile` went out on: a challenge is answered there.
        let mut asked_on: Option<Session<'_>> = None;
        loop {
            if !matches!(next, Next::Prove(_)) {
                asked_on = None;
            }
            next = match next {
                Next::Ask { request, inline } => {
                    let payload = if inline { s.range(0, s.size)? } else { Vec::new() };
                    let session = asked_on.insert(self.remote.session().await?);
                    let answer = session.call_with_payload(&request, &payload).await.map(|(res, _)| res);
                    up.on_answer(refusal(answer)?)
                }
                Next::Prove(proof) => {
                    let session =
                        asked_on.as_mut().ok_or_else(|| FsError::Connection("a proof asked for twice".into()))?;
                    let answer = session.prove(up.request(), &proof).await;
                    up.on_answer(refusal(answer)?)
                }
                Next::Query(query) => up.on_needed(refusal(self.remote.call(&query).await)?),
                Next::Send { upload_id, chunk_size, indexes } => {
                    let (count, outcome) = self.send_chunks(s, upload_id, chunk_size, indexes, sent).await?;
                    up.on_sent(count, outcome)
                }
                Next::Done(done) => {
                    if done.instant {
                        tracing::debug!(path = %up.request().path, "instant upload");
                    }
                    return Ok((done.attr, done.dir));
                }
            }
            .map_err(conversation)?;
        }
    }

    /// Sends these chunks over several connections at once. Returns how many went out and how it ended: the
    /// attributes a completing chunk's answer carried, or the first refusal.
    async fn send_chunks(
        &self,
        s: &Staging,
        upload_id: u64,
        chunk_size: u32,
        indexes: Vec<u32>,
        sent: &Arc<AtomicU64>,
    ) -> Result<(u32, Result<Option<Attr>, WireError>)> {
        let chunk_len = |index: u32| (s.size - index as u64 * chunk_size as u64).min(chunk_size as u64);
        // What the server holds already counts as sent.
        sent.store(s.size - indexes.iter().map(|&i| chunk_len(i)).sum::<u64>(), Ordering::Relaxed);
        let permits = Arc::new(Semaphore::new(self.parallelism));
        let mut tasks: JoinSet<Result<Option<Attr>>> = JoinSet::new();
        let mut outcome = Ok(None);
        let mut count = 0;
        let mut settle = |done: std::result::Result<Result<Option<Attr>>, tokio::task::JoinError>| -> Result<()> {
            // The first refusal stands; until one, a completing chunk's attributes.
            let answer = refusal(done.map_err(|e| FsError::Connection(e.to_string()))?)?;
            match answer {
                Ok(None) => {}
                _ if outcome.is_err() => {}
                answer => outcome = answer,
            }
            Ok(())
        };
        for index in indexes {
            let permit = permits.clone().acquire_owned().await.map_err(|e| FsError::Connection(e.to_string()))?;
            let offset = index as u64 * chunk_size as u64;
            let len = chunk_len(index);
            let file = s.file.try_clone()?;
            let remote = self.remote.clone();
            let sent = sent.clone();
            count += 1;
            tasks.spawn(async move {
                let _permit = permit;
                let data = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, offset).map(|()| buf)
                })
                .await
                .map_err(|e| FsError::Connection(e.to_string()))??;
                let req = UploadChunk { upload_id, index, crc32c: chunk_crc(&data) };
                let (res, _) = remote.call_with_payload(&req, &data).await?;
                sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(res.complete)
            });
            while let Some(done) = tasks.try_join_next() {
                settle(done)?;
            }
        }
        while let Some(done) = tasks.join_next().await {
            settle(done)?;
        }
        Ok((count, outcome))
    }
}

/// A call's outcome as the conversation takes it: the server's refusal is an answer; anything else (the
/// connection, a bad answer, the local disk) ends the upload here.
fn refusal<T>(outcome: Result<T>) -> Result<Result<T, WireError>> {
    match outcome {
        Ok(answer) => Ok(Ok(answer)),
        Err(FsError::Server(e)) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

fn conversation(e: UploadError) -> FsError {
    match e {
        UploadError::Server(e) => FsError::Server(e),
        UploadError::Protocol(why) => FsError::Connection(why),
    }
}
