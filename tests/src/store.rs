//! A server's data directory seen from outside: its database opened read-only, to watch upload progress while
//! the server runs (or after it was killed), and the path of a physical file's bytes.
//! Nothing here writes (a test that changes a data directory does so through the server), except
//! [`age_unfinished`], which stands in for the passing of time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// One row of `pfiles`, reduced to what the tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PFile {
    pub id: i64,
    pub md5: String,
    pub size: u64,
    pub chunk_size: u64,
    pub total_chunks: u32,
    pub chunks_uploaded: u32,
    pub complete: bool,
}

/// Opens `DATA/meta.db` read-only (a server may be running on it).
pub fn open(data: &Path) -> Connection {
    let db = data.join("meta.db");
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .unwrap_or_else(|e| panic!("open {} read-only: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(10)).expect("busy_timeout");
    conn
}

/// Every physical file, by id.
pub fn pfiles(data: &Path) -> Vec<PFile> {
    pfiles_in(&open(data))
}

/// Every physical file, read on an open connection (cheap enough to poll).
pub fn pfiles_in(conn: &Connection) -> Vec<PFile> {
    let mut stmt = conn
        .prepare("SELECT id, md5, size, chunk_size, total_chunks, chunks_uploaded, complete FROM pfiles ORDER BY id")
        .expect("prepare the pfiles query");
    let rows = stmt
        .query_map([], |r| {
            Ok(PFile {
                id: r.get(0)?,
                md5: r.get(1)?,
                size: r.get::<_, i64>(2)? as u64,
                chunk_size: r.get::<_, i64>(3)? as u64,
                total_chunks: r.get::<_, i64>(4)? as u32,
                chunks_uploaded: r.get::<_, i64>(5)? as u32,
                complete: r.get::<_, i64>(6)? != 0,
            })
        })
        .expect("query pfiles");
    rows.collect::<Result<_, _>>().expect("read pfiles")
}

/// The physical files holding content `md5` (complete or not).
pub fn pfiles_of(data: &Path, md5: &str) -> Vec<PFile> {
    pfiles(data).into_iter().filter(|p| p.md5 == md5).collect()
}

/// The number of unfinished uploads (rows of `uploads`).
pub fn upload_count(data: &Path) -> u64 {
    open(data).query_row("SELECT count(*) FROM uploads", [], |r| r.get::<_, i64>(0)).expect("count uploads") as u64
}

/// Where the bytes of physical file `id` live: `DATA/blobs/xx/ID`, `xx` the low byte of the id in hex.
pub fn blob_path(data: &Path, id: i64) -> PathBuf {
    data.join("blobs").join(format!("{:02x}", id & 0xff)).join(id.to_string())
}

/// Every file under `DATA/blobs/`.
pub fn blob_files(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(data.join("blobs")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            out.push(f.path());
        }
    }
    out.sort();
    out
}

/// Makes every unfinished physical file look as if its last progress was `secs` seconds earlier than recorded
/// (`pfiles.touched`, schema version 5): the passing of time for upload expiry, without waiting. The one write
/// here; safe beside a running server (WAL, one short transaction).
pub fn age_unfinished(data: &Path, secs: i64) -> usize {
    let db = data.join("meta.db");
    let conn = Connection::open(&db).unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(10)).expect("busy_timeout");
    conn.execute("UPDATE pfiles SET touched = touched - ? WHERE complete = 0", [secs])
        .unwrap_or_else(|e| panic!("age the unfinished uploads of {}: {e}", db.display()))
}

/// Bytes of the database with its WAL (`meta.db`, `meta.db-wal`).
pub fn db_bytes(data: &Path) -> u64 {
    ["meta.db", "meta.db-wal"].iter().filter_map(|f| std::fs::metadata(data.join(f)).ok()).map(|m| m.len()).sum()
}
