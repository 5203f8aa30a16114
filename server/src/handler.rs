//! One function per request. A `Session` is the state of one logged-in (or not yet) connection inside its child.
//! Architecture Invariant: every UploadChunk payload is consumed exactly once, whatever the answer, so framing never breaks.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;

use netdisk_protocol::frame::encode_message;
use netdisk_protocol::path::components;
use netdisk_protocol::*;

use crate::blobs::{self, Blobs, Durability};
use crate::conn::{Conn, ConnError};
use crate::error::{fail, Error, Result};
use crate::meta::{Content, Meta, NewFile, PFile, Upload, User, EMPTY_MD5};
use crate::resize;
use crate::splice::{self, Pipe};
use crate::users;

/// Most chunks hashed from disk between two saves of a running hash.
const HASH_CHUNKS_PER_SAVE: u32 = 8;
/// Size of each range an ownership challenge asks the md5 of.
const PROOF_RANGE: u64 = 64 * 1024;
/// How many ranges a challenge names.
const PROOF_RANGES: usize = 3;
/// Challenges a connection may have open at once; older ones are forgotten.
const MAX_OPEN_CHALLENGES: usize = 64;
/// Times a small file is stored when concurrent changes keep releasing its physical file before it is sealed.
const RACE_ATTEMPTS: u32 = 3;
/// Wrong passwords a connection may try before it is closed.
const MAX_FAILED_LOGINS: u32 = 3;

/// Whether the connection goes on after a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

struct Challenge {
    id: u64,
    nonce: String,
    request: UploadFile,
    ranges: Vec<ByteRange>,
}

pub struct Session {
    meta: Meta,
    blobs: Blobs,
    pipe: Pipe,
    data_dir: PathBuf,
    chunk_size: u32,
    user: Option<User>,
    failed_logins: u32,
    challenges: VecDeque<Challenge>,
    random: Random,
}

/// Where challenge ids, nonces and proof ranges come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Random {
    /// The operating system's random source: what a server always uses.
    Os,
    /// The numbers from this one on (1, 2, 3 ...): a session that replays the same way every time, for the fuzz
    /// target and its corpus. Never for serving: it makes challenges predictable.
    Counter(u64),
}

impl Random {
    fn next_u64(&mut self) -> u64 {
        match self {
            Random::Os => {
                let mut bytes = [0u8; 8];
                getrandom::getrandom(&mut bytes).expect("the OS random source works");
                u64::from_ne_bytes(bytes)
            }
            Random::Counter(n) => {
                let value = *n;
                *n = n.wrapping_add(1);
                value
            }
        }
    }
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

/// Ranges whose md5 proves a client holds content of `size` bytes: the whole of a small file, else random windows.
fn choose_ranges(size: u64, random: &mut Random) -> Vec<ByteRange> {
    if size <= PROOF_RANGE * PROOF_RANGES as u64 {
        return vec![ByteRange { offset: 0, len: size }];
    }
    (0..PROOF_RANGES)
        .map(|_| ByteRange { offset: random.next_u64() % (size - PROOF_RANGE + 1), len: PROOF_RANGE })
        .collect()
}

/// The running hash of a physical file's first `hashed_chunks` chunks (a fresh one before any).
fn restore_hash(pfile: &PFile) -> Option<blobs::RunningHash> {
    match &pfile.hash_state {
        Some(state) => blobs::RunningHash::restore(state),
        None if pfile.hashed_chunks == 0 => Some(blobs::RunningHash::new()),
        None => None,
    }
}

fn check_md5(md5: &str) -> Result<()> {
    if !is_md5_hex(md5) {
        return fail(ErrorCode::Invalid, "md5 must be 32 lowercase hex digits");
    }
    Ok(())
}

enum ChunkPlan {
    /// The chunk is not needed (stored already, or the file is complete): read and drop its bytes.
    Skip,
    Receive {
        upload: Upload,
        pfile: Box<PFile>,
        file: File,
    },
}

impl Session {
    pub fn new(
        mut meta: Meta,
        data_dir: PathBuf,
        chunk_size: u32,
        durability: Durability,
        reserve: u64,
    ) -> Result<Session> {
        meta.set_durability(durability)?;
        Ok(Session {
            meta,
            blobs: Blobs::new(&data_dir, durability).with_reserve(reserve),
            pipe: Pipe::new()?,
            data_dir,
            chunk_size,
            user: None,
            failed_logins: 0,
            challenges: VecDeque::new(),
            random: Random::Os,
        })
    }

