//! Metadata in SQLite: users, the POSIX tree of each user (nodes and entries), physical files and uploads.
//! Architecture Invariant: every transaction that writes is IMMEDIATE; a connection is opened after fork, never carried across.
//! Architecture Invariant: an entry never points at an incomplete physical file (L8 holds by construction).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netdisk_protocol::path::components;
use netdisk_protocol::{Attr, DirEntry, ErrorCode, NodeKind, Owner, SetAttr, SetTime, Timespec, WireError, MAX_DEPTH};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::blobs::Hashes;
use crate::error::{fail, Result};

/// Statements through the connection's cache of prepared statements. A connection answers the same few dozen
/// statements over and over; preparing each anew was over a quarter of the server's CPU for small files
/// (`perf record` over 3,000 creates and unlinks, bench/ANALYSIS.md).
trait Cached {
    fn run<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn one<T, P, F>(&self, sql: &str, params: P, row: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn run<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn one<T, P, F>(&self, sql: &str, params: P, row: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, row)
    }
}

/// md5 of zero bytes: the content of every empty file.
pub const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// Prepared statements kept per connection: more than the distinct statements the server runs.
const STATEMENT_CACHE: usize = 128;

/// The schema this server writes (`PRAGMA user_version`); fsck checks only databases of this version.
pub const SCHEMA_VERSION: i64 = 6;

const SCHEMA_V1: &str = "
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    root          INTEGER NOT NULL,
    created       INTEGER NOT NULL
);
-- One row per file, directory, symlink or special file. ids are never reused (AUTOINCREMENT).
CREATE TABLE nodes (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id  INTEGER NOT NULL,
    kind     INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    nlink    INTEGER NOT NULL,
    size     INTEGER NOT NULL DEFAULT 0,
    atime_s  INTEGER NOT NULL, atime_ns INTEGER NOT NULL,
    mtime_s  INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_s  INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    rdev     INTEGER NOT NULL DEFAULT 0,
    target   TEXT,
    pfile_id INTEGER
);
CREATE INDEX nodes_user_pfile ON nodes(user_id, pfile_id);
CREATE INDEX nodes_pfile ON nodes(pfile_id);
-- Names in directories. Listing order is by name (bytewise), stable across pages.
CREATE TABLE entries (
    parent INTEGER NOT NULL,
    name   TEXT NOT NULL,
    node   INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX entries_node ON entries(node);
-- Physical files (L7): content by md5, with chunk progress. An incomplete one belongs to the upload of one user.
CREATE TABLE pfiles (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    md5             TEXT NOT NULL,
    size            INTEGER NOT NULL,
    sha256          TEXT,
    chunk_size      INTEGER NOT NULL,
    total_chunks    INTEGER NOT NULL,
    chunks_uploaded INTEGER NOT NULL DEFAULT 0,
    chunk_map       BLOB NOT NULL,
    complete        INTEGER NOT NULL DEFAULT 0,
    uploader        INTEGER,
    refs            INTEGER NOT NULL DEFAULT 0,
    created         INTEGER NOT NULL
);
CREATE INDEX pfiles_content ON pfiles(md5, size, complete);
CREATE INDEX pfiles_uploader ON pfiles(uploader, md5, size);
-- Uploads in progress: where the content goes once its physical file is complete.
CREATE TABLE uploads (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id  INTEGER NOT NULL,
    path     TEXT NOT NULL,
    pfile_id INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    mtime_s  INTEGER,
    mtime_ns INTEGER,
    created  INTEGER NOT NULL,
    UNIQUE (user_id, path)
);
CREATE INDEX uploads_pfile ON uploads(pfile_id);
";

/// Version 2: a user may have a quota (bytes of regular files; NULL: none). An unfinished physical file keeps the md5 and SHA-256 state of its first `hashed_chunks` chunks
/// (`blobs::RunningHash`), so that sealing it needs no second pass over its bytes; `hash_owner` is the
/// connection process allowed to move it on (one at a time, so no byte is hashed twice).
const SCHEMA_V2: &str = "
ALTER TABLE pfiles ADD COLUMN hashed_chunks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pfiles ADD COLUMN hash_state BLOB;
ALTER TABLE pfiles ADD COLUMN hash_owner INTEGER;
ALTER TABLE users ADD COLUMN quota INTEGER;
";

/// Version 3: sessions end with their user. `users` is rebuilt with AUTOINCREMENT, so that a user id is never
/// given again (a removed user's open connection must never find a new user's files under its id); its sequence
/// starts above every user id the data still shows. `session_gen` changes with the password: a connection
/// logged in under an older generation (or as a user who is gone) is ended at its next request.
const SCHEMA_V3: &str = "
ALTER TABLE users RENAME TO users_v2;
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    root          INTEGER NOT NULL,
    created       INTEGER NOT NULL,
    quota         INTEGER,
    session_gen   INTEGER NOT NULL DEFAULT 0
);
INSERT INTO users (id, name, password_hash, root, created, quota)
    SELECT id, name, password_hash, root, created, quota FROM users_v2;
DROP TABLE users_v2;
INSERT INTO sqlite_sequence (name, seq) SELECT 'users', 0
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'users');
UPDATE sqlite_sequence SET seq = max(seq,
        coalesce((SELECT max(id) FROM users), 0),
        coalesce((SELECT max(user_id) FROM nodes), 0),
        coalesce((SELECT max(user_id) FROM uploads), 0),
        coalesce((SELECT max(uploader) FROM pfiles), 0))
    WHERE name = 'users';
";

/// Version 4: content identity and ownership proofs. `pfiles.sha256` of an unfinished physical file is the identity
/// its uploader declared (checked against the bytes before sealing); `proof_tag` is the salted SHA-256 of a complete
/// one's bytes (`netdisk_protocol::content`), from which challenges are checked without reading the blob (NULL
/// for content sealed by an older server: no cross-user instant upload of it until an upload of the same bytes
/// folds into it). `proof_blocks`: a (user, content) that was challenged gets no other challenge until `until`,
/// so a wrong or missing answer cannot be retried. `settings` holds the store's proof salt.
const SCHEMA_V4: &str = "
ALTER TABLE pfiles ADD COLUMN proof_tag TEXT;
CREATE INDEX pfiles_identity ON pfiles(sha256, size, complete);
CREATE TABLE proof_blocks (
    user_id INTEGER NOT NULL,
    sha256  TEXT NOT NULL,
    size    INTEGER NOT NULL,
    until   INTEGER NOT NULL,
    PRIMARY KEY (user_id, sha256, size)
) WITHOUT ROWID;
CREATE INDEX proof_blocks_until ON proof_blocks(until);
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
INSERT INTO settings (name, value) VALUES ('proof_salt', randomblob(32));
";

/// Version 5: unfinished uploads expire. `touched` is when an unfinished physical file last made progress (created,
/// bound to an upload, a chunk recorded), in seconds since the epoch; one untouched for longer than the server's
/// `--upload-expiry` is reclaimed with its uploads ([`Meta::expire_uploads`]). The partial index keeps both that
/// search and the sums of reservations ([`admit`]) to the unfinished rows.
const SCHEMA_V5: &str = "
ALTER TABLE pfiles ADD COLUMN touched INTEGER NOT NULL DEFAULT 0;
UPDATE pfiles SET touched = created WHERE complete = 0;
CREATE INDEX pfiles_unfinished ON pfiles(touched) WHERE complete = 0;
";

/// Version 6: passwords as SCRAM keeps them (`users.rs`): each argon2id hash (whose output is SaltedPassword) becomes
/// its salt, cost, StoredKey and ServerKey, in `password_hash`; the hash itself is not kept.
fn migrate_v6(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let old: Vec<(i64, String)> = {
        let mut stmt = tx.prepare("SELECT id, password_hash FROM users")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, hash) in old {
        let Some(secret) = crate::users::from_phc(&hash) else {
            tracing::warn!(
                user_id = id,
                "a password hash this server cannot convert: that user must be given a new password"
            );
            continue;
        };
        tx.execute("UPDATE users SET password_hash = ? WHERE id = ?", params![secret, id])?;
    }
    Ok(())
}

/// Most chunks a physical file may have: its chunk map (one bit each, rewritten as chunks are recorded) stays at
/// most 512 KiB. With the default 4 MiB chunks that is `MAX_FILE_SIZE` (16 TiB).
pub const MAX_CHUNKS: u64 = 1 << 22;

/// Where an upload's declared size is measured against the disk: the bytes free beyond the reserve, asked for
/// inside the admission's transaction (so admissions one after the other each see the space the others took).
pub struct Room<'a>(pub &'a dyn Fn() -> std::io::Result<u64>);

impl Room<'_> {
    /// No limit from the disk (tests of the metadata alone).
    pub const UNLIMITED: Room<'static> = Room(&|| Ok(u64::MAX));
}

pub fn now() -> Timespec {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
}

fn kind_to_int(kind: NodeKind) -> i64 {
    match kind {
        NodeKind::File => 1,
        NodeKind::Dir => 2,
        NodeKind::Symlink => 3,
        NodeKind::Fifo => 4,
        NodeKind::Socket => 5,
        NodeKind::CharDevice => 6,
        NodeKind::BlockDevice => 7,
    }
}

fn kind_from_int(v: i64) -> NodeKind {
    kind_from_db(v).unwrap_or(NodeKind::BlockDevice)
}

/// The kind stored in `nodes.kind`; `None` for a value this schema never writes.
pub fn kind_from_db(v: i64) -> Option<NodeKind> {
    Some(match v {
        1 => NodeKind::File,
        2 => NodeKind::Dir,
        3 => NodeKind::Symlink,
        4 => NodeKind::Fifo,
        5 => NodeKind::Socket,
        6 => NodeKind::CharDevice,
        7 => NodeKind::BlockDevice,
        _ => return None,
    })
}

/// A logged-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub root: i64,
    /// The user's `session_gen` at login: the session lasts while it is unchanged ([`Meta::session_valid`]).
    pub session_gen: i64,
}

/// A user and what they hold (`netdisk-server user list`).
pub struct UserUsage {
    pub name: String,
    pub quota: Option<u64>,
    /// Seconds since the epoch.
    pub created: i64,
    pub files: u64,
    /// Sum of the sizes of their regular files.
    pub bytes: u64,
}

/// What a store holds (`netdisk-server stats`).
pub struct StoreStats {
    pub users: u64,
    pub files: u64,
    pub directories: u64,
    /// Symlinks, devices, fifos, sockets.
    pub others: u64,
    /// Sum of the sizes of all regular files, as their owners see them.
    pub file_bytes: u64,
    pub physical_files: u64,
    /// Bytes of complete physical files: each distinct content once.
    pub stored_bytes: u64,
    pub uploads: u64,
    pub unfinished_bytes: u64,
}

