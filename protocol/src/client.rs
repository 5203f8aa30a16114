//! A small blocking client over any `Read + Write` stream: used by the server's tests and by tools.
//! One request at a time; it does the whole upload flow (instant, ownership proof, two-step chunks).

use std::io::{Read, Write};

use crate::answer::{check_error, check_proven, BadAnswer};
use crate::content::{content_hashes, decode_salt, ContentHashes};
use crate::error::{DecodeError, WireError};
use crate::io::{read_frame, write_frame, Direction, FrameError};
use crate::kind::Kind;
use crate::message::*;
use crate::upload::{Carry, Done, Next, Upload, UploadError};
use crate::{chunk_crc, MAX_DIR_PAGE, MAX_PAYLOAD};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame from server: {0}")]
    Decode(#[from] DecodeError),
    #[error("server: {0}")]
    Server(#[from] WireError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server's answer broke a rule of `answer.rs`; the client takes no further call on this connection.
    #[error("{0}")]
    BadAnswer(#[from] BadAnswer),
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> ClientError {
        match e {
            FrameError::Io(e) => ClientError::Io(e),
            FrameError::Decode(e) => ClientError::Decode(e),
        }
    }
}

impl ClientError {
    /// The server's error code, if the server answered with an error.
    pub fn code(&self) -> Option<crate::ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

/// How an upload went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadOutcome {
    pub attr: Attr,
    /// True when the server already held the content and no chunk was sent.
    pub instant: bool,
    pub chunks_sent: u32,
}

pub struct Client<S> {
    stream: S,
    next_id: u64,
    /// The server's proof salt, from the login answer.
    proof_salt: Vec<u8>,
    /// Set by a bad answer: a server that lied once is not asked again on this connection.
    broken: bool,
}

impl<S: Read + Write> Client<S> {
    pub fn new(stream: S) -> Client<S> {
        Client { stream, next_id: 1, proof_salt: Vec::new(), broken: false }
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn into_stream(self) -> S {
        self.stream
    }

    /// Sends one request with a payload and waits for its answer, which is checked (`answer.rs`) before it is
    /// returned.
    pub fn call_with_payload<R: Request>(
        &mut self,
        req: &R,
        payload: &[u8],
    ) -> Result<(R::Response, Vec<u8>), ClientError> {
        if self.broken {
            return Err(ClientError::Protocol("this connection's server broke the protocol before".into()));
        }
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, R::KIND, id, req, payload)?;
        let frame = read_frame(&mut self.stream, Direction::Response)?;
        if frame.head.request_id != id {
            return Err(ClientError::Protocol(format!(
                "answer to request {} while waiting for {id}",
                frame.head.request_id
            )));
        }
        let json = |e: serde_json::Error| DecodeError::Json { kind: frame.head.kind, reason: e.to_string() };
        if frame.head.kind == Kind::Error {
            let err: WireError = serde_json::from_slice(&frame.header).map_err(json)?;
            self.checked(check_error(R::KIND, &err))?;
            return Err(ClientError::Server(err));
        }
        if Some(frame.head.kind) != R::KIND.response() {
            return Err(ClientError::Protocol(format!("{:?} in answer to {:?}", frame.head.kind, R::KIND)));
        }
        let res = serde_json::from_slice(&frame.header).map_err(json)?;
        self.checked(req.check_answer(&res, frame.payload.len()))?;
        Ok((res, frame.payload))
    }

    /// Passes a check's verdict on; a bad answer also ends this connection's use.
    fn checked(&mut self, verdict: Result<(), BadAnswer>) -> Result<(), ClientError> {
        verdict.map_err(|bad| {
            self.broken = true;
            ClientError::BadAnswer(bad)
        })
    }

    pub fn call<R: Request>(&mut self, req: &R) -> Result<R::Response, ClientError> {
        self.call_with_payload(req, &[]).map(|(res, _)| res)
    }

    /// Logs in (`login.rs`): the password never travels, and the server must prove it holds this user's keys.
    pub fn login(&mut self, user: &str, password: &str) -> Result<LoginRes, ClientError> {
        let hello = crate::login::hello(user);
        let challenge = self.call(&hello)?;
        let protocol = |e: crate::login::KdfError| ClientError::Protocol(e.to_string());
        let salt = crate::login::salt_of(&challenge).map_err(protocol)?;
        let salted = crate::login::salted_password(password, &salt, &challenge.kdf).map_err(protocol)?;
        let (proof, message) = crate::login::answer(&hello, &challenge, &salted);
        let res = self.call(&proof)?;
        if !crate::login::server_signature_is_right(&salted, &message, &res.server_signature) {
            self.broken = true;
            return Err(ClientError::Protocol("the server could not prove that it holds this user's keys".into()));
        }
        // 64 hex digits: the answer check saw to it.
        self.proof_salt = decode_salt(&res.proof_salt)
            .ok_or_else(|| ClientError::Protocol("the proof salt is not 64 hex digits".into()))?;
        Ok(res)
    }

    /// The hashes of `data` as this server names them (md5, SHA-256, proof tag with its salt).
    pub fn hashes(&self, data: &[u8]) -> ContentHashes {
        content_hashes(&self.proof_salt, data)
    }

    /// The `UploadFile` request that names `data` for `path`.
    pub fn upload_request(&self, path: &str, data: &[u8], mode: u32) -> UploadFile {
        let hashes = self.hashes(data);
        UploadFile {
            path: path.into(),
            size: data.len() as u64,
            md5: hashes.md5,
            sha256: Some(hashes.sha256),
            mode,
            mtime: None,
            owner: Owner::default(),
        }
    }

    pub fn stat(&mut self, path: &str) -> Result<Attr, ClientError> {
        Ok(self.call(&Stat { path: path.into() })?.attr)
    }

    /// Every entry of a directory, fetching all pages.
    pub fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, ClientError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.call(&GetDir { path: path.into(), after: after.take(), limit: MAX_DIR_PAGE })?;
            let more = page.more;
            all.extend(page.entries);
            if !more {
                return Ok(all);
            }
            after = all.last().map(|e| e.name.clone());
        }
    }

    /// The names in a directory, in the server's (sorted) order.
    pub fn names(&mut self, path: &str) -> Result<Vec<String>, ClientError> {
        Ok(self.list_dir(path)?.into_iter().map(|e| e.name).collect())
    }

    pub fn mkdir(&mut self, path: &str, mode: u32) -> Result<Attr, ClientError> {
        Ok(self.call(&Mkdir { path: path.into(), mode, owner: Owner::default() })?.attr)
    }

    pub fn rmdir(&mut self, path: &str) -> Result<(), ClientError> {
        self.call(&Rmdir { path: path.into() }).map(|_| ())
    }

    pub fn delete_file(&mut self, path: &str) -> Result<(), ClientError> {
        self.call(&DeleteFile { path: path.into() }).map(|_| ())
    }

    pub fn rename(&mut self, from: &str, to: &str, noreplace: bool) -> Result<(), ClientError> {
        self.call(&Rename { from: from.into(), to: to.into(), noreplace }).map(|_| ())
    }

    pub fn download(&mut self, path: &str, offset: u64, len: u32) -> Result<(DownloadRes, Vec<u8>), ClientError> {
        self.call_with_payload(&Download { path: path.into(), offset, len }, &[])
    }

    /// The whole content of a file, downloaded in ranges of the largest payload.
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut data = Vec::new();
        loop {
            let (res, bytes) = self.download(path, data.len() as u64, MAX_PAYLOAD)?;
            let done = bytes.is_empty();
            data.extend_from_slice(&bytes);
            if done || data.len() as u64 >= res.size {
                return Ok(data);
            }
        }
    }

    /// Uploads a small file (at most [`MAX_INLINE_UPLOAD`](crate::MAX_INLINE_UPLOAD) bytes) whole, in one round
    /// trip: the bytes travel inside the `UploadFile`, whether or not the server holds them already.
    pub fn upload_inline(&mut self, path: &str, data: &[u8], mode: u32) -> Result<Attr, ClientError> {
        if data.len() > crate::MAX_INLINE_UPLOAD as usize {
            return Err(ClientError::Protocol(format!(
                "{} bytes are too many to send whole (at most {})",
                data.len(),
                crate::MAX_INLINE_UPLOAD
            )));
        }
        let req = self.upload_request(path, data, mode);
        let proof_tag = self.hashes(data).proof_tag;
        let mut up = Upload::new(req, proof_tag, Carry::Inline);
        let first = up.start()?;
        Ok(self.drive(&mut up, first, data)?.ok_or_else(|| ClientError::Protocol("no answer".into()))?.attr)
    }

    /// Uploads `data` to `path` the way a real client does (the conversation of `upload.rs`): instant when the
    /// server holds the content, an ownership proof when it asks for one, otherwise only the chunks it lacks.
    pub fn upload(&mut self, path: &str, data: &[u8], mode: u32) -> Result<UploadOutcome, ClientError> {
        let req = self.upload_request(path, data, mode);
        let proof_tag = self.hashes(data).proof_tag;
        let mut up = Upload::new(req, proof_tag, Carry::ByHash);
        let first = up.start()?;
        let done = self.drive(&mut up, first, data)?.ok_or_else(|| ClientError::Protocol("no answer".into()))?;
        Ok(UploadOutcome { attr: done.attr, instant: done.instant, chunks_sent: done.chunks_sent })
    }

    /// Continues an upload the server opened (`UploadFileRes::Upload`): asks which chunks are missing (L3 step
    /// one) and sends each (step two). Returns the file's attributes if a chunk completed it, and how many chunks
    /// were sent. `None` means the upload ended without this connection completing it (another connection
    /// finished it): ask `UploadFile` again.
    pub fn send_missing_chunks(
        &mut self,
        upload_id: u64,
        chunk_size: u32,
        chunk_count: u32,
        data: &[u8],
    ) -> Result<(Option<Attr>, u32), ClientError> {
        let (mut up, first) = Upload::opened(data.len() as u64, upload_id, chunk_size, chunk_count)?;
        let done = self.drive(&mut up, first, data)?;
        Ok((done.map(|d| d.attr), up.chunks_sent()))
    }

    /// Drives an upload's conversation one request at a time, from `next`. `None`: it wants to ask `UploadFile`
    /// again after being opened from outside ([`Upload::opened`]), which only the opener can do.
    fn drive(&mut self, up: &mut Upload, mut next: Next, data: &[u8]) -> Result<Option<Done>, ClientError> {
        loop {
            next = match next {
                Next::Ask { .. } if !up.can_ask() => return Ok(None),
                Next::Ask { request, inline } => {
                    let payload = if inline { data } else { &[] };
                    let answer = self.call_with_payload(&request, payload).map(|(res, _)| res);
                    up.on_answer(refusal(answer)?)?
                }
                Next::Prove(proof) => {
                    let answer = self.call(&proof);
                    if let Ok(answer) = &answer {
                        self.checked(check_proven(up.request(), answer))?;
                    }
                    up.on_answer(refusal(answer)?)?
                }
                Next::Query(query) => up.on_needed(refusal(self.call(&query))?)?,
                Next::Send { upload_id, chunk_size, indexes } => {
                    let (sent, outcome) = self.send_chunks(upload_id, chunk_size, &indexes, data)?;
                    up.on_sent(sent, outcome)?
                }
                Next::Done(done) => return Ok(Some(done)),
            }
        }
    }

    /// Sends these chunks one by one until one completes the file or is refused.
    fn send_chunks(
        &mut self,
        upload_id: u64,
        chunk_size: u32,
        indexes: &[u32],
        data: &[u8],
    ) -> Result<(u32, Result<Option<Attr>, WireError>), ClientError> {
        for (sent, &index) in (1..).zip(indexes) {
            let start = index as usize * chunk_size as usize;
            let end = (start + chunk_size as usize).min(data.len());
            let bytes = data
                .get(start..end)
                .ok_or_else(|| ClientError::Protocol(format!("server asked for chunk {index} beyond the data")))?;
            let req = UploadChunk { upload_id, index, crc32c: chunk_crc(bytes) };
            match refusal(self.call_with_payload(&req, bytes))? {
                Ok((res, _)) if res.complete.is_some() => return Ok((sent, Ok(res.complete))),
                Ok(_) => {}
                Err(e) => return Ok((sent, Err(e))),
            }
        }
        Ok((indexes.len() as u32, Ok(None)))
    }
}

