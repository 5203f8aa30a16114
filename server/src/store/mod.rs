//! The storage engine: one `Store` per connection process, holding the metadata (`Meta`, SQLite) and the bytes
//! (`Blobs`) and every rule that keeps them consistent: what a path may hold, who may have which content, what
//! a client's bytes may touch, and when a physical file's blob goes.
//! Architecture Invariant: no socket appears in any signature here. Bytes come in through a sink the store hands out
//! (`Incoming`) and go back to it with how their receipt went (`Received`); bytes go out from a file it opens.
//! Architecture Invariant: a blob is removed only here (`Store::release`), and only for ids that a committed
//! transaction reported released: the frame handler cannot forget a removal, nor remove content someone holds.

mod proof;
mod resize;
mod upload;

pub use resize::check_file_size;

use std::fs::File;
use std::path::PathBuf;

use netdisk_protocol::login::StoredKeys;
use netdisk_protocol::*;

use crate::blobs::{Blobs, Durability};
use crate::error::{fail, Result};
use crate::meta::{Meta, Released, User};
use crate::users;

pub use proof::Random;
pub use upload::{ChunkPlan, ChunkSink, InlineUpload};

/// How the payload bytes of a request reached the file the store handed out.
#[derive(Debug)]
pub enum Received {
    /// Every byte landed.
    All,
    /// Writing them failed (the disk); the connection goes on.
    Failed(std::io::Error),
    /// The connection ended before they all came.
    ConnectionLost,
}

/// What a store is told by the server's command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Bytes per chunk of new uploads.
    pub chunk_size: u32,
    pub durability: Durability,
    /// Bytes of the disk that uploads leave free.
    pub reserve: u64,
    /// How long a chunk waits for another connection receiving the same chunk (see `upload::begin_chunk`).
    pub lock_patience: std::time::Duration,
    /// An unfinished upload that made no progress for this long is reclaimed (`--upload-expiry`).
    pub upload_expiry: std::time::Duration,
}

impl Settings {
    /// Settings for a server whose connections time out after `stall` without progress: a chunk waits at most
    /// half of that (and 10 s) for another connection receiving the same chunk. Unfinished uploads expire after
    /// [`DEFAULT_UPLOAD_EXPIRY`] unless [`Settings::upload_expiry`] says otherwise.
    pub fn new(
        data_dir: PathBuf,
        chunk_size: u32,
        durability: Durability,
        reserve: u64,
        stall: std::time::Duration,
    ) -> Settings {
        let lock_patience = (stall / 2).min(std::time::Duration::from_secs(10));
        Settings { data_dir, chunk_size, durability, reserve, lock_patience, upload_expiry: DEFAULT_UPLOAD_EXPIRY }
    }

    /// The same settings with unfinished uploads expiring after `expiry` without progress.
    pub fn upload_expiry(mut self, expiry: std::time::Duration) -> Settings {
        self.upload_expiry = expiry;
        self
    }
}

/// How long an unfinished upload may make no progress before it is reclaimed, by default: 72 hours.
pub const DEFAULT_UPLOAD_EXPIRY: std::time::Duration = std::time::Duration::from_secs(72 * 3600);

/// Most expired uploads one admission reclaims (the rest wait for the next ones, or the next start).
const EXPIRE_PER_ADMISSION: u32 = 16;

/// The bytes a `Download` answer carries: `len` bytes of `file` from the requested offset.
/// A login between its two steps: who (nobody, for a name nobody has), their keys, and the exchange they sign.
pub struct PendingLogin {
    name: String,
    user: Option<User>,
    keys: StoredKeys,
    message: String,
}

impl PendingLogin {
    /// The name it is for, as the client sent it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

pub struct Outgoing {
    pub res: DownloadRes,
    pub file: Option<File>,
    pub len: u64,
}

pub struct Store {
    meta: Meta,
    blobs: Blobs,
    data_dir: PathBuf,
    chunk_size: u32,
    lock_patience: std::time::Duration,
    upload_expiry: std::time::Duration,
    /// This store's proof salt: proof tags of its content are salted with it.
    proof_salt: Vec<u8>,
    challenges: proof::Challenges,
}

impl Store {
    pub fn new(mut meta: Meta, settings: &Settings) -> Result<Store> {
        meta.set_durability(settings.durability)?;
        let proof_salt = meta.proof_salt()?;
        Ok(Store {
            meta,
            blobs: Blobs::new(&settings.data_dir, settings.durability).with_reserve(settings.reserve),
            data_dir: settings.data_dir.clone(),
            chunk_size: settings.chunk_size,
            lock_patience: settings.lock_patience,
            upload_expiry: settings.upload_expiry,
            proof_salt,
            challenges: proof::Challenges::new(Random::Os),
        })
    }

