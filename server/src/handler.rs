//! The frame adapter: a `Session` is one connection's state inside its child (logged in or not), and turns each
//! request into a call on the `Store` and its result into an answer frame; payload bytes go between the socket and
//! the files the store hands out.
//! Architecture Invariant: no storage rule lives here. Every UploadChunk (and UploadFile) payload is consumed exactly
//! once, whatever the answer, so framing never breaks.

use netdisk_protocol::answer::shown;
use netdisk_protocol::frame::encode_message;
use netdisk_protocol::*;

use crate::conn::{Conn, ConnError};
use crate::error::{Error, Result};
use crate::meta::{Meta, User};
use crate::splice::{self, Pipe};
use crate::store::{ChunkPlan, PendingLogin, Random, Received, Settings, Store};

/// Wrong passwords a connection may try before it is closed.
const MAX_FAILED_LOGINS: u32 = 3;

/// Whether the connection goes on after a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Closed after the answer, for this reason.
    Close(&'static str),
}

pub struct Session {
    store: Store,
    pipe: Pipe,
    user: Option<User>,
    failed_logins: u32,
    /// A login between its `Hello` and its `Login`.
    pending_login: Option<PendingLogin>,
}

/// Answers a request: its response, or an error response with the wire code.
fn respond<R: Request>(conn: &mut Conn, request_id: u64, result: Result<R::Response>) -> Result<(), ConnError> {
    match result {
        Ok(res) => conn.send_message(R::KIND.response().expect("requests have responses"), request_id, &res),
        Err(e) => send_error(conn, request_id, &e),
    }
}

fn send_error(conn: &mut Conn, request_id: u64, e: &Error) -> Result<(), ConnError> {
    if e.is_internal() {
        tracing::error!(error = %e, "request failed");
    } else {
        tracing::debug!(error = %e, "request refused");
    }
    conn.send_message(Kind::Error, request_id, &e.to_wire())
}

