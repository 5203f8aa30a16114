//! Truncating a closed file on the server (`SetAttr { size }`): new content made of the old file's first bytes
//! and zeros past its old end, built as a new physical file, sealed and placed in one transaction.
//! The work is bounded and stoppable: one pass over the kept bytes (read once, copied and hashed in that pass),
//! the zeros hashed from memory and left as a hole of the sparse blob (never written, never read), the size
//! bounded by `MAX_FILE_SIZE`, the quota and the disk (never the reserve); `still_wanted` is asked every few MiB
//! and once more right before the commit, so a request its client gave up on stops and never lands.
//! Architecture Invariant: every failure discards the half-made physical file (row and blob) here; nothing
//! here knows the socket (the caller's `still_wanted` does).

use netdisk_protocol::{ErrorCode, MAX_CHUNK_SIZE, MAX_FILE_SIZE};

use crate::blobs::{self, Blobs, RunningHash};
use crate::error::{fail, Error, Result};
use crate::meta::{Content, Identity, Meta, NewFile, Released, Room, User};

/// Times a resize runs again when a concurrent change undid what it looked up.
const RACE_ATTEMPTS: u32 = 3;

/// Refuses a size no file may have: beyond [`MAX_FILE_SIZE`] (EFBIG), for every size a client declares.
pub fn check_file_size(size: u64) -> Result<()> {
    if size > MAX_FILE_SIZE {
        return fail(ErrorCode::FileTooBig, format!("{size} bytes: files are at most {MAX_FILE_SIZE} bytes"));
    }
    Ok(())
}

