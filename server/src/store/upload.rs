//! Uploads: naming content (instant when this user holds it, a challenge or the ordinary upload otherwise), small
//! files sent whole, chunks (L3), the running hash, verification and sealing (L7), placing at the path (L8).
//! Architecture Invariant: a client's bytes land only in an unfinished physical file of that client's own upload,
//! and only in a chunk that is locked for them (`blobs::ChunkLock`) and that the database, read after taking the
//! lock, still says is missing. Sealing needs every chunk recorded, and a chunk is recorded by its lock's holder
//! before the lock goes, so no byte can land in content after it is sealed, whenever a payload comes.
//! Architecture Invariant: verification checks md5 and SHA-256 (the identity) of the bytes on disk against what the
//! uploader declared; a failure discards only that unfinished physical file (the uploader's own), never content
//! that is complete or that anyone else refers to.

use std::fs::File;

use netdisk_protocol::path::components;
use netdisk_protocol::*;

use super::{check_md5, check_sha256, proof, Received, Store};
use crate::blobs::{self, ChunkLock, RunningHash};
use crate::error::{fail, Error, Result};
use crate::meta::{Content, Identity, NewFile, PFile, Room, Upload, User, EMPTY_MD5};

/// Most chunks hashed from disk between two saves of a running hash.
const HASH_CHUNKS_PER_SAVE: u32 = 8;
/// Times a small file is stored when something keeps releasing its physical file before it is sealed.
const RACE_ATTEMPTS: u32 = 3;

/// A small file's bytes being received whole, into a physical file of their own.
pub struct InlineUpload {
    request: UploadFile,
    pfile: PFile,
    file: File,
}

impl InlineUpload {
    /// Where the payload goes (from offset 0).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// What to do with an `UploadChunk`'s payload.
pub enum ChunkPlan {
    /// The chunk is not wanted (stored already, being received by another connection, or the file is complete):
    /// read and drop its bytes.
    Skip,
    Receive(Box<ChunkSink>),
}

/// A chunk whose bytes are to be received, holding its lock.
pub struct ChunkSink {
    upload: Upload,
    pfile: PFile,
    lock: ChunkLock,
    index: u32,
    crc32c: u32,
    offset: u64,
    len: u64,
}

impl ChunkSink {
    pub fn file(&self) -> &File {
        self.lock.file()
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }
}

fn new_file(r: &UploadFile) -> NewFile {
    NewFile { mode: r.mode, owner: r.owner, mtime: r.mtime }
}

fn identity(r: &UploadFile) -> Identity<'_> {
    Identity { md5: &r.md5, sha256: r.sha256.as_deref(), size: r.size }
}

impl Store {
    /// The running hash of a physical file's first `hashed_chunks` chunks (a fresh one before any).
    fn restore_hash(&self, pfile: &PFile) -> Option<RunningHash> {
        match &pfile.hash_state {
            Some(state) => RunningHash::restore(state),
            None if pfile.hashed_chunks == 0 => Some(RunningHash::new(&self.proof_salt)),
            None => None,
        }
    }

    /// The answer for content now at `path`, with its directory as it is after the change.
    fn instant(&self, user: &User, path: &str, attr: Attr) -> UploadFileRes {
        UploadFileRes::Instant { attr, dir: self.meta.parent_attr(user, path) }
    }

    /// Places a complete physical file this user may have at `path`, forgetting an unfinished upload to it.
    /// `None` when that content was released meanwhile.
    fn place_instant(&mut self, user: &User, r: &UploadFile, pfile: i64) -> Result<Option<UploadFileRes>> {
        let Some((attr, released)) = self.meta.place_if_complete(user, &r.path, pfile, new_file(r))? else {
            return Ok(None);
        };
        self.release(released);
        let released = self.meta.drop_upload(user, &r.path)?;
        self.release(released);
        Ok(Some(self.instant(user, &r.path, attr)))
    }