/// Receives `len` payload bytes into `file` at `offset`: how it went for the store, and the connection's own
/// failure, which ends the session once the store has heard of it.
fn receive(
    conn: &mut Conn,
    pipe: &mut Pipe,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> (Received, Option<ConnError>) {
    match splice::receive_to_file(conn, pipe, file, offset, len) {
        Ok(Ok(())) => (Received::All, None),
        Ok(Err(e)) => (Received::Failed(e), None),
        Err(e) => (Received::ConnectionLost, Some(e)),
    }
}

impl Session {
    pub fn new(meta: Meta, settings: &Settings) -> Result<Session> {
        Ok(Session {
            store: Store::new(meta, settings)?,
            pipe: Pipe::new()?,
            user: None,
            failed_logins: 0,
            pending_login: None,
        })
    }

    /// The same session drawing its challenges from `random` (the fuzz target's replayable sessions).
    pub fn with_random(mut self, random: Random) -> Session {
        self.store = self.store.with_random(random);
        self
    }

    pub fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.name.as_str())
    }

    pub fn handle(&mut self, conn: &mut Conn, head: FrameHead, request: AnyRequest) -> Result<Flow, ConnError> {
        let id = head.request_id;
        match request {
            AnyRequest::Hello(r) => {
                let result = self.hello(r);
                respond::<Hello>(conn, id, result)?;
                return Ok(Flow::Continue);
            }
            AnyRequest::Login(r) => {
                let result = self.login(r);
                if result.is_ok() {
                    conn.logged_in();
                }
                respond::<Login>(conn, id, result)?;
                let flow = if self.failed_logins >= MAX_FAILED_LOGINS {
                    Flow::Close("too many failed logins")
                } else {
                    Flow::Continue
                };
                return Ok(flow);
            }
            _ => {}
        }
        let Some(user) = self.user.clone() else {
            conn.discard_payload(head.payload_len as u64)?;
            send_error(conn, id, &Error::Wire(WireError::new(ErrorCode::NotLoggedIn, "log in first")))?;
            return Ok(Flow::Continue);
        };
        if let Err(e) = self.store.check_session(&user) {
            // Refused before anything is done; its payload read so that the answer reaches the client, then closed.
            conn.discard_payload(head.payload_len as u64)?;
            send_error(conn, id, &e)?;
            return Ok(Flow::Close("session ended"));
        }
        let (u, store) = (&user, &mut self.store);
        tracing::trace!(kind = ?head.kind, "request");
        match request {
            AnyRequest::Hello(_) | AnyRequest::Login(_) => unreachable!("handled above"),
            AnyRequest::UploadChunk(r) => self.upload_chunk(conn, u, id, r, head.payload_len as u64)?,
            AnyRequest::UploadFile(r) if head.payload_len > 0 => {
                self.upload_inline(conn, u, id, r, head.payload_len)?
            }
            AnyRequest::Download(r) => self.download(conn, u, id, r)?,
            AnyRequest::GetDir(r) => respond::<GetDir>(conn, id, store.list(u, &r))?,
            AnyRequest::Stat(r) => respond::<Stat>(conn, id, store.stat(u, &r.path).map(|attr| StatRes { attr }))?,
            AnyRequest::Mkdir(r) => respond::<Mkdir>(conn, id, store.mkdir(u, &r))?,
            AnyRequest::Rmdir(r) => respond::<Rmdir>(conn, id, store.rmdir(u, &r.path))?,
            AnyRequest::DeleteFile(r) => respond::<DeleteFile>(conn, id, store.unlink(u, &r.path))?,
            AnyRequest::Rename(r) => respond::<Rename>(conn, id, store.rename(u, &r))?,
            AnyRequest::SetAttr(r) => {
                let still_wanted = || conn.peer_is_there();
                let res = store.set_attr(u, &r, &still_wanted).map(|attr| SetAttrRes { attr });
                respond::<SetAttr>(conn, id, res)?
            }
            AnyRequest::Symlink(r) => {
                respond::<Symlink>(conn, id, store.symlink(u, &r).map(|attr| SymlinkRes { attr }))?
            }
            AnyRequest::ReadLink(r) => {
                respond::<ReadLink>(conn, id, store.readlink(u, &r.path).map(|target| ReadLinkRes { target }))?
            }
            AnyRequest::Link(r) => respond::<Link>(conn, id, store.link(u, &r).map(|attr| LinkRes { attr }))?,
            AnyRequest::Mknod(r) => respond::<Mknod>(conn, id, store.mknod(u, &r).map(|attr| MknodRes { attr }))?,
            AnyRequest::UploadFile(r) => respond::<UploadFile>(conn, id, store.upload_file(u, r))?,
            AnyRequest::ProveOwnership(r) => respond::<ProveOwnership>(conn, id, store.prove_ownership(u, r))?,
            AnyRequest::QueryChunk(r) => respond::<QueryChunk>(conn, id, store.query_chunk(u, r))?,
            AnyRequest::StatFs(_) => respond::<StatFs>(conn, id, store.statfs(u))?,
        }
        Ok(Flow::Continue)
    }

    /// A session lasts while its user exists and keeps the password it logged in with (`user passwd` and
    /// `user remove` end it at its next request, whether it was idle or in the middle of an upload).
    fn hello(&mut self, r: Hello) -> Result<HelloRes> {
        if self.user.is_some() {
            return crate::error::fail(ErrorCode::Invalid, "already logged in");
        }
        let (pending, res) = self.store.hello(&r)?;
        self.pending_login = Some(pending);
        Ok(res)
    }

    fn login(&mut self, r: Login) -> Result<LoginRes> {
        if self.user.is_some() {
            return crate::error::fail(ErrorCode::Invalid, "already logged in");
        }
        let Some(pending) = self.pending_login.take() else {
            return crate::error::fail(ErrorCode::Invalid, "say Hello first");
        };
        let name = pending.name().to_string();
        match self.store.login(pending, &r)? {
            Some((user, answer)) => {
                tracing::info!(user = %shown(&user.name), "logged in");
                self.user = Some(user);
                Ok(answer)
            }
            None => {
                self.failed_logins += 1;
                tracing::warn!(user = %shown(&name), attempt = self.failed_logins, "login refused");
                crate::error::fail(ErrorCode::AuthFailed, "wrong user name or password")
            }
        }
    }

    /// A small file sent whole as the payload of its `UploadFile`.
    fn upload_inline(
        &mut self,
        conn: &mut Conn,
        user: &User,
        id: u64,
        r: UploadFile,
        payload_len: u32,
    ) -> Result<(), ConnError> {
        let inline = match self.store.begin_inline(user, r, payload_len) {
            Ok(inline) => inline,
            Err(e) => {
                conn.discard_payload(payload_len as u64)?;
                return send_error(conn, id, &e);
            }
        };
        let (received, lost) = receive(conn, &mut self.pipe, inline.file(), 0, payload_len as u64);
        let result = self.store.land_inline(user, inline, received);
        if let Some(e) = lost {
            return Err(e);
        }
        respond::<UploadFile>(conn, id, result)
    }

    fn upload_chunk(
        &mut self,
        conn: &mut Conn,
        user: &User,
        id: u64,
        r: UploadChunk,
        payload_len: u64,
    ) -> Result<(), ConnError> {
        let sink = match self.store.begin_chunk(user, &r, payload_len) {
            Ok(ChunkPlan::Receive(sink)) => sink,
            Ok(ChunkPlan::Skip) => {
                conn.discard_payload(payload_len)?;
                return respond::<UploadChunk>(conn, id, Ok(UploadChunkRes { index: r.index, complete: None }));
            }
            Err(e) => {
                conn.discard_payload(payload_len)?;
                return send_error(conn, id, &e);
            }
        };
        let (received, lost) = receive(conn, &mut self.pipe, sink.file(), sink.offset(), payload_len);
        let result = self.store.land_chunk(user, sink, received);
        if let Some(e) = lost {
            return Err(e);
        }
        respond::<UploadChunk>(conn, id, result)
    }

    fn download(&mut self, conn: &mut Conn, user: &User, id: u64, r: Download) -> Result<(), ConnError> {
        let out = match self.store.open_download(user, &r) {
            Ok(out) => out,
            Err(e) => return send_error(conn, id, &e),
        };
        conn.send(&encode_message(Kind::DownloadRes, id, &out.res, out.len as u32))?;
        if let Some(file) = out.file {
            splice::send_from_file(conn, &mut self.pipe, &file, r.offset, out.len)?;
        }
        Ok(())
    }
}
