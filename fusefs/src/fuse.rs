//! fuser glue only: the one file that knows fuser's request and reply types. Each request becomes a task on the
//! tokio runtime that calls `fs.rs` and answers exactly once, with the attributes or the errno of `error.rs`.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use netdisk_protocol::{Attr, NodeKind, Owner, SetTime, Timespec};
use tokio::runtime::Handle;

use crate::error::FsError;
use crate::fs::{Changes, NetFs};

/// Largest read and write the kernel sends in one request.
const MAX_IO: u32 = 1 << 20;

pub struct FuseFs {
    fs: Arc<NetFs>,
    rt: Handle,
    view: View,
}

/// How attributes are shown to the kernel.
#[derive(Clone, Copy)]
struct View {
    /// How long the kernel may keep them.
    ttl: Duration,
    /// `-o uid=,gid=`: the owner shown for every file instead of the stored one.
    uid: Option<u32>,
    gid: Option<u32>,
}

impl FuseFs {
    pub fn new(fs: Arc<NetFs>, rt: Handle, ttl: Duration, owner: (Option<u32>, Option<u32>)) -> FuseFs {
        FuseFs { fs, rt, view: View { ttl, uid: owner.0, gid: owner.1 } }
    }
}

/// The kernel's caches, reached through fuser's notifier.
pub struct KernelNotifier(pub fuser::Notifier);

impl crate::fs::KernelCache for KernelNotifier {
    fn attrs_stale(&self, ino: u64) {
        if let Err(e) = self.0.inval_inode(INodeNo(ino), -1, 0) {
            tracing::debug!(ino, error = %e, "attribute invalidation not delivered");
        }
    }

    fn entry_gone(&self, parent: u64, name: &str) {
        if let Err(e) = self.0.inval_entry(INodeNo(parent), OsStr::new(name)) {
            tracing::debug!(parent, name, error = %e, "entry invalidation not delivered");
        }
    }
}

fn errno(e: &FsError) -> Errno {
    let n = e.errno();
    // A bad answer was logged where it was found (`client.rs`).
    if n == libc::EIO && !matches!(e, FsError::Protocol(_)) {
        tracing::warn!(error = %e, "request failed");
    }
    Errno::from_i32(n)
}

/// An extended attribute's value, or its length when the caller asks with `size` 0 (ERANGE if it does not fit).
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

/// A time from the server as the kernel gets it. Answers are checked at the boundary (`netdisk_protocol::answer`:
/// nanoseconds below a second, any second count); this conversion stays total anyway, as defence in depth for the
/// kernel's side of the mount: nanoseconds past a second are cut to the last one, and a time `SystemTime` cannot
/// hold becomes the epoch, never a panic of the worker thread.
fn system_time(t: Timespec) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    let whole = Duration::from_secs(t.sec.unsigned_abs());
    let at = if t.sec >= 0 { UNIX_EPOCH.checked_add(whole) } else { UNIX_EPOCH.checked_sub(whole) };
    at.and_then(|at| at.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
        Err(e) => {
            let d = e.duration();
            let (sec, nsec) = if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            };
            Timespec { sec, nsec }
        }
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timespec(t)),
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(ino: u64, a: &Attr, view: View) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.ctime),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: view.uid.unwrap_or(a.uid),
        gid: view.gid.unwrap_or(a.gid),
        rdev: a.rdev as u32,
        // cp and friends size their buffers by st_blksize: large requests make a remote file system fast.
        blksize: MAX_IO,
        flags: 0,
    }
}

/// Names that are not UTF-8 cannot be stored (the wire carries UTF-8 paths).
fn name_of(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(Errno::EILSEQ)
}

fn owner(req: &Request) -> Owner {
    Owner { uid: req.uid(), gid: req.gid() }
}

