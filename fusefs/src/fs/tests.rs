//! The fs layer against the in-memory server (`memory.rs`): no kernel, no mount, the real protocol and pool.

use std::sync::Arc;
use std::time::Duration;

use netdisk_protocol::{Kind, NodeKind, Owner};

use super::{Changes, Config, NetFs};
use crate::cache::Cache;
use crate::client::Remote;
use crate::inode::ROOT;
use crate::memory::Memory;

/// A test's time bound: a hung call fails the test instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(20);

struct Fixture {
    fs: Arc<NetFs>,
    server: Memory,
    _dirs: tempfile::TempDir,
}

async fn mounted(ttl: Duration) -> Fixture {
    let server = Memory::new();
    let (remote, login) =
        Remote::with_dialer(server.dialer(), "ann".into(), "pw".into(), 4, Duration::from_secs(5)).await.unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let staging_dir = dirs.path().join("staging");
    std::fs::create_dir(&staging_dir).unwrap();
    let config = Config {
        ttl,
        user: "ann".into(),
        server: "memory".into(),
        cache_dir: dirs.path().into(),
        cache_limit: 64 << 20,
        staging_dir,
        upload_parallelism: 4,
        proof_salt: Arc::from(netdisk_protocol::content::decode_salt(&login.proof_salt).unwrap()),
    };
    let cache = Cache::new(dirs.path().join("blocks"), 64 << 20).unwrap();
    let fs = Arc::new(NetFs::new(remote, login.root, cache, config, tokio::runtime::Handle::current()));
    Fixture { fs, server, _dirs: dirs }
}

fn pid() -> u32 {
    std::process::id()
}

fn errno_of<T: std::fmt::Debug>(result: super::Result<T>) -> i32 {
    result.expect_err("an error").errno()
}

impl Fixture {
    /// `write(2)` runs on a FUSE thread, never on the runtime: here on a blocking thread.
    async fn write(&self, ino: u64, offset: u64, data: &[u8]) {
        let (fs, data) = (self.fs.clone(), data.to_vec());
        tokio::task::spawn_blocking(move || fs.write(ino, offset, &data, pid())).await.unwrap().unwrap();
    }

    /// A new file with these bytes, still open (not uploaded yet): its inode and handle.
    async fn create(&self, parent: u64, name: &str, data: &[u8]) -> (u64, u64) {
        let (entry, fh) = self.fs.create(parent, name, 0o644, Owner::default(), pid()).await.unwrap();
        self.write(entry.ino, 0, data).await;
        (entry.ino, fh)
    }

    async fn read_all(&self, ino: u64) -> Vec<u8> {
        let (fh, _) = self.fs.open(ino, false, false, pid()).await.unwrap();
        let data = self.fs.read(ino, fh, 0, 1 << 20).await.unwrap();
        self.fs.release(ino, fh).await.unwrap();
        data
    }