/// A physical file's row.
#[derive(Clone, Debug)]
pub struct PFile {
    pub id: i64,
    pub md5: String,
    /// The identity: verified for a complete one; for an unfinished one, what its uploader declared.
    pub sha256: Option<String>,
    pub size: u64,
    pub chunk_size: u32,
    pub total_chunks: u32,
    pub chunks_uploaded: u32,
    pub chunk_map: Vec<u8>,
    pub complete: bool,
    /// Chunks `0..hashed_chunks` are covered by `hash_state` (a saved `blobs::RunningHash`).
    pub hashed_chunks: u32,
    pub hash_state: Option<Vec<u8>>,
    /// The process (pid) that may move the running hash on.
    pub hash_owner: Option<u32>,
}

impl PFile {
    pub fn has_chunk(&self, index: u32) -> bool {
        self.chunk_map.get(index as usize / 8).is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    /// Byte length of chunk `index`.
    pub fn chunk_len(&self, index: u32) -> u64 {
        let start = index as u64 * self.chunk_size as u64;
        (self.size - start.min(self.size)).min(self.chunk_size as u64)
    }
}

/// An upload in progress.
#[derive(Clone, Debug)]
pub struct Upload {
    pub id: i64,
    pub path: String,
    pub pfile_id: i64,
    pub mode: u32,
    pub owner: Owner,
    pub mtime: Option<Timespec>,
}

/// New content for a regular file: a complete physical file, or none for an empty file.
#[derive(Clone, Copy, Debug)]
pub struct Content {
    pub pfile_id: Option<i64>,
    pub size: u64,
}

/// How to create a regular file that does not exist yet, and the mtime to record.
#[derive(Clone, Copy, Debug)]
pub struct NewFile {
    pub mode: u32,
    pub owner: Owner,
    pub mtime: Option<Timespec>,
}

/// What a client names content by: the md5 (the lookup key), the SHA-256 (the identity; `None` only where the
/// store allows naming own content by md5 alone) and the size.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub md5: &'a str,
    pub sha256: Option<&'a str>,
    pub size: u64,
}

/// A complete physical file another user may get by proof, with the tag the proof is checked against.
pub struct Provable {
    pub pfile_id: i64,
    pub md5: String,
    pub proof_tag: String,
}

/// Physical files that lost their last reference in a committed transaction: their blobs are to be removed.
pub type Released = Vec<i64>;

pub struct Meta {
    conn: Connection,
}

/// A node that is not a directory and has no content: symlink, special file, empty regular file.
struct Leaf<'a> {
    kind: NodeKind,
    mode: u32,
    owner: Owner,
    target: Option<&'a str>,
    rdev: u64,
}

struct Node {
    id: i64,
    kind: NodeKind,
    nlink: i64,
    pfile_id: Option<i64>,
}

impl Meta {
    /// Opens (creating and migrating if needed) the database of a data directory.
    /// Another process setting the database up at the same moment makes this wait, not fail.
    pub fn open(path: &Path) -> Result<Meta> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match Meta::try_open(path) {
                Err(crate::error::Error::Db(rusqlite::Error::SqliteFailure(f, _)))
                    if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn try_open(path: &Path) -> Result<Meta> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // A fixed plan per statement: without this the bundled SQLite (STAT4) prepares a cached statement again
        // whenever a new value is bound to it.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
        // FULL: a committed transaction (an acknowledged upload) survives power loss, not just a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut meta = Meta { conn };
        meta.migrate()?;
        Ok(meta)
    }

    /// `synchronous=FULL` (the default: a commit is on disk when answered) or `NORMAL` (in the OS cache).
    pub fn set_durability(&mut self, durability: crate::blobs::Durability) -> Result<()> {
        let level = match durability {
            crate::blobs::Durability::Full => "FULL",
            crate::blobs::Durability::Normal => "NORMAL",
        };
        self.conn.pragma_update(None, "synchronous", level)?;
        Ok(())
    }