    /// The same session drawing its challenges from `random` (the fuzz target's replayable sessions).
    pub fn with_random(mut self, random: Random) -> Session {
        self.random = random;
        self
    }

    pub fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.name.as_str())
    }

    pub fn handle(&mut self, conn: &mut Conn, head: FrameHead, request: AnyRequest) -> Result<Flow, ConnError> {
        let id = head.request_id;
        if let AnyRequest::Login(r) = request {
            let result = self.login(r);
            respond::<Login>(conn, id, result)?;
            let flow = if self.failed_logins >= MAX_FAILED_LOGINS { Flow::Close } else { Flow::Continue };
            return Ok(flow);
        }
        let Some(user) = self.user.clone() else {
            conn.discard_payload(head.payload_len as u64)?;
            send_error(conn, id, &Error::Wire(WireError::new(ErrorCode::NotLoggedIn, "log in first")))?;
            return Ok(Flow::Continue);
        };
        let u = &user;
        tracing::trace!(kind = ?head.kind, "request");
        match request {
            AnyRequest::Login(_) => unreachable!("handled above"),
            AnyRequest::UploadChunk(r) => self.upload_chunk(conn, u, id, r, head.payload_len as u64)?,
            AnyRequest::Download(r) => return self.download(conn, u, id, r),
            AnyRequest::GetDir(r) => {
                let res = self.meta.list(u, &r.path, r.after.as_deref(), r.limit.clamp(1, MAX_DIR_PAGE));
                let res = res.map(|(dir, entries, more)| GetDirRes { dir, entries, more });
                respond::<GetDir>(conn, id, res)?
            }
            AnyRequest::Stat(r) => respond::<Stat>(conn, id, self.meta.stat(u, &r.path).map(|attr| StatRes { attr }))?,
            AnyRequest::Mkdir(r) => {
                let res = self.meta.mkdir(u, &r.path, r.mode, r.owner);
                respond::<Mkdir>(conn, id, res.map(|attr| MkdirRes { attr, dir: self.meta.parent_attr(u, &r.path) }))?
            }
            AnyRequest::Rmdir(r) => {
                let res = self.meta.rmdir(u, &r.path);
                respond::<Rmdir>(conn, id, res.map(|()| RmdirRes { dir: self.meta.parent_attr(u, &r.path) }))?
            }
            AnyRequest::DeleteFile(r) => {
                let res = self.meta.unlink(u, &r.path).map(|released| self.blobs.remove_all(&released));
                respond::<DeleteFile>(conn, id, res.map(|()| DeleteFileRes { dir: self.meta.parent_attr(u, &r.path) }))?
            }
            AnyRequest::Rename(r) => {
                let res =
                    self.meta.rename(u, &r.from, &r.to, r.noreplace).map(|released| self.blobs.remove_all(&released));
                respond::<Rename>(conn, id, res.map(|()| RenameRes {}))?
            }
            AnyRequest::SetAttr(r) => {
                let still_wanted = || conn.peer_is_there();
                let res = self.set_attr(u, r, &still_wanted).map(|attr| SetAttrRes { attr });
                respond::<SetAttr>(conn, id, res)?
            }
            AnyRequest::Symlink(r) => respond::<Symlink>(
                conn,
                id,
                self.meta.symlink(u, &r.path, &r.target, r.owner).map(|attr| SymlinkRes { attr }),
            )?,
            AnyRequest::ReadLink(r) => {
                respond::<ReadLink>(conn, id, self.meta.readlink(u, &r.path).map(|target| ReadLinkRes { target }))?
            }
            AnyRequest::Link(r) => {
                respond::<Link>(conn, id, self.meta.link(u, &r.existing, &r.new).map(|attr| LinkRes { attr }))?
            }
            AnyRequest::Mknod(r) => respond::<Mknod>(
                conn,
                id,
                self.meta.mknod(u, &r.path, r.kind, r.mode, r.rdev, r.owner).map(|attr| MknodRes { attr }),
            )?,
            AnyRequest::UploadFile(r) if head.payload_len > 0 => {
                self.upload_inline(conn, u, id, r, head.payload_len)?
            }
            AnyRequest::UploadFile(r) => {
                let res = self.upload_file(u, r);
                respond::<UploadFile>(conn, id, res)?
            }
            AnyRequest::ProveOwnership(r) => {
                let res = self.prove_ownership(u, r);
                respond::<ProveOwnership>(conn, id, res)?
            }
            AnyRequest::QueryChunk(r) => {
                let res = self.query_chunk(u, r);
                respond::<QueryChunk>(conn, id, res)?
            }
            AnyRequest::StatFs(_) => respond::<StatFs>(conn, id, self.statfs(u))?,
        }
        Ok(Flow::Continue)
    }

    fn login(&mut self, r: Login) -> Result<LoginRes> {
        if self.user.is_some() {
            return fail(ErrorCode::Invalid, "already logged in");
        }
        let found = self.meta.user(&r.user)?;
        let hash = found.as_ref().map_or(users::dummy_hash(), |(_, h)| h.as_str());
        let ok = users::verify_password(&r.password, hash);
        match found {
            Some((user, _)) if ok => {
                tracing::info!(user = %user.name, "logged in");
                let root = self.meta.attr(user.root)?;
                self.user = Some(user);
                Ok(LoginRes { root, chunk_size: self.chunk_size })
            }
            _ => {
                self.failed_logins += 1;
                tracing::warn!(user = %r.user, attempt = self.failed_logins, "login refused");
                fail(ErrorCode::AuthFailed, "wrong user name or password")
            }
        }
    }

    // ---- uploads ----

    /// The answer for content now at `path`, with its directory as it is after the change.
    fn instant(&self, user: &User, path: &str, attr: Attr) -> UploadFileRes {
        UploadFileRes::Instant { attr, dir: self.meta.parent_attr(user, path) }
    }

    fn upload_file(&mut self, user: &User, r: UploadFile) -> Result<UploadFileRes> {
        check_md5(&r.md5)?;
        resize::check_file_size(r.size)?;
        components(&r.path)?;
        self.meta.check_file_target(user, &r.path)?;
        self.meta.check_quota(user, &r.path, r.size)?;
        let new = NewFile { mode: r.mode, owner: r.owner, mtime: r.mtime };
        if r.size == 0 {
            if r.md5 != EMPTY_MD5 {
                return fail(ErrorCode::ChecksumMismatch, "an empty file's md5 is d41d8cd98f00b204e9800998ecf8427e");
            }
            let (attr, released) = self.meta.set_content(user, &r.path, Content { pfile_id: None, size: 0 }, new)?;
            self.blobs.remove_all(&released);
            return Ok(self.instant(user, &r.path, attr));
        }
        // Within one user, md5 + size is enough: the user holds that content already.
        if let Some(pfile) = self.meta.own_complete(user, &r.md5, r.size)? {
            if let Some((attr, released)) = self.meta.place_if_complete(user, &r.path, pfile, new)? {
                self.blobs.remove_all(&released);
                let released = self.meta.drop_upload(user, &r.path)?;
                self.blobs.remove_all(&released);
                tracing::info!(path = %r.path, md5 = %r.md5, "instant upload (own content)");
                return Ok(self.instant(user, &r.path, attr));
            }
        }
        // The user's own unfinished upload of this content: resume it (L7: exists but incomplete -> upload).
        // One without a single stored chunk is challenged again instead: meanwhile the content may have become
        // complete elsewhere, and then a proof makes the upload instant.
        let own = self.meta.own_incomplete(user, &r.md5, r.size)?;
        if let Some(pfile) = own.filter(|p| p.chunks_uploaded > 0) {
            let (upload_id, released) = self.meta.upsert_upload(user, &r.path, pfile.id, new)?;
            self.blobs.remove_all(&released);
            if pfile.chunks_uploaded == pfile.total_chunks {
                // Every chunk is stored but the file was never sealed (a crash during verification): finish now.
                let upload = self.meta.upload(user, upload_id as u64)?;
                let attr = self.finish(user, &upload, &pfile)?;
                return Ok(self.instant(user, &r.path, attr));
            }
            return Ok(UploadFileRes::Upload {
                upload_id: upload_id as u64,
                chunk_size: pfile.chunk_size,
                chunk_count: pfile.total_chunks,
            });
        }
        // Anything else gets a challenge, whether or not another user holds the content, so the answer reveals nothing.
        let nonce = format!("{:016x}{:016x}", self.random.next_u64(), self.random.next_u64());
        let id = self.random.next_u64();
        let challenge = Challenge { id, nonce, ranges: choose_ranges(r.size, &mut self.random), request: r };
        let res = UploadFileRes::Challenge {
            challenge_id: challenge.id,
            nonce: challenge.nonce.clone(),
            ranges: challenge.ranges.clone(),
        };
        if self.challenges.len() >= MAX_OPEN_CHALLENGES {
            self.challenges.pop_front();
        }
        self.challenges.push_back(challenge);
        Ok(res)
    }

    /// A small file sent whole as the payload of its `UploadFile`: stored, checked against its md5, synced,
    /// sealed and placed, in one round trip. (Content held already is found by the seal, which then keeps the
    /// copy it has.) Answers `Instant`, or an error with nothing changed.
    fn upload_inline(
        &mut self,
        conn: &mut Conn,
        user: &User,
        id: u64,
        r: UploadFile,
        payload_len: u32,
    ) -> Result<(), ConnError> {
        let planned = (|| {
            check_md5(&r.md5)?;
            components(&r.path)?;
            if r.size != payload_len as u64 {
                return fail(ErrorCode::Invalid, format!("a file sent whole must be its {} bytes", r.size));
            }
            self.meta.check_file_target(user, &r.path)?;
            self.meta.check_quota(user, &r.path, r.size)?;
            let pfile = self.meta.new_pfile(user, &r.md5, r.size, self.chunk_size)?;
            let opened = self.blobs.open_for_upload(pfile.id, pfile.size);
            match opened.and_then(|file| self.blobs.claim(&file, 0, pfile.size).map(|()| file)) {
                Ok(file) => Ok((pfile, file)),
                Err(e) => {
                    self.meta.discard_pfile(pfile.id)?;
                    self.blobs.remove(pfile.id);
                    Err(e.into())
                }
            }
        })();
        let (pfile, file) = match planned {
            Ok(planned) => planned,
            Err(e) => {
                conn.discard_payload(payload_len as u64)?;
                return send_error(conn, id, &e);
            }
        };
        // Whatever goes wrong, the half-made physical file goes too: even when the connection itself ends.
        let discard = |s: &mut Session| {
            s.meta.discard_pfile(pfile.id).ok();
            s.blobs.remove(pfile.id);
        };
        let received = match splice::receive_to_file(conn, &mut self.pipe, &file, 0, payload_len as u64) {
            Ok(received) => received,
            Err(e) => {
                discard(self);
                return Err(e);
            }
        };
        let mut result = received.map_err(Error::from).and_then(|()| self.seal_inline(user, &r, &pfile, &file));
        if result.is_err() {
            discard(self);
        }
        if matches!(result, Err(Error::Race(_))) {
            result = self.store_inline_again(user, &r, &file);
        }
        respond::<UploadFile>(conn, id, result.map(|attr| self.instant(user, &r.path, attr)))
    }

    fn seal_inline(&mut self, user: &User, r: &UploadFile, pfile: &PFile, file: &File) -> Result<Attr> {
        let hashes = blobs::hash_file(file, pfile.size)?;
        if hashes.md5 != r.md5 {
            return fail(ErrorCode::ChecksumMismatch, "the bytes sent do not match the file's md5");
        }
        self.blobs.sync_all(file)?;
        let new = NewFile { mode: r.mode, owner: r.owner, mtime: r.mtime };
        let (attr, released) = self
            .meta
            .seal_and_place(user, &r.path, pfile.id, (&hashes.md5, &hashes.sha256), pfile.size, new)?
            .ok_or(Error::Race("the stored file vanished meanwhile"))?;
        self.blobs.remove_all(&released);
        tracing::info!(path = %r.path, md5 = %r.md5, size = pfile.size, "upload complete (sent whole)");
        Ok(attr)
    }

    /// A small file whose physical file a concurrent change released before it was sealed: its bytes, still in
    /// the open `received`, are stored again in a new one (checked against the md5 again), a few times at most.
    fn store_inline_again(&mut self, user: &User, r: &UploadFile, received: &File) -> Result<Attr> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; r.size as usize];
        received.read_exact_at(&mut bytes, 0)?;
        let mut attempts = 1;
        loop {
            let pfile = self.meta.new_pfile(user, &r.md5, r.size, self.chunk_size)?;
            let stored = (|| {
                let file = self.blobs.open_for_upload(pfile.id, pfile.size)?;
                self.blobs.claim(&file, 0, pfile.size)?;
                file.write_all_at(&bytes, 0)?;
                self.seal_inline(user, r, &pfile, &file)
            })();
            if stored.is_err() {
                self.meta.discard_pfile(pfile.id).ok();
                self.blobs.remove(pfile.id);
            }
            attempts += 1;
            match stored {
                Err(Error::Race(why)) if attempts < RACE_ATTEMPTS => tracing::debug!(why, "small file raced; again"),
                other => return other,
            }
        }
    }

    fn prove_ownership(&mut self, user: &User, r: ProveOwnership) -> Result<UploadFileRes> {
        let Some(pos) = self.challenges.iter().position(|c| c.id == r.challenge_id) else {
            return fail(ErrorCode::UnknownUpload, "no such challenge on this connection");
        };
        let challenge = self.challenges.remove(pos).expect("position is valid");
        let req = &challenge.request;
        let new = NewFile { mode: req.mode, owner: req.owner, mtime: req.mtime };
        if let Some(pfile) = self.meta.any_complete(&req.md5, req.size)? {
            if self.proof_holds(pfile, &challenge, &r.proofs)? {
                if let Some((attr, released)) = self.meta.place_if_complete(user, &req.path, pfile, new)? {
                    self.blobs.remove_all(&released);
                    let released = self.meta.drop_upload(user, &req.path)?;
                    self.blobs.remove_all(&released);
                    tracing::info!(path = %req.path, md5 = %req.md5, "instant upload (ownership proven)");
                    return Ok(self.instant(user, &req.path, attr));
                }
            }
        }
        // No proof, or no such content: a normal upload, indistinguishable from the client's side
        // (into this user's unfinished physical file of that content, if there is one).
        let (pfile, upload_id, released) = match self.meta.own_incomplete(user, &req.md5, req.size)? {
            Some(p) => {
                let (upload_id, released) = self.meta.upsert_upload(user, &req.path, p.id, new)?;
                (p, upload_id, released)
            }
            None => self.meta.new_upload(user, &req.path, &req.md5, req.size, self.chunk_size, new)?,
        };
        self.blobs.remove_all(&released);
        Ok(UploadFileRes::Upload {
            upload_id: upload_id as u64,
            chunk_size: pfile.chunk_size,
            chunk_count: pfile.total_chunks,
        })
    }

    fn proof_holds(&self, pfile: i64, challenge: &Challenge, proofs: &[String]) -> Result<bool> {
        if proofs.len() != challenge.ranges.len() {
            return Ok(false);
        }
        let file = self.blobs.open_read(pfile)?;
        for (range, proof) in challenge.ranges.iter().zip(proofs) {
            if blobs::range_proof(&file, &challenge.nonce, range.offset, range.len)? != *proof {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn query_chunk(&mut self, user: &User, r: QueryChunk) -> Result<QueryChunkRes> {
        if r.indexes.len() > MAX_QUERY_INDEXES {
            return fail(ErrorCode::Invalid, format!("at most {MAX_QUERY_INDEXES} indexes per query"));
        }
        let upload = self.meta.upload(user, r.upload_id)?;
        let pfile = self
            .meta
            .pfile(upload.pfile_id)?
            .ok_or_else(|| WireError::new(ErrorCode::UnknownUpload, "upload is gone"))?;
        if pfile.complete {
            return Ok(QueryChunkRes { needed: Vec::new() });
        }
        let needed = r.indexes.into_iter().filter(|i| *i < pfile.total_chunks && !pfile.has_chunk(*i)).collect();
        Ok(QueryChunkRes { needed })
    }

    fn plan_chunk(&self, user: &User, r: &UploadChunk, payload_len: u64) -> Result<ChunkPlan> {
        let upload = self.meta.upload(user, r.upload_id)?;
        let pfile = self
            .meta
            .pfile(upload.pfile_id)?
            .ok_or_else(|| WireError::new(ErrorCode::UnknownUpload, "upload is gone"))?;
        if r.index >= pfile.total_chunks {
            return fail(
                ErrorCode::Invalid,
                format!("chunk {} out of range (file has {})", r.index, pfile.total_chunks),
            );
        }
        if payload_len != pfile.chunk_len(r.index) {
            return fail(
                ErrorCode::Invalid,
                format!("chunk {} must be {} bytes, not {payload_len}", r.index, pfile.chunk_len(r.index)),
            );
        }
        if pfile.complete || pfile.has_chunk(r.index) {
            return Ok(ChunkPlan::Skip);
        }
        let file = self.blobs.open_for_upload(pfile.id, pfile.size)?;
        self.blobs.claim(&file, r.index as u64 * pfile.chunk_size as u64, payload_len)?;
        Ok(ChunkPlan::Receive { upload, pfile: Box::new(pfile), file })
    }

    fn upload_chunk(
        &mut self,
        conn: &mut Conn,
        user: &User,
        id: u64,
        r: UploadChunk,
        payload_len: u64,
    ) -> Result<(), ConnError> {
        let (upload, pfile, file) = match self.plan_chunk(user, &r, payload_len) {
            Ok(ChunkPlan::Receive { upload, pfile, file }) => (upload, *pfile, file),
            Ok(ChunkPlan::Skip) => {
                conn.discard_payload(payload_len)?;
                return respond::<UploadChunk>(conn, id, Ok(UploadChunkRes { index: r.index, complete: None }));
            }
            Err(e) => {
                conn.discard_payload(payload_len)?;
                return send_error(conn, id, &e);
            }
        };
        let offset = r.index as u64 * pfile.chunk_size as u64;
        if let Err(e) = splice::receive_to_file(conn, &mut self.pipe, &file, offset, payload_len)? {
            return send_error(conn, id, &Error::Io(e));
        }
        let result = self.store_chunk(user, &upload, &pfile, &file, &r, offset, payload_len);
        respond::<UploadChunk>(conn, id, result)
    }

    /// A chunk's bytes have landed: check them, sync them, then record them; the last one finishes the file.
    #[allow(clippy::too_many_arguments)]
    fn store_chunk(
        &mut self,
        user: &User,
        upload: &Upload,
        pfile: &PFile,
        file: &File,
        r: &UploadChunk,
        offset: u64,
        len: u64,
    ) -> Result<UploadChunkRes> {
        // When the file's running hash reaches this chunk, the pass that checks it extends the hash too.
        let mut running = if pfile.hashed_chunks == r.index { restore_hash(pfile) } else { None };
        if blobs::scan(file, offset, len, running.as_mut())? != r.crc32c {
            return fail(ErrorCode::ChecksumMismatch, format!("chunk {} does not match its checksum", r.index));
        }
        if pfile.total_chunks == 1 {
            // The one chunk is the whole file, hashed by that same pass: sealing follows at once, without
            // recording chunk progress in between.
            let hashes = match running {
                Some(running) => running.finish(),
                None => blobs::hash_file(file, pfile.size)?,
            };
            let attr = self.verify_and_place(user, upload, pfile, file, hashes)?;
            return Ok(UploadChunkRes { index: r.index, complete: Some(attr) });
        }
        self.blobs.sync_data(file)?;
        let me = std::process::id();
        let Some(pfile) = self.meta.mark_chunk(pfile.id, r.index, running.map(|h| h.save()), me)? else {
            // Another connection finished this content meanwhile; `UploadFile` again settles it.
            return Ok(UploadChunkRes { index: r.index, complete: None });
        };
        if pfile.complete {
            return Ok(UploadChunkRes { index: r.index, complete: None });
        }
        if pfile.chunks_uploaded < pfile.total_chunks {
            // When this process is the one to move the running hash on, the chunks that came ahead of this
            // one are hashed now.
            if pfile.hash_owner == Some(me) {
                self.advance_hash(pfile, file)?;
            }
            return Ok(UploadChunkRes { index: r.index, complete: None });
        }
        let attr = self.finish(user, upload, &pfile)?;
        Ok(UploadChunkRes { index: r.index, complete: Some(attr) })
    }

    /// Extends a physical file's running hash over the chunks stored right after what it covers, reading them
    /// back from disk, for as long as this process is the one to move it on. Returns the physical file as it
    /// is then (`None` if it is gone).
    fn advance_hash(&mut self, mut pfile: PFile, file: &File) -> Result<Option<PFile>> {
        let me = std::process::id();
        while !pfile.complete && pfile.hashed_chunks < pfile.total_chunks && pfile.has_chunk(pfile.hashed_chunks) {
            let Some(mut running) = restore_hash(&pfile) else { break };
            let from = pfile.hashed_chunks;
            let mut to = from;
            // Several chunks per database write.
            while to < pfile.total_chunks && pfile.has_chunk(to) && to - from < HASH_CHUNKS_PER_SAVE {
                let offset = to as u64 * pfile.chunk_size as u64;
                blobs::scan(file, offset, pfile.chunk_len(to), Some(&mut running))?;
                to += 1;
            }
            match self.meta.advance_hash(pfile.id, from, to, running.save(), me)? {
                None => return Ok(None),
                Some((p, moved)) => {
                    pfile = p;
                    if !moved {
                        break;
                    }
                }
            }
        }
        Ok(Some(pfile))
    }

    /// Every chunk is stored: completes the running md5 and SHA-256 (hashing what it does not cover yet, from
    /// disk), sync, seal, and place the file at its path.
    /// Several connections of one user may finish the same content at once; whoever comes second settles
    /// its upload on the content the first one sealed.
    fn finish(&mut self, user: &User, upload: &Upload, pfile: &PFile) -> Result<Attr> {
        let file = match self.blobs.open_read(pfile.id) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.settle(user, upload),
            Err(e) => return Err(e.into()),
        };
        // Whichever process was moving the running hash on stops at its next save; this one ends it.
        let hashed = match self.meta.take_hash(pfile.id, std::process::id())? {
            Some(taken) => self.advance_hash(taken, &file)?,
            None => None,
        };
        let hashes = match hashed.filter(|p| p.hashed_chunks == p.total_chunks).as_ref().and_then(restore_hash) {
            Some(running) => running.finish(),
            None => blobs::hash_file(&file, pfile.size)?,
        };
        self.verify_and_place(user, upload, pfile, &file, hashes)
    }

    /// Checks the stored bytes' hashes against the declared md5, syncs them, seals the physical file and
    /// places it at the upload's path.
    fn verify_and_place(
        &mut self,
        user: &User,
        upload: &Upload,
        pfile: &PFile,
        file: &File,
        hashes: blobs::Hashes,
    ) -> Result<Attr> {
        let started = std::time::Instant::now();
        if hashes.md5 != pfile.md5 {
            tracing::warn!(path = %upload.path, declared = %pfile.md5, actual = %hashes.md5, "upload does not match its md5; discarded");
            self.meta.discard_pfile(pfile.id)?;
            self.blobs.remove(pfile.id);
            return fail(
                ErrorCode::ChecksumMismatch,
                "the uploaded bytes do not match the file's md5; upload discarded",
            );
        }
        self.blobs.sync_all(file)?;
        let Some((placed, released)) =
            self.meta.seal_and_finish(user, upload, pfile.id, &hashes.md5, &hashes.sha256)?
        else {
            return self.settle(user, upload);
        };
        self.blobs.remove_all(&released);
        let attr = placed?;
        let seal_secs = started.elapsed().as_secs_f64();
        tracing::info!(path = %upload.path, md5 = %pfile.md5, size = pfile.size, seal_secs, "upload complete");
        Ok(attr)
    }

    /// Places an upload whose physical file another connection sealed (the upload now points at the sealed one).
    fn settle(&mut self, user: &User, upload: &Upload) -> Result<Attr> {
        let current = self.meta.upload(user, upload.id as u64)?;
        match self.meta.pfile(current.pfile_id)? {
            Some(p) if p.complete => {
                let (placed, released) = self.meta.finish_upload(user, &current, p.id)?;
                self.blobs.remove_all(&released);
                let attr = placed?;
                tracing::info!(path = %current.path, md5 = %p.md5, "upload complete (sealed by another connection)");
                Ok(attr)
            }
            _ => fail(ErrorCode::UnknownUpload, "the upload was discarded meanwhile"),
        }
    }

    // ---- reading ----

    fn download(&mut self, conn: &mut Conn, user: &User, id: u64, r: Download) -> Result<Flow, ConnError> {
        let opened = self.meta.file_content(user, &r.path).and_then(|(attr, pfile)| {
            let len = attr.size.saturating_sub(r.offset).min(r.len.min(MAX_PAYLOAD) as u64);
            let file = match (pfile, len) {
                (Some(p), 1..) => Some(self.blobs.open_read(p)?),
                _ => None,
            };
            Ok((attr, file, len))
        });
        let (attr, file, len) = match opened {
            Ok(x) => x,
            Err(e) => {
                send_error(conn, id, &e)?;
                return Ok(Flow::Continue);
            }
        };
        let res = DownloadRes { md5: attr.md5.unwrap_or_default(), size: attr.size, offset: r.offset };
        conn.send(&encode_message(Kind::DownloadRes, id, &res, len as u32))?;
        if let Some(file) = file {
            splice::send_from_file(conn, &mut self.pipe, &file, r.offset, len)?;
        }
        Ok(Flow::Continue)
    }

    // ---- attributes ----

    /// `still_wanted`: whether the client still waits (a long truncate stops when it hung up).
    fn set_attr(&mut self, user: &User, r: SetAttr, still_wanted: &dyn Fn() -> bool) -> Result<Attr> {
        if let Some(size) = r.size {
            resize::resize(&mut self.meta, &self.blobs, user, &r.path, size, still_wanted)?;
        }
        self.meta.set_attr(user, &r)
    }

    fn statfs(&self, user: &User) -> Result<StatFsRes> {
        let vfs = nix::sys::statvfs::statvfs(&self.data_dir)?;
        let files = self.meta.node_count(user)?;
        // The reserve uploads leave free is not available to users (as root's reserved blocks on ext4).
        let reserved = self.blobs.reserve().div_ceil(vfs.fragment_size().max(1) as u64);
        Ok(StatFsRes {
            block_size: vfs.fragment_size() as u32,
            blocks: vfs.blocks() as u64,
            blocks_free: vfs.blocks_free() as u64,
            blocks_available: (vfs.blocks_available() as u64).saturating_sub(reserved),
            files: files + vfs.files_free() as u64,
            files_free: vfs.files_free() as u64,
            name_max: MAX_NAME as u32,
        })
    }
}