    async fn names(&self, dir: u64) -> Vec<String> {
        let mut names: Vec<String> = self.fs.readdir(dir).await.unwrap().into_iter().map(|(_, _, n)| n).collect();
        names.sort();
        names
    }
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f).await.expect("the test's deadline passed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listing_fetched_while_a_name_was_removed_never_brings_it_back() {
    bounded(async {
        let f = mounted(Duration::from_secs(60)).await;
        f.server.put("/a", b"x");
        f.server.put("/b", b"y");
        f.fs.lookup(ROOT, "a").await.unwrap();
        // The listing is answered (with "a") before the removal and arrives after it (L1).
        let gate = f.server.hold(Kind::GetDir);
        let fs = f.fs.clone();
        let listing = tokio::spawn(async move { fs.readdir(ROOT).await });
        gate.arrived().await;
        f.fs.unlink(ROOT, "a").await.unwrap();
        gate.release();
        let names: Vec<String> = listing.await.unwrap().unwrap().into_iter().map(|(_, _, n)| n).collect();
        assert_eq!(names, ["b"], "the stale listing was applied");
        assert_eq!(errno_of(f.fs.lookup(ROOT, "a").await), libc::ENOENT);
        assert_eq!(f.names(ROOT).await, ["b"]);
        assert!(!f.server.exists("/a"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncate_of_a_file_being_written_is_staged_and_uploaded_at_close() {
    bounded(async {
        let f = mounted(Duration::from_secs(1)).await;
        let (ino, fh) = f.create(ROOT, "f", b"hello world").await;
        let truncated = Changes { size: Some(5), ..Changes::default() };
        assert_eq!(f.fs.setattr(ino, truncated, pid()).await.unwrap().attr.size, 5);
        assert_eq!(f.fs.getattr(ino).await.unwrap().attr.size, 5);
        assert!(!f.server.exists("/f"), "a file being written exists only here until its close (L8)");
        f.fs.flush(ino, fh, pid()).await.unwrap();
        f.fs.release(ino, fh).await.unwrap();
        assert_eq!(f.server.content("/f").unwrap(), b"hello");
        assert_eq!(f.read_all(ino).await, b"hello");
        // Grown again through a truncate of the closed file: the server does it.
        let grown = Changes { size: Some(8), ..Changes::default() };
        assert_eq!(f.fs.setattr(ino, grown, pid()).await.unwrap().attr.size, 8);
        assert_eq!(f.server.content("/f").unwrap(), b"hello\0\0\0");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_asks_the_server_again_however_fresh_the_attributes() {
    bounded(async {
        // Attributes trusted for a minute; an open still sees another client's new content (close-to-open).
        let f = mounted(Duration::from_secs(60)).await;
        f.server.put("/f", b"one");
        let ino = f.fs.lookup(ROOT, "f").await.unwrap().ino;
        assert_eq!(f.read_all(ino).await, b"one");
        f.server.put("/f", b"two, longer");
        assert_eq!(f.read_all(ino).await, b"two, longer");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_holding_a_file_being_written_is_not_empty() {
    bounded(async {
        let f = mounted(Duration::from_secs(1)).await;
        let dir = f.fs.mkdir(ROOT, "d", 0o755, Owner::default()).await.unwrap().ino;
        f.fs.mkdir(ROOT, "e", 0o755, Owner::default()).await.unwrap();
        let (ino, fh) = f.create(dir, "f", b"data").await;
        assert_eq!(errno_of(f.fs.rmdir(ROOT, "d").await), libc::ENOTEMPTY);
        assert_eq!(errno_of(f.fs.rename(ROOT, "e", ROOT, "d", false).await), libc::ENOTEMPTY);
        f.fs.release(ino, fh).await.unwrap();
        assert_eq!(f.server.content("/d/f").unwrap(), b"data", "the file arrived whole");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_whose_directory_went_away_fails_and_is_kept() {
    bounded(async {
        let f = mounted(Duration::from_secs(1)).await;
        let dir = f.fs.mkdir(ROOT, "d", 0o755, Owner::default()).await.unwrap().ino;
        let (ino, fh) = f.create(dir, "f", b"precious").await;
        // Another client sees /d empty and removes it.
        f.server.remove("/d");
        assert_eq!(errno_of(f.fs.fsync(ino).await), libc::ENOENT, "fsync");
        assert_eq!(errno_of(f.fs.flush(ino, fh, pid()).await), libc::ENOENT, "close");
        assert!(f.fs.release(ino, fh).await.is_err());
        let kept = f.fs.status().await.kept;
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!((kept[0].path.as_str(), std::fs::read(&kept[0].data).unwrap()), ("/d/f", b"precious".to_vec()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_go_once_and_content_the_server_holds_is_not_sent_again() {
    bounded(async {
        let f = mounted(Duration::from_secs(1)).await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (ino, fh) = f.create(ROOT, "big", &data).await;
        f.fs.release(ino, fh).await.unwrap();
        assert_eq!(f.server.content("/big").unwrap(), data);
        let chunks = f.server.served(Kind::UploadChunk);
        assert_eq!(chunks, 5, "300,000 bytes in chunks of 64 KiB");
        let (copy, fh) = f.create(ROOT, "copy", &data).await;
        f.fs.release(copy, fh).await.unwrap();
        assert_eq!(f.server.content("/copy").unwrap(), data);
        assert_eq!(f.server.served(Kind::UploadChunk), chunks, "the second copy was instant");
        let kinds: Vec<NodeKind> = f.fs.readdir(ROOT).await.unwrap().into_iter().map(|(_, k, _)| k).collect();
        assert_eq!(kinds, [NodeKind::File, NodeKind::File]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_in_one_directory_costs_a_listing_of_another_nothing() {
    bounded(async {
        let f = mounted(Duration::from_secs(60)).await;
        let dir = f.fs.mkdir(ROOT, "d", 0o755, Owner::default()).await.unwrap().ino;
        let (ino, fh) = f.create(dir, "f", b"data").await;
        // The upload of /d/f is answered but held: a change of /d in flight while / is listed.
        let gate = f.server.hold(Kind::UploadFile);
        let fs = f.fs.clone();
        let closing = tokio::spawn(async move { fs.release(ino, fh).await });
        gate.arrived().await;
        let before = f.server.served(Kind::GetDir);
        assert_eq!(f.names(ROOT).await, ["d"]);
        assert_eq!(f.server.served(Kind::GetDir) - before, 1, "one listing of /, not fetched again");
        gate.release();
        closing.await.unwrap().unwrap();
        assert_eq!(f.names(dir).await, ["f"]);
    })
    .await;
}
