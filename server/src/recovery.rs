//! What a crash leaves in a data directory, and clearing it when `serve` starts there.
//!
//! A crash (kill -9, the OOM killer, a power loss) never leaves damage behind (see "Durability order" in
//! ARCHITECTURE.md), but it can leave wasted space of two kinds:
//! - an **orphan**: an unfinished physical file that no upload binds and no node refers to. A small file sent
//!   whole (`UploadFile` with its bytes) and a truncate's resized content live in one until their request seals
//!   them; a process that dies in between leaves the row and its blob behind. (An unfinished file bound to an
//!   upload is not residue: the upload resumes from its stored chunks.)
//! - a **leftover blob**: a file under `blobs/` whose row is gone: the release was committed, the process died
//!   before it removed the file.
//!
//! It also reclaims **expired uploads**: unfinished physical files (with their uploads) that made no progress for
//! longer than `--upload-expiry` (their clients left them; a running server reclaims a few at each new upload too).
//!
//! Decision: the server reclaims both when it starts, before it accepts a connection, and `fsck` keeps reporting
//! them as problems (a leak that no crash explains must stay visible). So after a restart fsck is clean again;
//! until then (a connection process killed alone, with the server still running) fsck names them.
//! Architecture Invariant: the reclaim runs in the parent, before the first fork, while it holds the data
//! directory's lock (one server per data directory), and closes its SQLite connection before any fork.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};

use crate::blobs::{Blobs, Durability};
use crate::meta::Meta;

/// Name of the lock file in the data directory.
const LOCK_FILE: &str = "serve.lock";

/// What the start of a server cleared.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Orphan unfinished physical files deleted (rows and blobs).
    pub orphans: usize,
    /// Blob files without a row removed.
    pub leftover_blobs: usize,
    /// Unfinished uploads past their expiry reclaimed (physical files, with every upload bound to them).
    pub expired: usize,
}

/// Takes the data directory's lock for as long as the returned value lives, with this process's pid written in
/// the lock file; fails when another server holds it. Connection processes close their copy of the descriptor
/// (listener.rs), so the lock ends with the parent.
pub fn lock(data: &Path) -> anyhow::Result<Flock<File>> {
    let path = data.join(LOCK_FILE);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!("another netdisk-server (pid {}) serves {}", holder.trim(), data.display());
        }
        Err((_, e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
    };
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{}", std::process::id())?;
    Ok(lock)
}

/// Deletes the orphans and removes the leftover blobs a crash left, and the unfinished uploads that made no
/// progress for longer than `upload_expiry`. Call it holding [`lock`], before serving.
pub fn reclaim(data: &Path, durability: Durability, upload_expiry: Duration) -> anyhow::Result<Reclaimed> {
    let mut meta = Meta::open(&data.join("meta.db"))?;
    let blobs = Blobs::new(data, durability);
    let cutoff = crate::meta::now().sec.saturating_sub(upload_expiry.as_secs() as i64);
    let (expired, _) = meta.expire_uploads(cutoff, None).context("cannot reclaim expired uploads")?;
    blobs.remove_all(&expired);
    let orphans = meta.reclaim_orphans().context("cannot delete orphan physical files")?;
    blobs.remove_all(&orphans);
    let mut leftover_blobs = 0;
    for (id, path) in blobs.all().context("cannot list blobs/")? {
        if meta.pfile(id)?.is_none() {
            match std::fs::remove_file(&path) {
                Ok(()) => leftover_blobs += 1,
                Err(e) => tracing::warn!(blob = %path.display(), error = %e, "cannot remove a leftover blob"),
            }
        }
    }
    if !expired.is_empty() {
        tracing::info!(uploads = expired.len(), "reclaimed unfinished uploads past their expiry");
    }
    let reclaimed = Reclaimed { orphans: orphans.len(), leftover_blobs, expired: expired.len() };
    if reclaimed.orphans + reclaimed.leftover_blobs > 0 {
        tracing::warn!(
            orphans = reclaimed.orphans,
            leftover_blobs = reclaimed.leftover_blobs,
            "reclaimed what a crash left: unfinished physical files no upload binds, blobs without a row"
        );
    }
    Ok(reclaimed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Identity, NewFile, Room};

    #[test]
    fn reclaims_orphans_and_leftover_blobs_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        std::fs::create_dir(data.join("blobs")).unwrap();
        let mut meta = Meta::open(&data.join("meta.db")).unwrap();
        meta.add_user("ann", "hash").unwrap();
        let (user, _) = meta.user("ann").unwrap().unwrap();
        let blobs = Blobs::new(data, Durability::Normal);
        let new = NewFile { mode: 0o644, owner: Default::default(), mtime: None };
        // An upload in progress (resumable), an orphan (a small file's request that died), a blob whose row is gone.
        let (md5, sha256) = ("1".repeat(32), "1".repeat(64));
        let big = Identity { md5: &md5, sha256: Some(&sha256), size: 10_000 };
        let (resumable, _, _) = meta.new_upload(&user, "/big", big, 4096, new, &Room::UNLIMITED).unwrap();
        let small = Identity { md5: &"2".repeat(32), sha256: None, size: 100 };
        let orphan = meta.new_pfile(&user, "/small", small, 4096, &Room::UNLIMITED).unwrap();
        for p in [&resumable, &orphan] {
            blobs.open_for_upload(p.id, p.size).unwrap();
        }
        let gone = blobs.path(orphan.id + 1);
        std::fs::create_dir_all(gone.parent().unwrap()).unwrap();
        std::fs::write(&gone, b"released, never removed").unwrap();
        let stranger = data.join("blobs").join("notes.txt");
        std::fs::write(&stranger, b"not a blob").unwrap();
        drop(meta);

        let _lock = lock(data).unwrap();
        let expiry = Duration::from_secs(3600);
        let reclaimed = reclaim(data, Durability::Normal, expiry).unwrap();
        assert_eq!(reclaimed, Reclaimed { orphans: 1, leftover_blobs: 1, expired: 0 });
        let meta = Meta::open(&data.join("meta.db")).unwrap();
        assert!(meta.pfile(resumable.id).unwrap().is_some() && blobs.path(resumable.id).exists());
        assert!(meta.pfile(orphan.id).unwrap().is_none() && !blobs.path(orphan.id).exists());
        assert!(!gone.exists());
        assert!(
            stranger.exists(),
            "a file that is not named as a blob is fsck's to report, not the server's to delete"
        );
        // A second look finds nothing more.
        assert_eq!(reclaim(data, Durability::Normal, expiry).unwrap(), Reclaimed::default());
    }

    #[test]
    fn one_server_per_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("another netdisk-server (pid {})", std::process::id())), "{err}");
        drop(first);
        lock(dir.path()).unwrap();
    }
}
