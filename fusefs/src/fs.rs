//! The filesystem logic: every kernel request as an async method returning `Result`, testable without a mount.
//! Architecture Invariant: no fuser type appears here; `fuse.rs` converts.
//! Architecture Invariant (L1): a change is applied to the inode table only after the server confirmed it, and a
//! listing, lookup or stat fetched while a change of the same directory or node was in flight (or that ended
//! since) is not applied to the table: it is fetched again (`changes.rs`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netdisk_protocol::*;

use crate::cache::Cache;
use crate::changes::ChangeLog;
use crate::client::Remote;
use crate::error::{errno, FsError, Result};
use crate::handles::{now, Handle, OpenFiles, SharedStaging, Staging};
use crate::inode::{Inodes, NoPath, ROOT};
use crate::kept::KeptUploads;
use crate::reader::{BlockReader, Content};
use crate::status::{self, Status, UploadBoard};
use crate::upload::Uploader;

/// Attempts to fetch a listing that no concurrent change disturbed.
const LISTING_ATTEMPTS: usize = 5;

pub struct Config {
    /// How long attributes and names are trusted before asking the server again.
    pub ttl: Duration,
    /// `user@server`, for `status`.
    pub user: String,
    pub server: String,
    pub cache_dir: PathBuf,
    pub cache_limit: u64,
    /// Where written files are staged until they are uploaded.
    pub staging_dir: PathBuf,
    /// Chunks of one file uploaded at once.
    pub upload_parallelism: usize,
    /// The server's proof salt (from the login): written content is hashed with it, to answer ownership challenges.
    pub proof_salt: Arc<[u8]>,
}

/// An inode number with the attributes to report for it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub ino: u64,
    pub attr: Attr,
}

/// What `setattr` asks to change.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// The kernel's caches, for changes made behind its back (an upload at close, a name dropped after a failed one).
pub trait KernelCache: Send + Sync {
    /// Drop the cached attributes of `ino` (not its pages): no inode lock is taken, safe from within a request.
    fn attrs_stale(&self, ino: u64);
    /// Drop the cached name `name` in `parent`. The kernel takes the directory's lock: never call it from a
    /// request on that directory, nor while holding anything such a request waits for.
    fn entry_gone(&self, parent: u64, name: &str);
}

pub struct NetFs {
    /// For the few synchronous entry points (`write`) that may need the server.
    rt: tokio::runtime::Handle,
    remote: Arc<Remote>,
    uploader: Uploader,
    inodes: Mutex<Inodes>,
    open: Mutex<OpenFiles>,
    reader: Arc<BlockReader>,
    changes: ChangeLog,
    config: Config,
    uploads: UploadBoard,
    /// Staged bytes whose upload failed at the last close.
    kept: KeptUploads,
    /// Makes the kernel drop its cached attributes of an inode (set by the FUSE glue once mounted).
    kernel: std::sync::OnceLock<Box<dyn KernelCache>>,
}

fn not_found() -> FsError {
    FsError::Errno(libc::ENOENT)
}

