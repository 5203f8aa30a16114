//! Physical files on disk: one file per `pfiles` row under `DATA/blobs/xx/ID`, verified by hashing and synced before they count.
//! Architecture Invariant: nothing here touches SQLite; callers order "data synced" before "progress recorded".

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use sha2::Sha256;

pub struct Blobs {
    root: PathBuf,
    durability: Durability,
    /// Bytes of the disk that uploads leave free (see [`Blobs::claim`]).
    reserve: u64,
}

/// The disk space uploads leave free by default: 5% of the data directory's file system, at most 64 MiB.
pub const DEFAULT_RESERVE_MAX: u64 = 64 << 20;

/// What a successful answer promises about the bytes and records behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Synced to disk before the answer: survives a crash of the machine (fsync of data, directory and database).
    Full,
    /// In the operating system's cache before the answer: survives any crash of netdisk's processes, not a power
    /// loss of the machine (then the last changes may be undone, and a file completed just before may read back
    /// wrong: the database and the blobs reach the disk in no set order; fsck finds it).
    Normal,
}

/// Hashes of a whole physical file: md5 (lookup key), SHA-256 (identity) and the proof tag (ownership proofs).
pub type Hashes = netdisk_protocol::ContentHashes;

const READ_BUF: usize = 1 << 20;

impl Blobs {
    pub fn new(data_dir: &Path, durability: Durability) -> Blobs {
        Blobs { root: data_dir.join("blobs"), durability, reserve: 0 }
    }

    /// Uploads will leave `bytes` of the disk free.
    pub fn with_reserve(mut self, bytes: u64) -> Blobs {
        self.reserve = bytes;
        self
    }

    /// Bytes of the disk that uploads leave free.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Bytes of the disk holding the blobs that an unprivileged writer may still use.
    pub fn available(&self) -> io::Result<u64> {
        let vfs = nix::sys::statvfs::statvfs(&self.root)?;
        Ok(vfs.blocks_available() as u64 * vfs.fragment_size() as u64)
    }

    /// A measure of the disk for admissions (`meta::Room`): the bytes available beyond the reserve.
    pub fn room(&self) -> impl Fn() -> io::Result<u64> + '_ {
        move || Ok(self.available()?.saturating_sub(self.reserve))
    }

    /// Claims the disk space of `len` bytes at `offset` of a blob before any byte of them is received, so that a
    /// full disk refuses a chunk at once (ENOSPC) instead of in the middle of its transfer, and so that uploads
    /// never take the last [reserve](Blobs::with_reserve) of the disk: that much stays free for the metadata,
    /// so that a full store can still delete files (an SQLite commit needs room even to delete rows).
    /// The reserve is checked after the space is allocated, so concurrent claims cannot all slip under it; a
    /// refused claim gives its space back. (A claim refused while another connection receives the very same
    /// chunk of the same content punches that one's bytes too: its CRC check or the final md5 check then fails
    /// and the chunk is sent again; nothing wrong is ever sealed.) File systems without `fallocate` skip the claim.
    pub fn claim(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        if len == 0 {
            return Ok(());
        }
        match fallocate(file, FallocateFlags::empty(), offset as i64, len as i64) {
            Ok(()) => {}
            Err(nix::errno::Errno::EOPNOTSUPP) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let available = self.available()?;
        if available >= self.reserve {
            return Ok(());
        }
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if let Err(e) = fallocate(file, punch, offset as i64, len as i64) {
            tracing::warn!(error = %e, "cannot give back the space of a refused chunk");
        }
        tracing::warn!(available, reserve = self.reserve, len, "disk full: refusing to store more bytes");
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }

    /// `fdatasync` when durability asks for it.
    pub fn sync_data(&self, file: &File) -> io::Result<()> {
        match self.durability {
            Durability::Full => file.sync_data(),
            Durability::Normal => Ok(()),
        }
    }

    /// `fsync` when durability asks for it.
    pub fn sync_all(&self, file: &File) -> io::Result<()> {
        match self.durability {
            Durability::Full => file.sync_all(),
            Durability::Normal => Ok(()),
        }
    }

    pub fn path(&self, id: i64) -> PathBuf {
        self.root.join(format!("{:02x}", id & 0xff)).join(id.to_string())
    }

    /// Opens the blob of an unfinished physical file for writing, creating it (sparse, at its final size) on first use.
    pub fn open_for_upload(&self, id: i64, size: u64) -> io::Result<File> {
        let path = self.path(id);
        let dir = path.parent().expect("blob paths have a parent");
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        file.set_len(size)?;
        // The new name must survive a crash before any chunk is recorded as stored in it.
        self.sync_all(&File::open(dir)?)?;
        Ok(file)
    }

    pub fn open_read(&self, id: i64) -> io::Result<File> {
        File::open(self.path(id))
    }

    /// Removes a released blob. A missing one is fine (already removed, or never written).
    pub fn remove(&self, id: i64) {
        match fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(blob = id, error = %e, "cannot remove released blob"),
        }
    }

    pub fn remove_all(&self, ids: &[i64]) {
        for id in ids {
            self.remove(*id);
        }
    }

    /// Every file under `blobs/` named as a blob (`xx/ID`), with its id. Other files are left out (fsck names them).
    pub fn all(&self) -> io::Result<Vec<(i64, PathBuf)>> {
        let mut out = Vec::new();
        for dir in fs::read_dir(&self.root)? {
            let dir = dir?;
            let Some(shard) = dir.file_name().to_str().map(str::to_owned) else { continue };
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(dir.path())? {
                let file = file?;
                if let Some(id) = file.file_name().to_str().and_then(|name| blob_id(&shard, name)) {
                    out.push((id, file.path()));
                }
            }
        }
        Ok(out)
    }
}

