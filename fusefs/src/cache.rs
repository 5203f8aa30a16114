//! The read cache: downloaded blocks on local disk, keyed by content (md5 of the file and block index),
//! so a cached block can never be stale; bounded in bytes, least recently used blocks go first.
//! Architecture Invariant: a block's file name is built only from an md5 that is 32 lowercase hex digits (the md5
//! comes from the server, which may be hostile: an "md5" such as `../../etc/x` must never become a path).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// Download and cache granularity.
pub const BLOCK: u64 = 1 << 20;

struct Entry {
    size: u64,
    last_use: u64,
}

pub struct Cache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<(String, u64), Entry>,
    total: u64,
    clock: u64,
}

impl Cache {
    /// A cache in `dir` (emptied: the index lives in memory) holding at most `limit` bytes.
    pub fn new(dir: PathBuf, limit: u64) -> std::io::Result<Cache> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Cache { dir, limit, state: Mutex::new(State::default()) })
    }

    fn file(&self, md5: &str, index: u64) -> PathBuf {
        self.dir.join(format!("{md5}-{index}"))
    }

    /// Marks the block as just used; false when it is not cached.
    fn touch(&self, md5: &str, index: u64) -> bool {
        let mut state = self.state.lock().expect("cache lock");
        state.clock += 1;
        let clock = state.clock;
        match state.entries.get_mut(&(md5.to_string(), index)) {
            Some(e) => {
                e.last_use = clock;
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, md5: &str, index: u64) -> bool {
        self.touch(md5, index)
    }

    /// Bytes `start..stop` of a cached block (only those are read), or `None` when it is not cached.
    pub fn read(&self, md5: &str, index: u64, start: usize, stop: usize) -> Option<Vec<u8>> {
        if !self.touch(md5, index) {
            return None;
        }
        let file = std::fs::File::open(self.file(md5, index)).ok()?;
        let len = file.metadata().ok()?.len() as usize;
        let stop = stop.min(len);
        let mut buf = vec![0u8; stop.saturating_sub(start)];
        // A block file is written whole under another name and renamed into place, so it is never seen half-written.
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, start as u64).ok()?;
        Some(buf)
    }

    pub fn put(&self, md5: &str, index: u64, data: &[u8]) {
        if data.len() as u64 > self.limit {
            return;
        }
        // Defence in depth: every md5 in an answer is checked at the boundary (`netdisk_protocol::answer`), and
        // this is the one place a path is built from one.
        if !netdisk_protocol::is_md5_hex(md5) {
            tracing::warn!(md5, "not caching a block named by something that is not an md5");
            return;
        }
        // Written under a temporary name and renamed: a reader never sees a partly written block.
        let path = self.file(md5, index);
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(".tmp-{unique}"));
        if let Err(e) = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(error = %e, "cannot write to the block cache");
            return;
        }
        let mut state = self.state.lock().expect("cache lock");
        state.clock += 1;
        let clock = state.clock;
        let old = state.entries.insert((md5.to_string(), index), Entry { size: data.len() as u64, last_use: clock });
        state.total += data.len() as u64;
        state.total -= old.map_or(0, |e| e.size);
        while state.total > self.limit {
            let Some(victim) = state.entries.iter().min_by_key(|(_, e)| e.last_use).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(e) = state.entries.remove(&victim) {
                state.total -= e.size;
                let _ = std::fs::remove_file(self.file(&victim.0, victim.1));
            }
        }
    }

    /// Bytes of blocks held.
    pub fn used(&self) -> u64 {
        self.state.lock().expect("cache lock").total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_hostile_md5_never_becomes_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("blocks"), 1 << 20).unwrap();
        let absolute = dir.path().join("absolute").display().to_string();
        for md5 in ["../escaped".to_string(), absolute.clone(), "A".repeat(32), String::new()] {
            cache.put(&md5, 0, b"server-chosen bytes");
            assert!(!cache.contains(&md5, 0) && cache.read(&md5, 0, 0, 5).is_none(), "{md5:?} was cached");
        }
        // A block of `md5` would be named `md5-0`: neither escape took place.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["blocks"], "a block was written outside the cache");
        assert!(!std::path::Path::new(&format!("{absolute}-0")).exists());
        assert_eq!(std::fs::read_dir(dir.path().join("blocks")).unwrap().count(), 0, "nothing in the cache");
        assert_eq!(cache.used(), 0);
    }

    #[test]
    fn a_block_written_again_is_never_read_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let cache = std::sync::Arc::new(Cache::new(dir.path().join("blocks"), 1 << 30).unwrap());
        let block: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        cache.put(M, 0, &block);
        let writer = {
            let (cache, block) = (cache.clone(), block.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    cache.put(M, 0, &block);
                }
            })
        };
        for _ in 0..500 {
            let part = cache.read(M, 0, 4096, 8192).expect("cached");
            assert_eq!(part, &block[4096..8192]);
        }
        writer.join().unwrap();
    }

    #[test]
    fn evicts_least_recently_used_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("blocks"), 10).unwrap();
        let (a, b, c) = (&"a".repeat(32), &"b".repeat(32), &"c".repeat(32));
        cache.put(a, 0, b"12345");
        cache.put(b, 0, b"12345");
        assert_eq!(cache.read(a, 0, 0, 5).unwrap(), b"12345");
        assert_eq!(cache.read(a, 0, 1, 3).unwrap(), b"23");
        cache.put(c, 0, b"123");
        assert!(!cache.contains(b, 0), "b was least recently used");
        assert!(cache.contains(a, 0) && cache.contains(c, 0));
        assert!(cache.used() <= 10);
    }
}