    /// What every `UploadFile` must be before anything is looked up: a size a file may have, well-formed hashes and
    /// path, and a path that can hold file content.
    fn check_upload(&self, user: &User, r: &UploadFile) -> Result<()> {
        super::check_file_size(r.size)?;
        crate::meta::check_chunk_count(r.size, self.chunk_size)?;
        check_md5(&r.md5)?;
        check_sha256(r.sha256.as_deref())?;
        components(&r.path)?;
        self.meta.check_file_target(user, &r.path)
    }

    pub fn upload_file(&mut self, user: &User, r: UploadFile) -> Result<UploadFileRes> {
        self.check_upload(user, &r)?;
        self.meta.check_quota(user, &r.path, r.size)?;
        if r.size == 0 {
            if r.md5 != EMPTY_MD5 || r.sha256.as_deref().is_some_and(|s| s != EMPTY_SHA256) {
                return fail(ErrorCode::ChecksumMismatch, "an empty file's md5 is d41d8cd98f00b204e9800998ecf8427e");
            }
            let empty = Content { pfile_id: None, size: 0 };
            let (attr, released) = self.meta.set_content(user, &r.path, empty, new_file(&r))?;
            self.release(released);
            return Ok(self.instant(user, &r.path, attr));
        }
        // Within one user, the identity (or md5 and size, when it is unambiguous) is enough: the user holds it.
        if let Some(pfile) = self.meta.own_complete(user, identity(&r))? {
            if let Some(answer) = self.place_instant(user, &r, pfile)? {
                tracing::info!(path = %r.path, md5 = %r.md5, "instant upload (own content)");
                return Ok(answer);
            }
        }
        let Some(sha256) = r.sha256.clone() else {
            return fail(ErrorCode::Invalid, "new content must be named by its sha256 too");
        };
        // The user's own unfinished upload of this content: resume it (L7: exists but incomplete -> upload).
        // One without a single stored chunk is offered the instant path again instead: meanwhile the content may
        // have become complete elsewhere.
        let own = self.meta.own_incomplete(user, identity(&r))?;
        let resumed = match own.filter(|p| p.chunks_uploaded > 0) {
            Some(pfile) => self.meta.upsert_upload(user, &r.path, &pfile, new_file(&r))?.map(|bound| (pfile, bound)),
            None => None,
        };
        if let Some((pfile, (upload_id, released))) = resumed {
            self.release(released);
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
        // Anything else gets a challenge, whether or not another user holds the content, so the answer reveals
        // nothing; unless this user had one for this content lately: then the ordinary upload, whoever holds it.
        let until = crate::meta::now().sec.saturating_add(proof::PROOF_BLOCK_SECS);
        if self.meta.take_proof_attempt(user, &sha256, r.size, until, proof::MAX_PROOF_BLOCKS)? {
            return Ok(self.challenges.issue(r));
        }
        self.ordinary_upload(user, &r)
    }

    pub fn prove_ownership(&mut self, user: &User, r: ProveOwnership) -> Result<UploadFileRes> {
        let Some(challenge) = self.challenges.take(r.challenge_id) else {
            return fail(ErrorCode::UnknownUpload, "no such challenge on this connection");
        };
        let req = &challenge.request;
        let sha256 = req.sha256.as_deref().unwrap_or_default();
        let held = self.meta.provable(sha256, req.size)?.filter(|p| p.md5 == req.md5);
        if proof::proof_is_right(held.as_ref().map(|p| p.proof_tag.as_str()), &challenge.nonce, &r.proof) {
            let pfile = held.map_or(0, |p| p.pfile_id);
            if let Some(answer) = self.place_instant(user, req, pfile)? {
                self.meta.proof_passed(user, sha256, req.size)?;
                tracing::info!(path = %req.path, md5 = %req.md5, "instant upload (ownership proven)");
                return Ok(answer);
            }
        }
        // No proof, or no such content: a normal upload, indistinguishable from the client's side.
        self.ordinary_upload(user, req)
    }

    /// An upload that receives every byte: into this user's unfinished physical file of that content, if
    /// there is one, else a new one.
    fn ordinary_upload(&mut self, user: &User, req: &UploadFile) -> Result<UploadFileRes> {
        let new = new_file(req);
        self.expire_some()?;
        let resumed = match self.meta.own_incomplete(user, identity(req))? {
            Some(p) => self.meta.upsert_upload(user, &req.path, &p, new)?.map(|(id, released)| (p, id, released)),
            None => None,
        };
        let (pfile, upload_id, released) = match resumed {
            Some(bound) => bound,
            None => {
                let room = self.blobs.room();
                self.meta.new_upload(user, &req.path, identity(req), self.chunk_size, new, &Room(&room))?
            }
        };
        self.release(released);
        Ok(UploadFileRes::Upload {
            upload_id: upload_id as u64,
            chunk_size: pfile.chunk_size,
            chunk_count: pfile.total_chunks,
        })
    }

    pub fn query_chunk(&self, user: &User, r: QueryChunk) -> Result<QueryChunkRes> {
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

    // ---- a small file sent whole ----

    /// Where a small file's `payload_len` bytes, sent whole with their `UploadFile`, are to be received: a physical
    /// file of their own, with its disk space claimed. (Content held already is found by the seal, which then keeps
    /// the copy it has.)
    pub fn begin_inline(&mut self, user: &User, r: UploadFile, payload_len: u32) -> Result<InlineUpload> {
        self.check_upload(user, &r)?;
        if r.size != payload_len as u64 {
            return fail(ErrorCode::Invalid, format!("a file sent whole must be its {} bytes", r.size));
        }
        self.expire_some()?;
        self.new_inline(user, r, None)
    }

    /// A small file's own physical file, admitted and with its disk space claimed; holding `bytes` when given (a
    /// file stored again), else waiting for them. On any failure, nothing of it is left.
    fn new_inline(&mut self, user: &User, r: UploadFile, bytes: Option<&[u8]>) -> Result<InlineUpload> {
        use std::os::unix::fs::FileExt;
        let room = self.blobs.room();
        let pfile = self.meta.new_pfile(user, &r.path, identity(&r), self.chunk_size, &Room(&room))?;
        let stored = (|| {
            let file = self.blobs.open_for_upload(pfile.id, pfile.size)?;
            self.blobs.claim(&file, 0, pfile.size)?;
            if let Some(bytes) = bytes {
                file.write_all_at(bytes, 0)?;
            }
            Ok::<_, std::io::Error>(file)
        })();
        match stored {
            Ok(file) => Ok(InlineUpload { request: r, pfile, file }),
            Err(e) => {
                let released = self.meta.discard_pfile(pfile.id)?;
                self.release(released);
                Err(e.into())
            }
        }
    }

    /// The small file's bytes were received (or not): checked against its md5 and SHA-256, synced, sealed and
    /// placed, in one round trip. Whatever goes wrong, its half-made physical file goes too.
    pub fn land_inline(&mut self, user: &User, inline: InlineUpload, received: Received) -> Result<UploadFileRes> {
        let mut result = match received {
            Received::All => self.seal_inline(user, &inline),
            Received::Failed(e) => Err(Error::Io(e)),
            Received::ConnectionLost => fail(ErrorCode::Io, "the connection ended before the file's bytes"),
        };
        let mut attempt = 1;
        let mut inline = inline;
        while let Err(Error::Race(why)) = result {
            // Its physical file was released before it was sealed (a server starting on the directory reclaims
            // what it finds unbound): the bytes, still in the open file, are stored again, a few times at most.
            let released = self.meta.discard_pfile(inline.pfile.id)?;
            self.release(released);
            if attempt >= RACE_ATTEMPTS {
                return Err(Error::Race(why));
            }
            attempt += 1;
            tracing::debug!(why, attempt, "a small file raced; storing it again");
            inline = self.store_inline_again(user, inline)?;
            result = self.seal_inline(user, &inline);
        }
        match result {
            Ok(attr) => Ok(self.instant(user, &inline.request.path, attr)),
            Err(e) => {
                let released = self.meta.discard_pfile(inline.pfile.id)?;
                self.release(released);
                Err(e)
            }
        }
    }

    /// The bytes of `old` in a new physical file of their own.
    fn store_inline_again(&mut self, user: &User, old: InlineUpload) -> Result<InlineUpload> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; old.pfile.size as usize];
        old.file.read_exact_at(&mut bytes, 0)?;
        self.new_inline(user, old.request, Some(&bytes))
    }

