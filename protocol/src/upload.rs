//! The upload conversation, written once and doing no I/O: a client feeds it the server's answers and it says what
//! to send next. The blocking [`Client`](crate::client::Client) and the mount both drive it, each with its own I/O
//! (one request at a time; several chunks at once).
//!
//! ```text
//!   Ask ──Instant──────────────────────────────────────────────▶ Done
//!    │ ──Challenge──▶ Prove (same connection) ──Instant────────▶ Done
//!    │                  │ ──Upload──┐          ──UnknownUpload─▶ Ask again
//!    │ ──Upload─────────────────────┴▶ Query (batches) ──▶ Send ──complete──▶ Done
//!    │                                  (1 chunk: Send at once)  ──not complete / UnknownUpload──▶ Ask again
//! ```
//!
//! `Ask again` happens when another connection (or client) finished or took over the same content meanwhile: the
//! next `UploadFile` then settles it. It is bounded by [`UPLOAD_ATTEMPTS`].

use crate::error::{ErrorCode, WireError};
use crate::message::{Attr, ProveOwnership, QueryChunk, QueryChunkRes, UploadFile, UploadFileRes};
use crate::{ownership_proof, MAX_QUERY_INDEXES};

/// Rounds of `UploadFile` one upload may take.
pub const UPLOAD_ATTEMPTS: usize = 4;

/// How the content travels when the server does not hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    /// Whole, as the payload of the `UploadFile` itself (at most [`MAX_INLINE_UPLOAD`](crate::MAX_INLINE_UPLOAD)
    /// bytes): one round trip; the answer must be `Instant`.
    Inline,
    /// Named by its hashes first; chunks only if the server lacks them.
    ByHash,
}

/// What to send next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send this `UploadFile` (with the whole content as its payload when `inline`); its answer goes to
    /// [`Upload::on_answer`].
    Ask { request: UploadFile, inline: bool },
    /// Send this proof on the connection that received the challenge; its answer goes to [`Upload::on_answer`].
    Prove(ProveOwnership),
    /// Ask which of these chunks the upload still needs; the answer goes to [`Upload::on_needed`].
    Query(QueryChunk),
    /// Send these chunks, each as an `UploadChunk` (in any order, several at once if you like); how it went goes to
    /// [`Upload::on_sent`].
    Send { upload_id: u64, chunk_size: u32, indexes: Vec<u32> },
    /// The content is at its path.
    Done(Done),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    pub attr: Attr,
    /// The file's directory just after the change, when the server sent it.
    pub dir: Option<Attr>,
    /// No chunk was sent (the server held the content, or it came inline).
    pub instant: bool,
    pub chunks_sent: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The server refused (its code says why: quota, disk full, not found ...).
    #[error("{0}")]
    Server(WireError),
    /// The server's answers do not make a valid conversation.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

#[derive(Debug)]
enum State {
    Asked,
    Proving,
    Querying { upload_id: u64, chunk_size: u32, chunk_count: u32, asked: u32, needed: Vec<u32> },
    Sending,
    Done,
}

/// One upload's conversation.
#[derive(Debug)]
pub struct Upload {
    request: UploadFile,
    proof_tag: String,
    carry: Carry,
    attempts: usize,
    chunks_sent: u32,
    state: State,
    /// False for an upload continued with [`Upload::opened`]: it has no `UploadFile` to ask again.
    can_ask: bool,
}

impl Upload {
    /// An upload of `request`'s content; `proof_tag` is its [`ContentHashes::proof_tag`](crate::ContentHashes)
    /// (what an ownership challenge is answered from).
    pub fn new(request: UploadFile, proof_tag: String, carry: Carry) -> Upload {
        Upload { request, proof_tag, carry, attempts: 0, chunks_sent: 0, state: State::Done, can_ask: true }
    }

    /// An upload the server already opened (`UploadFileRes::Upload`) for content of `size` bytes, continued from
    /// its chunk phase. It knows no `UploadFile` to ask again: when it wants to, [`Upload::can_ask`] is false and the
    /// driver stops there (only whoever opened it can ask).
    pub fn opened(size: u64, upload_id: u64, chunk_size: u32, chunk_count: u32) -> Result<(Upload, Next), UploadError> {
        let request = UploadFile {
            path: String::new(),
            size,
            md5: String::new(),
            sha256: None,
            mode: 0,
            mtime: None,
            owner: Default::default(),
        };
        let mut up = Upload::new(request, String::new(), Carry::ByHash);
        up.start()?;
        up.can_ask = false;
        let next = up.on_answer(Ok(UploadFileRes::Upload { upload_id, chunk_size, chunk_count }))?;
        Ok((up, next))
    }

    /// Whether an `Ask` can be sent (not for an upload continued with [`Upload::opened`]).
    pub fn can_ask(&self) -> bool {
        self.can_ask
    }

    pub fn request(&self) -> &UploadFile {
        &self.request
    }

    /// Chunks sent so far.
    pub fn chunks_sent(&self) -> u32 {
        self.chunks_sent
    }