/// The physical file a blob's name gives: `xx/ID`, a positive decimal id without leading zeros in the directory
/// named by its low byte in two lowercase hex digits; `None` for any other name.
pub fn blob_id(shard: &str, name: &str) -> Option<i64> {
    let id = name.parse::<i64>().ok().filter(|id| *id > 0 && id.to_string() == name)?;
    (format!("{:02x}", id & 0xff) == shard).then_some(id)
}

/// The default reserve for a data directory: 5% of its file system, at most [`DEFAULT_RESERVE_MAX`].
pub fn default_reserve(data_dir: &Path) -> io::Result<u64> {
    let vfs = nix::sys::statvfs::statvfs(data_dir)?;
    let size = vfs.blocks() as u64 * vfs.fragment_size() as u64;
    Ok((size / 20).min(DEFAULT_RESERVE_MAX))
}

/// An exclusive claim on the bytes of one chunk of a blob, held while they are received: an OFD lock on the range,
/// so two connections (processes) never write the same chunk at once, and the kernel drops it when the file is
/// closed, whatever way the process ends. Whoever holds it decides from the database, after taking it, whether
/// the chunk is still wanted (see `store::upload`).
pub struct ChunkLock {
    file: File,
}

impl ChunkLock {
    /// Locks `len` bytes at `offset` of `file` for writing; gives the file back when another open file holds any of them.
    pub fn try_lock(file: File, offset: u64, len: u64) -> io::Result<Result<ChunkLock, File>> {
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: i64::try_from(offset).map_err(|_| io::Error::other("offset out of range"))?,
            l_len: i64::try_from(len.max(1)).map_err(|_| io::Error::other("length out of range"))?,
            l_pid: 0,
        };
        // SAFETY: `file` is an open descriptor and `lock` a valid flock for F_OFD_SETLK, which only reads it.
        let rc = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_OFD_SETLK, &lock) };
        if rc == 0 {
            return Ok(Ok(ChunkLock { file }));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(Err(file)),
            _ => Err(e),
        }
    }

    /// [`ChunkLock::try_lock`], waiting up to `patience` for the holder (another connection receiving the same
    /// chunk, which normally takes milliseconds) to let go. `None` if it still holds it then.
    pub fn lock_within(mut file: File, offset: u64, len: u64, patience: Duration) -> io::Result<Option<ChunkLock>> {
        let deadline = Instant::now() + patience;
        let mut pause = Duration::from_millis(1);
        loop {
            file = match ChunkLock::try_lock(file, offset, len)? {
                Ok(lock) => return Ok(Some(lock)),
                Err(file) => file,
            };
            if Instant::now() >= deadline {
                return Ok(None);
            }
            // The kernel's blocking wait (F_OFD_SETLKW) takes no deadline without signals: poll instead.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// md5, SHA-256 and proof tag of a physical file's first bytes, extended chunk by chunk as they land and
/// resumable: between chunks (which may come over several connections, so several processes) its state is kept
/// in the database. When it covers the whole file, sealing needs no second pass over the bytes.
pub struct RunningHash {
    md5: Md5,
    /// SHA-256 and the proof tag (a salted SHA-256), fed together on the second thread of [`scan`].
    sha: ShaPair,
}

#[derive(Clone, Default)]
struct ShaPair {
    sha256: Sha256,
    tag: Sha256,
}

impl ShaPair {
    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.tag.update(bytes);
    }
}

impl RunningHash {
    /// A running hash over no bytes yet, its proof tag salted with the store's `proof_salt`.
    pub fn new(proof_salt: &[u8]) -> RunningHash {
        let (md5, sha256, tag) = netdisk_protocol::ContentHasher::new(proof_salt).into_parts();
        RunningHash { md5, sha: ShaPair { sha256, tag } }
    }

    /// The state `save` wrote; `None` if it is not one (also a state saved by an older server, without the tag).
    pub fn restore(state: &[u8]) -> Option<RunningHash> {
        use sha2::digest::common::hazmat::{SerializableState, SerializedState};
        let md5_len = SerializedState::<Md5>::default().len();
        let sha_len = SerializedState::<Sha256>::default().len();
        if state.len() != md5_len + 2 * sha_len {
            return None;
        }
        let (md5, rest) = state.split_at(md5_len);
        let (sha256, tag) = rest.split_at(sha_len);
        Some(RunningHash {
            md5: Md5::deserialize(md5.try_into().ok()?).ok()?,
            sha: ShaPair {
                sha256: Sha256::deserialize(sha256.try_into().ok()?).ok()?,
                tag: Sha256::deserialize(tag.try_into().ok()?).ok()?,
            },
        })
    }

    pub fn save(&self) -> Vec<u8> {
        use sha2::digest::common::hazmat::SerializableState;
        let mut state = self.md5.serialize().to_vec();
        state.extend_from_slice(&self.sha.sha256.serialize());
        state.extend_from_slice(&self.sha.tag.serialize());
        state
    }

    /// Extends the hash over `len` zero bytes, from memory (nothing is read or written): md5 here, SHA-256 and the
    /// proof tag on a second thread. Asks `still_wanted` every few MiB: `Ok(false)` when it said no (the hash is then of no use).
    pub fn zeros(&mut self, len: u64, still_wanted: &dyn Fn() -> bool) -> io::Result<bool> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let zero_block = vec![0u8; READ_BUF];
        let stop_flag = AtomicBool::new(false);
        let (zeros, stop) = (&zero_block, &stop_flag);
        let mut sha = std::mem::take(&mut self.sha);
        std::thread::scope(|scope| {
            let sha_thread = scope.spawn(move || {
                let mut left = len;
                while left > 0 && !stop.load(Ordering::Relaxed) {
                    let n = left.min(zeros.len() as u64);
                    sha.update(&zeros[..n as usize]);
                    left -= n;
                }
                sha
            });
            let mut left = len;
            let mut since_check = 0u64;
            let mut wanted = true;
            while left > 0 {
                let n = left.min(zeros.len() as u64);
                self.md5.update(&zeros[..n as usize]);
                left -= n;
                since_check += n;
                if since_check >= CHECK_EVERY {
                    since_check = 0;
                    if !still_wanted() {
                        wanted = false;
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            self.sha = sha_thread.join().map_err(|_| io::Error::other("the SHA-256 thread panicked"))?;
            Ok(wanted)
        })
    }

    pub fn finish(self) -> Hashes {
        netdisk_protocol::ContentHasher::from_parts(self.md5, self.sha.sha256, self.sha.tag).finish()
    }
}

/// Reads `len` bytes of `file` at `offset` once: returns their CRC-32C (the chunk checksum of the protocol)
/// and feeds them to `running` when given, SHA-256 on a second thread so that the wall time is md5's alone.
/// (A connection process never forks, so a thread here is safe.) Fails if the file ends first.
pub fn scan(file: &File, offset: u64, len: u64, running: Option<&mut RunningHash>) -> io::Result<u32> {
    let Some(running) = running else {
        let mut crc = 0;
        let read = each_block(file, offset, len, |block| crc = netdisk_protocol::chunk_crc_append(crc, block))?;
        return if read == len { Ok(crc) } else { Err(short(offset + read, offset + len)) };
    };
    hash_pass(file, offset, len, running, &mut |_, _| Ok(true))?.ok_or_else(|| io::Error::other("the pass stopped"))
}

/// Bytes of long work (a resized copy, hashing zeros) between two checks that its client still wants it.
const CHECK_EVERY: u64 = 8 << 20;

/// Copies the first `len` bytes of `source` to `dest`, reading them once: the same pass feeds `running` (as
/// [`scan`]). Asks `still_wanted` every few MiB: `Ok(false)` when it said no (the copy is then partial).
pub fn copy_hashed(
    source: &File,
    dest: &File,
    len: u64,
    running: &mut RunningHash,
    still_wanted: &dyn Fn() -> bool,
) -> io::Result<bool> {
    let mut since_check = 0u64;
    let copied = hash_pass(source, 0, len, running, &mut |at, block| {
        dest.write_all_at(block, at)?;
        since_check += block.len() as u64;
        if since_check < CHECK_EVERY {
            return Ok(true);
        }
        since_check = 0;
        Ok(still_wanted())
    })?;
    Ok(copied.is_some())
}

/// The pass of [`scan`] over `len` bytes at `offset`, handing each block (with its offset) to `each` after
/// hashing it; `None` when `each` answered false (stop).
fn hash_pass(
    file: &File,
    offset: u64,
    len: u64,
    running: &mut RunningHash,
    each: &mut dyn FnMut(u64, &[u8]) -> io::Result<bool>,
) -> io::Result<Option<u32>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::sync::Arc<Vec<u8>>>(4);
    let mut sha = std::mem::take(&mut running.sha);
    std::thread::scope(|scope| {
        let sha_thread = scope.spawn(move || {
            for block in rx {
                sha.update(&block[..]);
            }
            sha
        });
        let mut crc = 0;
        let mut done = 0u64;
        let mut failure = None;
        let mut stopped = false;
        while done < len {
            let mut buf = vec![0u8; READ_BUF.min((len - done) as usize)];
            match read_full_at(file, &mut buf, offset + done) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    running.md5.update(&buf);
                    crc = netdisk_protocol::chunk_crc_append(crc, &buf);
                    match each(offset + done, &buf) {
                        Ok(true) => {}
                        Ok(false) => stopped = true,
                        Err(e) => failure = Some(e),
                    }
                    done += n as u64;
                    if stopped || failure.is_some() || tx.send(std::sync::Arc::new(buf)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        running.sha = sha_thread.join().map_err(|_| io::Error::other("the SHA-256 thread panicked"))?;
        match failure {
            Some(e) => Err(e),
            None if stopped => Ok(None),
            None if done != len => Err(short(offset + done, offset + len)),
            None => Ok(Some(crc)),
        }
    })
}

fn short(have: u64, want: u64) -> io::Error {
    io::Error::other(format!("blob has {have} bytes, expected {want}"))
}

/// md5, SHA-256 and proof tag of a whole file of `size` bytes, read back from disk (what was stored, not what
/// was claimed).
pub fn hash_file(file: &File, size: u64, proof_salt: &[u8]) -> io::Result<Hashes> {
    let mut running = RunningHash::new(proof_salt);
    scan(file, 0, size, Some(&mut running))?;
    Ok(running.finish())
}

/// False when the `len` bytes at `offset` are all a hole of the sparse blob: no byte of them was ever written.
/// (A file system that does not track holes reports every byte as data.)
pub fn has_data(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    let start = i64::try_from(offset).map_err(|_| io::Error::other("offset out of range"))?;
    match nix::unistd::lseek(file, start, nix::unistd::Whence::SeekData) {
        Ok(data) => Ok((data as u64) < offset.saturating_add(len)),
        // No data at or after `offset`.
        Err(nix::errno::Errno::ENXIO) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn each_block(file: &File, mut offset: u64, len: u64, mut f: impl FnMut(&[u8])) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_BUF.min(len as usize).max(1)];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = file.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            break;
        }
        f(&buf[..n]);
        offset += n as u64;
        left -= n as u64;
    }
    Ok(len - left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_what_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path(), Durability::Full);
        let f = blobs.open_for_upload(300, 5).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        let h = hash_file(&f, 5, b"salt").unwrap();
        assert_eq!(h.md5, "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(h.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(h, netdisk_protocol::content::content_hashes(b"salt", b"hello"));
        assert!(blobs.path(300).ends_with("2c/300"));
        assert!(hash_file(&f, 6, b"salt").is_err());
        let mut grown = RunningHash::new(b"salt");
        scan(&f, 0, 5, Some(&mut grown)).unwrap();
        assert!(grown.zeros(3 << 20, &|| true).unwrap());
        let mut want = b"hello".to_vec();
        want.resize(5 + (3 << 20), 0);
        assert_eq!(grown.finish(), netdisk_protocol::content::content_hashes(b"salt", &want));
    }

    #[test]
    fn a_claim_allocates_its_range_or_gives_it_back_under_the_reserve() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let allocated = |f: &File| f.metadata().unwrap().blocks() * 512;
        let roomy = Blobs::new(dir.path(), Durability::Normal);
        let f = roomy.open_for_upload(1, 8 << 20).unwrap();
        assert_eq!(allocated(&f), 0, "a new blob is sparse");
        roomy.claim(&f, 1 << 20, 1 << 20).unwrap();
        assert!(allocated(&f) >= 1 << 20, "the claimed range is allocated");
        // A reserve larger than the disk: every claim is refused, and leaves nothing allocated behind.
        let full = Blobs::new(dir.path(), Durability::Normal).with_reserve(u64::MAX);
        let g = full.open_for_upload(2, 8 << 20).unwrap();
        let err = full.claim(&g, 0, 4 << 20).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(allocated(&g), 0, "a refused claim gives its space back");
        full.claim(&g, 0, 0).unwrap();
    }

    #[test]
    fn a_running_hash_saved_between_pieces_equals_the_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path(), Durability::Full);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 999) as u8).collect();
        let f = blobs.open_for_upload(7, data.len() as u64).unwrap();
        f.write_all_at(&data, 0).unwrap();
        let mut state = RunningHash::new(b"s").save();
        for (i, piece) in data.chunks(1 << 20).enumerate() {
            let mut running = RunningHash::restore(&state).unwrap();
            let offset = i as u64 * (1 << 20);
            let crc = scan(&f, offset, piece.len() as u64, Some(&mut running)).unwrap();
            assert_eq!(crc, netdisk_protocol::chunk_crc(piece));
            assert_eq!(scan(&f, offset, piece.len() as u64, None).unwrap(), crc);
            state = running.save();
        }
        let whole = RunningHash::restore(&state).unwrap().finish();
        let direct = hash_file(&f, data.len() as u64, b"s").unwrap();
        assert_eq!(whole.md5, netdisk_protocol::md5_hex(&data));
        assert_eq!(whole, direct);
        assert!(RunningHash::restore(&state[1..]).is_none());
        assert!(scan(&f, data.len() as u64 - 10, 11, None).is_err());
    }

    #[test]
    fn a_chunk_is_locked_by_one_open_file_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path(), Durability::Normal);
        blobs.open_for_upload(9, 3 << 20).unwrap();
        let open = || blobs.open_for_upload(9, 3 << 20).unwrap();
        let first = ChunkLock::try_lock(open(), 1 << 20, 1 << 20).unwrap().expect("a free chunk locks");
        assert!(ChunkLock::try_lock(open(), 1 << 20, 1 << 20).unwrap().is_err(), "the same chunk is held");
        assert!(ChunkLock::try_lock(open(), (1 << 20) + 5, 1).unwrap().is_err(), "any byte of it is held");
        let other = ChunkLock::try_lock(open(), 2 << 20, 1 << 20).unwrap();
        assert!(other.is_ok(), "another chunk is free");
        let patience = Duration::from_millis(20);
        assert!(ChunkLock::lock_within(open(), 1 << 20, 1, patience).unwrap().is_none(), "held all the while");
        drop(first);
        assert!(ChunkLock::lock_within(open(), 1 << 20, 1 << 20, patience).unwrap().is_some(), "closing frees it");
    }

    #[test]
    fn holes_are_told_from_written_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path(), Durability::Normal);
        let f = blobs.open_for_upload(7, 3 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        assert!(has_data(&f, 1 << 20, 1 << 20).unwrap());
        assert!(has_data(&f, 0, 2 << 20).unwrap());
        assert!(!has_data(&f, 2 << 20, 1 << 20).unwrap(), "the unwritten tail is a hole");
        assert!(!has_data(&f, 3 << 20, 4096).unwrap(), "past the end");
    }
}