    fn seal_inline(&mut self, user: &User, inline: &InlineUpload) -> Result<Attr> {
        let (r, pfile) = (&inline.request, &inline.pfile);
        let hashes = blobs::hash_file(&inline.file, pfile.size, &self.proof_salt)?;
        if hashes.md5 != r.md5 || r.sha256.as_deref().is_some_and(|s| s != hashes.sha256) {
            return fail(ErrorCode::ChecksumMismatch, "the bytes sent do not match the file's md5 and sha256");
        }
        self.blobs.sync_all(&inline.file)?;
        let (attr, released) = self
            .meta
            .seal_and_place(user, &r.path, pfile.id, &hashes, pfile.size, new_file(r))?
            .ok_or(Error::Race("the stored file vanished meanwhile"))?;
        self.release(released);
        tracing::info!(path = %r.path, md5 = %r.md5, size = pfile.size, "upload complete (sent whole)");
        Ok(attr)
    }

    // ---- chunks ----

    /// Decides whether an `UploadChunk`'s payload is to be received, and where. The chunk's lock is taken first
    /// and the database read after it, so that a chunk another connection recorded, or content sealed or
    /// discarded meanwhile, never takes a byte, however late the payload comes.
    pub fn begin_chunk(&mut self, user: &User, r: &UploadChunk, payload_len: u64) -> Result<ChunkPlan> {
        let upload = self.meta.upload(user, r.upload_id)?;
        let gone = || WireError::new(ErrorCode::UnknownUpload, "upload is gone");
        let pfile = self.meta.pfile(upload.pfile_id)?.ok_or_else(gone)?;
        if r.index >= pfile.total_chunks {
            return fail(
                ErrorCode::Invalid,
                format!("chunk {} out of range (file has {})", r.index, pfile.total_chunks),
            );
        }
        let len = pfile.chunk_len(r.index);
        if payload_len != len {
            return fail(ErrorCode::Invalid, format!("chunk {} must be {len} bytes, not {payload_len}", r.index));
        }
        if pfile.complete || pfile.has_chunk(r.index) {
            return Ok(ChunkPlan::Skip);
        }
        let offset = r.index as u64 * pfile.chunk_size as u64;
        let file = self.blobs.open_for_upload(pfile.id, pfile.size)?;
        // Another connection (of this user: an unfinished file is one user's) receiving the same chunk normally
        // ends in milliseconds; waiting for it means the answer here tells the truth about the chunk.
        let Some(lock) = ChunkLock::lock_within(file, offset, len, self.lock_patience)? else {
            // Another connection is still receiving this very chunk.
            return Ok(ChunkPlan::Skip);
        };
        let Some(pfile) = self.meta.pfile(pfile.id)? else {
            // Released meanwhile: the blob this opened (maybe creating it again) belongs to no row.
            self.blobs.remove(upload.pfile_id);
            return Err(gone().into());
        };
        if pfile.complete || pfile.has_chunk(r.index) {
            return Ok(ChunkPlan::Skip);
        }
        self.blobs.claim(lock.file(), offset, len)?;
        Ok(ChunkPlan::Receive(Box::new(ChunkSink {
            upload,
            pfile,
            lock,
            index: r.index,
            crc32c: r.crc32c,
            offset,
            len,
        })))
    }