    /// Brings the schema to [`SCHEMA_VERSION`]. A database already there is only read: every connection process
    /// opens the database, and on a full disk a write here (even of the same version) would fail every new
    /// connection, leaving no way in to read files or delete some.
    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(crate::error::Error::Io(std::io::Error::other(format!(
                "database schema version {version} is newer than this server ({SCHEMA_VERSION})"
            ))));
        }
        if version < 1 {
            tx.execute_batch(SCHEMA_V1)?;
        }
        if version < 2 {
            tx.execute_batch(SCHEMA_V2)?;
        }
        if version < 3 {
            tx.execute_batch(SCHEMA_V3)?;
        }
        if version < 4 {
            tx.execute_batch(SCHEMA_V4)?;
        }
        if version < 5 {
            tx.execute_batch(SCHEMA_V5)?;
        }
        if version < 6 {
            migrate_v6(&tx)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    fn write(&mut self) -> Result<Transaction<'_>> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    // ---- users ----

    pub fn add_user(&mut self, name: &str, password_hash: &str) -> Result<i64> {
        let tx = self.write()?;
        let exists: Option<i64> = tx.one("SELECT id FROM users WHERE name = ?", [name], |r| r.get(0)).optional()?;
        if exists.is_some() {
            return fail(ErrorCode::Exists, format!("user {name} exists already"));
        }
        let t = now();
        let root = insert_node(&tx, 0, NodeKind::Dir, 0o755, Owner::default(), 2, t, None, 0)?;
        tx.run(
            "INSERT INTO users (name, password_hash, root, created) VALUES (?, ?, ?, ?)",
            params![name, password_hash, root, t.sec],
        )?;
        let id = tx.last_insert_rowid();
        tx.run("UPDATE nodes SET user_id = ? WHERE id = ?", params![id, root])?;
        tx.commit()?;
        Ok(id)
    }

    /// The user and their password hash.
    pub fn user(&self, name: &str) -> Result<Option<(User, String)>> {
        Ok(self
            .conn
            .one("SELECT id, root, password_hash, session_gen FROM users WHERE name = ?", [name], |r| {
                Ok((User { id: r.get(0)?, name: name.to_string(), root: r.get(1)?, session_gen: r.get(3)? }, r.get(2)?))
            })
            .optional()?)
    }

    /// Whether a logged-in session of `user` may go on: the user still exists and has the password (the session
    /// generation) it logged in with. One primary-key lookup through a cached statement, run before every request.
    pub fn session_valid(&self, user: &User) -> Result<bool> {
        let current: Option<i64> =
            self.conn.one("SELECT session_gen FROM users WHERE id = ?", [user.id], |r| r.get(0)).optional()?;
        Ok(current == Some(user.session_gen))
    }

    // ---- reading the tree ----

    pub fn attr(&self, node: i64) -> Result<Attr> {
        attr_of(&self.conn, node)
    }

    pub fn stat(&self, user: &User, path: &str) -> Result<Attr> {
        let node = resolve(&self.conn, user, path)?;
        attr_of(&self.conn, node.id)
    }

    /// The attributes of the directory holding `path`, sent with the answer to a change in it so that a client
    /// need not ask for them again; `None` when that directory cannot be read any more (the client asks then).
    pub fn parent_attr(&self, user: &User, path: &str) -> Option<Attr> {
        let (parent, _) = resolve_parent(&self.conn, user, path).ok()?;
        attr_of(&self.conn, parent).ok()
    }

    /// A page of a directory, sorted by name, after `after`.
    pub fn list(
        &self,
        user: &User,
        path: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Attr, Vec<DirEntry>, bool)> {
        let dir = resolve(&self.conn, user, path)?;
        if dir.kind != NodeKind::Dir {
            return fail(ErrorCode::NotDir, format!("{path} is not a directory"));
        }
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT e.name, {ATTR_COLUMNS} FROM entries e JOIN nodes n ON n.id = e.node
             LEFT JOIN pfiles p ON p.id = n.pfile_id
             WHERE e.parent = ?1 AND e.name > ?2 ORDER BY e.name LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![dir.id, after.unwrap_or(""), limit as i64 + 1], |r| {
            Ok(DirEntry { name: r.get(0)?, attr: attr_from_row(r, 1)? })
        })?;
        let mut entries = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        Ok((attr_of(&self.conn, dir.id)?, entries, more))
    }

    pub fn readlink(&self, user: &User, path: &str) -> Result<String> {
        let node = resolve(&self.conn, user, path)?;
        let target: Option<String> = self.conn.one("SELECT target FROM nodes WHERE id = ?", [node.id], |r| r.get(0))?;
        match (node.kind, target) {
            (NodeKind::Symlink, Some(t)) => Ok(t),
            _ => fail(ErrorCode::Invalid, format!("{path} is not a symlink")),
        }
    }

    /// The content of a regular file: its physical file (if any) and size.
    pub fn file_content(&self, user: &User, path: &str) -> Result<(Attr, Option<i64>)> {
        let node = resolve(&self.conn, user, path)?;
        match node.kind {
            NodeKind::File => Ok((attr_of(&self.conn, node.id)?, node.pfile_id)),
            NodeKind::Dir => fail(ErrorCode::IsDir, format!("{path} is a directory")),
            _ => fail(ErrorCode::Invalid, format!("{path} is not a regular file")),
        }
    }

    /// Counts for statfs: (nodes of this user).
    pub fn node_count(&self, user: &User) -> Result<u64> {
        Ok(self.conn.one("SELECT count(*) FROM nodes WHERE user_id = ?", [user.id], |r| r.get::<_, i64>(0))? as u64)
    }

    /// `user`'s quota and what counts against it now (their files and their unfinished uploads), for statfs;
    /// `None` without a quota.
    pub fn quota_usage(&self, user: &User) -> Result<Option<(u64, u64)>> {
        let Some(quota) = quota_of(&self.conn, user)? else { return Ok(None) };
        let (files, reserved) = usage_in(&self.conn, user, "", None)?;
        Ok(Some((quota, files.saturating_add(reserved))))
    }

    // ---- administration (netdisk-server user ..., stats) ----

    /// Every user with what they use, by name.
    pub fn list_users(&self) -> Result<Vec<UserUsage>> {
        let mut stmt = self.conn.prepare(
            "SELECT u.name, u.quota, u.created,
                    (SELECT count(*) FROM nodes n WHERE n.user_id = u.id AND n.kind = ?1),
                    (SELECT coalesce(sum(n.size), 0) FROM nodes n WHERE n.user_id = u.id AND n.kind = ?1)
             FROM users u ORDER BY u.name",
        )?;
        let rows = stmt.query_map([kind_to_int(NodeKind::File)], |r| {
            Ok(UserUsage {
                name: r.get(0)?,
                quota: r.get::<_, Option<i64>>(1)?.map(|q| q as u64),
                created: r.get(2)?,
                files: r.get::<_, i64>(3)? as u64,
                bytes: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_password(&mut self, name: &str, password_hash: &str) -> Result<()> {
        let tx = self.write()?;
        // A new generation ends every session logged in with the old password.
        let sql = "UPDATE users SET password_hash = ?, session_gen = session_gen + 1 WHERE name = ?";
        if tx.run(sql, params![password_hash, name])? == 0 {
            return fail(ErrorCode::NotFound, format!("no user {name}"));
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets (or with `None` lifts) a user's quota: bytes of regular files they may hold.
    pub fn set_quota(&mut self, name: &str, quota: Option<u64>) -> Result<()> {
        let tx = self.write()?;
        if tx.run("UPDATE users SET quota = ? WHERE name = ?", params![quota.map(|q| q as i64), name])? == 0 {
            return fail(ErrorCode::NotFound, format!("no user {name}"));
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes a user with everything they hold, in one transaction: their tree, their unfinished uploads, and
    /// the physical files nobody else refers to (returned: the caller deletes their blobs). Connections of that
    /// user that are logged in are ended at their next request ([`Meta::session_valid`]); the id is never reused.
    pub fn remove_user(&mut self, name: &str) -> Result<(u64, Released)> {
        let tx = self.write()?;
        let id: i64 = tx
            .one("SELECT id FROM users WHERE name = ?", [name], |r| r.get(0))
            .optional()?
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no user {name}")))?;
        let held: Vec<(i64, i64)> = tx
            .prepare(
                "SELECT pfile_id, count(*) FROM nodes WHERE user_id = ? AND pfile_id IS NOT NULL GROUP BY pfile_id",
            )?
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let uploading: Vec<i64> = tx
            .prepare("SELECT DISTINCT pfile_id FROM uploads WHERE user_id = ?")?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        tx.run("DELETE FROM entries WHERE node IN (SELECT id FROM nodes WHERE user_id = ?)", [id])?;
        let nodes = tx.run("DELETE FROM nodes WHERE user_id = ?", [id])? as u64;
        tx.run("DELETE FROM uploads WHERE user_id = ?", [id])?;
        let mut released = Vec::new();
        for (pfile, n) in held {
            tx.run("UPDATE pfiles SET refs = refs - ? WHERE id = ?", params![n, pfile])?;
            released.extend(release_if_unreferenced(&tx, pfile)?);
        }
        for pfile in uploading {
            released.extend(release_if_unused(&tx, pfile)?);
        }
        let orphans: Vec<i64> = tx
            .prepare("SELECT id FROM pfiles WHERE uploader = ? AND complete = 0")?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        tx.run("DELETE FROM pfiles WHERE uploader = ? AND complete = 0", [id])?;
        released.extend(orphans);
        tx.run("DELETE FROM users WHERE id = ?", [id])?;
        tx.commit()?;
        Ok((nodes, released))
    }

    /// What the store holds, in one read transaction.
    pub fn stats(&mut self) -> Result<StoreStats> {
        let tx = self.conn.transaction()?;
        let count = |sql: &str| -> rusqlite::Result<u64> { tx.one(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64) };
        let file = kind_to_int(NodeKind::File);
        let dir = kind_to_int(NodeKind::Dir);
        let stats = StoreStats {
            users: count("SELECT count(*) FROM users")?,
            files: count(&format!("SELECT count(*) FROM nodes WHERE kind = {file}"))?,
            directories: count(&format!("SELECT count(*) FROM nodes WHERE kind = {dir}"))?,
            others: count(&format!("SELECT count(*) FROM nodes WHERE kind NOT IN ({file}, {dir})"))?,
            file_bytes: count(&format!("SELECT coalesce(sum(size), 0) FROM nodes WHERE kind = {file}"))?,
            physical_files: count("SELECT count(*) FROM pfiles WHERE complete = 1")?,
            stored_bytes: count("SELECT coalesce(sum(size), 0) FROM pfiles WHERE complete = 1")?,
            uploads: count("SELECT count(*) FROM uploads")?,
            unfinished_bytes: count("SELECT coalesce(sum(size), 0) FROM pfiles WHERE complete = 0")?,
        };
        tx.commit()?;
        Ok(stats)
    }

    /// Refuses a change that would take `user` past their quota: `path` (a regular file, or nothing yet)
    /// getting `new_size` bytes (see [`check_quota_in`]). A look before the work (outside any transaction): what
    /// decides is the same check inside the transaction that creates the upload or places the content.
    pub fn check_quota(&self, user: &User, path: &str, new_size: u64) -> Result<()> {
        let old = file_size_at(&self.conn, user, path)?;
        check_quota_in(&self.conn, user, path, old, new_size, None)
    }

    // ---- changing the tree ----

    /// A new directory is as deep as its path has names: never deeper than `MAX_DEPTH`, the most names a path may
    /// have (`components`). So are new files, symlinks, special files and links, whose paths go through the same check.
    pub fn mkdir(&mut self, user: &User, path: &str, mode: u32, owner: Owner) -> Result<Attr> {
        let tx = self.write()?;
        let (parent, name) = resolve_parent(&tx, user, path)?;
        if lookup(&tx, parent, name)?.is_some() {
            return fail(ErrorCode::Exists, format!("{path} exists"));
        }
        let t = now();
        let node = insert_node(&tx, user.id, NodeKind::Dir, mode, owner, 2, t, None, 0)?;
        add_entry(&tx, parent, name, node, t)?;
        tx.run("UPDATE nodes SET nlink = nlink + 1 WHERE id = ?", [parent])?;
        let attr = attr_of(&tx, node)?;
        tx.commit()?;
        Ok(attr)
    }

    pub fn symlink(&mut self, user: &User, path: &str, target: &str, owner: Owner) -> Result<Attr> {
        if target.is_empty() || target.len() > netdisk_protocol::MAX_PATH || target.contains('\0') {
            return fail(ErrorCode::Invalid, "bad symlink target");
        }
        self.create_leaf(
            user,
            path,
            Leaf { kind: NodeKind::Symlink, mode: 0o777, owner, target: Some(target), rdev: 0 },
        )
    }

    pub fn mknod(
        &mut self,
        user: &User,
        path: &str,
        kind: NodeKind,
        mode: u32,
        rdev: u64,
        owner: Owner,
    ) -> Result<Attr> {
        let rdev = match kind {
            NodeKind::CharDevice | NodeKind::BlockDevice => rdev,
            NodeKind::Fifo | NodeKind::Socket => 0,
            NodeKind::File => return self.create_empty_file(user, path, mode, owner),
            NodeKind::Dir | NodeKind::Symlink => {
                return fail(ErrorCode::Invalid, "mknod makes fifos, sockets, devices and files")
            }
        };
        self.create_leaf(user, path, Leaf { kind, mode, owner, target: None, rdev })
    }

    /// Creates an empty regular file (`EEXIST` if the name is taken).
    pub fn create_empty_file(&mut self, user: &User, path: &str, mode: u32, owner: Owner) -> Result<Attr> {
        self.create_leaf(user, path, Leaf { kind: NodeKind::File, mode, owner, target: None, rdev: 0 })
    }

    fn create_leaf(&mut self, user: &User, path: &str, leaf: Leaf<'_>) -> Result<Attr> {
        let tx = self.write()?;
        let (parent, name) = resolve_parent(&tx, user, path)?;
        if lookup(&tx, parent, name)?.is_some() {
            return fail(ErrorCode::Exists, format!("{path} exists"));
        }
        let t = now();
        let node = insert_node(&tx, user.id, leaf.kind, leaf.mode, leaf.owner, 1, t, leaf.target, leaf.rdev)?;
        if let Some(target) = leaf.target {
            tx.run("UPDATE nodes SET size = ? WHERE id = ?", params![target.len() as i64, node])?;
        }
        add_entry(&tx, parent, name, node, t)?;
        let attr = attr_of(&tx, node)?;
        tx.commit()?;
        Ok(attr)
    }

    pub fn link(&mut self, user: &User, existing: &str, new: &str) -> Result<Attr> {
        let tx = self.write()?;
        let node = resolve(&tx, user, existing)?;
        if node.kind == NodeKind::Dir {
            return fail(ErrorCode::NotPermitted, "hard links to directories are not allowed");
        }
        let (parent, name) = resolve_parent(&tx, user, new)?;
        if lookup(&tx, parent, name)?.is_some() {
            return fail(ErrorCode::Exists, format!("{new} exists"));
        }
        let t = now();
        add_entry(&tx, parent, name, node.id, t)?;
        tx.run(
            "UPDATE nodes SET nlink = nlink + 1, ctime_s = ?, ctime_ns = ? WHERE id = ?",
            params![t.sec, t.nsec, node.id],
        )?;
        let attr = attr_of(&tx, node.id)?;
        tx.commit()?;
        Ok(attr)
    }

    /// Removes a name that is not a directory (unlink).
    pub fn unlink(&mut self, user: &User, path: &str) -> Result<Released> {
        let tx = self.write()?;
        let (parent, name) = resolve_parent(&tx, user, path)?;
        let node = lookup(&tx, parent, name)?.ok_or_else(|| not_found(path))?;
        if node.kind == NodeKind::Dir {
            return fail(ErrorCode::IsDir, format!("{path} is a directory"));
        }
        let t = now();
        remove_entry(&tx, parent, name, t)?;
        let released = drop_link(&tx, &node, t)?;
        tx.commit()?;
        Ok(released)
    }

    pub fn rmdir(&mut self, user: &User, path: &str) -> Result<()> {
        let tx = self.write()?;
        let (parent, name) = resolve_parent(&tx, user, path)?;
        let node = lookup(&tx, parent, name)?.ok_or_else(|| not_found(path))?;
        if node.kind != NodeKind::Dir {
            return fail(ErrorCode::NotDir, format!("{path} is not a directory"));
        }
        if has_entries(&tx, node.id)? {
            return fail(ErrorCode::NotEmpty, format!("{path} is not empty"));
        }
        let t = now();
        remove_entry(&tx, parent, name, t)?;
        tx.run("UPDATE nodes SET nlink = nlink - 1 WHERE id = ?", [parent])?;
        tx.run("DELETE FROM nodes WHERE id = ?", [node.id])?;
        tx.commit()?;
        Ok(())
    }

    /// Atomic rename of a file or a whole directory (its subtree moves with it).
    pub fn rename(&mut self, user: &User, from: &str, to: &str, noreplace: bool) -> Result<Released> {
        let tx = self.write()?;
        let (from_parent, from_name) = resolve_parent(&tx, user, from)?;
        let node = lookup(&tx, from_parent, from_name)?.ok_or_else(|| not_found(from))?;
        let (to_parent, to_name) = resolve_parent(&tx, user, to)?;
        if node.kind == NodeKind::Dir && is_ancestor_or_self(&tx, node.id, to_parent)? {
            return fail(ErrorCode::Invalid, format!("cannot move {from} into itself"));
        }
        if node.kind == NodeKind::Dir {
            check_depth(&tx, node.id, components(from)?.len(), components(to)?.len())?;
        }
        let existing = lookup(&tx, to_parent, to_name)?;
        let t = now();
        let mut released = Vec::new();
        if let Some(target) = &existing {
            if noreplace {
                return fail(ErrorCode::Exists, format!("{to} exists"));
            }
            if target.id == node.id {
                // Two names of one node (or the same name): nothing to do, as rename(2) says.
                tx.commit()?;
                return Ok(released);
            }
            match (node.kind == NodeKind::Dir, target.kind == NodeKind::Dir) {
                (true, false) => return fail(ErrorCode::NotDir, format!("{to} is not a directory")),
                (false, true) => return fail(ErrorCode::IsDir, format!("{to} is a directory")),
                (true, true) => {
                    if has_entries(&tx, target.id)? {
                        return fail(ErrorCode::NotEmpty, format!("{to} is not empty"));
                    }
                    remove_entry(&tx, to_parent, to_name, t)?;
                    tx.run("UPDATE nodes SET nlink = nlink - 1 WHERE id = ?", [to_parent])?;
                    tx.run("DELETE FROM nodes WHERE id = ?", [target.id])?;
                }
                (false, false) => {
                    remove_entry(&tx, to_parent, to_name, t)?;
                    released = drop_link(&tx, target, t)?;
                }
            }
        }
        remove_entry(&tx, from_parent, from_name, t)?;
        add_entry(&tx, to_parent, to_name, node.id, t)?;
        if node.kind == NodeKind::Dir && from_parent != to_parent {
            tx.run("UPDATE nodes SET nlink = nlink - 1 WHERE id = ?", [from_parent])?;
            tx.run("UPDATE nodes SET nlink = nlink + 1 WHERE id = ?", [to_parent])?;
        }
        tx.run("UPDATE nodes SET ctime_s = ?, ctime_ns = ? WHERE id = ?", params![t.sec, t.nsec, node.id])?;
        tx.commit()?;
        Ok(released)
    }

    /// Changes mode, owner and times (size goes through [`Meta::set_content`]).
    pub fn set_attr(&mut self, user: &User, r: &SetAttr) -> Result<Attr> {
        let tx = self.write()?;
        let node = resolve(&tx, user, &r.path)?;
        let t = now();
        let at = |s: SetTime| match s {
            SetTime::Now => t,
            SetTime::At(ts) => ts,
        };
        if let Some(mode) = r.mode {
            tx.run("UPDATE nodes SET mode = ? WHERE id = ?", params![mode & 0o7777, node.id])?;
        }
        if let Some(uid) = r.uid {
            tx.run("UPDATE nodes SET uid = ? WHERE id = ?", params![uid, node.id])?;
        }
        if let Some(gid) = r.gid {
            tx.run("UPDATE nodes SET gid = ? WHERE id = ?", params![gid, node.id])?;
        }
        if let Some(a) = r.atime.map(at) {
            check_time(a)?;
            tx.run("UPDATE nodes SET atime_s = ?, atime_ns = ? WHERE id = ?", params![a.sec, a.nsec, node.id])?;
        }
        if let Some(m) = r.mtime.map(at) {
            check_time(m)?;
            tx.run("UPDATE nodes SET mtime_s = ?, mtime_ns = ? WHERE id = ?", params![m.sec, m.nsec, node.id])?;
        }
        tx.run("UPDATE nodes SET ctime_s = ?, ctime_ns = ? WHERE id = ?", params![t.sec, t.nsec, node.id])?;
        let attr = attr_of(&tx, node.id)?;
        tx.commit()?;
        Ok(attr)
    }

    /// Gives the regular file at `path` new content, creating it (with `new`) if the name is free.
    /// The node keeps its id when it exists. Returns its attributes and physical files to release.
    pub fn set_content(&mut self, user: &User, path: &str, content: Content, new: NewFile) -> Result<(Attr, Released)> {
        let tx = self.write()?;
        let result = place_content(&tx, user, path, content, new)?;
        tx.commit()?;
        Ok(result)
    }

    /// Checks that `path` could receive file content (parent is a directory, the name is free or a regular file).
    pub fn check_file_target(&self, user: &User, path: &str) -> Result<()> {
        let (parent, name) = resolve_parent(&self.conn, user, path)?;
        match lookup(&self.conn, parent, name)? {
            Some(n) if n.kind == NodeKind::Dir => fail(ErrorCode::IsDir, format!("{path} is a directory")),
            Some(n) if n.kind != NodeKind::File => {
                fail(ErrorCode::Exists, format!("{path} exists and is not a regular file"))
            }
            _ => Ok(()),
        }
    }

    // ---- physical files and uploads ----

    pub fn pfile(&self, id: i64) -> Result<Option<PFile>> {
        Ok(self
            .conn
            .one(&format!("SELECT {PFILE_COLUMNS} FROM pfiles WHERE id = ?"), [id], pfile_from_row)
            .optional()?)
    }

    /// A complete physical file of this identity that this user's tree already refers to. Named by md5 alone
    /// (no SHA-256), it is found only when the user holds exactly one content with that md5 and size: between two
    /// that collide, md5 cannot choose.
    pub fn own_complete(&self, user: &User, id: Identity<'_>) -> Result<Option<i64>> {
        let found: Option<(i64, i64)> = match id.sha256 {
            Some(sha256) => self
                .conn
                .one(
                    "SELECT p.id, 1 FROM nodes n JOIN pfiles p ON p.id = n.pfile_id
                     WHERE n.user_id = ? AND p.sha256 = ? AND p.md5 = ? AND p.size = ? AND p.complete = 1 LIMIT 1",
                    params![user.id, sha256, id.md5, id.size as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?,
            None => self.conn.one(
                "SELECT min(p.id), count(DISTINCT p.id) FROM nodes n JOIN pfiles p ON p.id = n.pfile_id
                     WHERE n.user_id = ? AND p.md5 = ? AND p.size = ? AND p.complete = 1",
                params![user.id, id.md5, id.size as i64],
                |r| Ok(r.get::<_, Option<i64>>(0)?.map(|p| (p, r.get::<_, i64>(1).unwrap_or(0)))),
            )?,
        };
        Ok(found.filter(|(_, distinct)| *distinct == 1).map(|(p, _)| p))
    }

    /// A complete physical file of this identity, whoever holds it, if it can be proven (it has a proof tag).
    pub fn provable(&self, sha256: &str, size: u64) -> Result<Option<Provable>> {
        Ok(self
            .conn
            .one(
                "SELECT id, md5, proof_tag FROM pfiles WHERE sha256 = ? AND size = ? AND complete = 1 AND proof_tag IS NOT NULL LIMIT 1",
                params![sha256, size as i64],
                |r| Ok(Provable { pfile_id: r.get(0)?, md5: r.get(1)?, proof_tag: r.get(2)? }),
            )
            .optional()?)
    }

    /// This user's unfinished physical file of this identity (to resume).
    pub fn own_incomplete(&self, user: &User, id: Identity<'_>) -> Result<Option<PFile>> {
        Ok(self
            .conn
            .one(
                &format!("SELECT {PFILE_COLUMNS} FROM pfiles WHERE uploader = ? AND md5 = ? AND sha256 IS ? AND size = ? AND complete = 0 LIMIT 1"),
                params![user.id, id.md5, id.sha256, id.size as i64],
                pfile_from_row,
            )
            .optional()?)
    }

    /// The store's proof salt (made with the schema; see `SCHEMA_V4`).
    pub fn proof_salt(&self) -> Result<Vec<u8>> {
        Ok(self.conn.one("SELECT value FROM settings WHERE name = 'proof_salt'", [], |r| r.get(0))?)
    }

    /// Whether `user` may be challenged for this content now: true (and recorded, so that no other challenge
    /// comes until `until`) unless a challenge was given within the block time. Each user gets one try per
    /// content in that time; only a right answer lifts the block ([`Meta::proof_passed`]).
    /// A user holds at most `max_blocks` blocks: each `UploadFile` of new content would otherwise add a row for a
    /// day, so a client naming made-up content could grow the database without bound. At the cap, no challenge is
    /// given (the ordinary upload follows, as for a blocked content) until blocks expire.
    pub fn take_proof_attempt(
        &mut self,
        user: &User,
        sha256: &str,
        size: u64,
        until: i64,
        max_blocks: u32,
    ) -> Result<bool> {
        let tx = self.write()?;
        let t = now().sec;
        // Expired blocks go a few at a time, so no request does unbounded work for them.
        tx.run(
            "DELETE FROM proof_blocks WHERE (user_id, sha256, size) IN
             (SELECT user_id, sha256, size FROM proof_blocks WHERE until <= ? LIMIT 16)",
            [t],
        )?;
        let blocked: bool = tx.one(
            "SELECT EXISTS (SELECT 1 FROM proof_blocks WHERE user_id = ? AND sha256 = ? AND size = ? AND until > ?)",
            params![user.id, sha256, size as i64, t],
            |r| r.get(0),
        )?;
        let full = || -> Result<bool> {
            let held: i64 = tx.one(
                "SELECT count(*) FROM (SELECT 1 FROM proof_blocks WHERE user_id = ? LIMIT ?)",
                params![user.id, max_blocks],
                |r| r.get(0),
            )?;
            Ok(held >= i64::from(max_blocks))
        };
        let challenge = !blocked && !full()?;
        if challenge {
            tx.run(
                "INSERT OR REPLACE INTO proof_blocks (user_id, sha256, size, until) VALUES (?, ?, ?, ?)",
                params![user.id, sha256, size as i64, until],
            )?;
        }
        tx.commit()?;
        Ok(challenge)
    }

    /// A right answer: the user may be challenged for this content again.
    pub fn proof_passed(&mut self, user: &User, sha256: &str, size: u64) -> Result<()> {
        self.conn.run(
            "DELETE FROM proof_blocks WHERE user_id = ? AND sha256 = ? AND size = ?",
            params![user.id, sha256, size as i64],
        )?;
        Ok(())
    }

    /// Creates an incomplete physical file of this user's, whose content is to go to `path` (a small file sent
    /// whole, a truncate's new content), once admitted against the quota and the disk ([`admit`]).
    pub fn new_pfile(
        &mut self,
        user: &User,
        path: &str,
        id: Identity<'_>,
        chunk_size: u32,
        room: &Room<'_>,
    ) -> Result<PFile> {
        let tx = self.write()?;
        admit(&tx, user, path, id.size, None, room)?;
        let pfile = insert_pfile(&tx, user, id, chunk_size)?;
        tx.commit()?;
        Ok(pfile)
    }

    /// A new upload of new content to `path`, in one transaction: its admission against the quota and the disk
    /// ([`admit`]), its physical file and the upload record.
    pub fn new_upload(
        &mut self,
        user: &User,
        path: &str,
        id: Identity<'_>,
        chunk_size: u32,
        new: NewFile,
        room: &Room<'_>,
    ) -> Result<(PFile, i64, Released)> {
        let tx = self.write()?;
        admit(&tx, user, path, id.size, None, room)?;
        let pfile = insert_pfile(&tx, user, id, chunk_size)?;
        let (upload_id, released) = record_upload(&tx, user, path, pfile.id, new)?;
        tx.commit()?;
        Ok((pfile, upload_id, released))
    }

    /// Records (or replaces) this user's upload to `path`. A replaced upload's unfinished file is released if nothing else uses it.
    /// The physical file keeps the disk space it reserved; `path` is admitted against the quota ([`admit`]).
    /// `None` when that physical file is no longer unfinished (it expired, or was sealed or discarded meanwhile).
    pub fn upsert_upload(
        &mut self,
        user: &User,
        path: &str,
        pfile: &PFile,
        new: NewFile,
    ) -> Result<Option<(i64, Released)>> {
        let pfile_id = pfile.id;
        let tx = self.write()?;
        let live =
            tx.run("UPDATE pfiles SET touched = ? WHERE id = ? AND complete = 0", params![now().sec, pfile_id])?;
        if live == 0 {
            return Ok(None);
        }
        admit(&tx, user, path, pfile.size, Some(pfile_id), &Room::UNLIMITED)?;
        let result = record_upload(&tx, user, path, pfile_id, new)?;
        tx.commit()?;
        Ok(Some(result))
    }

    /// Forgets this user's unfinished upload to `path` (the path got its content another way), releasing its
    /// physical file if no other upload uses it.
    pub fn drop_upload(&mut self, user: &User, path: &str) -> Result<Released> {
        let tx = self.write()?;
        let released = drop_upload_in(&tx, user, path)?;
        tx.commit()?;
        Ok(released)
    }

    pub fn upload(&self, user: &User, upload_id: u64) -> Result<Upload> {
        self.conn
            .one(
                "SELECT id, path, pfile_id, mode, uid, gid, mtime_s, mtime_ns FROM uploads WHERE id = ? AND user_id = ?",
                params![upload_id as i64, user.id],
                |r| {
                    let mtime = match (r.get::<_, Option<i64>>(6)?, r.get::<_, Option<u32>>(7)?) {
                        (Some(sec), Some(nsec)) => Some(Timespec { sec, nsec }),
                        _ => None,
                    };
                    Ok(Upload {
                        id: r.get(0)?,
                        path: r.get(1)?,
                        pfile_id: r.get(2)?,
                        mode: r.get(3)?,
                        owner: Owner { uid: r.get(4)?, gid: r.get(5)? },
                        mtime,
                    })
                },
            )
            .optional()?
            .map_or_else(|| fail(ErrorCode::UnknownUpload, format!("no upload {upload_id}")), Ok)
    }

    /// Marks a chunk as stored (its data is synced). Returns the updated physical file, or `None` when it is gone
    /// (folded into an identical complete file, or discarded, by another connection meanwhile).
    /// Records chunk `index` as stored. `hashed` is the running hash extended over it, when it was the next
    /// chunk to hash. This process (`me`) becomes the one to move the running hash on when it extended it, or
    /// when the hash was waiting for this chunk. (One transaction decides, so exactly one process does.)
    pub fn mark_chunk(&mut self, pfile_id: i64, index: u32, hashed: Option<Vec<u8>>, me: u32) -> Result<Option<PFile>> {
        let tx = self.write()?;
        let found = tx
            .one(&format!("SELECT {PFILE_COLUMNS} FROM pfiles WHERE id = ?"), [pfile_id], pfile_from_row)
            .optional()?;
        let Some(mut pfile) = found else {
            return Ok(None);
        };
        if !pfile.complete && !pfile.has_chunk(index) {
            pfile.chunk_map[index as usize / 8] |= 1 << (index % 8);
            pfile.chunks_uploaded += 1;
            tx.run(
                "UPDATE pfiles SET chunk_map = ?, chunks_uploaded = ?, touched = ? WHERE id = ?",
                params![pfile.chunk_map, pfile.chunks_uploaded, now().sec, pfile_id],
            )?;
        }
        if !pfile.complete && pfile.hashed_chunks == index {
            if let Some(state) = hashed {
                pfile.hashed_chunks = index + 1;
                pfile.hash_state = Some(state);
            }
            pfile.hash_owner = Some(me);
            tx.run(
                "UPDATE pfiles SET hashed_chunks = ?, hash_state = ?, hash_owner = ? WHERE id = ?",
                params![pfile.hashed_chunks, pfile.hash_state, me, pfile_id],
            )?;
        }
        tx.commit()?;
        Ok(Some(pfile))
    }

    /// Makes this process (`me`) the one to move the running hash on (to finish it); the one before stops at
    /// its next save.
    pub fn take_hash(&mut self, pfile_id: i64, me: u32) -> Result<Option<PFile>> {
        let tx = self.write()?;
        tx.run("UPDATE pfiles SET hash_owner = ? WHERE id = ? AND complete = 0", params![me, pfile_id])?;
        let pfile = tx
            .one(&format!("SELECT {PFILE_COLUMNS} FROM pfiles WHERE id = ?"), [pfile_id], pfile_from_row)
            .optional()?;
        tx.commit()?;
        Ok(pfile)
    }

    /// Records that the running hash now covers `to` chunks, if it still covered `from` and this process (`me`)
    /// is still the one to move it on. Returns the physical file as it is then (`None` if it is gone) and
    /// whether this call moved it.
    pub fn advance_hash(
        &mut self,
        pfile_id: i64,
        from: u32,
        to: u32,
        state: Vec<u8>,
        me: u32,
    ) -> Result<Option<(PFile, bool)>> {
        let tx = self.write()?;
        let moved = tx.run(
            "UPDATE pfiles SET hashed_chunks = ?, hash_state = ?
             WHERE id = ? AND hashed_chunks = ? AND hash_owner = ? AND complete = 0",
            params![to, state, pfile_id, from, me],
        )? == 1;
        let pfile = tx
            .one(&format!("SELECT {PFILE_COLUMNS} FROM pfiles WHERE id = ?"), [pfile_id], pfile_from_row)
            .optional()?;
        tx.commit()?;
        Ok(pfile.map(|p| (p, moved)))
    }

    /// Deletes the unfinished physical files that no upload binds and no node refers to: what a request that
    /// died before sealing (a small file sent whole, a truncate's resized content) leaves. Only safe while no
    /// request runs (a server starting, holding the data directory's lock; see recovery.rs). Returns their ids,
    /// whose blobs go after the commit.
    pub fn reclaim_orphans(&mut self) -> Result<Released> {
        let tx = self.write()?;
        let orphans: Vec<i64> = {
            let mut stmt = tx.prepare(
                "SELECT id FROM pfiles p WHERE complete = 0
                 AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.pfile_id = p.id)
                 AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.pfile_id = p.id)",
            )?;
            let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            ids
        };
        for id in &orphans {
            tx.run("DELETE FROM pfiles WHERE id = ?", [id])?;
        }
        tx.commit()?;
        Ok(orphans)
    }

    /// Reclaims at most `limit` unfinished physical files (all, with `None`) that made no progress since `cutoff`
    /// (seconds since the epoch), with every upload bound to them: uploads their clients left. A client coming
    /// back to one gets `UnknownUpload` and starts anew. Returns the released ids (their blobs go after the
    /// commit) and the bytes their recorded chunks held. Looks first without writing: most calls find nothing.
    pub fn expire_uploads(&mut self, cutoff: i64, limit: Option<u32>) -> Result<(Released, u64)> {
        let limit = limit.map_or(-1, i64::from);
        let sql = "SELECT id FROM pfiles WHERE complete = 0 AND touched < ? ORDER BY touched LIMIT ?";
        let found: Vec<i64> = self
            .conn
            .prepare_cached(sql)?
            .query_map(params![cutoff, limit], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if found.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let tx = self.write()?;
        let (mut released, mut written) = (Vec::new(), 0u64);
        for id in found {
            // Looked at again inside the transaction: a chunk may have been recorded meanwhile.
            let row: Option<(i64, i64, i64)> = tx
                .one(
                    "SELECT size, chunk_size, chunks_uploaded FROM pfiles WHERE id = ? AND complete = 0 AND touched < ?",
                    params![id, cutoff],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((size, chunk_size, chunks)) = row else { continue };
            tx.run("DELETE FROM uploads WHERE pfile_id = ?", [id])?;
            tx.run("DELETE FROM pfiles WHERE id = ?", [id])?;
            written += (chunks as u64).saturating_mul(chunk_size as u64).min(size as u64);
            released.push(id);
        }
        tx.commit()?;
        Ok((released, written))
    }

    /// Discards an unfinished physical file whose bytes failed verification (or a half-made one), with every
    /// upload bound to it. A complete one is never touched. Its id is released (its blob to be removed) when the row
    /// went now, or was gone already (then the blob, if any, belongs to nobody): never while the row is complete.
    pub fn discard_pfile(&mut self, pfile_id: i64) -> Result<Released> {
        let tx = self.write()?;
        let complete: Option<bool> =
            tx.one("SELECT complete FROM pfiles WHERE id = ?", [pfile_id], |r| r.get(0)).optional()?;
        if complete == Some(false) {
            tx.run("DELETE FROM pfiles WHERE id = ?", [pfile_id])?;
            tx.run("DELETE FROM uploads WHERE pfile_id = ?", [pfile_id])?;
        }
        tx.commit()?;
        Ok(if complete == Some(true) { Vec::new() } else { vec![pfile_id] })
    }

    /// Sealing (`seal_in`) and [`Meta::set_content`] in one transaction: content built on the server (a resized
    /// copy) is sealed and placed at `path` at once, so it is never complete without a holder (a crash in between
    /// leaked it, and another connection could release it before it was placed). `None` when the physical file is gone.
    pub fn seal_and_set_content(
        &mut self,
        user: &User,
        path: &str,
        pfile_id: i64,
        hashes: &Hashes,
        new: NewFile,
    ) -> Result<Option<(Attr, Released)>> {
        let tx = self.write()?;
        let Some((sealed, mut released)) = seal_in(&tx, pfile_id, hashes)? else {
            return Ok(None);
        };
        let size: i64 = tx.one("SELECT size FROM pfiles WHERE id = ?", [sealed], |r| r.get(0))?;
        let (attr, more) = place_content(&tx, user, path, Content { pfile_id: Some(sealed), size: size as u64 }, new)?;
        released.extend(more);
        tx.commit()?;
        Ok(Some((attr, released)))
    }

    /// Sealing (`seal_in`) and [`Meta::finish_upload`] in one transaction (one commit to wait for, not two).
    /// `None` when the physical file is gone (another connection sealed and folded it, or discarded it).
    /// Seals a verified physical file (a small file sent whole) and places it at `path`, in one transaction.
    /// `None` when the row is gone. When the placement fails, nothing changes: the caller discards the file.
    pub fn seal_and_place(
        &mut self,
        user: &User,
        path: &str,
        pfile_id: i64,
        hashes: &Hashes,
        size: u64,
        new: NewFile,
    ) -> Result<Option<(Attr, Released)>> {
        let tx = self.write()?;
        let Some((sealed, mut released)) = seal_in(&tx, pfile_id, hashes)? else {
            return Ok(None);
        };
        let (attr, replaced) = place_content(&tx, user, path, Content { pfile_id: Some(sealed), size }, new)?;
        released.extend(replaced);
        released.extend(drop_upload_in(&tx, user, path)?);
        tx.commit()?;
        Ok(Some((attr, released)))
    }

    pub fn seal_and_finish(
        &mut self,
        user: &User,
        upload: &Upload,
        pfile_id: i64,
        hashes: &Hashes,
    ) -> Result<Option<(Result<Attr>, Released)>> {
        let tx = self.write()?;
        let Some((sealed, mut released)) = seal_in(&tx, pfile_id, hashes)? else {
            return Ok(None);
        };
        match place_upload(&tx, user, upload, sealed)? {
            Ok((attr, more)) => {
                released.extend(more);
                tx.commit()?;
                Ok(Some((Ok(attr), released)))
            }
            Err(e) => {
                // The seal is rolled back with the placement: the unfinished file goes with its upload.
                tx.rollback()?;
                Ok(Some((Err(e), self.drop_unplaced_upload(upload, pfile_id)?)))
            }
        }
    }

    /// Places a finished upload's content at its path and forgets the upload.
    /// If the path cannot take it any more (its directory was removed meanwhile), the upload is dropped and the
    /// inner result says why. A complete physical file that ends up with no reference is released either way.
    pub fn finish_upload(&mut self, user: &User, upload: &Upload, pfile_id: i64) -> Result<(Result<Attr>, Released)> {
        let tx = self.write()?;
        match place_upload(&tx, user, upload, pfile_id)? {
            Ok((attr, released)) => {
                tx.commit()?;
                Ok((Ok(attr), released))
            }
            Err(e) => {
                tx.rollback()?;
                Ok((Err(e), self.drop_unplaced_upload(upload, pfile_id)?))
            }
        }
    }

    /// Forgets an upload whose content could not be placed, and its physical file if nothing else refers to it.
    fn drop_unplaced_upload(&mut self, upload: &Upload, pfile_id: i64) -> Result<Released> {
        let tx = self.write()?;
        tx.run("DELETE FROM uploads WHERE id = ?", [upload.id])?;
        let released = release_if_unused(&tx, pfile_id)?;
        tx.commit()?;
        Ok(released)
    }

    /// Instant upload: refers to a complete physical file from `path`, if it is still complete (a concurrent delete may have released it).
    pub fn place_if_complete(
        &mut self,
        user: &User,
        path: &str,
        pfile_id: i64,
        new: NewFile,
    ) -> Result<Option<(Attr, Released)>> {
        let tx = self.write()?;
        let size: Option<i64> =
            tx.one("SELECT size FROM pfiles WHERE id = ? AND complete = 1", [pfile_id], |r| r.get(0)).optional()?;
        let Some(size) = size else {
            return Ok(None);
        };
        let result = place_content(&tx, user, path, Content { pfile_id: Some(pfile_id), size: size as u64 }, new)?;
        tx.commit()?;
        Ok(Some(result))
    }
}

// ---- helpers that run inside a transaction (or on the plain connection for reads) ----

/// Marks a verified physical file complete, or folds it into an identical complete one (same md5, sha256 and
/// size): then uploads bound to it move to the twin and it is released. `None` when the row is gone.
fn seal_in(conn: &Connection, pfile_id: i64, hashes: &Hashes) -> Result<Option<(i64, Released)>> {
    let (md5, sha256) = (hashes.md5.as_str(), hashes.sha256.as_str());
    let size: Option<i64> = conn.one("SELECT size FROM pfiles WHERE id = ?", [pfile_id], |r| r.get(0)).optional()?;
    let Some(size) = size else {
        return Ok(None);
    };
    let twin: Option<i64> = conn
        .one(
            "SELECT id FROM pfiles WHERE md5 = ? AND size = ? AND sha256 = ? AND complete = 1 AND id != ? LIMIT 1",
            params![md5, size, sha256, pfile_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Some(match twin {
        Some(twin) => {
            conn.run("UPDATE uploads SET pfile_id = ? WHERE pfile_id = ?", params![twin, pfile_id])?;
            // Content sealed by an older server has no proof tag yet: these bytes give it one.
            conn.run(
                "UPDATE pfiles SET proof_tag = ? WHERE id = ? AND proof_tag IS NULL",
                params![hashes.proof_tag, twin],
            )?;
            conn.run("DELETE FROM pfiles WHERE id = ?", [pfile_id])?;
            (twin, vec![pfile_id])
        }
        None => {
            conn.run(
                "UPDATE pfiles SET complete = 1, md5 = ?, sha256 = ?, proof_tag = ?, uploader = NULL WHERE id = ?",
                params![md5, sha256, hashes.proof_tag, pfile_id],
            )?;
            (pfile_id, Vec::new())
        }
    }))
}

/// Places the complete physical file `pfile_id` at the upload's path and forgets the upload, inside the caller's
/// transaction. The inner error is the path refusing the content (the caller rolls back and drops the upload).
fn place_upload(conn: &Connection, user: &User, upload: &Upload, pfile_id: i64) -> Result<Result<(Attr, Released)>> {
    let size: i64 = conn.one("SELECT size FROM pfiles WHERE id = ? AND complete = 1", [pfile_id], |r| r.get(0))?;
    let new = NewFile { mode: upload.mode, owner: upload.owner, mtime: upload.mtime };
    let content = Content { pfile_id: Some(pfile_id), size: size as u64 };
    let (attr, mut released) = match place_content(conn, user, &upload.path, content, new) {
        Ok(placed) => placed,
        Err(e) => return Ok(Err(e)),
    };
    conn.run("DELETE FROM uploads WHERE id = ?", [upload.id])?;
    released.extend(release_if_unreferenced(conn, pfile_id)?);
    Ok(Ok((attr, released)))
}

fn insert_pfile(conn: &Connection, user: &User, identity: Identity<'_>, chunk_size: u32) -> Result<PFile> {
    let Identity { md5, sha256, size } = identity;
    let total = check_chunk_count(size, chunk_size)?;
    let map = vec![0u8; (total as usize).div_ceil(8)];
    let t = now().sec;
    conn.run(
        "INSERT INTO pfiles (md5, sha256, size, chunk_size, total_chunks, chunk_map, uploader, created, touched)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![md5, sha256, size as i64, chunk_size, total, map, user.id, t, t],
    )?;
    let id = conn.last_insert_rowid();
    Ok(conn.one(&format!("SELECT {PFILE_COLUMNS} FROM pfiles WHERE id = ?"), [id], pfile_from_row)?)
}

/// Refuses a size of more than [`MAX_CHUNKS`] chunks of `chunk_size` (`FileTooBig`); else the chunk count.
pub fn check_chunk_count(size: u64, chunk_size: u32) -> Result<u32> {
    let total = size.div_ceil(chunk_size.max(1) as u64);
    if total > MAX_CHUNKS {
        return fail(
            ErrorCode::FileTooBig,
            format!("{size} bytes: files are at most {MAX_CHUNKS} chunks of {chunk_size} bytes here"),
        );
    }
    Ok(total as u32)
}

/// The size of the regular file at `path` (0 when there is none, or something else is there).
fn file_size_at(conn: &Connection, user: &User, path: &str) -> Result<u64> {
    match resolve(conn, user, path) {
        Ok(node) if node.kind == NodeKind::File => {
            Ok(conn.one("SELECT size FROM nodes WHERE id = ?", [node.id], |r| r.get::<_, i64>(0))? as u64)
        }
        Ok(_) => Ok(0),
        Err(crate::error::Error::Wire(_)) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Refuses (`QuotaExceeded`) `path` growing from `old` to `new_size` bytes when the user's usage would then pass
/// their quota. Usage: the sizes of the user's regular files (a hard link counts once; content shared by
/// deduplication counts for each holder) plus the declared size of each of their unfinished physical files
/// (counted once however many uploads it has), except one that only uploads to `path` are bound to (the change
/// replaces it) and `exclude` (the one the change is about). Shrinking is always allowed.
fn check_quota_in(
    conn: &Connection,
    user: &User,
    path: &str,
    old: u64,
    new_size: u64,
    exclude: Option<i64>,
) -> Result<()> {
    if new_size <= old {
        return Ok(());
    }
    let Some(quota) = quota_of(conn, user)? else { return Ok(()) };
    let (files, reserved) = usage_in(conn, user, path, exclude)?;
    let after = files.saturating_sub(old).saturating_add(reserved).saturating_add(new_size);
    if after > quota {
        let note = if reserved > 0 { format!(" ({reserved} of them by unfinished uploads)") } else { String::new() };
        return fail(
            ErrorCode::QuotaExceeded,
            format!("over quota: {after} bytes would be used{note}, the quota is {quota}"),
        );
    }
    Ok(())
}

fn quota_of(conn: &Connection, user: &User) -> Result<Option<u64>> {
    let quota: Option<i64> = conn.one("SELECT quota FROM users WHERE id = ?", [user.id], |r| r.get(0))?;
    Ok(quota.map(|q| q as u64))
}

/// What counts against `user`'s quota ([`check_quota_in`]): the sizes of their regular files, and the bytes their
/// unfinished uploads reserve (but `exclude`, and one only uploads to `path` are bound to).
fn usage_in(conn: &Connection, user: &User, path: &str, exclude: Option<i64>) -> Result<(u64, u64)> {
    let files: i64 = conn.one(
        "SELECT coalesce(sum(size), 0) FROM nodes WHERE user_id = ? AND kind = ?",
        params![user.id, kind_to_int(NodeKind::File)],
        |r| r.get(0),
    )?;
    let reserved: i64 = conn.one(
        "SELECT coalesce(sum(p.size), 0) FROM pfiles p
         WHERE p.complete = 0 AND p.uploader = ?1 AND p.id IS NOT ?2
           AND NOT (EXISTS (SELECT 1 FROM uploads u WHERE u.pfile_id = p.id AND u.user_id = ?1 AND u.path = ?3)
                    AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.pfile_id = p.id
                                    AND NOT (u.user_id = ?1 AND u.path = ?3)))",
        params![user.id, exclude, path],
        |r| r.get(0),
    )?;
    Ok((files as u64, reserved as u64))
}

/// Bytes that unfinished physical files (but `exclude`) have reserved on the disk and not written yet: each one's
/// size less its recorded chunks.
fn unwritten_reservations(conn: &Connection, exclude: Option<i64>) -> Result<u64> {
    let n: i64 = conn.one(
        "SELECT coalesce(sum(max(0, size - chunks_uploaded * chunk_size)), 0) FROM pfiles
         WHERE complete = 0 AND id IS NOT ?",
        [exclude],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// Admits new content of `size` bytes for `path` of `user`, inside the transaction that creates its physical file
/// (or binds `reuse`, an unfinished one of theirs, which keeps the disk space it reserved). Quota: see
/// [`check_quota_in`]. Disk: `size` must fit in the free space beyond the reserve (`room`) less what other
/// unfinished uploads have reserved and not written yet; else `NoSpace`. Decided in one IMMEDIATE transaction,
/// so parallel uploads cannot all pass.
fn admit(conn: &Connection, user: &User, path: &str, size: u64, reuse: Option<i64>, room: &Room<'_>) -> Result<()> {
    let old = file_size_at(conn, user, path)?;
    check_quota_in(conn, user, path, old, size, reuse)?;
    if reuse.is_some() || size == 0 {
        return Ok(());
    }
    let free = (room.0)()?;
    let reserved = unwritten_reservations(conn, None)?;
    let left = free.saturating_sub(reserved);
    if size > left {
        tracing::warn!(size, free, reserved, "disk full: refusing a new upload");
        return fail(
            ErrorCode::NoSpace,
            format!("{size} bytes do not fit: {free} bytes free, {reserved} of them reserved by unfinished uploads"),
        );
    }
    Ok(())
}

fn record_upload(conn: &Connection, user: &User, path: &str, pfile_id: i64, new: NewFile) -> Result<(i64, Released)> {
    let old: Option<i64> = conn
        .one("SELECT pfile_id FROM uploads WHERE user_id = ? AND path = ?", params![user.id, path], |r| r.get(0))
        .optional()?;
    conn.run("DELETE FROM uploads WHERE user_id = ? AND path = ?", params![user.id, path])?;
    let (ms, mns) = match new.mtime {
        Some(t) => (Some(t.sec), Some(t.nsec)),
        None => (None, None),
    };
    conn.run(
        "INSERT INTO uploads (user_id, path, pfile_id, mode, uid, gid, mtime_s, mtime_ns, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![user.id, path, pfile_id, new.mode, new.owner.uid, new.owner.gid, ms, mns, now().sec],
    )?;
    let id = conn.last_insert_rowid();
    let mut released = Vec::new();
    if let Some(old) = old.filter(|old| *old != pfile_id) {
        released = release_if_unused(conn, old)?;
    }
    Ok((id, released))
}

const ATTR_COLUMNS: &str = "n.id, n.kind, n.mode, n.uid, n.gid, n.nlink, n.size, n.atime_s, n.atime_ns, \
                            n.mtime_s, n.mtime_ns, n.ctime_s, n.ctime_ns, n.rdev, p.md5";

const PFILE_COLUMNS: &str =
    "id, md5, size, chunk_size, total_chunks, chunks_uploaded, chunk_map, complete, hashed_chunks, hash_state, \
     hash_owner, sha256";

fn pfile_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PFile> {
    Ok(PFile {
        id: r.get(0)?,
        md5: r.get(1)?,
        size: r.get::<_, i64>(2)? as u64,
        chunk_size: r.get(3)?,
        total_chunks: r.get(4)?,
        chunks_uploaded: r.get(5)?,
        chunk_map: r.get(6)?,
        complete: r.get(7)?,
        hashed_chunks: r.get(8)?,
        hash_state: r.get(9)?,
        hash_owner: r.get(10)?,
        sha256: r.get(11)?,
    })
}

fn attr_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Attr> {
    let kind = kind_from_int(r.get(at + 1)?);
    let md5: Option<String> = r.get(at + 14)?;
    Ok(Attr {
        ino: r.get::<_, i64>(at)? as u64,
        kind,
        mode: r.get(at + 2)?,
        uid: r.get(at + 3)?,
        gid: r.get(at + 4)?,
        nlink: r.get(at + 5)?,
        size: r.get::<_, i64>(at + 6)? as u64,
        atime: Timespec { sec: r.get(at + 7)?, nsec: r.get(at + 8)? },
        mtime: Timespec { sec: r.get(at + 9)?, nsec: r.get(at + 10)? },
        ctime: Timespec { sec: r.get(at + 11)?, nsec: r.get(at + 12)? },
        rdev: r.get::<_, i64>(at + 13)? as u64,
        md5: match kind {
            NodeKind::File => Some(md5.unwrap_or_else(|| EMPTY_MD5.to_string())),
            _ => None,
        },
    })
}

fn attr_of(conn: &Connection, node: i64) -> Result<Attr> {
    Ok(conn.one(
        &format!("SELECT {ATTR_COLUMNS} FROM nodes n LEFT JOIN pfiles p ON p.id = n.pfile_id WHERE n.id = ?"),
        [node],
        |r| attr_from_row(r, 0),
    )?)
}

fn not_found(path: &str) -> crate::error::Error {
    crate::error::Error::Wire(netdisk_protocol::WireError::new(
        ErrorCode::NotFound,
        format!("{path}: no such file or directory"),
    ))
}

fn check_time(t: Timespec) -> Result<()> {
    if t.nsec >= 1_000_000_000 {
        return fail(ErrorCode::Invalid, "nanoseconds out of range");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn insert_node(
    conn: &Connection,
    user_id: i64,
    kind: NodeKind,
    mode: u32,
    owner: Owner,
    nlink: i64,
    t: Timespec,
    target: Option<&str>,
    rdev: u64,
) -> Result<i64> {
    conn.run(
        "INSERT INTO nodes (user_id, kind, mode, uid, gid, nlink, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, rdev, target)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7, ?8, ?7, ?8, ?9, ?10)",
        params![user_id, kind_to_int(kind), mode & 0o7777, owner.uid, owner.gid, nlink, t.sec, t.nsec, rdev as i64, target],
    )?;
    Ok(conn.last_insert_rowid())
}

fn lookup(conn: &Connection, parent: i64, name: &str) -> Result<Option<Node>> {
    Ok(conn
        .one(
            "SELECT n.id, n.kind, n.nlink, n.pfile_id FROM entries e JOIN nodes n ON n.id = e.node WHERE e.parent = ? AND e.name = ?",
            params![parent, name],
            |r| {
                Ok(Node { id: r.get(0)?, kind: kind_from_int(r.get(1)?), nlink: r.get(2)?, pfile_id: r.get(3)? })
            },
        )
        .optional()?)
}

/// Walks a validated path from the user's root.
fn resolve(conn: &Connection, user: &User, path: &str) -> Result<Node> {
    let names = components(path)?;
    let mut node = Node { id: user.root, kind: NodeKind::Dir, nlink: 2, pfile_id: None };
    for (i, name) in names.iter().enumerate() {
        if node.kind != NodeKind::Dir {
            return fail(ErrorCode::NotDir, format!("/{} is not a directory", names[..i].join("/")));
        }
        node = lookup(conn, node.id, name)?.ok_or_else(|| not_found(path))?;
    }
    Ok(node)
}

/// The directory that holds the last name of `path`, and that name. The root has no parent.
fn resolve_parent<'p>(conn: &Connection, user: &User, path: &'p str) -> Result<(i64, &'p str)> {
    let names = components(path)?;
    let Some((name, dirs)) = names.split_last() else {
        return fail(ErrorCode::Invalid, "the root has no name");
    };
    let mut dir = user.root;
    for (i, d) in dirs.iter().enumerate() {
        let node = lookup(conn, dir, d)?.ok_or_else(|| not_found(path))?;
        if node.kind != NodeKind::Dir {
            return fail(ErrorCode::NotDir, format!("/{} is not a directory", names[..=i].join("/")));
        }
        dir = node.id;
    }
    Ok((dir, name))
}

fn has_entries(conn: &Connection, dir: i64) -> Result<bool> {
    Ok(conn.one("SELECT EXISTS (SELECT 1 FROM entries WHERE parent = ?)", [dir], |r| r.get(0))?)
}

/// True when `dir` is `node` or lies below it.
fn is_ancestor_or_self(conn: &Connection, node: i64, mut dir: i64) -> Result<bool> {
    // Directories have exactly one entry, so the parent chain is unique and ends at the root. `dir` was reached
    // by a path, which has at most MAX_DEPTH names: its chain to the root is no longer than that.
    for _ in 0..=MAX_DEPTH {
        if dir == node {
            return Ok(true);
        }
        match conn.one("SELECT parent FROM entries WHERE node = ?", [dir], |r| r.get::<_, i64>(0)).optional()? {
            Some(parent) => dir = parent,
            None => return Ok(false),
        }
    }
    Ok(false)
}

/// Refuses (`NameTooLong`, before anything changes) a rename that would nest a directory deeper than
/// [`MAX_DEPTH`]: directory `node`, now at depth `from` (its path's number of names; a directory has one path),
/// moving to depth `to`. A move up or level makes nothing deeper and costs nothing more. A move down looks for a
/// directory in the subtree lower than the room left, over directories only and never past one level below that
/// room: bounded by the limit, not by how deep the tree is.
fn check_depth(conn: &Connection, node: i64, from: usize, to: usize) -> Result<()> {
    if to <= from {
        return Ok(());
    }
    let too_deep = match MAX_DEPTH.checked_sub(to) {
        None => true,
        Some(room) => conn.one(
            "WITH RECURSIVE below(id, depth) AS (
                 SELECT ?1, 0
                 UNION ALL
                 SELECT e.node, b.depth + 1 FROM below b JOIN entries e ON e.parent = b.id JOIN nodes n ON n.id = e.node
                 WHERE n.kind = ?2 AND b.depth <= ?3
             )
             SELECT EXISTS (SELECT 1 FROM below WHERE depth > ?3)",
            params![node, kind_to_int(NodeKind::Dir), room as i64],
            |r| r.get(0),
        )?,
    };
    if too_deep {
        return fail(ErrorCode::NameTooLong, format!("the move would nest directories more than {MAX_DEPTH} deep"));
    }
    Ok(())
}

fn touch_dir(conn: &Connection, dir: i64, t: Timespec) -> Result<()> {
    conn.run(
        "UPDATE nodes SET mtime_s = ?1, mtime_ns = ?2, ctime_s = ?1, ctime_ns = ?2 WHERE id = ?3",
        params![t.sec, t.nsec, dir],
    )?;
    Ok(())
}

fn add_entry(conn: &Connection, parent: i64, name: &str, node: i64, t: Timespec) -> Result<()> {
    conn.run("INSERT INTO entries (parent, name, node) VALUES (?, ?, ?)", params![parent, name, node])?;
    touch_dir(conn, parent, t)
}

fn remove_entry(conn: &Connection, parent: i64, name: &str, t: Timespec) -> Result<()> {
    conn.run("DELETE FROM entries WHERE parent = ? AND name = ?", params![parent, name])?;
    touch_dir(conn, parent, t)
}

/// One name of a non-directory node is gone: drop a link, and the node with its content reference when it was the last.
fn drop_link(conn: &Connection, node: &Node, t: Timespec) -> Result<Released> {
    if node.nlink > 1 {
        conn.run(
            "UPDATE nodes SET nlink = nlink - 1, ctime_s = ?, ctime_ns = ? WHERE id = ?",
            params![t.sec, t.nsec, node.id],
        )?;
        return Ok(Vec::new());
    }
    conn.run("DELETE FROM nodes WHERE id = ?", [node.id])?;
    match node.pfile_id {
        Some(pfile) => unref_pfile(conn, pfile),
        None => Ok(Vec::new()),
    }
}

/// Forgets the user's unfinished upload to `path`, if any (its content is being replaced).
fn drop_upload_in(conn: &Connection, user: &User, path: &str) -> Result<Released> {
    let old: Option<i64> = conn
        .one("SELECT pfile_id FROM uploads WHERE user_id = ? AND path = ?", params![user.id, path], |r| r.get(0))
        .optional()?;
    let Some(old) = old else {
        return Ok(Vec::new());
    };
    conn.run("DELETE FROM uploads WHERE user_id = ? AND path = ?", params![user.id, path])?;
    release_if_unused(conn, old)
}

fn unref_pfile(conn: &Connection, pfile: i64) -> Result<Released> {
    conn.run("UPDATE pfiles SET refs = refs - 1 WHERE id = ?", [pfile])?;
    release_if_unreferenced(conn, pfile)
}

/// Deletes a complete physical file nothing refers to (no node, no upload). Runs inside the writer's
/// IMMEDIATE transaction, so an instant upload either added its reference before or finds the row gone after.
fn release_if_unreferenced(conn: &Connection, pfile: i64) -> Result<Released> {
    let n = conn.run(
        "DELETE FROM pfiles WHERE id = ?1 AND complete = 1 AND refs <= 0
         AND NOT EXISTS (SELECT 1 FROM uploads WHERE pfile_id = ?1)",
        [pfile],
    )?;
    Ok(if n > 0 { vec![pfile] } else { Vec::new() })
}

/// Deletes the physical file an upload was bound to, once that upload is gone, if nothing else uses it: complete
/// and unreferenced, or unfinished with no other upload. (An upload stays bound to content that another upload
/// completed; when that upload goes, the complete content may have no other holder.)
fn release_if_unused(conn: &Connection, pfile: i64) -> Result<Released> {
    let mut released = release_if_unreferenced(conn, pfile)?;
    released.extend(release_if_orphan_upload(conn, pfile)?);
    Ok(released)
}

/// Deletes an unfinished physical file that no upload is bound to any more.
fn release_if_orphan_upload(conn: &Connection, pfile: i64) -> Result<Released> {
    let n = conn.run(
        "DELETE FROM pfiles WHERE id = ?1 AND complete = 0 AND NOT EXISTS (SELECT 1 FROM uploads WHERE pfile_id = ?1)",
        [pfile],
    )?;
    Ok(if n > 0 { vec![pfile] } else { Vec::new() })
}

fn place_content(
    conn: &Connection,
    user: &User,
    path: &str,
    content: Content,
    new: NewFile,
) -> Result<(Attr, Released)> {
    let (parent, name) = resolve_parent(conn, user, path)?;
    let t = now();
    let mtime = new.mtime.unwrap_or(t);
    // Placing content never takes the user past their quota either (the file moved away from the path since
    // its upload was admitted, say): its own reservation is gone (the physical file is complete by now).
    check_quota_in(conn, user, path, file_size_at(conn, user, path)?, content.size, None)?;
    if let Some(p) = content.pfile_id {
        // Only a complete physical file may be referenced; it may have been released since it was looked up.
        if conn.run("UPDATE pfiles SET refs = refs + 1 WHERE id = ? AND complete = 1", [p])? == 0 {
            // A race, never a client's mistake nor a failure of the server (each caller today checks, in this
            // same transaction, that the content is complete, so it cannot happen there).
            return Err(crate::error::Error::Race("the content was released meanwhile"));
        }
    }
    match lookup(conn, parent, name)? {
        Some(node) if node.kind == NodeKind::File => {
            conn.run(
                "UPDATE nodes SET pfile_id = ?, size = ?, mtime_s = ?, mtime_ns = ?, ctime_s = ?, ctime_ns = ? WHERE id = ?",
                params![content.pfile_id, content.size as i64, mtime.sec, mtime.nsec, t.sec, t.nsec, node.id],
            )?;
            let released = match node.pfile_id {
                Some(old) => unref_pfile(conn, old)?,
                None => Vec::new(),
            };
            Ok((attr_of(conn, node.id)?, released))
        }
        Some(node) if node.kind == NodeKind::Dir => fail(ErrorCode::IsDir, format!("{path} is a directory")),
        Some(_) => fail(ErrorCode::Exists, format!("{path} exists and is not a regular file")),
        None => {
            let node = insert_node(conn, user.id, NodeKind::File, new.mode, new.owner, 1, t, None, 0)?;
            conn.run(
                "UPDATE nodes SET pfile_id = ?, size = ?, mtime_s = ?, mtime_ns = ? WHERE id = ?",
                params![content.pfile_id, content.size as i64, mtime.sec, mtime.nsec, node],
            )?;
            add_entry(conn, parent, name, node, t)?;
            Ok((attr_of(conn, node)?, Vec::new()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Meta, User) {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = Meta::open(&dir.path().join("meta.db")).unwrap();
        meta.add_user("ann", "hash").unwrap();
        let (user, _) = meta.user("ann").unwrap().unwrap();
        (dir, meta, user)
    }

    #[test]
    fn rename_moves_subtrees_and_keeps_link_counts() {
        let (_d, mut meta, u) = setup();
        meta.mkdir(&u, "/a", 0o755, Owner::default()).unwrap();
        meta.mkdir(&u, "/a/b", 0o755, Owner::default()).unwrap();
        meta.create_empty_file(&u, "/a/b/f", 0o644, Owner::default()).unwrap();
        meta.mkdir(&u, "/c", 0o755, Owner::default()).unwrap();
        assert_eq!(meta.stat(&u, "/").unwrap().nlink, 4);
        meta.rename(&u, "/a/b", "/c/b", false).unwrap();
        assert!(meta.stat(&u, "/c/b/f").is_ok());
        assert_eq!(meta.stat(&u, "/a").unwrap().nlink, 2);
        assert_eq!(meta.stat(&u, "/c").unwrap().nlink, 3);
        let err = meta.rename(&u, "/c", "/c/b/x", false).unwrap_err();
        assert_eq!(err.to_wire().code, ErrorCode::Invalid);
    }

    #[test]
    fn user_ids_are_never_given_again_also_after_the_migration_to_v3() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            // A version 2 database: users 1 and 5, and leftovers of a user 7 (gone) in the tree.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute_batch(SCHEMA_V2).unwrap();
            conn.execute_batch(
                "INSERT INTO users (id, name, password_hash, root, created) VALUES (1, 'ann', 'h', 1, 0), (5, 'bo', 'h', 2, 0);
                 INSERT INTO nodes (id, user_id, kind, mode, uid, gid, nlink, atime_s, atime_ns, mtime_s, mtime_ns,
                                    ctime_s, ctime_ns)
                 VALUES (1, 1, 2, 493, 0, 0, 2, 0, 0, 0, 0, 0, 0), (2, 5, 2, 493, 0, 0, 2, 0, 0, 0, 0, 0, 0),
                        (3, 7, 1, 420, 0, 0, 1, 0, 0, 0, 0, 0, 0);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let mut meta = Meta::open(&path).unwrap();
        let (bo, _) = meta.user("bo").unwrap().unwrap();
        assert_eq!((bo.id, bo.root, bo.session_gen), (5, 2, 0), "rows are kept");
        assert_eq!(meta.add_user("cy", "h").unwrap(), 8, "above every id the data shows");
        meta.remove_user("cy").unwrap();
        assert_eq!(meta.add_user("cy", "h").unwrap(), 9, "a removed user's id is not given again");
        // A password change ends the sessions logged in before it; a removal ends all of them.
        assert!(meta.session_valid(&bo).unwrap());
        meta.set_password("bo", "h2").unwrap();
        assert!(!meta.session_valid(&bo).unwrap());
        let (bo, _) = meta.user("bo").unwrap().unwrap();
        assert!(meta.session_valid(&bo).unwrap());
        meta.remove_user("bo").unwrap();
        assert!(!meta.session_valid(&bo).unwrap());
    }

    #[test]
    fn a_version_5_password_logs_in_after_the_migration_to_scram_keys() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        use netdisk_protocol::login::{auth_message, client_proof, proof_is_right, salted_password};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        Meta::open(&path).unwrap().add_user("ann", "replaced below").unwrap();
        // As a version 5 server left it: an argon2id PHC string.
        let phc = argon2::Argon2::default()
            .hash_password(b"secret", &SaltString::encode_b64(&[3u8; 16]).unwrap())
            .unwrap()
            .to_string();
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE users SET password_hash = ?", [&phc]).unwrap();
        conn.pragma_update(None, "user_version", 5).unwrap();
        drop(conn);
        let meta = Meta::open(&path).unwrap();
        let (_, stored) = meta.user("ann").unwrap().unwrap();
        assert!(!stored.contains(&phc), "the old hash is not kept");
        let secret = crate::users::Secret::decode(&stored).expect("converted to SCRAM keys");
        let message = auth_message("ann", &"a".repeat(64), &hex::encode(&secret.salt), &secret.kdf, &"b".repeat(64));
        let salted = salted_password("secret", &secret.salt, &secret.kdf).unwrap();
        assert!(proof_is_right(&secret.keys, &message, &client_proof(&salted, &message)), "the same password logs in");
    }

    #[test]
    fn proof_blocks_are_one_per_content_and_capped_per_user() {
        let (_d, mut meta, u) = setup();
        let until = now().sec + 3600;
        let sha = |i: u32| format!("{i:064x}");
        assert!(meta.take_proof_attempt(&u, &sha(1), 10, until, 3).unwrap(), "a first challenge");
        assert!(!meta.take_proof_attempt(&u, &sha(1), 10, until, 3).unwrap(), "no second one for that content");
        assert!(meta.take_proof_attempt(&u, &sha(2), 10, until, 3).unwrap());
        assert!(meta.take_proof_attempt(&u, &sha(3), 10, until, 3).unwrap());
        // Made-up contents past the cap add no row: no challenge, and the table stops growing.
        for i in 4..50 {
            assert!(!meta.take_proof_attempt(&u, &sha(i), 10, until, 3).unwrap(), "content {i} past the cap");
        }
        let rows: i64 = meta.conn.one("SELECT count(*) FROM proof_blocks", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 3);
        meta.proof_passed(&u, &sha(2), 10).unwrap();
        assert!(meta.take_proof_attempt(&u, &sha(60), 10, until, 3).unwrap(), "room again after a right answer");
    }

    #[test]
    fn pages_are_stable_and_complete() {
        let (_d, mut meta, u) = setup();
        for i in 0..25 {
            meta.create_empty_file(&u, &format!("/f{i:03}"), 0o644, Owner::default()).unwrap();
        }
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (_, page, more) = meta.list(&u, "/", after.as_deref(), 7).unwrap();
            seen.extend(page.iter().map(|e| e.name.clone()));
            if !more {
                break;
            }
            after = seen.last().cloned();
        }
        let want: Vec<String> = (0..25).map(|i| format!("f{i:03}")).collect();
        assert_eq!(seen, want);
    }
}