macro_rules! name_or_reply {
    ($name:expr, $reply:ident) => {
        match name_of($name) {
            Ok(n) => n,
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open (handled in the staging file) instead of a separate truncate on the server.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // Not FUSE_WRITEBACK_CACHE: with it the kernel trusts its own size and mtime of regular files over the
        // server's, so a file another client changed would keep a stale size here (tests/mount.rs two_mounts_*).
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        let (fs, view) = (self.fs.clone(), self.view);
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(e) => reply.entry(&view.ttl, &file_attr(e.ino, &e.attr, view), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (fs, view) = (self.fs.clone(), self.view);
        self.rt.spawn(async move {
            match fs.getattr(ino.0).await {
                Ok(e) => reply.attr(&view.ttl, &file_attr(e.ino, &e.attr, view)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = Changes {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        let (fs, view, pid) = (self.fs.clone(), self.view, req.pid());
        self.rt.spawn(async move {
            match fs.setattr(ino.0, changes, pid).await {
                Ok(e) => reply.attr(&view.ttl, &file_attr(e.ino, &e.attr, view)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.readlink(ino.0).await {
                Ok(target) => reply.data(target.as_bytes()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        let kind = match mode & libc::S_IFMT {
            libc::S_IFIFO => NodeKind::Fifo,
            libc::S_IFSOCK => NodeKind::Socket,
            libc::S_IFCHR => NodeKind::CharDevice,
            libc::S_IFBLK => NodeKind::BlockDevice,
            libc::S_IFREG => NodeKind::File,
            _ => return reply.error(Errno::EINVAL),
        };
        let perm = mode & !umask & 0o7777;
        let (fs, view, owner) = (self.fs.clone(), self.view, owner(req));
        self.rt.spawn(async move {
            match fs.mknod(parent.0, &name, kind, perm, rdev as u64, owner).await {
                Ok(e) => reply.entry(&view.ttl, &file_attr(e.ino, &e.attr, view), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        let (fs, view, owner) = (self.fs.clone(), self.view, owner(req));
        self.rt.spawn(async move {
            match fs.mkdir(parent.0, &name, mode & !umask & 0o7777, owner).await {
                Ok(e) => reply.entry(&view.ttl, &file_attr(e.ino, &e.attr, view), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let name = name_or_reply!(link_name, reply);
        let target = name_or_reply!(target.as_os_str(), reply);
        let (fs, view, owner) = (self.fs.clone(), self.view, owner(req));
        self.rt.spawn(async move {
            match fs.symlink(parent.0, &name, &target, owner).await {
                Ok(e) => reply.entry(&view.ttl, &file_attr(e.ino, &e.attr, view), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = name_or_reply!(name, reply);
        let newname = name_or_reply!(newname, reply);
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.rename(parent.0, &name, newparent.0, &newname, noreplace).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let newname = name_or_reply!(newname, reply);
        let (fs, view) = (self.fs.clone(), self.view);
        self.rt.spawn(async move {
            match fs.link(ino.0, newparent.0, &newname).await {
                Ok(e) => reply.entry(&view.ttl, &file_attr(e.ino, &e.attr, view), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let (fs, pid) = (self.fs.clone(), req.pid());
        self.rt.spawn(async move {
            match fs.open(ino.0, write, truncate, pid).await {
                Ok((fh, keep)) => {
                    let flags = if keep { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                    reply.opened(FileHandle(fh), flags)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_or_reply!(name, reply);
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            return reply.error(Errno::EINVAL);
        }
        let (fs, view, owner, pid) = (self.fs.clone(), self.view, owner(req), req.pid());
        self.rt.spawn(async move {
            match fs.create(parent.0, &name, mode & !umask, owner, pid).await {
                Ok((e, fh)) => reply.created(
                    &view.ttl,
                    &file_attr(e.ino, &e.attr, view),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.read(ino.0, fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // A local file write: done on this fuser thread, no copy of the data.
        match self.fs.write(ino.0, offset, data, req.pid()) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let (fs, pid) = (self.fs.clone(), req.pid());
        self.rt.spawn(async move {
            match fs.flush(ino.0, fh.0, pid).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.release(ino.0, fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.fsync(ino.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            let entries = match fs.readdir(ino.0).await {
                Ok(e) => e,
                Err(e) => return reply.error(errno(&e)),
            };
            let dots = [(ino.0, NodeKind::Dir, ".".to_string()), (ino.0, NodeKind::Dir, "..".to_string())];
            for (i, (child, kind, name)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
                if reply.add(INodeNo(child), i as u64 + 1, file_type(kind), &name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.copy_file_range(ino_in.0, offset_in, ino_out.0, offset_out, len).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (fs, pid) = (self.fs.clone(), req.pid());
        self.rt.spawn(async move {
            match fs.fallocate(ino.0, offset, length, mode, pid).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Every directory change is committed on the server before it is answered.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks,
                    s.blocks_free,
                    s.blocks_available,
                    s.files,
                    s.files_free,
                    s.block_size,
                    s.name_max,
                    s.block_size,
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // Only netdisk's own attributes exist; the kernel asks for others (security.capability) on every write:
        // answered at once, without a task.
        let Some(name) = name.to_str().filter(|n| n.starts_with("user.netdisk.")).map(str::to_string) else {
            return reply.error(Errno::NO_XATTR);
        };
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.xattr(ino.0, &name).await {
                Ok(value) => xattr_reply(reply, size, &value),
                Err(e) if e.errno() == libc::ENODATA => reply.error(Errno::NO_XATTR),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        // netdisk's own `user.netdisk.*` attributes are read by name only, never listed: `cp -a`, `rsync -X` and file
        // managers copy every listed attribute onto the copy, where a state or md5 would be stale at once.
        match self.fs.netdisk_xattrs(ino.0) {
            Ok(_) => xattr_reply(reply, size, &[]),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::NO_XATTR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_time_a_server_sends_converts_without_a_panic() {
        let t = |sec, nsec| system_time(Timespec { sec, nsec });
        assert_eq!(t(1, 5), UNIX_EPOCH + Duration::new(1, 5));
        assert_eq!(t(-2, 500), UNIX_EPOCH - Duration::from_secs(2) + Duration::from_nanos(500));
        assert_eq!(timespec(t(-2, 500)), Timespec { sec: -2, nsec: 500 });
        assert_eq!(t(7, u32::MAX), UNIX_EPOCH + Duration::new(7, 999_999_999), "nanoseconds are cut, not carried");
        for sec in [i64::MAX, i64::MIN, i64::MAX - 1, i64::MIN + 1] {
            for nsec in [0, 999_999_999, u32::MAX] {
                let _ = t(sec, nsec);
            }
        }
    }
}
