//! Open files. Writes go to a staging file in the cache directory, shared by every handle of one inode;
//! its hashes are kept up to date while writes are sequential, and the whole file is uploaded on flush, fsync or last close.
//! Architecture Invariant: staged data that failed to upload is kept on disk, never silently dropped.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use netdisk_protocol::{ContentHasher, ContentHashes, Owner, Timespec, MAX_FILE_SIZE};

use crate::running_hash::RunningHash;

/// A file's content being written, in a local file.
pub struct Staging {
    pub file: File,
    pub path: PathBuf,
    pub size: u64,
    /// Changed since the last successful upload.
    pub dirty: bool,
    /// The inode lost its last name: never upload it again.
    pub unlinked: bool,
    /// Hashes of the content as it is written.
    running_hash: RunningHash,
    /// The proof salt of the server the content goes to.
    salt: Arc<[u8]>,
    /// Mode, owner and mtime to upload with (a file created here has them nowhere else yet). The mtime is the
    /// time of the last write or truncate here (or the one `utimensat` set), not the time of the upload.
    pub mode: u32,
    pub owner: Owner,
    pub mtime: Option<Timespec>,
    /// When the content last changed here: the ctime to show until the upload (the server then sets its own).
    pub ctime: Option<Timespec>,
    /// Set after a server-side copy: the content is the server's file with this md5 and size, and the staging
    /// file is still empty; it is downloaded before the first local read or change.
    pub remote_content: Option<(String, u64)>,
    /// Processes (thread group ids) that changed the content: their `close` uploads it and reports its errors.
    writers: HashSet<u32>,
    /// Threads already counted in `writers` (FUSE requests carry thread ids): `/proc` is read once per thread,
    /// not once per write.
    writer_threads: HashSet<u32>,
}

/// The time now, by this machine's clock.
pub fn now() -> Timespec {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
}