    /// The same store drawing its challenges and login nonces from `random` (the fuzz target's replayable sessions).
    pub fn with_random(mut self, random: Random) -> Store {
        self.challenges = proof::Challenges::new(random);
        self
    }

    /// Removes the blobs of physical files a committed transaction released.
    fn release(&self, released: Released) {
        self.blobs.remove_all(&released);
    }

    /// Reclaims a few unfinished uploads that made no progress for longer than the expiry, before an admission:
    /// their blobs are gone before it measures the disk, so the space they held counts as free for it.
    fn expire_some(&mut self) -> Result<()> {
        let cutoff = crate::meta::now().sec.saturating_sub(self.upload_expiry.as_secs() as i64);
        let (released, written) = self.meta.expire_uploads(cutoff, Some(EXPIRE_PER_ADMISSION))?;
        if !released.is_empty() {
            tracing::info!(uploads = released.len(), written, "reclaimed unfinished uploads past their expiry");
            self.release(released);
        }
        Ok(())
    }

    // ---- users ----

    /// The first step of a login (`netdisk_protocol::login`): the salt and cost of `r.user`'s password and a fresh
    /// nonce. A name nobody has gets the same shape of answer (a salt derived from the name), and a login that can
    /// only fail.
    pub fn hello(&mut self, r: &Hello) -> Result<(PendingLogin, HelloRes)> {
        if !is_sha256_hex(&r.client_nonce) {
            return fail(ErrorCode::Invalid, "the client nonce is not 64 hex digits");
        }
        let found = self.meta.user(&r.user)?;
        let (user, secret) = match found.map(|(user, stored)| (user, users::Secret::decode(&stored))) {
            Some((user, Some(secret))) => (Some(user), secret),
            _ => (None, users::unknown_user(&self.proof_salt, &r.user)),
        };
        let res = HelloRes { salt: hex::encode(&secret.salt), kdf: secret.kdf, server_nonce: self.challenges.nonce() };
        let message = login::auth_message(&r.user, &r.client_nonce, &res.salt, &res.kdf, &res.server_nonce);
        Ok((PendingLogin { name: r.user.clone(), user, keys: secret.keys, message }, res))
    }

    /// The second step: the user, and what to answer, if the proof is right; `None` otherwise.
    pub fn login(&self, pending: PendingLogin, r: &Login) -> Result<Option<(User, LoginRes)>> {
        let right = login::proof_is_right(&pending.keys, &pending.message, &r.proof);
        let Some(user) = pending.user.filter(|_| right) else { return Ok(None) };
        let res = LoginRes {
            root: self.meta.attr(user.root)?,
            chunk_size: self.chunk_size,
            proof_salt: hex::encode(&self.proof_salt),
            server_signature: login::server_signature(&pending.keys, &pending.message),
        };
        Ok(Some((user, res)))
    }

    /// Refuses a request of a session whose user was removed or changed password since it logged in.
    pub fn check_session(&self, user: &User) -> Result<()> {
        if self.meta.session_valid(user)? {
            return Ok(());
        }
        tracing::warn!(user = %user.name, "session ended: the user was removed or their password changed");
        fail(ErrorCode::NotLoggedIn, "session ended: the user was removed or their password changed; log in again")
    }

    // ---- reading the tree ----

    pub fn stat(&self, user: &User, path: &str) -> Result<Attr> {
        self.meta.stat(user, path)
    }

    pub fn list(&self, user: &User, r: &GetDir) -> Result<GetDirRes> {
        let (dir, entries, more) = self.meta.list(user, &r.path, r.after.as_deref(), r.limit.clamp(1, MAX_DIR_PAGE))?;
        Ok(GetDirRes { dir, entries, more })
    }

    pub fn readlink(&self, user: &User, path: &str) -> Result<String> {
        self.meta.readlink(user, path)
    }