/// ENOENT for a name that is gone, ENAMETOOLONG for a path longer than the server takes.
fn no_path(e: NoPath) -> FsError {
    match e {
        NoPath::Gone => not_found(),
        NoPath::TooLong => FsError::Errno(libc::ENAMETOOLONG),
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.len() > MAX_NAME {
        return errno(libc::ENAMETOOLONG);
    }
    Ok(())
}

impl NetFs {
    pub fn new(remote: Remote, root: Attr, cache: Cache, config: Config, rt: tokio::runtime::Handle) -> NetFs {
        let remote = Arc::new(remote);
        NetFs {
            rt,
            uploader: Uploader::new(remote.clone(), config.upload_parallelism),
            reader: Arc::new(BlockReader::new(remote.clone(), cache)),
            remote,
            inodes: Mutex::new(Inodes::new(root)),
            open: Mutex::new(OpenFiles::default()),
            changes: ChangeLog::default(),
            kept: KeptUploads::new(config.staging_dir.clone(), config.server.clone(), config.user.clone()),
            config,
            uploads: UploadBoard::default(),
            kernel: std::sync::OnceLock::new(),
        }
    }

    /// How to tell the kernel about changes it does not see itself (set by the FUSE glue once mounted).
    pub fn on_kernel_cache(&self, kernel: impl KernelCache + 'static) {
        let _ = self.kernel.set(Box::new(kernel));
    }

    fn kernel_attrs_stale(&self, ino: u64) {
        if let Some(kernel) = self.kernel.get() {
            kernel.attrs_stale(ino);
        }
    }

    fn kernel_entry_gone(&self, parent: u64, name: &str) {
        if let Some(kernel) = self.kernel.get() {
            kernel.entry_gone(parent, name);
        }
    }

    fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().expect("inode table lock")
    }

    fn open_files(&self) -> std::sync::MutexGuard<'_, OpenFiles> {
        self.open.lock().expect("open files lock")
    }

    fn path(&self, ino: u64) -> Result<String> {
        self.inodes().path(ino).map_err(no_path)
    }

    fn child_path(&self, parent: u64, name: &str) -> Result<String> {
        check_name(name)?;
        self.inodes().child_path(parent, name).map_err(no_path)
    }

    /// Attributes to report: the server's, with size and mtime of content staged here.
    async fn overlay(&self, ino: u64, mut attr: Attr) -> Attr {
        let staging = self.open_files().staging(ino);
        if let Some(staging) = staging {
            let s = staging.lock().await;
            attr.size = s.size;
            if s.dirty {
                attr.mtime = s.mtime.unwrap_or(attr.mtime);
                attr.ctime = s.ctime.map_or(attr.ctime, |c| c.max(attr.ctime));
            }
            if attr.ino == 0 {
                attr.mode = s.mode;
                attr.uid = s.owner.uid;
                attr.gid = s.owner.gid;
            }
        }
        attr
    }

    async fn entry(&self, ino: u64) -> Result<Entry> {
        let attr = self.inodes().get(ino).ok_or_else(not_found)?.attr.clone();
        Ok(Entry { ino, attr: self.overlay(ino, attr).await })
    }

    /// Records a server answer for `parent/name` and counts a kernel reference.
    async fn remembered(&self, parent: u64, name: &str, attr: Attr) -> Result<Entry> {
        let ino = {
            let mut t = self.inodes();
            let ino = t.remember(parent, name, attr);
            t.looked_up(ino);
            ino
        };
        self.entry(ino).await
    }

    // ---- names ----

    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Entry> {
        let cached = {
            let t = self.inodes();
            t.child(parent, name)
                .and_then(|ino| t.get(ino).map(|n| (ino, n.remote.is_none() || t.fresh(ino, self.config.ttl))))
        };
        if let Some((ino, true)) = cached {
            self.inodes().looked_up(ino);
            return self.entry(ino).await;
        }
        let path = self.child_path(parent, name)?;
        for _ in 0..LISTING_ATTEMPTS {
            let token = self.changes.quiet(parent);
            let answer = self.remote.call(&Stat { path: path.clone() }).await;
            // Checked and applied under the table's lock: a change records its result there before it ends.
            let found = {
                let mut t = self.inodes();
                if !self.changes.still_quiet(parent, token) {
                    continue;
                }
                match answer {
                    Ok(res) => {
                        let ino = t.remember(parent, name, res.attr);
                        t.looked_up(ino);
                        Ok(ino)
                    }
                    Err(e) => {
                        if e.code() == Some(ErrorCode::NotFound)
                            && t.child(parent, name).is_some_and(|ino| t.get(ino).is_some_and(|n| n.remote.is_some()))
                        {
                            t.detach(parent, name);
                        }
                        Err(e)
                    }
                }
            };
            return self.entry(found?).await;
        }
        // Changes in this directory kept racing the lookup (a long upload holds one in flight): take the server's
        // answer as it is.
        let attr = self.remote.call(&Stat { path }).await?.attr;
        self.remembered(parent, name, attr).await
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes().forget(ino, n);
    }

    pub async fn getattr(&self, ino: u64) -> Result<Entry> {
        let (fresh, local) = {
            let t = self.inodes();
            let n = t.get(ino).ok_or_else(not_found)?;
            // Nameless (unlinked, still open): no path to ask about. The root has none either, but "/" is its path.
            (t.fresh(ino, self.config.ttl), n.remote.is_none() || (n.parent == 0 && ino != ROOT))
        };
        if fresh || local {
            return self.entry(ino).await;
        }
        let path = self.path(ino)?;
        let token = self.changes.quiet(ino);
        let attr = match self.remote.call(&Stat { path }).await {
            Ok(res) => res.attr,
            // The root always exists: with the server unreachable, its last known attributes keep the mount point
            // usable (`cd`, a shell's prompt, `ls -d`) while everything below it fails with EIO.
            Err(FsError::Connection(why)) if ino == ROOT => {
                tracing::debug!(%why, "root attributes from before the server went away");
                return self.entry(ino).await;
            }
            Err(e) => return Err(e),
        };
        {
            let mut t = self.inodes();
            if self.changes.still_quiet(ino, token) {
                t.set_attr(ino, attr.clone());
            }
        }
        Ok(Entry { ino, attr: self.overlay(ino, attr).await })
    }

    /// A directory's entries: `(inode, kind, name)`, fetched from the server, plus files that exist only here.
    pub async fn readdir(&self, dir: u64) -> Result<Vec<(u64, NodeKind, String)>> {
        let path = self.path(dir)?;
        for _ in 0..LISTING_ATTEMPTS {
            let token = self.changes.quiet(dir);
            let listing = self.list_all(&path).await?;
            // Checked and applied under the table's lock: a change records its result there before it ends.
            let mut t = self.inodes();
            if self.changes.still_quiet(dir, token) {
                return Ok(Self::listed(&mut t, dir, listing));
            }
        }
        // Changes in this directory kept racing the listing: take the server's answer as it is.
        let listing = self.list_all(&path).await?;
        Ok(Self::listed(&mut self.inodes(), dir, listing))
    }

    /// A listing of `dir` applied to the table, with the files that exist only here.
    fn listed(t: &mut Inodes, dir: u64, listing: Vec<DirEntry>) -> Vec<(u64, NodeKind, String)> {
        t.forget_names_in(dir);
        let mut out: Vec<(u64, NodeKind, String)> =
            listing.into_iter().map(|e| (t.remember(dir, &e.name, e.attr.clone()), e.attr.kind, e.name)).collect();
        for (name, ino) in t.local_children(dir) {
            if !out.iter().any(|(_, _, n)| *n == name) {
                out.push((ino, NodeKind::File, name));
            }
        }
        out
    }

    async fn list_all(&self, path: &str) -> Result<Vec<DirEntry>> {
        let mut all: Vec<DirEntry> = Vec::new();
        loop {
            let after = all.last().map(|e| e.name.clone());
            let page = self.remote.call(&GetDir { path: path.to_string(), after, limit: MAX_DIR_PAGE }).await?;
            all.extend(page.entries);
            if !page.more {
                return Ok(all);
            }
        }
    }

    /// The owner and mode a new node in `parent` gets: in a setgid directory, the directory's group, and a new
    /// subdirectory keeps the setgid bit (as ext4 and every local file system do).
    fn inherited(&self, parent: u64, owner: Owner, mode: u32, dir: bool) -> (Owner, u32) {
        let Some(parent_attr) = self.inodes().get(parent).map(|n| n.attr.clone()) else { return (owner, mode) };
        if parent_attr.mode & libc::S_ISGID == 0 {
            return (owner, mode);
        }
        let owner = Owner { uid: owner.uid, gid: parent_attr.gid };
        (owner, if dir { mode | libc::S_ISGID } else { mode })
    }

    pub async fn mkdir(&self, parent: u64, name: &str, mode: u32, owner: Owner) -> Result<Entry> {
        let (owner, mode) = self.inherited(parent, owner, mode, true);
        let path = self.child_path(parent, name)?;
        let res = {
            let _change = self.changes.begin([parent]);
            self.remote.call(&Mkdir { path, mode, owner }).await?
        };
        self.dir_changed(parent, res.dir);
        self.remembered(parent, name, res.attr).await
    }

    pub async fn symlink(&self, parent: u64, name: &str, target: &str, owner: Owner) -> Result<Entry> {
        let (owner, _) = self.inherited(parent, owner, 0o777, false);
        let path = self.child_path(parent, name)?;
        let attr = {
            let _change = self.changes.begin([parent]);
            self.remote.call(&Symlink { path, target: target.to_string(), owner }).await?.attr
        };
        self.inodes().invalidate(parent);
        self.remembered(parent, name, attr).await
    }

    pub async fn mknod(
        &self,
        parent: u64,
        name: &str,
        kind: NodeKind,
        mode: u32,
        rdev: u64,
        owner: Owner,
    ) -> Result<Entry> {
        let (owner, mode) = self.inherited(parent, owner, mode, false);
        let path = self.child_path(parent, name)?;
        let attr = {
            let _change = self.changes.begin([parent]);
            self.remote.call(&Mknod { path, kind, mode, rdev, owner }).await?.attr
        };
        self.inodes().invalidate(parent);
        self.remembered(parent, name, attr).await
    }

    pub async fn readlink(&self, ino: u64) -> Result<String> {
        let path = self.path(ino)?;
        Ok(self.remote.call(&ReadLink { path }).await?.target)
    }

    /// Marks a nameless inode's staged content as never to be uploaded.
    async fn orphan(&self, ino: Option<u64>) {
        let staging = ino.and_then(|ino| self.open_files().staging(ino));
        if let Some(staging) = staging {
            staging.lock().await.unlinked = true;
        }
    }

    /// The directory of `ino`'s name (0 for a nameless inode).
    fn parent_of(&self, ino: u64) -> u64 {
        self.inodes().get(ino).map_or(0, |n| n.parent)
    }

    fn is_local(&self, ino: u64) -> bool {
        self.inodes().get(ino).is_some_and(|n| n.remote.is_none())
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        let path = self.child_path(parent, name)?;
        let child = self.inodes().child(parent, name);
        // A name that exists only here changes nothing on the server.
        if !child.is_some_and(|ino| self.is_local(ino)) {
            // L1: the name goes from the table only once the server's DeleteFileRes is here.
            let _change = self.changes.begin([parent, child.unwrap_or(0)]);
            let res = self.remote.call(&DeleteFile { path: path.clone() }).await?;
            self.dir_changed(parent, res.dir);
        }
        let gone = self.inodes().detach(parent, name);
        let nameless = self.lost_link(gone);
        self.orphan(nameless).await;
        self.kept.name_gone(&path);
        Ok(())
    }

    /// A change made here altered directory `dir` on the server (its times, its link count): take its
    /// attributes from the answer when the server sent them (and they are still this directory's), else ask
    /// the server next time.
    fn dir_changed(&self, dir: u64, attr: Option<Attr>) {
        let mut t = self.inodes();
        match attr {
            Some(attr) if t.get(dir).is_some_and(|n| n.remote == Some(attr.ino)) => t.set_attr(dir, attr),
            _ => t.invalidate(dir),
        }
    }

    /// A node lost one of its names (unlink, or replaced by a rename). One that still has a name here is
    /// fetched again (link count, ctime); a nameless one can only be reached through open descriptors, so its
    /// attributes are brought up to date here. Returns it when nameless.
    fn lost_link(&self, ino: Option<u64>) -> Option<u64> {
        let ino = ino?;
        let mut t = self.inodes();
        let node = t.get_mut(ino)?;
        if node.parent != 0 {
            t.invalidate(ino);
            return None;
        }
        node.attr.nlink = node.attr.nlink.saturating_sub(1);
        node.attr.ctime = now();
        Some(ino)
    }

    /// Refuses to remove or replace a directory that looks empty to the server but holds a file of this mount still
    /// being written (`ENOTEMPTY`, as on ext4): else that file's upload would find its path gone.
    fn check_no_local_files(&self, parent: u64, name: &str) -> Result<()> {
        let t = self.inodes();
        match t.child(parent, name) {
            Some(dir) if t.holds_local(dir) => errno(libc::ENOTEMPTY),
            _ => Ok(()),
        }
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        self.check_no_local_files(parent, name)?;
        let path = self.child_path(parent, name)?;
        let res = {
            let _change = self.changes.begin([parent, self.inodes().child(parent, name).unwrap_or(0)]);
            self.remote.call(&Rmdir { path }).await?
        };
        self.inodes().detach(parent, name);
        self.dir_changed(parent, res.dir);
        Ok(())
    }

    /// Uploads a file that exists only here, so that the server can rename or link it.
    async fn publish(&self, ino: u64) -> Result<()> {
        if !self.is_local(ino) {
            return Ok(());
        }
        let staging = self.open_files().staging(ino).ok_or_else(not_found)?;
        let mut s = staging.lock().await;
        s.dirty = true;
        self.upload(ino, &mut s).await
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        noreplace: bool,
    ) -> Result<()> {
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        if !noreplace {
            self.check_no_local_files(new_parent, new_name)?;
        }
        let source = self.inodes().child(parent, name);
        if let Some(ino) = source {
            self.publish(ino).await?;
        }
        {
            let _change = self.changes.begin([
                parent,
                new_parent,
                source.unwrap_or(0),
                self.inodes().child(new_parent, new_name).unwrap_or(0),
            ]);
            self.remote.call(&Rename { from, to: to.clone(), noreplace }).await?;
        }
        let replaced = {
            let mut t = self.inodes();
            let moved = t.child(parent, name);
            let replaced = t.child(new_parent, new_name);
            if replaced.is_some() && replaced == moved {
                // Two names of one node: rename(2) does nothing, and neither did the server.
                return Ok(());
            }
            t.rename(parent, name, new_parent, new_name);
            // Both directories' times (and link counts, for a directory moved), the node's ctime.
            for ino in [Some(parent), Some(new_parent), moved].into_iter().flatten() {
                t.invalidate(ino);
            }
            replaced
        };
        if replaced.is_some() {
            self.kept.name_gone(&to);
        }
        let nameless = self.lost_link(replaced);
        self.orphan(nameless).await;
        Ok(())
    }

    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &str) -> Result<Entry> {
        self.publish(ino).await?;
        let existing = self.path(ino)?;
        let new = self.child_path(new_parent, new_name)?;
        let attr = {
            let _change = self.changes.begin([new_parent, ino]);
            self.remote.call(&Link { existing, new }).await?.attr
        };
        self.inodes().invalidate(new_parent);
        self.remembered(new_parent, new_name, attr).await
    }

    // ---- attributes ----

    pub async fn setattr(&self, ino: u64, ch: Changes, pid: u32) -> Result<Entry> {
        let staging = self.open_files().staging(ino);
        let mut size_on_server = ch.size;
        if let Some(staging) = &staging {
            let mut s = staging.lock().await;
            if let Some(size) = ch.size {
                self.load(ino, &mut s).await?;
                s.truncate(size)?;
                s.written_by(pid);
            }
            if let Some(mode) = ch.mode {
                s.mode = mode;
            }
            if let Some(uid) = ch.uid {
                s.owner.uid = uid;
            }
            if let Some(gid) = ch.gid {
                s.owner.gid = gid;
            }
            match ch.mtime {
                Some(SetTime::At(t)) => s.mtime = Some(t),
                Some(SetTime::Now) => s.mtime = Some(now()),
                None => {}
            }
            s.ctime = Some(now());
            size_on_server = None;
        }
        // A truncate of a staged file changes content that reaches the server with the upload: no server call
        // (its times are the staging file's until then).
        let size_only =
            ch.mode.is_none() && ch.uid.is_none() && ch.gid.is_none() && ch.atime.is_none() && ch.mtime.is_none();
        if staging.is_some() && size_only {
            return self.entry(ino).await;
        }
        if self.is_local(ino) {
            // Mode, owner, size and mtime are the staging file's (the upload carries them); atime is kept here.
            if let Some(atime) = ch.atime {
                if let Some(node) = self.inodes().get_mut(ino) {
                    node.attr.atime = match atime {
                        SetTime::At(t) => t,
                        SetTime::Now => now(),
                    };
                }
            }
            return self.entry(ino).await;
        }
        let path = self.path(ino)?;
        let req = SetAttr {
            path,
            mode: ch.mode,
            uid: ch.uid,
            gid: ch.gid,
            size: size_on_server,
            atime: ch.atime,
            mtime: ch.mtime,
        };
        let attr = {
            let _change = self.changes.begin([ino, self.parent_of(ino)]);
            self.remote.call(&req).await?.attr
        };
        self.inodes().set_attr(ino, attr.clone());
        Ok(Entry { ino, attr: self.overlay(ino, attr).await })
    }

    pub async fn statfs(&self) -> Result<StatFsRes> {
        self.remote.call(&StatFs {}).await
    }

    // ---- files ----

    /// Creates a file that exists only here until its first upload (on flush, fsync or close).
    pub async fn create(&self, parent: u64, name: &str, mode: u32, owner: Owner, pid: u32) -> Result<(Entry, u64)> {
        check_name(name)?;
        let (owner, mode) = self.inherited(parent, owner, mode, false);
        // A name the server could never be told about fails now, not at the upload.
        self.child_path(parent, name)?;
        let mut staging =
            Staging::create(&self.config.staging_dir, mode & 0o7777, owner, self.config.proof_salt.clone())?;
        let t = now();
        // The upload carries the creation time as mtime: the file keeps the times it was created with.
        (staging.dirty, staging.mtime, staging.ctime) = (true, Some(t), Some(t));
        staging.written_by(pid);
        let attr = Attr {
            ino: 0,
            kind: NodeKind::File,
            mode: mode & 0o7777,
            uid: owner.uid,
            gid: owner.gid,
            nlink: 1,
            size: 0,
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
            md5: Some(md5_hex(b"")),
        };
        let ino = {
            let mut t = self.inodes();
            let ino = t.add_local(parent, name, attr.clone());
            t.looked_up(ino);
            ino
        };
        let handle = Handle { ino, writable: true, md5: None, size: 0, last_read_end: 0 };
        let fh = self.open_files().add(handle, Some(Arc::new(tokio::sync::Mutex::new(staging))));
        Ok((Entry { ino, attr }, fh))
    }

    /// Opens a file; returns the handle and whether the kernel may keep its cached pages.
    pub async fn open(&self, ino: u64, write: bool, truncate: bool, pid: u32) -> Result<(u64, bool)> {
        let local = self.is_local(ino);
        let attr = if local { self.entry(ino).await?.attr } else { self.revalidate(ino).await? };
        if attr.kind == NodeKind::Dir {
            return errno(libc::EISDIR);
        }
        if !write {
            let keep_cache = {
                let mut t = self.inodes();
                let node = t.get_mut(ino).ok_or_else(not_found)?;
                let keep = node.cached_md5.is_some() && node.cached_md5 == attr.md5;
                node.cached_md5 = attr.md5.clone();
                keep
            };
            let handle = Handle { ino, writable: false, md5: attr.md5.clone(), size: attr.size, last_read_end: 0 };
            return Ok((self.open_files().add(handle, None), keep_cache));
        }
        let existing = self.open_files().staging(ino);
        let staging = match existing {
            Some(s) => {
                if truncate {
                    let mut locked = s.lock().await;
                    locked.remote_content = None;
                    locked.truncate(0)?;
                }
                s
            }
            None => {
                let mut s = Staging::create(
                    &self.config.staging_dir,
                    attr.mode,
                    Owner { uid: attr.uid, gid: attr.gid },
                    self.config.proof_salt.clone(),
                )?;
                if truncate {
                    if attr.size > 0 {
                        // Empty already: this records the change (dirty, mtime and ctime now).
                        s.truncate(0)?;
                    }
                } else if attr.size > 0 {
                    let md5 = attr.md5.as_deref().unwrap_or_default();
                    self.download_into(ino, md5, attr.size, &mut s).await?;
                }
                Arc::new(tokio::sync::Mutex::new(s))
            }
        };
        // The opener's close uploads what is written through this handle.
        staging.lock().await.written_by(pid);
        let handle = Handle { ino, writable: true, md5: None, size: 0, last_read_end: 0 };
        self.inodes().get_mut(ino).ok_or_else(not_found)?.cached_md5 = None;
        Ok((self.open_files().add(handle, Some(staging)), false))
    }

    /// Fresh attributes from the server (close-to-open consistency).
    async fn revalidate(&self, ino: u64) -> Result<Attr> {
        let path = self.path(ino)?;
        let attr = self.remote.call(&Stat { path }).await?.attr;
        self.inodes().set_attr(ino, attr.clone());
        Ok(attr)
    }

    /// Downloads a file's whole content into a staging file (to modify it in place).
    async fn download_into(&self, ino: u64, md5: &str, size: u64, staging: &mut Staging) -> Result<()> {
        let path = self.path(ino)?;
        let mut offset = 0u64;
        while offset < size {
            let (res, bytes) =
                self.remote.call_with_payload(&Download { path: path.clone(), offset, len: MAX_PAYLOAD }, &[]).await?;
            if res.md5 != md5 || bytes.is_empty() {
                return errno(libc::EAGAIN);
            }
            staging.write(offset, &bytes)?;
            offset += bytes.len() as u64;
        }
        // The server's content, with the server's times.
        (staging.dirty, staging.mtime, staging.ctime) = (false, None, None);
        Ok(())
    }

    /// Brings the content of a server-side copy into the staging file, before it is read or changed locally.
    async fn load(&self, ino: u64, staging: &mut Staging) -> Result<()> {
        if let Some((md5, size)) = staging.remote_content.take() {
            let (dirty, mtime, ctime) = (staging.dirty, staging.mtime, staging.ctime);
            if let Err(e) = self.download_into(ino, &md5, size, staging).await {
                staging.remote_content = Some((md5, size));
                return Err(e);
            }
            (staging.dirty, staging.mtime, staging.ctime) = (dirty, mtime, ctime);
        }
        Ok(())
    }

    pub fn write(&self, ino: u64, offset: u64, data: &[u8], pid: u32) -> Result<u32> {
        let staging = self.open_files().staging(ino).ok_or(FsError::Errno(libc::EBADF))?;
        let mut s = staging.blocking_lock();
        if s.remote_content.is_some() {
            // Called on a fuser thread, never on the runtime: blocking on the download is allowed here.
            self.rt.block_on(self.load(ino, &mut s))?;
        }
        s.write(offset, data)?;
        s.written_by(pid);
        Ok(data.len() as u32)
    }

    /// `fallocate(2)` of a file open for writing, done on its staging file (the upload at close sends the bytes).
    pub async fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32, pid: u32) -> Result<()> {
        let staging = self.open_files().staging(ino).ok_or(FsError::Errno(libc::EBADF))?;
        let mut s = staging.lock().await;
        self.load(ino, &mut s).await?;
        s.fallocate(offset, len, mode)?;
        s.written_by(pid);
        Ok(())
    }

    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let staging = self.open_files().staging(ino);
        if let Some(staging) = staging {
            let mut s = staging.lock().await;
            self.load(ino, &mut s).await?;
            return Ok(s.read(offset, size)?);
        }
        let (md5, file_size, sequential) = {
            let mut open = self.open_files();
            let h = open.handle_mut(fh).ok_or(FsError::Errno(libc::EBADF))?;
            let sequential = h.last_read_end == offset;
            h.last_read_end = offset + size as u64;
            (h.md5.clone().unwrap_or_default(), h.size, sequential)
        };
        let path = self.path(ino)?;
        let content = Content { path: &path, md5: &md5, size: file_size };
        self.reader.read(content, offset, size, sequential).await
    }

    /// `close` of a descriptor: uploads staged content if the closing process changed it, so that its
    /// `close` reports a failed upload. A process that only inherited the descriptor (fork, then exec) uploads
    /// nothing: its close says nothing about the writer being done (the last close uploads in any case).
    pub async fn flush(&self, ino: u64, fh: u64, pid: u32) -> Result<()> {
        let writable = self.open_files().handle(fh).is_some_and(|h| h.writable);
        if !writable {
            return Ok(());
        }
        let Some(staging) = self.open_files().staging(ino) else { return Ok(()) };
        let mut s = staging.lock().await;
        if !s.was_written_by(pid) {
            return Ok(());
        }
        self.upload(ino, &mut s).await
    }

    pub async fn release(&self, ino: u64, fh: u64) -> Result<()> {
        let Some((_, last)) = self.open_files().remove(fh) else { return Ok(()) };
        let Some(staging) = last else { return Ok(()) };
        self.finish_staging(ino, &staging).await
    }

    async fn finish_staging(&self, ino: u64, staging: &SharedStaging) -> Result<()> {
        let mut s = staging.lock().await;
        let result = self.upload(ino, &mut s).await;
        match &result {
            Ok(()) => s.discard(),
            Err(e) => {
                // The bytes stay, listed by `status`; the name shows what the server holds.
                let path = self.inodes().path(ino).unwrap_or_default();
                match self.kept.keep(&s.path, &path, s.size, &e.to_string()) {
                    Ok(_) => {
                        tracing::error!(%path, error = %e, kept = %s.path.display(), "upload failed at close; the data is kept (netdisk-mount status)")
                    }
                    Err(k) => {
                        tracing::error!(%path, error = %e, kept = %s.path.display(), record_error = %k, "upload failed at close; the data is kept, unrecorded")
                    }
                }
                self.inodes().invalidate(ino);
                self.kernel_attrs_stale(ino);
            }
        }
        drop(s);
        if self.is_local(ino) {
            // Never on the server (unlinked first, or its upload failed): the name goes too, also from the kernel's
            // cache (else an open of it would reach this nameless inode, whose writes go nowhere).
            let (parent, name) = {
                let mut t = self.inodes();
                let (parent, name) = t.get(ino).map(|n| (n.parent, n.name.clone())).unwrap_or_default();
                if parent != 0 {
                    t.detach(parent, &name);
                }
                (parent, name)
            };
            if parent != 0 {
                self.kernel_entry_gone(parent, &name);
            }
        }
        result
    }

    /// Sends staged content to the server: instant when it holds it, else the chunks it lacks, several at once.
    async fn upload(&self, ino: u64, s: &mut Staging) -> Result<()> {
        if !s.dirty || s.unlinked {
            return Ok(());
        }
        let path = match self.inodes().path(ino) {
            Ok(path) => path,
            // Unlinked here (`unlinked` is set then, so this is not reached): nothing to upload. Nameless otherwise:
            // its directory went away on the server (removed by another client) and the bytes have nowhere to go,
            // which the writer must hear.
            Err(NoPath::Gone) => return Err(not_found()),
            // A directory above was renamed since the file was created: the staged data stays for a retry.
            Err(NoPath::TooLong) => return Err(no_path(NoPath::TooLong)),
        };
        let started = std::time::Instant::now();
        let hashes = tokio::task::block_in_place(|| s.hashes())?;
        let req = UploadFile {
            path: path.clone(),
            size: s.size,
            md5: hashes.md5.clone(),
            sha256: Some(hashes.sha256.clone()),
            mode: s.mode,
            mtime: s.mtime,
            owner: s.owner,
        };
        let _change = self.changes.begin([ino, self.parent_of(ino)]);
        let ticket = self.uploads.start(ino, &path, s.size);
        let (attr, dir) = self.uploader.send(req, hashes.proof_tag.clone(), s, &ticket.sent).await?;
        drop(ticket);
        tracing::debug!(%path, size = s.size, secs = started.elapsed().as_secs_f64(), "uploaded");
        s.dirty = false;
        let created_in = {
            let mut t = self.inodes();
            let created = t.get(ino).is_some_and(|n| n.remote.is_none());
            t.set_remote(ino, attr);
            let parent = t.get_mut(ino).map_or(0, |node| {
                node.cached_md5 = None;
                node.parent
            });
            // A new name on the server: its directory's times changed there.
            (created && parent != 0).then_some(parent)
        };
        if let Some(parent) = created_in {
            self.dir_changed(parent, dir);
        }
        // The kernel did not see the upload (it happens at close): its copies of these attributes are old.
        self.kernel_attrs_stale(ino);
        if let Some(dir) = created_in {
            self.kernel_attrs_stale(dir);
        }
        Ok(())
    }

    /// `copy_file_range` of a whole file into an empty one (what `cp` does): done on the server as an instant
    /// upload of the source's content at the destination, so no byte travels. Anything else gets `EOPNOTSUPP`,
    /// and the kernel copies through reads and writes instead.
    pub async fn copy_file_range(&self, ino_in: u64, off_in: u64, ino_out: u64, off_out: u64, len: u64) -> Result<u32> {
        let unsupported = || errno(libc::EOPNOTSUPP);
        if self.open_files().staging(ino_in).is_some() || self.is_local(ino_in) || ino_in == ino_out {
            return unsupported();
        }
        let source = self.revalidate(ino_in).await?;
        if off_in >= source.size {
            return Ok(0);
        }
        let Some(md5) = source.md5.clone() else { return unsupported() };
        if off_in != 0 || off_out != 0 || len < source.size || source.size > u32::MAX as u64 {
            return unsupported();
        }
        let staging = self.open_files().staging(ino_out).ok_or(FsError::Errno(libc::EBADF))?;
        let mut s = staging.lock().await;
        if s.size != 0 || s.remote_content.is_some() || s.unlinked {
            return unsupported();
        }
        let Ok(path) = self.inodes().path(ino_out) else { return unsupported() };
        // Named by md5 alone: the server places it only if this user holds exactly one content with that md5.
        let req = UploadFile {
            path,
            size: source.size,
            md5: md5.clone(),
            sha256: None,
            mode: s.mode,
            mtime: None,
            owner: s.owner,
        };
        let answer = {
            let _change = self.changes.begin([ino_out, self.parent_of(ino_out)]);
            match self.remote.call(&req).await {
                // Two contents of this user share the md5 (a collision): md5 alone cannot say which.
                Err(e) if e.code() == Some(ErrorCode::Invalid) => return unsupported(),
                other => other?,
            }
        };
        let UploadFileRes::Instant { attr, .. } = answer else {
            // The content is not this user's any more (deleted meanwhile): copy the bytes instead.
            return unsupported();
        };
        s.remote_content = Some((md5, source.size));
        s.size = source.size;
        s.dirty = false;
        self.inodes().set_remote(ino_out, attr);
        tracing::info!(bytes = source.size, "copy_file_range done on the server (no byte sent)");
        Ok(source.size as u32)
    }

    /// Whether the content of `ino` changed here and is not on the server yet (a writer holding the staging
    /// file right now counts as a change).
    fn waiting(&self, ino: u64) -> bool {
        let Some(staging) = self.open_files().staging(ino) else { return false };
        let waiting = staging.try_lock().map_or(true, |s| s.dirty && !s.unlinked);
        waiting
    }

    /// Names of netdisk's own extended attributes that `ino` has now (see `status.rs`): readable by name, not listed.
    pub fn netdisk_xattrs(&self, ino: u64) -> Result<Vec<&'static str>> {
        if ino == ROOT {
            return Ok(vec![status::XATTR_STATUS]);
        }
        // From the inode table, never waiting for a staging file (an upload holds it until the server answers).
        let kind = self.inodes().get(ino).ok_or_else(not_found)?.attr.kind;
        if kind != NodeKind::File {
            return Ok(Vec::new());
        }
        let known_md5 = !self.is_local(ino) && !self.waiting(ino) && self.uploads.progress(ino).is_none();
        Ok(if known_md5 { vec![status::XATTR_STATE, status::XATTR_MD5] } else { vec![status::XATTR_STATE] })
    }

    /// The value of extended attribute `name` of `ino`; ENODATA when it has none.
    pub async fn xattr(&self, ino: u64, name: &str) -> Result<Vec<u8>> {
        if !self.netdisk_xattrs(ino)?.contains(&name) {
            return errno(libc::ENODATA);
        }
        Ok(match name {
            status::XATTR_STATUS => serde_json::to_vec_pretty(&self.status().await).map_err(std::io::Error::other)?,
            status::XATTR_STATE => {
                status::state_text(self.uploads.progress(ino), self.waiting(ino), self.is_local(ino)).into_bytes()
            }
            _ => self.inodes().get(ino).ok_or_else(not_found)?.attr.md5.clone().unwrap_or_default().into_bytes(),
        })
    }

    /// What this mount is doing (`netdisk-mount status`).
    pub async fn status(&self) -> Status {
        let started = std::time::Instant::now();
        let probe = tokio::time::timeout(Duration::from_secs(2), self.remote.call(&StatFs {})).await;
        let (connected, error) = match probe {
            Ok(Ok(_)) => (true, None),
            Ok(Err(e)) => (false, Some(e.to_string())),
            Err(_) => (false, Some("no answer within 2 s".to_string())),
        };
        let uploading: Vec<u64> = self.open_files().inodes_staged();
        let mut waiting: Vec<String> = uploading
            .into_iter()
            .filter(|&ino| self.uploads.progress(ino).is_none() && self.waiting(ino))
            .filter_map(|ino| self.inodes().path(ino).ok())
            .collect();
        waiting.sort();
        Status {
            server: self.config.server.clone(),
            user: self.config.user.clone(),
            connected,
            latency_ms: connected.then(|| started.elapsed().as_secs_f64() * 1000.0),
            error,
            uploads: self.uploads.list(),
            waiting,
            kept: self.kept.list(),
            cache_used: self.reader.cached(),
            cache_limit: self.config.cache_limit,
            cache_dir: self.config.cache_dir.display().to_string(),
        }
    }

    pub async fn fsync(&self, ino: u64) -> Result<()> {
        let Some(staging) = self.open_files().staging(ino) else { return Ok(()) };
        let mut s = staging.lock().await;
        self.upload(ino, &mut s).await
    }
}

#[cfg(test)]
mod tests;