    /// A chunk's bytes were received (or not): check them, sync them, then record them; the last one finishes
    /// the file. The chunk's lock is held until this returns.
    pub fn land_chunk(&mut self, user: &User, sink: Box<ChunkSink>, received: Received) -> Result<UploadChunkRes> {
        match received {
            Received::All => {}
            Received::Failed(e) => return Err(Error::Io(e)),
            Received::ConnectionLost => return fail(ErrorCode::Io, "the connection ended before the chunk's bytes"),
        }
        let ChunkSink { upload, pfile, lock, index, crc32c, offset, len } = *sink;
        let file = lock.file();
        // When the file's running hash reaches this chunk, the pass that checks it extends the hash too.
        let mut running = if pfile.hashed_chunks == index { self.restore_hash(&pfile) } else { None };
        if blobs::scan(file, offset, len, running.as_mut())? != crc32c {
            return fail(ErrorCode::ChecksumMismatch, format!("chunk {index} does not match its checksum"));
        }
        if pfile.total_chunks == 1 {
            // The one chunk is the whole file, hashed by that same pass: sealing follows at once, without
            // recording chunk progress in between.
            let hashes = match running {
                Some(running) => running.finish(),
                None => blobs::hash_file(file, pfile.size, &self.proof_salt)?,
            };
            let attr = self.verify_and_place(user, &upload, &pfile, file, hashes)?;
            return Ok(UploadChunkRes { index, complete: Some(attr) });
        }
        self.blobs.sync_data(file)?;
        let me = std::process::id();
        let Some(pfile) = self.meta.mark_chunk(pfile.id, index, running.map(|h| h.save()), me)? else {
            // Another connection finished this content meanwhile; `UploadFile` again settles it.
            return Ok(UploadChunkRes { index, complete: None });
        };
        if pfile.complete {
            return Ok(UploadChunkRes { index, complete: None });
        }
        if pfile.chunks_uploaded < pfile.total_chunks {
            // When this process is the one to move the running hash on, the chunks that came ahead of this
            // one are hashed now.
            if pfile.hash_owner == Some(me) {
                self.advance_hash(pfile, file)?;
            }
            return Ok(UploadChunkRes { index, complete: None });
        }
        let attr = self.finish(user, &upload, &pfile)?;
        Ok(UploadChunkRes { index, complete: Some(attr) })
    }