    /// The first step.
    pub fn start(&mut self) -> Result<Next, UploadError> {
        self.ask()
    }

    fn ask(&mut self) -> Result<Next, UploadError> {
        if self.attempts == UPLOAD_ATTEMPTS {
            return Err(UploadError::Protocol(format!(
                "the upload of {} did not complete after {UPLOAD_ATTEMPTS} attempts",
                self.request.path
            )));
        }
        self.attempts += 1;
        self.state = State::Asked;
        Ok(Next::Ask { request: self.request.clone(), inline: self.carry == Carry::Inline })
    }

    fn done(&mut self, attr: Attr, dir: Option<Attr>) -> Result<Next, UploadError> {
        self.state = State::Done;
        let chunks_sent = self.chunks_sent;
        Ok(Next::Done(Done { attr, dir, instant: chunks_sent == 0, chunks_sent }))
    }

    /// The answer to an `Ask` or a `Prove`.
    pub fn on_answer(&mut self, answer: Result<UploadFileRes, WireError>) -> Result<Next, UploadError> {
        let proving = matches!(self.state, State::Proving);
        if !proving && !matches!(self.state, State::Asked) {
            return Err(UploadError::Protocol(format!("an upload answer while {:?}", self.state)));
        }
        let answer = match answer {
            Ok(answer) => answer,
            // The challenge lapsed (the connection was replaced between question and answer): ask again.
            Err(e) if proving && e.code == ErrorCode::UnknownUpload => return self.ask(),
            Err(e) => return Err(UploadError::Server(e)),
        };
        match answer {
            UploadFileRes::Instant { attr, dir } => self.done(attr, dir),
            _ if self.carry == Carry::Inline => {
                Err(UploadError::Protocol(format!("a file sent whole was answered with {answer:?}")))
            }
            UploadFileRes::Challenge { .. } if proving => Err(UploadError::Protocol("a second challenge".into())),
            UploadFileRes::Challenge { challenge_id, nonce } => {
                self.state = State::Proving;
                Ok(Next::Prove(ProveOwnership { challenge_id, proof: ownership_proof(&self.proof_tag, &nonce) }))
            }
            // Its chunk size and count were checked against the request with the answer (`answer.rs`).
            UploadFileRes::Upload { upload_id, chunk_size, chunk_count } => {
                if chunk_count == 1 {
                    // A one-chunk file is sent without asking first: if the server has it already, it drops it.
                    self.state = State::Sending;
                    return Ok(Next::Send { upload_id, chunk_size, indexes: vec![0] });
                }
                self.state = State::Querying { upload_id, chunk_size, chunk_count, asked: 0, needed: Vec::new() };
                Ok(self.next_query())
            }
        }
    }

    fn next_query(&mut self) -> Next {
        let State::Querying { upload_id, chunk_size, chunk_count, asked, needed } = &mut self.state else {
            unreachable!("only while querying")
        };
        if *asked == *chunk_count {
            let (upload_id, chunk_size, indexes) = (*upload_id, *chunk_size, std::mem::take(needed));
            self.state = State::Sending;
            return Next::Send { upload_id, chunk_size, indexes };
        }
        let end = (*asked as u64 + MAX_QUERY_INDEXES as u64).min(*chunk_count as u64) as u32;
        let indexes = (*asked..end).collect();
        *asked = end;
        Next::Query(QueryChunk { upload_id: *upload_id, indexes })
    }

    /// The answer to a `Query`.
    pub fn on_needed(&mut self, answer: Result<QueryChunkRes, WireError>) -> Result<Next, UploadError> {
        let State::Querying { needed, .. } = &mut self.state else {
            return Err(UploadError::Protocol(format!("a chunk query answer while {:?}", self.state)));
        };
        match answer {
            // Only indexes that were asked about, each once (checked with the answer, `answer.rs`).
            Ok(res) => {
                needed.extend(res.needed);
                Ok(self.next_query())
            }
            // Finished (or reclaimed) meanwhile: ask again.
            Err(e) if e.code == ErrorCode::UnknownUpload => self.ask(),
            Err(e) => Err(UploadError::Server(e)),
        }
    }