/// The process (thread group) a thread belongs to: FUSE requests carry the thread id.
/// A staged file may not grow past what the server stores (`MAX_FILE_SIZE`): EFBIG at the call that asks for it
/// (as a local disk answers), not at the upload when it is closed.
fn check_size(end: u64) -> io::Result<()> {
    if end > MAX_FILE_SIZE {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    Ok(())
}

fn process_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|status| status.lines().find_map(|l| l.strip_prefix("Tgid:").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(tid)
}

impl Staging {
    /// A new, empty staging file in `dir`, for content named with the proof salt `salt`.
    pub fn create(dir: &Path, mode: u32, owner: Owner, salt: Arc<[u8]>) -> io::Result<Staging> {
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
        let path = dir.join(format!("{}.staged", hex::encode(random)));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        let running_hash = RunningHash::new(file.try_clone()?, salt.clone());
        Ok(Staging {
            file,
            path,
            size: 0,
            dirty: false,
            unlinked: false,
            running_hash,
            salt,
            mode,
            owner,
            mtime: None,
            ctime: None,
            remote_content: None,
            writers: HashSet::new(),
            writer_threads: HashSet::new(),
        })
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        check_size(offset.saturating_add(data.len() as u64))?;
        self.file.write_all_at(data, offset)?;
        self.size = self.size.max(offset + data.len() as u64);
        self.changed();
        self.running_hash.written(offset, data);
        Ok(())
    }

    /// Records that the process of thread `tid` (as a FUSE request names it) changed the content.
    pub fn written_by(&mut self, tid: u32) {
        if self.writer_threads.insert(tid) {
            self.writers.insert(process_of(tid));
        }
    }

    /// Whether the process of thread `tid` changed the content (its `close` must upload it).
    pub fn was_written_by(&self, tid: u32) -> bool {
        self.writer_threads.contains(&tid) || self.writers.contains(&process_of(tid))
    }

    pub fn read(&self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let end = self.size.min(offset.saturating_add(len as u64));
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = self.file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn truncate(&mut self, size: u64) -> io::Result<()> {
        check_size(size)?;
        self.file.set_len(size)?;
        self.running_hash.truncated(size);
        self.size = size;
        self.changed();
        Ok(())
    }

    /// `fallocate(2)` on the staging file: allocation (extending the size unless `FALLOC_FL_KEEP_SIZE`),
    /// `FALLOC_FL_PUNCH_HOLE` or `FALLOC_FL_ZERO_RANGE` (zeros in place). A hole uploads as zeros.
    pub fn fallocate(&mut self, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        let os_error = io::Error::from_raw_os_error;
        let end = offset.checked_add(len).filter(|&e| e <= MAX_FILE_SIZE).ok_or(os_error(libc::EFBIG))?;
        let flags = nix::fcntl::FallocateFlags::from_bits(mode).ok_or(os_error(libc::EOPNOTSUPP))?;
        nix::fcntl::fallocate(&self.file, flags, offset as i64, len as i64)?;
        let grows = mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > self.size;
        let zeroed = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 && offset < self.size;
        if grows {
            self.size = end;
        }
        if grows || zeroed {
            // Bytes changed without a write: the running hash cannot follow, the upload hashes the file.
            self.running_hash.forget();
            self.changed();
        }
        Ok(())
    }

    /// The content changed now: mtime and ctime follow, as on a local file system.
    fn changed(&mut self) {
        let t = now();
        self.dirty = true;
        self.mtime = Some(t);
        self.ctime = Some(t);
    }

    /// The hashes of the staged content (md5, SHA-256, proof tag): from the running hash when writes were
    /// sequential, else by reading it back.
    pub fn hashes(&mut self) -> io::Result<ContentHashes> {
        if let Some(hashes) = self.running_hash.digest(self.size) {
            return Ok(hashes);
        }
        let mut h = ContentHasher::new(&self.salt);
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0;
        while offset < self.size {
            let want = buf.len().min((self.size - offset) as usize);
            let n = self.file.read_at(&mut buf[..want], offset)?;
            if n == 0 {
                return Err(io::Error::other("staging file shorter than its size"));
            }
            h.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(h.finish())
    }

    /// Bytes of `[offset, offset + len)`.
    pub fn range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Removes the staging file (after a successful upload, or when the content is abandoned).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub type SharedStaging = Arc<tokio::sync::Mutex<Staging>>;

/// An open file handle.
pub struct Handle {
    pub ino: u64,
    pub writable: bool,
    /// Content read through this handle (md5 at open, refreshed if the server's changed).
    pub md5: Option<String>,
    pub size: u64,
    /// Where the last read ended, to detect sequential reading for readahead.
    pub last_read_end: u64,
}

#[derive(Default)]
pub struct OpenFiles {
    handles: HashMap<u64, Handle>,
    stagings: HashMap<u64, (SharedStaging, usize)>,
    next_fh: u64,
}

impl OpenFiles {
    pub fn add(&mut self, handle: Handle, staging: Option<SharedStaging>) -> u64 {
        self.next_fh += 1;
        let ino = handle.ino;
        if let Some(staging) = staging {
            self.stagings.entry(ino).or_insert_with(|| (staging, 0)).1 += 1;
        }
        self.handles.insert(self.next_fh, handle);
        self.next_fh
    }

    pub fn handle(&self, fh: u64) -> Option<&Handle> {
        self.handles.get(&fh)
    }

    pub fn handle_mut(&mut self, fh: u64) -> Option<&mut Handle> {
        self.handles.get_mut(&fh)
    }

    /// Inodes with a staging file (open for writing).
    pub fn inodes_staged(&self) -> Vec<u64> {
        self.stagings.keys().copied().collect()
    }

    pub fn staging(&self, ino: u64) -> Option<SharedStaging> {
        self.stagings.get(&ino).map(|(s, _)| s.clone())
    }

    /// Closes a handle; returns the inode's staging if this was the last writer of it.
    pub fn remove(&mut self, fh: u64) -> Option<(Handle, Option<SharedStaging>)> {
        let handle = self.handles.remove(&fh)?;
        let mut last = None;
        if handle.writable {
            if let Some((staging, count)) = self.stagings.get_mut(&handle.ino) {
                *count -= 1;
                if *count == 0 {
                    last = Some(staging.clone());
                    self.stagings.remove(&handle.ino);
                }
            }
        }
        Some((handle, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_is_right_for_sequential_and_random_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Staging::create(dir.path(), 0o644, Owner::default(), Arc::from(&b"salt"[..])).unwrap();
        assert_eq!(s.hashes().unwrap().md5, netdisk_protocol::md5_hex(b""));
        s.write(0, b"hello ").unwrap();
        s.write(6, b"world").unwrap();
        assert!(s.running_hash.digest(s.size).is_some());
        assert_eq!(s.hashes().unwrap().md5, netdisk_protocol::md5_hex(b"hello world"));
        // Out of order (as write-back may deliver): still hashed as it goes.
        s.write(16, b"!").unwrap();
        s.write(11, b"12345").unwrap();
        assert!(s.running_hash.digest(s.size).is_some());
        assert_eq!(s.hashes().unwrap().md5, netdisk_protocol::md5_hex(b"hello world12345!"));
        s.truncate(11).unwrap();
        s.write(0, b"J").unwrap();
        assert!(s.running_hash.digest(s.size).is_none());
        assert_eq!(s.hashes().unwrap().md5, netdisk_protocol::md5_hex(b"Jello world"));
        s.truncate(5).unwrap();
        assert_eq!(s.hashes().unwrap().md5, netdisk_protocol::md5_hex(b"Jello"));
        assert_eq!(s.read(1, 100).unwrap(), b"ello");
        s.discard();
        assert!(!s.path.exists());
    }

    #[test]
    fn a_staged_file_stops_at_the_largest_file() {
        // On tmpfs (whose own limit is 8 EiB) when there is one, so that the local file system does not decide.
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let mut s = Staging::create(dir.path(), 0o644, Owner::default(), Arc::from(&b"salt"[..])).unwrap();
        s.write(0, b"abc").unwrap();
        let efbig = |r: io::Result<()>| r.unwrap_err().raw_os_error();
        // pjdfstest ftruncate/12.
        assert_eq!(efbig(s.truncate(999_999_999_999_999_999)), Some(libc::EFBIG));
        assert_eq!(efbig(s.truncate(MAX_FILE_SIZE + 1)), Some(libc::EFBIG));
        assert_eq!(efbig(s.write(MAX_FILE_SIZE, b"x")), Some(libc::EFBIG));
        assert_eq!(efbig(s.fallocate(MAX_FILE_SIZE, 1, 0)), Some(libc::EFBIG));
        assert_eq!((s.size, s.hashes().unwrap().md5), (3, netdisk_protocol::md5_hex(b"abc")));
        s.discard();
    }

    #[test]
    fn fallocate_punches_zeros_and_grows_and_the_md5_follows() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Staging::create(dir.path(), 0o644, Owner::default(), Arc::from(&b"salt"[..])).unwrap();
        let mut want = vec![7u8; 10_000];
        s.write(0, &want).unwrap();
        s.fallocate(4096, 4096, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE).unwrap();
        want[4096..8192].fill(0);
        assert_eq!((s.size, s.read(0, 20_000).unwrap()), (10_000, want.clone()));
        assert_eq!(s.hashes().unwrap().md5, netdisk_protocol::md5_hex(&want));
        s.fallocate(9000, 3000, 0).unwrap();
        want.resize(12_000, 0);
        assert_eq!(s.size, 12_000);
        assert_eq!(s.hashes().unwrap().md5, netdisk_protocol::md5_hex(&want));
        s.fallocate(0, 100_000, libc::FALLOC_FL_KEEP_SIZE).unwrap();
        assert_eq!(s.size, 12_000, "KEEP_SIZE allocates without growing");
        s.discard();
    }
}