    /// Extends a physical file's running hash over the chunks stored right after what it covers, reading them
    /// back from disk, for as long as this process is the one to move it on. Returns the physical file as it
    /// is then (`None` if it is gone).
    fn advance_hash(&mut self, mut pfile: PFile, file: &File) -> Result<Option<PFile>> {
        let me = std::process::id();
        while !pfile.complete && pfile.hashed_chunks < pfile.total_chunks && pfile.has_chunk(pfile.hashed_chunks) {
            let Some(mut running) = self.restore_hash(&pfile) else { break };
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

    /// Every chunk is stored: completes the running hash (hashing what it does not cover yet, from disk), sync,
    /// seal, and place the file at its path.
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
        let restored = hashed.filter(|p| p.hashed_chunks == p.total_chunks).and_then(|p| self.restore_hash(&p));
        let hashes = match restored {
            Some(running) => running.finish(),
            None => blobs::hash_file(&file, pfile.size, &self.proof_salt)?,
        };
        self.verify_and_place(user, upload, pfile, &file, hashes)
    }

    /// Checks the stored bytes' hashes against the declared md5 and SHA-256, syncs them, seals the physical file
    /// and places it at the upload's path.
    fn verify_and_place(
        &mut self,
        user: &User,
        upload: &Upload,
        pfile: &PFile,
        file: &File,
        hashes: blobs::Hashes,
    ) -> Result<Attr> {
        let started = std::time::Instant::now();
        // A physical file made by an older server has no declared SHA-256: its md5 is all there is to check.
        if hashes.md5 != pfile.md5 || pfile.sha256.as_deref().is_some_and(|s| s != hashes.sha256) {
            tracing::warn!(path = %upload.path, declared = %pfile.md5, actual = %hashes.md5, "upload does not match its md5 and sha256; discarded");
            let released = self.meta.discard_pfile(pfile.id)?;
            self.release(released);
            return fail(
                ErrorCode::ChecksumMismatch,
                "the uploaded bytes do not match the file's md5 and sha256; upload discarded",
            );
        }
        self.blobs.sync_all(file)?;
        let Some((placed, released)) = self.meta.seal_and_finish(user, upload, pfile.id, &hashes)? else {
            return self.settle(user, upload);
        };
        self.release(released);
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
                self.release(released);
                let attr = placed?;
                tracing::info!(path = %current.path, md5 = %p.md5, "upload complete (sealed by another connection)");
                Ok(attr)
            }
            _ => fail(ErrorCode::UnknownUpload, "the upload was discarded meanwhile"),
        }
    }
}

/// SHA-256 of zero bytes: the identity of every empty file.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