/// A call's outcome as the upload conversation takes it: the server's refusal is an answer; anything else (the
/// connection, a bad answer) ends the upload here.
fn refusal<T>(outcome: Result<T, ClientError>) -> Result<Result<T, WireError>, ClientError> {
    match outcome {
        Ok(answer) => Ok(Ok(answer)),
        Err(ClientError::Server(e)) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

impl From<UploadError> for ClientError {
    fn from(e: UploadError) -> ClientError {
        match e {
            UploadError::Server(e) => ClientError::Server(e),
            UploadError::Protocol(why) => ClientError::Protocol(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_message;
    use std::io::Cursor;

    /// A stream whose reads come from answers written beforehand; writes go nowhere.
    struct Scripted(Cursor<Vec<u8>>);

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn file(md5: &str) -> StatRes {
        let t = Timespec { sec: 1, nsec: 0 };
        let attr = Attr {
            ino: 2,
            kind: NodeKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 0,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
            md5: Some(md5.into()),
        };
        StatRes { attr }
    }

    #[test]
    fn a_bad_answer_fails_the_call_and_ends_the_connection() {
        let mut answers = encode_message(Kind::StatRes, 1, &file("/tmp/owned"), 0);
        answers.extend(encode_message(Kind::StatRes, 2, &file(&crate::md5_hex(b"")), 0));
        let mut client = Client::new(Scripted(Cursor::new(answers)));
        match client.stat("/f") {
            Err(ClientError::BadAnswer(bad)) => assert_eq!((bad.request, bad.field.as_str()), (Kind::Stat, "attr.md5")),
            other => panic!("{other:?}"),
        }
        // The sound answer that follows is never read: the connection is not used again.
        assert!(matches!(client.stat("/f"), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn an_error_answer_is_checked_too() {
        let error = WireError::new(crate::ErrorCode::NotFound, "x".repeat(crate::answer::MAX_ERROR_MESSAGE + 1));
        let answers = encode_message(Kind::Error, 1, &error, 0);
        let mut client = Client::new(Scripted(Cursor::new(answers)));
        assert!(matches!(client.stat("/f"), Err(ClientError::BadAnswer(bad)) if bad.field == "message"));
    }
}