/// Gives the regular file at `path` its first `size` bytes, zero-filled past the old end.
/// `still_wanted` says whether the client still waits for the answer: when it says no, the work stops and
/// nothing changes (`Error::Abandoned`).
pub fn resize(
    meta: &mut Meta,
    blobs: &Blobs,
    proof_salt: &[u8],
    user: &User,
    path: &str,
    size: u64,
    still_wanted: &dyn Fn() -> bool,
) -> Result<()> {
    check_file_size(size)?;
    let started = std::time::Instant::now();
    let mut attempt = 1;
    loop {
        match resize_once(meta, blobs, proof_salt, user, path, size, still_wanted) {
            Err(Error::Race(why)) if attempt < RACE_ATTEMPTS => {
                tracing::debug!(path, why, attempt, "truncate raced with another change; again");
                attempt += 1;
            }
            Err(Error::Abandoned) => {
                tracing::info!(path, size, "truncate stopped: the client hung up");
                return Err(Error::Abandoned);
            }
            Ok(()) => {
                tracing::debug!(path, size, secs = started.elapsed().as_secs_f64(), "truncated");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

fn resize_once(
    meta: &mut Meta,
    blobs: &Blobs,
    proof_salt: &[u8],
    user: &User,
    path: &str,
    size: u64,
    still_wanted: &dyn Fn() -> bool,
) -> Result<()> {
    let (attr, old) = meta.file_content(user, path)?;
    if size == attr.size {
        return Ok(());
    }
    let keep_attrs =
        NewFile { mode: attr.mode, owner: netdisk_protocol::Owner { uid: attr.uid, gid: attr.gid }, mtime: None };
    if size == 0 {
        let (_, released) = meta.set_content(user, path, Content { pfile_id: None, size: 0 }, keep_attrs)?;
        blobs.remove_all(&released);
        return Ok(());
    }
    // Admitted like an upload, against the quota and the disk: the whole new size must fit beside the reserve and
    // the reservations of unfinished uploads (the kept bytes are claimed now, and a file whose zeros could never
    // be filled is refused rather than promised).
    let keep = attr.size.min(size);
    // The largest chunk size keeps the (unused) chunk map of a file made here small.
    let room = blobs.room();
    let identity = Identity { md5: "", sha256: None, size };
    let pfile = meta.new_pfile(user, path, identity, MAX_CHUNK_SIZE, &Room(&room))?;
    let target = Target { path, id: pfile.id, size, attrs: keep_attrs };
    match build_and_place(meta, blobs, proof_salt, user, target, (old, keep), still_wanted) {
        Ok(released) => {
            blobs.remove_all(&released);
            Ok(())
        }
        Err(e) => {
            match meta.discard_pfile(pfile.id) {
                Ok(released) => blobs.remove_all(&released),
                Err(d) => {
                    tracing::warn!(pfile = pfile.id, error = %d, "cannot discard a resized copy (reclaimed at the next start)")
                }
            }
            Err(e)
        }
    }
}

/// The physical file a resize builds, and where it goes.
struct Target<'a> {
    path: &'a str,
    id: i64,
    size: u64,
    attrs: NewFile,
}

/// Writes physical file `id`: the first `keep` bytes of `old`'s content, then zeros (a hole) up to `size`;
/// hashes it in the same pass, syncs it, seals it and places it at `path`. Returns what the change released.
fn build_and_place(
    meta: &mut Meta,
    blobs: &Blobs,
    proof_salt: &[u8],
    user: &User,
    target: Target<'_>,
    (old, keep): (Option<i64>, u64),
    still_wanted: &dyn Fn() -> bool,
) -> Result<Released> {
    let Target { path, id, size, attrs: keep_attrs } = target;
    // Created sparse at the new size: the zeros past the old end are a hole, never written.
    let dest = blobs.open_for_upload(id, size)?;
    blobs.claim(&dest, 0, keep)?;
    let mut running = RunningHash::new(proof_salt);
    if keep > 0 {
        let Some(old) = old else {
            return Err(Error::Race("the file lost its content meanwhile"));
        };
        let source = match blobs.open_read(old) {
            Ok(f) => f,
            // The file was changed and its old content released since it was looked up.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Race("the old content was released meanwhile"))
            }
            Err(e) => return Err(e.into()),
        };
        if !blobs::copy_hashed(&source, &dest, keep, &mut running, still_wanted)? {
            return Err(Error::Abandoned);
        }
    }
    if !running.zeros(size - keep, still_wanted)? {
        return Err(Error::Abandoned);
    }
    let hashes = running.finish();
    blobs.sync_all(&dest)?;
    // The last look before the change becomes visible: a client that gave up by now never sees it land.
    if !still_wanted() {
        return Err(Error::Abandoned);
    }
    // Sealed and placed in one transaction: never complete without a holder.
    let (_, released) = meta
        .seal_and_set_content(user, path, id, &hashes, keep_attrs)?
        .ok_or(Error::Race("the resized content vanished meanwhile"))?;
    Ok(released)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::os::unix::fs::FileExt;

    use netdisk_protocol::{md5_hex, Owner};

    use super::*;
    use crate::blobs::Durability;

    struct Store {
        dir: tempfile::TempDir,
        meta: Meta,
        blobs: Blobs,
        user: User,
    }

    /// A store whose user holds `/f` with `data`.
    fn store_with(data: &[u8]) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = Meta::open(&dir.path().join("meta.db")).unwrap();
        meta.add_user("ann", "hash").unwrap();
        let (user, _) = meta.user("ann").unwrap().unwrap();
        let blobs = Blobs::new(dir.path(), Durability::Normal);
        let id = Identity { md5: "", sha256: None, size: data.len() as u64 };
        let pfile = meta.new_pfile(&user, "/f", id, 4096, &Room::UNLIMITED).unwrap();
        let file = blobs.open_for_upload(pfile.id, data.len() as u64).unwrap();
        file.write_all_at(data, 0).unwrap();
        let h = blobs::hash_file(&file, data.len() as u64, b"salt").unwrap();
        let new = NewFile { mode: 0o644, owner: Owner::default(), mtime: None };
        meta.seal_and_set_content(&user, "/f", pfile.id, &h, new).unwrap().unwrap();
        Store { dir, meta, blobs, user }
    }

    impl Store {
        fn resize(&mut self, size: u64, still_wanted: &dyn Fn() -> bool) -> Result<()> {
            resize(&mut self.meta, &self.blobs, b"salt", &self.user, "/f", size, still_wanted)
        }

        fn md5(&self) -> Option<String> {
            self.meta.stat(&self.user, "/f").unwrap().md5
        }

        fn pfile_count(&self) -> i64 {
            let db = rusqlite::Connection::open(self.dir.path().join("meta.db")).unwrap();
            db.query_row("SELECT count(*) FROM pfiles", [], |r| r.get(0)).unwrap()
        }
    }

    fn zero_filled(data: &[u8], size: usize) -> Vec<u8> {
        let mut v = data[..data.len().min(size)].to_vec();
        v.resize(size, 0);
        v
    }

    #[test]
    fn grows_and_shrinks_to_the_right_bytes() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut s = store_with(&data);
        // Past several checks (every 8 MiB), across the old end.
        let big = 20 << 20;
        s.resize(big, &|| true).unwrap();
        assert_eq!(s.md5(), Some(md5_hex(&zero_filled(&data, big as usize))));
        s.resize(5000, &|| true).unwrap();
        assert_eq!(s.md5(), Some(md5_hex(&data[..5000])));
        s.resize(0, &|| true).unwrap();
        assert_eq!(s.md5(), Some(md5_hex(b"")));
        s.resize(3, &|| true).unwrap();
        assert_eq!(s.md5(), Some(md5_hex(&[0, 0, 0])));
        assert_eq!(s.pfile_count(), 1, "a resized copy or an old content was left");
        assert_eq!(s.blobs.all().unwrap().len(), 1, "a blob was left");
    }

    #[test]
    fn a_race_runs_the_resize_again() {
        let data = b"some content".to_vec();
        let mut s = store_with(&data);
        let db = rusqlite::Connection::open(s.dir.path().join("meta.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        let calls = Cell::new(0);
        // The first attempt's half-made physical file vanishes under it (as when another connection releases it)
        // just before its commit.
        let still_wanted = || {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                db.execute("DELETE FROM pfiles WHERE complete = 0", []).unwrap();
            }
            true
        };
        s.resize(100, &still_wanted).expect("the second attempt succeeds");
        assert_eq!(calls.get(), 2, "one attempt per check");
        assert_eq!(s.md5(), Some(md5_hex(&zero_filled(&data, 100))));
        assert_eq!(s.pfile_count(), 1);
        assert_eq!(s.blobs.all().unwrap().len(), 1, "the first attempt's blob was left");

        // A race on every attempt: bounded, and answered "try again", never EIO.
        let every = || {
            db.execute("DELETE FROM pfiles WHERE complete = 0", []).unwrap();
            true
        };
        let err = s.resize(200, &every).unwrap_err();
        assert!(matches!(err, Error::Race(_)), "{err}");
        assert_eq!(err.to_wire().code, ErrorCode::Busy);
        assert_eq!(s.md5(), Some(md5_hex(&zero_filled(&data, 100))));
        assert_eq!(s.blobs.all().unwrap().len(), 1);
    }

    #[test]
    fn a_resize_nobody_wants_changes_nothing() {
        let data = vec![7u8; 100_000];
        let mut s = store_with(&data);
        for size in [10, 50 << 20] {
            let err = s.resize(size, &|| false).unwrap_err();
            assert!(matches!(err, Error::Abandoned), "{err}");
            assert_eq!(s.md5(), Some(md5_hex(&data)));
            assert_eq!(s.pfile_count(), 1);
            assert_eq!(s.blobs.all().unwrap().len(), 1);
        }
        let err = s.resize(MAX_FILE_SIZE + 1, &|| true).unwrap_err();
        assert_eq!(err.to_wire().code, ErrorCode::FileTooBig);
    }
}
