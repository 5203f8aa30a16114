//! Open files. Writes go to a staging file in the cache directory, shared by every handle of one inode;
//! its md5 is kept up to date while writes are sequential, and the whole file is uploaded on flush, fsync or last close.
//! Architecture Invariant: staged data that failed to upload is kept on disk, never silently dropped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use md5::{Digest, Md5};
use netdisk_protocol::{Owner, Timespec};

/// A file's content being written, in a local file.
pub struct Staging {
    pub file: File,
    pub path: PathBuf,
    pub size: u64,
    /// Changed since the last successful upload.
    pub dirty: bool,
    /// The inode lost its last name: never upload it again.
    pub unlinked: bool,
    /// md5 of bytes `0..covered` while no write has gone back into hashed bytes.
    hasher: Option<(Md5, u64)>,
    /// Written ranges beyond `covered` (start -> end), hashed once the gap before them is filled:
    /// the kernel's write-back may deliver pages slightly out of order.
    ahead: BTreeMap<u64, u64>,
    /// Mode, owner and mtime to upload with (a file created here has them nowhere else yet).
    pub mode: u32,
    pub owner: Owner,
    pub mtime: Option<Timespec>,
    /// Set after a server-side copy: the content is the server's file with this md5 and size, and the staging
    /// file is still empty; it is downloaded before the first local read or change.
    pub remote_content: Option<(String, u64)>,
    /// Processes (thread group ids) that changed the content: their `close` uploads it and reports its errors.
    writers: HashSet<u32>,
    /// Threads already counted in `writers` (FUSE requests carry thread ids): `/proc` is read once per thread,
    /// not once per write.
    writer_threads: HashSet<u32>,
}

/// The process (thread group) a thread belongs to: FUSE requests carry the thread id.
fn process_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|status| status.lines().find_map(|l| l.strip_prefix("Tgid:").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(tid)
}

impl Staging {
    /// A new, empty staging file in `dir`.
    pub fn create(dir: &Path, mode: u32, owner: Owner) -> io::Result<Staging> {
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
        let path = dir.join(format!("{}.staged", hex::encode(random)));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(Staging {
            file,
            path,
            size: 0,
            dirty: false,
            unlinked: false,
            hasher: Some((Md5::new(), 0)),
            ahead: BTreeMap::new(),
            mode,
            owner,
            mtime: None,
            remote_content: None,
            writers: HashSet::new(),
            writer_threads: HashSet::new(),
        })
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.size = self.size.max(offset + data.len() as u64);
        self.dirty = true;
        self.mtime = None;
        self.advance_hash(offset, data)
    }

    /// Keeps the running md5 up to date: a write at the hashed end extends it (and absorbs ranges written ahead),
    /// a write ahead of it waits, a write into hashed bytes gives up (the md5 is then computed at upload).
    fn advance_hash(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let Some((hasher, covered)) = self.hasher.as_mut() else { return Ok(()) };
        let end = offset + data.len() as u64;
        if offset < *covered {
            self.hasher = None;
            self.ahead.clear();
            return Ok(());
        }
        if offset > *covered {
            if self.ahead.len() >= MAX_AHEAD {
                self.hasher = None;
                self.ahead.clear();
                return Ok(());
            }
            let slot = self.ahead.entry(offset).or_insert(end);
            *slot = (*slot).max(end);
            return Ok(());
        }
        hasher.update(data);
        *covered = end;
        while let Some((&start, &stop)) = self.ahead.first_key_value() {
            if start > *covered {
                break;
            }
            self.ahead.pop_first();
            if stop > *covered {
                let mut buf = vec![0u8; (stop - *covered) as usize];
                self.file.read_exact_at(&mut buf, *covered)?;
                hasher.update(&buf);
                *covered = stop;
            }
        }
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
        self.file.set_len(size)?;
        if self.hasher.as_ref().is_some_and(|(_, covered)| *covered != size) || !self.ahead.is_empty() {
            self.hasher = if size == 0 { Some((Md5::new(), 0)) } else { None };
            self.ahead.clear();
        }
        self.size = size;
        self.dirty = true;
        Ok(())
    }

    /// The md5 of the staged content: from the running hash when writes were sequential, else by reading it back.
    pub fn md5(&self) -> io::Result<String> {
        if let Some((h, covered)) = &self.hasher {
            if *covered == self.size {
                return Ok(hex::encode(h.clone().finalize()));
            }
        }
        let mut h = Md5::new();
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
        Ok(hex::encode(h.finalize()))
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

/// Most write ranges held ahead of the hashed end before the running md5 gives up.
const MAX_AHEAD: usize = 4096;

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
        let mut s = Staging::create(dir.path(), 0o644, Owner::default()).unwrap();
        assert_eq!(s.md5().unwrap(), netdisk_protocol::md5_hex(b""));
        s.write(0, b"hello ").unwrap();
        s.write(6, b"world").unwrap();
        assert!(s.hasher.is_some());
        assert_eq!(s.md5().unwrap(), netdisk_protocol::md5_hex(b"hello world"));
        // Out of order (as write-back may deliver): still hashed as it goes.
        s.write(16, b"!").unwrap();
        s.write(11, b"12345").unwrap();
        assert!(s.hasher.is_some());
        assert_eq!(s.md5().unwrap(), netdisk_protocol::md5_hex(b"hello world12345!"));
        s.truncate(11).unwrap();
        s.write(0, b"J").unwrap();
        assert!(s.hasher.is_none());
        assert_eq!(s.md5().unwrap(), netdisk_protocol::md5_hex(b"Jello world"));
        s.truncate(5).unwrap();
        assert_eq!(s.md5().unwrap(), netdisk_protocol::md5_hex(b"Jello"));
        assert_eq!(s.read(1, 100).unwrap(), b"ello");
        s.discard();
        assert!(!s.path.exists());
    }
}
