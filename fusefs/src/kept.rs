//! Uploads that failed at the last close (quota, full disk, the server gone, the directory removed elsewhere): the
//! staged bytes stay in the staging directory, each with a small record beside it (`<id>.kept`, JSON) saying where
//! they were going and why they did not get there. The name itself shows what the server holds (a file that never
//! reached it is gone from the listing), so nothing is silently lost and nothing stale is shown:
//! `netdisk-mount status` lists what is kept, `netdisk-mount retry` uploads it again through the mount, `netdisk-mount
//! discard` removes it, and removing (or replacing) its name in the mount removes it too. Records outlive the mount.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

const RECORD_EXT: &str = "kept";

/// What was kept, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// The server and user the bytes were for.
    pub server: String,
    pub user: String,
    /// Where in the mount they were going.
    pub path: String,
    pub size: u64,
    /// Why the upload failed.
    pub error: String,
    /// When (seconds since the epoch).
    pub when: i64,
    /// The staged bytes (a file in the staging directory).
    pub data: PathBuf,
}

impl Kept {
    fn record(&self) -> PathBuf {
        self.data.with_extension(RECORD_EXT)
    }

    /// Removes the record and the bytes.
    pub fn discard(&self) -> std::io::Result<()> {
        remove_if_there(&self.record())?;
        remove_if_there(&self.data)
    }
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The kept uploads of one server and user in one staging directory (shared with other mounts using the same
/// cache directory: each sees only its own server's and user's).
pub struct KeptUploads {
    dir: PathBuf,
    server: String,
    user: String,
    /// Whether any may be there: while none are, removing a name costs no look at the directory.
    maybe_some: AtomicBool,
}

impl KeptUploads {
    pub fn new(dir: PathBuf, server: String, user: String) -> KeptUploads {
        let kept = KeptUploads { dir, server, user, maybe_some: AtomicBool::new(true) };
        let any = !kept.list().is_empty();
        kept.maybe_some.store(any, Ordering::Relaxed);
        kept
    }

    /// Keeps the staged bytes at `data` that failed to reach `path`, instead of what was kept for it before.
    pub fn keep(&self, data: &Path, path: &str, size: u64, error: &str) -> std::io::Result<Kept> {
        let when = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let kept = Kept {
            server: self.server.clone(),
            user: self.user.clone(),
            path: path.to_string(),
            size,
            error: error.to_string(),
            when: when as i64,
            data: data.to_path_buf(),
        };
        let record = kept.record();
        let temp = record.with_extension("kept-new");
        std::fs::write(&temp, serde_json::to_vec_pretty(&kept).map_err(std::io::Error::other)?)?;
        std::fs::rename(&temp, &record)?;
        self.maybe_some.store(true, Ordering::Relaxed);
        // One kept per path: the latest bytes meant for it (a failed retry keeps them again, under a new name).
        for older in self.list().into_iter().filter(|k| k.path == path && k.data != kept.data) {
            older.discard()?;
        }
        Ok(kept)
    }

    /// Every upload kept for this server and user whose bytes are still there, oldest first.
    pub fn list(&self) -> Vec<Kept> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut kept: Vec<Kept> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == RECORD_EXT))
            .filter_map(|p| serde_json::from_slice::<Kept>(&std::fs::read(&p).ok()?).ok())
            .filter(|k| k.server == self.server && k.user == self.user)
            // A record names its bytes by path; only bytes beside it, in this directory, are taken.
            .filter(|k| k.data.parent() == Some(self.dir.as_path()) && k.data.exists())
            .collect();
        kept.sort_by(|a, b| (a.when, &a.path).cmp(&(b.when, &b.path)));
        kept
    }

    /// The name `path` was removed or replaced: what was kept for it goes too.
    pub fn name_gone(&self, path: &str) {
        if !self.maybe_some.load(Ordering::Relaxed) {
            return;
        }
        for kept in self.list().into_iter().filter(|k| k.path == path) {
            match kept.discard() {
                Ok(()) => tracing::info!(path, data = %kept.data.display(), "kept upload removed with its name"),
                Err(e) => tracing::warn!(path, error = %e, "cannot remove a kept upload"),
            }
        }
    }
}

/// Uploads kept bytes again, through the mount at `mountpoint`: written to their path, and once the mount's
/// `fsync` says they are on the server, no longer kept.
pub fn retry(mountpoint: &Path, kept: &Kept) -> anyhow::Result<()> {
    use anyhow::Context;
    let names = netdisk_protocol::path::components(&kept.path).context("the kept path is not a valid path")?;
    anyhow::ensure!(!names.is_empty(), "the kept path is the root");
    let target = names.iter().fold(mountpoint.to_path_buf(), |p, name| p.join(name));
    let mut from = std::fs::File::open(&kept.data).with_context(|| format!("cannot read {}", kept.data.display()))?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&target)
        .with_context(|| format!("cannot open {}", target.display()))?;
    std::io::copy(&mut from, &mut to).with_context(|| format!("cannot write {}", target.display()))?;
    to.sync_all().with_context(|| format!("the upload of {} failed", target.display()))?;
    drop(to);
    kept.discard().context("uploaded, but the kept bytes could not be removed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_uploads_are_listed_per_server_and_user_and_go_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let staged = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"bytes").unwrap();
            p
        };
        let ann = KeptUploads::new(dir.path().into(), "s:1".into(), "ann".into());
        let bob = KeptUploads::new(dir.path().into(), "s:1".into(), "bob".into());
        assert!(ann.list().is_empty());
        ann.keep(&staged("old.staged"), "/a", 5, "over quota").unwrap();
        ann.keep(&staged("a.staged"), "/a", 5, "over quota").unwrap();
        assert!(!dir.path().join("old.staged").exists(), "the latest bytes for a path replace older ones");
        ann.keep(&staged("b.staged"), "/d/b", 5, "gone").unwrap();
        bob.keep(&staged("c.staged"), "/a", 5, "gone").unwrap();
        let listed: Vec<String> = ann.list().into_iter().map(|k| k.path).collect();
        assert_eq!(listed.len(), 2);
        assert!(listed.contains(&"/a".to_string()) && listed.contains(&"/d/b".to_string()));
        // Seen again by the next mount.
        let again = KeptUploads::new(dir.path().into(), "s:1".into(), "ann".into());
        assert_eq!(again.list().len(), 2);
        again.name_gone("/a");
        assert_eq!(ann.list().into_iter().map(|k| k.path).collect::<Vec<_>>(), ["/d/b"]);
        assert!(!dir.path().join("a.staged").exists() && !dir.path().join("a.kept").exists());
        assert_eq!(bob.list().len(), 1, "bob's /a is bob's");
        ann.list()[0].discard().unwrap();
        assert!(ann.list().is_empty() && !dir.path().join("b.staged").exists());
    }

    #[test]
    fn a_record_cannot_point_outside_the_staging_directory() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let kept = KeptUploads::new(dir.path().into(), "s".into(), "u".into());
        let forged = Kept {
            server: "s".into(),
            user: "u".into(),
            path: "/x".into(),
            size: 1,
            error: String::new(),
            when: 0,
            data: outside.path().into(),
        };
        std::fs::write(dir.path().join("x.kept"), serde_json::to_vec(&forged).unwrap()).unwrap();
        assert!(kept.list().is_empty());
        kept.name_gone("/x");
        assert!(outside.path().exists());
    }
}