    /// Opens what a `Download` sends: at most `len` (and [`MAX_PAYLOAD`]) bytes of the file from `offset`.
    pub fn open_download(&self, user: &User, r: &Download) -> Result<Outgoing> {
        let (attr, pfile) = self.meta.file_content(user, &r.path)?;
        let len = attr.size.saturating_sub(r.offset).min(r.len.min(MAX_PAYLOAD) as u64);
        let file = match (pfile, len) {
            (Some(p), 1..) => Some(self.blobs.open_read(p)?),
            _ => None,
        };
        let res = DownloadRes { md5: attr.md5.unwrap_or_default(), size: attr.size, offset: r.offset };
        Ok(Outgoing { res, file, len })
    }

    /// The disk as the user sees it: the server's file system, less the upload reserve, and within their quota
    /// when they have one (`df` on the mount then shows the quota's size and room, as quota-aware network file
    /// systems do).
    pub fn statfs(&self, user: &User) -> Result<StatFsRes> {
        let vfs = nix::sys::statvfs::statvfs(&self.data_dir)?;
        let block = (vfs.fragment_size() as u64).max(1);
        let files = self.meta.node_count(user)?;
        // The reserve uploads leave free is not available to users (as root's reserved blocks on ext4).
        let reserved = self.blobs.reserve().div_ceil(block);
        let mut res = StatFsRes {
            block_size: block as u32,
            blocks: vfs.blocks() as u64,
            blocks_free: vfs.blocks_free() as u64,
            blocks_available: (vfs.blocks_available() as u64).saturating_sub(reserved),
            files: files + vfs.files_free() as u64,
            files_free: vfs.files_free() as u64,
            name_max: MAX_NAME as u32,
        };
        if let Some((quota, used)) = self.meta.quota_usage(user)? {
            let room = quota.saturating_sub(used) / block;
            res.blocks = res.blocks.min(quota.div_ceil(block));
            res.blocks_free = res.blocks_free.min(room);
            res.blocks_available = res.blocks_available.min(room);
        }
        Ok(res)
    }

    // ---- changing the tree ----

    pub fn mkdir(&mut self, user: &User, r: &Mkdir) -> Result<MkdirRes> {
        let attr = self.meta.mkdir(user, &r.path, r.mode, r.owner)?;
        Ok(MkdirRes { attr, dir: self.meta.parent_attr(user, &r.path) })
    }

    pub fn rmdir(&mut self, user: &User, path: &str) -> Result<RmdirRes> {
        self.meta.rmdir(user, path)?;
        Ok(RmdirRes { dir: self.meta.parent_attr(user, path) })
    }

    pub fn unlink(&mut self, user: &User, path: &str) -> Result<DeleteFileRes> {
        let released = self.meta.unlink(user, path)?;
        self.release(released);
        Ok(DeleteFileRes { dir: self.meta.parent_attr(user, path) })
    }

    pub fn rename(&mut self, user: &User, r: &Rename) -> Result<RenameRes> {
        let released = self.meta.rename(user, &r.from, &r.to, r.noreplace)?;
        self.release(released);
        Ok(RenameRes {})
    }

    pub fn symlink(&mut self, user: &User, r: &Symlink) -> Result<Attr> {
        self.meta.symlink(user, &r.path, &r.target, r.owner)
    }

    pub fn link(&mut self, user: &User, r: &Link) -> Result<Attr> {
        self.meta.link(user, &r.existing, &r.new)
    }

    pub fn mknod(&mut self, user: &User, r: &Mknod) -> Result<Attr> {
        self.meta.mknod(user, &r.path, r.kind, r.mode, r.rdev, r.owner)
    }

    /// Changes attributes; a new size gives the file new content (`resize`). `still_wanted` says whether the
    /// client still waits for the answer: a long resize stops when it hung up, and then changes nothing.
    pub fn set_attr(&mut self, user: &User, r: &SetAttr, still_wanted: &dyn Fn() -> bool) -> Result<Attr> {
        if let Some(size) = r.size {
            self.expire_some()?;
            resize::resize(&mut self.meta, &self.blobs, &self.proof_salt, user, &r.path, size, still_wanted)?;
        }
        self.meta.set_attr(user, r)
    }
}

fn check_md5(md5: &str) -> Result<()> {
    if !is_md5_hex(md5) {
        return fail(ErrorCode::Invalid, "md5 must be 32 lowercase hex digits");
    }
    Ok(())
}

fn check_sha256(sha256: Option<&str>) -> Result<()> {
    match sha256 {
        Some(s) if !is_sha256_hex(s) => fail(ErrorCode::Invalid, "sha256 must be 64 lowercase hex digits"),
        _ => Ok(()),
    }
}