    /// How sending went: `sent` chunks went out (each answered); `complete` is the attributes one of their answers
    /// carried when it completed the file. `Err`: the first refusal.
    pub fn on_sent(&mut self, sent: u32, outcome: Result<Option<Attr>, WireError>) -> Result<Next, UploadError> {
        if !matches!(self.state, State::Sending) {
            return Err(UploadError::Protocol(format!("chunks sent while {:?}", self.state)));
        }
        self.chunks_sent += sent;
        match outcome {
            Ok(Some(attr)) => self.done(attr, None),
            // Not completed by these chunks (another connection completed it, or holds the last chunk): ask again.
            Ok(None) => self.ask(),
            Err(e) if e.code == ErrorCode::UnknownUpload => self.ask(),
            Err(e) => Err(UploadError::Server(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{NodeKind, Owner, Timespec};

    fn request(size: u64) -> UploadFile {
        UploadFile {
            path: "/f".into(),
            size,
            md5: "0".repeat(32),
            sha256: Some("0".repeat(64)),
            mode: 0o644,
            mtime: None,
            owner: Owner::default(),
        }
    }

    fn attr(size: u64) -> Attr {
        let t = Timespec::default();
        Attr {
            ino: 9,
            kind: NodeKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            size,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
            md5: Some("0".repeat(32)),
        }
    }

    fn refused(code: ErrorCode) -> WireError {
        WireError { code, message: String::new() }
    }

    #[test]
    fn instant_after_a_proof() {
        let mut up = Upload::new(request(10 << 20), "ab".repeat(32), Carry::ByHash);
        assert!(matches!(up.start().unwrap(), Next::Ask { inline: false, .. }));
        let challenge = UploadFileRes::Challenge { challenge_id: 3, nonce: "cd".repeat(16) };
        let Next::Prove(proof) = up.on_answer(Ok(challenge.clone())).unwrap() else { panic!("a proof") };
        assert_eq!(proof.challenge_id, 3);
        assert_eq!(proof.proof, ownership_proof(&"ab".repeat(32), &"cd".repeat(16)));
        assert!(matches!(up.on_answer(Ok(challenge)), Err(UploadError::Protocol(_))), "a second challenge");

        let mut up = Upload::new(request(10 << 20), "ab".repeat(32), Carry::ByHash);
        up.start().unwrap();
        up.on_answer(Ok(UploadFileRes::Challenge { challenge_id: 3, nonce: "cd".repeat(16) })).unwrap();
        let done = up.on_answer(Ok(UploadFileRes::Instant { attr: attr(10 << 20), dir: None })).unwrap();
        assert!(matches!(done, Next::Done(Done { instant: true, chunks_sent: 0, .. })));
    }

    #[test]
    fn chunks_are_queried_in_batches_then_sent() {
        let chunk = 4096u32;
        let count = MAX_QUERY_INDEXES as u32 + 10;
        let mut up = Upload::new(request(count as u64 * chunk as u64 - 1), String::new(), Carry::ByHash);
        up.start().unwrap();
        let answer = UploadFileRes::Upload { upload_id: 5, chunk_size: chunk, chunk_count: count };
        let Next::Query(q) = up.on_answer(Ok(answer)).unwrap() else { panic!("a query") };
        assert_eq!(q.indexes.len(), MAX_QUERY_INDEXES);
        let Next::Query(q2) = up.on_needed(Ok(QueryChunkRes { needed: vec![1, 2] })).unwrap() else { panic!() };
        assert_eq!(q2.indexes, (MAX_QUERY_INDEXES as u32..count).collect::<Vec<_>>());
        let Next::Send { upload_id: 5, indexes, .. } =
            up.on_needed(Ok(QueryChunkRes { needed: vec![count - 1] })).unwrap()
        else {
            panic!("send")
        };
        assert_eq!(indexes, vec![1, 2, count - 1]);
        let done = up.on_sent(3, Ok(Some(attr(1)))).unwrap();
        assert!(matches!(done, Next::Done(Done { instant: false, chunks_sent: 3, .. })));
    }

    #[test]
    fn a_lapsed_upload_is_asked_again_a_bounded_number_of_times() {
        let mut up = Upload::new(request(100), String::new(), Carry::ByHash);
        up.start().unwrap();
        for round in 1..=UPLOAD_ATTEMPTS {
            let answer = UploadFileRes::Upload { upload_id: 1, chunk_size: 4096, chunk_count: 1 };
            let Next::Send { indexes, .. } = up.on_answer(Ok(answer)).unwrap() else { panic!("one chunk: no query") };
            assert_eq!(indexes, vec![0]);
            let next = up.on_sent(1, Err(refused(ErrorCode::UnknownUpload)));
            if round < UPLOAD_ATTEMPTS {
                assert!(matches!(next, Ok(Next::Ask { .. })), "round {round}");
            } else {
                assert!(matches!(next, Err(UploadError::Protocol(_))), "bounded");
            }
        }
    }

    #[test]
    fn bad_answers_are_protocol_errors_and_refusals_pass_through() {
        let mut up = Upload::new(request(100), String::new(), Carry::Inline);
        assert!(matches!(up.start().unwrap(), Next::Ask { inline: true, .. }));
        let not_instant = UploadFileRes::Upload { upload_id: 1, chunk_size: 4096, chunk_count: 1 };
        assert!(matches!(up.on_answer(Ok(not_instant)), Err(UploadError::Protocol(_))));

        let mut up = Upload::new(request(100), String::new(), Carry::ByHash);
        up.start().unwrap();
        let quota = up.on_answer(Err(refused(ErrorCode::QuotaExceeded)));
        assert!(matches!(quota, Err(UploadError::Server(e)) if e.code == ErrorCode::QuotaExceeded));
        assert!(matches!(up.on_sent(1, Ok(None)), Err(UploadError::Protocol(_))), "out of order");
    }
}
