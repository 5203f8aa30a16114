//! `netdisk-server fsck`: checks the invariants of a data directory (the database, every user's tree, physical files
//! and their blobs) and reports every violation it finds, one line each.
//! Architecture Invariant: fsck never writes. The database is opened read-only and read in one read transaction (a
//! consistent snapshot, also while a server runs); blobs are only opened for reading.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netdisk_protocol::{is_md5_hex, NodeKind, MAX_CHUNK_SIZE, MAX_DEPTH, MAX_NAME, MAX_PATH, MIN_CHUNK_SIZE};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::blobs::{self, Blobs, Durability};
use crate::error::{Error, Result};
use crate::meta::{self, kind_from_db};

/// What a check found.
pub struct Report {
    pub users: usize,
    pub nodes: usize,
    pub pfiles: usize,
    /// Total recorded size of the physical files.
    pub bytes: u64,
    /// One line per violation, in the order found.
    pub problems: Vec<String>,
}

impl Report {
    /// `fsck: 2 users, 14 nodes, 5 physical files (123456 bytes) checked, no problems`.
    pub fn summary(&self) -> String {
        let problems = match self.problems.len() {
            0 => "no problems".to_string(),
            1 => "1 problem".to_string(),
            n => format!("{n} problems"),
        };
        format!(
            "fsck: {} users, {} nodes, {} physical files ({} bytes) checked, {problems}",
            self.users, self.nodes, self.pfiles, self.bytes
        )
    }
}

/// Checks the data directory `data`. `Err` only when it cannot be checked at all (no database, unknown schema,
/// unreadable tables); every violation found is a line of the report.
pub fn check(data: &Path) -> Result<Report> {
    let db = data.join("meta.db");
    if !db.is_file() {
        return Err(Error::Io(io::Error::other(format!("{} does not exist", db.display()))));
    }
    let conn = open_read_only(&db)?;
    let mut found = Findings::default();
    let snap = read_snapshot(&conn, &mut found)?;
    let blobs = Blobs::new(data, Durability::Normal);
    let mut fsck = Fsck::new(&snap, &blobs, data, found);
    fsck.check_users();
    fsck.check_tree();
    fsck.check_pfiles();
    fsck.check_uploads();
    fsck.check_blob_files();
    let Fsck { found, .. } = fsck;
    let problems = confirm(&conn, &blobs, found)?;
    Ok(Report {
        users: snap.users.len(),
        nodes: snap.nodes.len(),
        pfiles: snap.pfiles.len(),
        bytes: snap.pfiles.values().map(|p| p.size.max(0) as u64).sum(),
        problems,
    })
}

// ---- the snapshot ----

struct UserRow {
    id: i64,
    name: String,
    root: i64,
}

struct NodeRow {
    user_id: i64,
    kind: i64,
    nlink: i64,
    size: i64,
    target: Option<String>,
    pfile_id: Option<i64>,
}

struct EntryRow {
    parent: i64,
    name: String,
    node: i64,
}

struct PFileRow {
    id: i64,
    md5: String,
    size: i64,
    sha256: Option<String>,
    chunk_size: i64,
    total_chunks: i64,
    chunks_uploaded: i64,
    chunk_map: Vec<u8>,
    complete: i64,
    uploader: Option<i64>,
    refs: i64,
    hashed_chunks: i64,
    hash_state: Option<Vec<u8>>,
    /// NULL for content sealed by a server before schema version 3.
    proof_tag: Option<String>,
}

struct UploadRow {
    id: i64,
    user_id: i64,
    path: String,
    pfile_id: i64,
}

/// Every row of the database, read in one read transaction.
struct Snapshot {
    users: Vec<UserRow>,
    /// The last user id given (`sqlite_sequence`): new users get higher ones.
    user_seq: Option<i64>,
    nodes: BTreeMap<i64, NodeRow>,
    entries: Vec<EntryRow>,
    pfiles: BTreeMap<i64, PFileRow>,
    uploads: Vec<UploadRow>,
    /// The store's proof salt, which proof tags and running hashes are salted with.
    proof_salt: Vec<u8>,
}

/// Opens the database without the right to change it. SQLite's read-only mode still needs the `-shm` file of a
/// WAL database (it creates it, and an empty `-wal`, beside the database when no server has them open); when
/// they cannot be created (a read-only copy of a data directory) and no server has the database open, the
/// database is read as immutable instead.
fn open_read_only(db: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let first = Connection::open_with_flags(db, flags).and_then(|conn| {
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))?;
        Ok(conn)
    });
    let e = match first {
        Ok(conn) => return Ok(conn),
        Err(e) => e,
    };
    let side = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p).exists()
    };
    if side("-wal") || side("-shm") {
        return Err(Error::Io(io::Error::other(format!(
            "cannot read {} read-only: {e} (a reader of a WAL database needs its -shm file: run fsck as a user \
             who may write the data directory)",
            db.display()
        ))));
    }
    let uri = format!("file:{}?immutable=1", uri_path(db));
    let conn = Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))?;
    Ok(conn)
}

/// `path` escaped for an SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'%' | b'?' | b'#' => out.push_str(&format!("%{b:02X}")),
            b if b.is_ascii() => out.push(*b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn read_snapshot(conn: &Connection, found: &mut Findings) -> Result<Snapshot> {
    // One read transaction: every table is read from the same committed state, whatever a server writes meanwhile.
    // It ends before any blob is hashed, so that it does not hold back the server's WAL checkpoints for long.
    let tx = conn.unchecked_transaction()?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != meta::SCHEMA_VERSION {
        return Err(Error::Io(io::Error::other(format!(
            "database schema version {version}: this fsck checks version {}",
            meta::SCHEMA_VERSION
        ))));
    }
    let integrity: Vec<String> = rows(&tx, "PRAGMA integrity_check", found, |r| r.get(0))?;
    if integrity != ["ok"] {
        for line in integrity {
            found.definite(format!("database: integrity_check: {line}"));
        }
    }
    // The schema declares no foreign keys (the references are checked below); this catches any a later one adds.
    let fk: Vec<String> = rows(&tx, "PRAGMA foreign_key_check", found, |r| {
        Ok(format!(
            "database: foreign_key_check: table {} row {} refers to a missing row of {}",
            r.get::<_, String>(0)?,
            r.get::<_, Option<i64>>(1)?.map_or("?".into(), |id| id.to_string()),
            r.get::<_, String>(2)?
        ))
    })?;
    for line in fk {
        found.definite(line);
    }
    let users = rows(&tx, "SELECT id, name, root FROM users ORDER BY id", found, |r| {
        Ok(UserRow { id: r.get(0)?, name: r.get(1)?, root: r.get(2)? })
    })?;
    let user_seq = tx.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'users'", [], |r| r.get(0)).optional()?;
    let nodes =
        rows(&tx, "SELECT id, user_id, kind, nlink, size, target, pfile_id FROM nodes ORDER BY id", found, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                NodeRow {
                    user_id: r.get(1)?,
                    kind: r.get(2)?,
                    nlink: r.get(3)?,
                    size: r.get(4)?,
                    target: r.get(5)?,
                    pfile_id: r.get(6)?,
                },
            ))
        })?
        .into_iter()
        .collect();
    let entries = rows(&tx, "SELECT parent, name, node FROM entries ORDER BY parent, name", found, |r| {
        Ok(EntryRow { parent: r.get(0)?, name: r.get(1)?, node: r.get(2)? })
    })?;
    let pfiles = rows(
        &tx,
        "SELECT id, md5, size, sha256, chunk_size, total_chunks, chunks_uploaded, chunk_map, complete, uploader, refs,
                hashed_chunks, hash_state, proof_tag
         FROM pfiles ORDER BY id",
        found,
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                PFileRow {
                    id: r.get(0)?,
                    md5: r.get(1)?,
                    size: r.get(2)?,
                    sha256: r.get(3)?,
                    chunk_size: r.get(4)?,
                    total_chunks: r.get(5)?,
                    chunks_uploaded: r.get(6)?,
                    chunk_map: r.get(7)?,
                    complete: r.get(8)?,
                    uploader: r.get(9)?,
                    refs: r.get(10)?,
                    hashed_chunks: r.get(11)?,
                    hash_state: r.get(12)?,
                    proof_tag: r.get(13)?,
                },
            ))
        },
    )?
    .into_iter()
    .collect();
    let uploads = rows(&tx, "SELECT id, user_id, path, pfile_id FROM uploads ORDER BY id", found, |r| {
        Ok(UploadRow { id: r.get(0)?, user_id: r.get(1)?, path: r.get(2)?, pfile_id: r.get(3)? })
    })?;
    let proof_salt: Option<Vec<u8>> =
        tx.query_row("SELECT value FROM settings WHERE name = 'proof_salt'", [], |r| r.get(0)).optional()?;
    let proof_salt = proof_salt.unwrap_or_else(|| {
        found.definite("database: no proof salt in settings".into());
        Vec::new()
    });
    tx.commit()?;
    Ok(Snapshot { users, user_seq, nodes, entries, pfiles, uploads, proof_salt })
}

/// Every row of a query. A row whose values do not have the schema's types is a problem, not the end of the check.
fn rows<T>(
    conn: &Connection,
    sql: &str,
    found: &mut Findings,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare(sql)?;
    let mut out = Vec::new();
    for row in stmt.query_map([], f)? {
        match row {
            Ok(v) => out.push(v),
            Err(
                e @ (rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)),
            ) => found.definite(format!("database: a row of `{sql}` has a value of the wrong type: {e}")),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

// ---- findings ----

/// A state a running server passes through for a moment (between a commit and a file operation): reported only
/// if a second look, after everything else is checked, still finds it.
enum Recheck {
    /// The row exists but its blob does not.
    BlobMissing(i64),
    /// A file under blobs/ that no row names (with the id its name gives, if any).
    UnknownBlob(PathBuf, Option<i64>),
    /// A physical file nothing refers to: no node, no upload.
    Unreferenced(i64),
}

#[derive(Default)]
struct Findings {
    definite: Vec<String>,
    transient: Vec<(Recheck, String)>,
}

impl Findings {
    fn definite(&mut self, line: String) {
        self.definite.push(line);
    }
    fn transient(&mut self, recheck: Recheck, line: String) {
        self.transient.push((recheck, line));
    }
}

/// The definite problems, and the transient ones a second read transaction (and a second look at the disk) confirms.
fn confirm(conn: &Connection, blobs: &Blobs, found: Findings) -> Result<Vec<String>> {
    let Findings { mut definite, transient } = found;
    if transient.is_empty() {
        return Ok(definite);
    }
    let tx = conn.unchecked_transaction()?;
    let exists = |id: i64| -> rusqlite::Result<bool> {
        Ok(tx.query_row("SELECT 1 FROM pfiles WHERE id = ?", [id], |_| Ok(())).optional()?.is_some())
    };
    for (recheck, line) in transient {
        let still = match recheck {
            Recheck::BlobMissing(id) => exists(id)? && !blobs.path(id).exists(),
            Recheck::UnknownBlob(path, id) => {
                path.symlink_metadata().is_ok() && id.map_or(Ok(true), |id| exists(id).map(|e| !e))?
            }
            Recheck::Unreferenced(id) => tx.query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM nodes WHERE pfile_id = ?1)
                    AND NOT EXISTS (SELECT 1 FROM uploads WHERE pfile_id = ?1)
                    AND EXISTS (SELECT 1 FROM pfiles WHERE id = ?1)",
                [id],
                |r| r.get(0),
            )?,
        };
        if still {
            definite.push(line);
        }
    }
    tx.commit()?;
    Ok(definite)
}

// ---- the checks ----

struct Fsck<'a> {
    snap: &'a Snapshot,
    blobs: &'a Blobs,
    data: &'a Path,
    found: Findings,
    users: HashMap<i64, &'a UserRow>,
    /// Root node -> its user.
    roots: HashMap<i64, i64>,
    /// Directory -> its entries.
    children: HashMap<i64, Vec<&'a EntryRow>>,
    /// Node -> how many entries name it.
    names: HashMap<i64, i64>,
    /// Node -> how the walk first reached it, filled by the walk. Paths are built from these only for a message:
    /// a path per node would take memory growing with the square of the depth.
    reached: HashMap<i64, Reach<'a>>,
    /// Physical file -> nodes referring to it.
    node_refs: HashMap<i64, i64>,
    /// Physical file -> uploads bound to it.
    upload_refs: HashMap<i64, usize>,
}

/// How the walk first reached a node: from whose root, through which entry (none for the root itself).
#[derive(Clone, Copy)]
struct Reach<'a> {
    user: i64,
    entry: Option<&'a EntryRow>,
}

fn kind_name(kind: i64) -> &'static str {
    match kind_from_db(kind) {
        Some(NodeKind::File) => "file",
        Some(NodeKind::Dir) => "directory",
        Some(NodeKind::Symlink) => "symlink",
        Some(NodeKind::Fifo) => "fifo",
        Some(NodeKind::Socket) => "socket",
        Some(NodeKind::CharDevice) => "character device",
        Some(NodeKind::BlockDevice) => "block device",
        None => "node of unknown kind",
    }
}

fn is_dir(node: &NodeRow) -> bool {
    kind_from_db(node.kind) == Some(NodeKind::Dir)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && name.len() <= MAX_NAME && !name.contains(['/', '\0'])
}

impl<'a> Fsck<'a> {
    fn new(snap: &'a Snapshot, blobs: &'a Blobs, data: &'a Path, found: Findings) -> Fsck<'a> {
        let mut children: HashMap<i64, Vec<&EntryRow>> = HashMap::new();
        let mut names: HashMap<i64, i64> = HashMap::new();
        for e in &snap.entries {
            children.entry(e.parent).or_default().push(e);
            *names.entry(e.node).or_default() += 1;
        }
        let mut node_refs: HashMap<i64, i64> = HashMap::new();
        for n in snap.nodes.values() {
            if let Some(p) = n.pfile_id {
                *node_refs.entry(p).or_default() += 1;
            }
        }
        let mut upload_refs: HashMap<i64, usize> = HashMap::new();
        for u in &snap.uploads {
            *upload_refs.entry(u.pfile_id).or_default() += 1;
        }
        Fsck {
            snap,
            blobs,
            data,
            found,
            users: snap.users.iter().map(|u| (u.id, u)).collect(),
            roots: snap.users.iter().map(|u| (u.root, u.id)).collect(),
            children,
            names,
            reached: HashMap::new(),
            node_refs,
            upload_refs,
        }
    }

    fn problem(&mut self, line: String) {
        self.found.definite(line);
    }

    fn user_name(&self, id: i64) -> String {
        match self.users.get(&id) {
            Some(u) => u.name.clone(),
            None => format!("#{id} (no such user)"),
        }
    }

    /// The path by which the walk first reached `id` (`/` for a root), built up the entries it came through.
    /// A path longer than any client can name is cut to its last names, after `/…`, so a line stays short.
    fn path_of(&self, id: i64) -> String {
        let mut names = Vec::new();
        let mut len = 0;
        let mut at = id;
        let mut cut = false;
        while let Some(Reach { entry: Some(e), .. }) = self.reached.get(&at) {
            if len + 1 + e.name.len() > MAX_PATH {
                cut = true;
                break;
            }
            len += 1 + e.name.len();
            names.push(e.name.as_str());
            at = e.parent;
        }
        let mut path = String::with_capacity(len + 4);
        if cut {
            path.push_str("/…");
        }
        for name in names.iter().rev() {
            path.push('/');
            path.push_str(name);
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }

    /// The path of the name `e` (below where the walk reached its directory).
    fn path_via(&self, e: &EntryRow) -> String {
        let dir = self.path_of(e.parent);
        format!("{}/{}", dir.strip_suffix('/').unwrap_or(&dir), e.name)
    }

    /// `alice:/dir/f (node 12)` when the walk reached it, else `node 12 (file of alice)`.
    fn node_label(&self, id: i64) -> String {
        if let Some(reach) = self.reached.get(&id) {
            return format!("{}:{} (node {id})", self.user_name(reach.user), self.path_of(id));
        }
        match self.snap.nodes.get(&id) {
            Some(n) => format!("node {id} ({} of {})", kind_name(n.kind), self.user_name(n.user_id)),
            None => format!("node {id}"),
        }
    }

    fn blob_label(&self, id: i64) -> String {
        let path = self.blobs.path(id);
        let rel = path.strip_prefix(self.data).unwrap_or(&path);
        format!("physical file {id} ({})", rel.display())
    }

    fn check_users(&mut self) {
        let snap = self.snap;
        // A user id is never given twice: the sequence is past every id the data mentions.
        let used = (snap.users.iter().map(|u| u.id))
            .chain(snap.nodes.values().map(|n| n.user_id))
            .chain(snap.uploads.iter().map(|u| u.user_id))
            .chain(snap.pfiles.values().filter_map(|p| p.uploader))
            .max();
        if let Some(max) = used.filter(|&max| max > snap.user_seq.unwrap_or(0)) {
            self.problem(format!(
                "users: the id sequence is at {}, below user id {max} in use (a new user would get a used id)",
                snap.user_seq.map_or("nothing".into(), |s| s.to_string())
            ));
        }
        let mut roots_seen: HashMap<i64, &str> = HashMap::new();
        for u in &snap.users {
            if let Some(other) = roots_seen.insert(u.root, &u.name) {
                self.problem(format!("users {other} and {} share the root node {}", u.name, u.root));
            }
            match snap.nodes.get(&u.root) {
                None => self.problem(format!("user {}: root node {} does not exist", u.name, u.root)),
                Some(n) => {
                    if !is_dir(n) {
                        self.problem(format!("user {}: root node {} is a {}", u.name, u.root, kind_name(n.kind)));
                    }
                    if n.user_id != u.id {
                        self.problem(format!(
                            "user {}: root node {} belongs to user {}",
                            u.name,
                            u.root,
                            self.user_name(n.user_id)
                        ));
                    }
                }
            }
        }
    }

    /// Walks every user's tree from its root, then checks each entry and each node. Time and memory are linear in
    /// the number of nodes, whatever the depth.
    fn check_tree(&mut self) {
        let snap = self.snap;
        for u in &snap.users {
            if !snap.nodes.get(&u.root).is_some_and(is_dir) {
                continue;
            }
            if let Some(other) = self.reached.get(&u.root).copied() {
                let at = format!("{}:{}", self.user_name(other.user), self.path_of(u.root));
                self.problem(format!("user {}: root node {} is also {at}", u.name, u.root));
                continue;
            }
            self.reached.insert(u.root, Reach { user: u.id, entry: None });
            // The deepest directory found below MAX_DEPTH (which no request can build; older servers could).
            let mut deepest: Option<(usize, i64)> = None;
            let mut stack = vec![(u.root, 0usize)];
            while let Some((dir, depth)) = stack.pop() {
                let Some(entries) = self.children.get(&dir) else { continue };
                for e in entries.clone() {
                    let Some(node) = snap.nodes.get(&e.node) else { continue };
                    match self.reached.get(&e.node).copied() {
                        Some(other) if other.user != u.id => self.problem(format!(
                            "node {} is reachable from two users' roots: {}:{} and {}:{}",
                            e.node,
                            self.user_name(other.user),
                            self.path_of(e.node),
                            u.name,
                            self.path_via(e)
                        )),
                        Some(_) if is_dir(node) => self.problem(format!(
                            "directory node {} is reached twice from {}'s root: at {} and at {}",
                            e.node,
                            u.name,
                            self.path_of(e.node),
                            self.path_via(e)
                        )),
                        Some(_) => {} // another name of a file: a hard link
                        None => {
                            self.reached.insert(e.node, Reach { user: u.id, entry: Some(e) });
                            if is_dir(node) {
                                if depth + 1 > MAX_DEPTH && deepest.is_none_or(|(d, _)| depth + 1 > d) {
                                    deepest = Some((depth + 1, e.node));
                                }
                                stack.push((e.node, depth + 1));
                            }
                        }
                    }
                }
            }
            if let Some((depth, node)) = deepest {
                self.problem(format!(
                    "user {}: directories nested {depth} deep, deeper than the limit of {MAX_DEPTH} (the deepest: {})",
                    u.name,
                    self.node_label(node)
                ));
            }
        }
        self.check_entries();
        self.check_nodes();
        self.check_detached_cycles();
    }

    fn check_entries(&mut self) {
        let snap = self.snap;
        for e in &snap.entries {
            let at = format!("entry {:?} in {}", e.name, self.node_label(e.parent));
            if !valid_name(&e.name) {
                self.problem(format!("{at}: not a valid name"));
            }
            let parent = snap.nodes.get(&e.parent);
            let node = snap.nodes.get(&e.node);
            match parent {
                None => self.problem(format!("{at}: its directory does not exist")),
                Some(p) if !is_dir(p) => {
                    self.problem(format!("{at}: its parent is a {}, not a directory", kind_name(p.kind)))
                }
                Some(_) => {}
            }
            let Some(n) = node else {
                self.problem(format!("{at}: names node {}, which does not exist", e.node));
                continue;
            };
            if let Some(p) = parent {
                if p.user_id != n.user_id {
                    self.problem(format!(
                        "{at}: crosses users: the directory belongs to {}, node {} ({}) to {}",
                        self.user_name(p.user_id),
                        e.node,
                        kind_name(n.kind),
                        self.user_name(n.user_id)
                    ));
                }
            }
            if let Some(&root_of) = self.roots.get(&e.node) {
                self.problem(format!("{at}: names the root of user {}", self.user_name(root_of)));
            }
        }
    }

    fn check_nodes(&mut self) {
        let snap = self.snap;
        for (&id, n) in &snap.nodes {
            let label = self.node_label(id);
            if !self.users.contains_key(&n.user_id) {
                self.problem(format!("{label}: belongs to user {}, who does not exist", n.user_id));
            }
            if let Some(reach) = self.reached.get(&id) {
                if reach.user != n.user_id && self.users.contains_key(&n.user_id) {
                    self.problem(format!(
                        "{label}: is in the tree of {} but belongs to {}",
                        self.user_name(reach.user),
                        self.user_name(n.user_id)
                    ));
                }
            }
            let Some(kind) = kind_from_db(n.kind) else {
                self.problem(format!("{label}: unknown kind {}", n.kind));
                continue;
            };
            let names = self.names.get(&id).copied().unwrap_or(0);
            let is_root = self.roots.contains_key(&id);
            if kind == NodeKind::Dir {
                let subdirs = self
                    .children
                    .get(&id)
                    .map_or(0, |es| es.iter().filter(|e| snap.nodes.get(&e.node).is_some_and(is_dir)).count())
                    as i64;
                if n.nlink != 2 + subdirs {
                    self.problem(format!(
                        "{label}: nlink {}, but it has {} (nlink should be {})",
                        n.nlink,
                        count(subdirs, "subdirectory", "subdirectories"),
                        2 + subdirs
                    ));
                }
                if !is_root && names != 1 {
                    self.problem(format!(
                        "{label}: a directory with {} (it must have exactly one)",
                        count(names, "name", "names")
                    ));
                }
            } else if names == 0 {
                self.problem(format!("{label}: has no name in any directory (lost)"));
            } else if n.nlink != names {
                self.problem(format!("{label}: nlink {}, but {} name it", n.nlink, count(names, "entry", "entries")));
            }
            if names > 0 && !self.reached.contains_key(&id) {
                self.problem(format!("{label}: not reachable from any user's root"));
            }
            match (kind, n.pfile_id) {
                (NodeKind::File, Some(p)) => match snap.pfiles.get(&p) {
                    None => self.problem(format!("{label}: refers to physical file {p}, which does not exist")),
                    Some(pf) if pf.complete != 1 => self.problem(format!(
                        "{label}: refers to physical file {p}, which is incomplete (a listed file must be complete)"
                    )),
                    Some(pf) if pf.size != n.size => self
                        .problem(format!("{label}: size {}, but its physical file {p} has {} bytes", n.size, pf.size)),
                    Some(_) => {}
                },
                (NodeKind::File, None) if n.size != 0 => {
                    self.problem(format!("{label}: size {}, but no content (only an empty file has none)", n.size))
                }
                (NodeKind::File, None) => {}
                (_, Some(p)) => {
                    self.problem(format!("{label}: a {} with content (physical file {p})", kind_name(n.kind)))
                }
                (_, None) => {}
            }
            if kind == NodeKind::Symlink && n.target.is_none() {
                self.problem(format!("{label}: a symlink without a target"));
            }
        }
    }

    /// Directories that are not reached from any root but have a name: follow their parents to find cycles.
    /// Each node is followed once in all (a walk stops where an earlier one went), so this is linear too.
    fn check_detached_cycles(&mut self) {
        let snap = self.snap;
        let parent_of: HashMap<i64, i64> = snap.entries.iter().map(|e| (e.node, e.parent)).collect();
        // Node -> the walk (its starting node) that went through it.
        let mut walked: HashMap<i64, i64> = HashMap::new();
        for (&id, n) in &snap.nodes {
            if !is_dir(n) || self.reached.contains_key(&id) || walked.contains_key(&id) {
                continue;
            }
            let mut chain = Vec::new();
            let mut at = id;
            loop {
                match walked.get(&at) {
                    Some(&walk) if walk == id => {
                        // Back on this walk's own path: the nodes from there on form a cycle (found once).
                        let pos = chain.iter().position(|&c| c == at).expect("a node of this walk is in its chain");
                        let ids: Vec<String> = chain[pos..].iter().chain([&at]).map(|c| c.to_string()).collect();
                        self.problem(format!(
                            "directories form a cycle, detached from every root: nodes {}",
                            ids.join(" in ")
                        ));
                        break;
                    }
                    Some(_) => break, // an earlier walk went on from here
                    None => {}
                }
                walked.insert(at, id);
                chain.push(at);
                match parent_of.get(&at) {
                    Some(&parent) if !self.reached.contains_key(&parent) => at = parent,
                    _ => break,
                }
            }
        }
    }

    fn check_pfiles(&mut self) {
        let snap = self.snap;
        let mut contents: BTreeMap<(&str, i64, &str), Vec<i64>> = BTreeMap::new();
        for p in snap.pfiles.values() {
            let label = self.blob_label(p.id);
            let nodes = self.node_refs.get(&p.id).copied().unwrap_or(0);
            let uploads = self.upload_refs.get(&p.id).copied().unwrap_or(0);
            if p.refs != nodes {
                self.problem(format!("{label}: refs {}, but {} refer to it", p.refs, count(nodes, "node", "nodes")));
            }
            if p.size <= 0 {
                self.problem(format!("{label}: size {} (an empty file has no physical file)", p.size));
            }
            let chunks_ok = self.check_chunk_map(&label, p);
            match p.complete {
                1 => {
                    if !is_md5_hex(&p.md5) {
                        self.problem(format!("{label}: complete, but its md5 {:?} is not an md5", p.md5));
                    }
                    match p.sha256.as_deref() {
                        Some(s) if is_sha256_hex(s) => {
                            contents.entry((p.md5.as_str(), p.size, s)).or_default().push(p.id)
                        }
                        other => self.problem(format!("{label}: complete, but its SHA-256 is {other:?}")),
                    }
                    if let Some(u) = p.uploader {
                        self.problem(format!("{label}: complete, but still has an uploader ({})", self.user_name(u)));
                    }
                    if nodes == 0 && uploads == 0 {
                        self.found.transient(
                            Recheck::Unreferenced(p.id),
                            format!("{label}: complete, but no node or upload refers to it (leaked)"),
                        );
                    }
                    if p.size > 0 {
                        self.check_complete_blob(&label, p);
                    }
                }
                0 => {
                    match p.uploader {
                        None => self.problem(format!("{label}: incomplete, but has no uploader")),
                        Some(u) if !self.users.contains_key(&u) => {
                            self.problem(format!("{label}: incomplete, its uploader {u} does not exist"))
                        }
                        Some(_) => {}
                    }
                    // A resize (truncate) builds its new content in a physical file with no md5 and no upload.
                    let resize = p.md5.is_empty();
                    if !resize && !is_md5_hex(&p.md5) {
                        self.problem(format!("{label}: its md5 {:?} is not an md5", p.md5));
                    }
                    if uploads == 0 {
                        let what = if resize {
                            "an unfinished resize (left by an interrupted truncate, unless one is running; a server start reclaims it)"
                        } else {
                            "incomplete, but no upload is bound to it (orphan: a crash's residue, which a server start reclaims)"
                        };
                        self.found.transient(Recheck::Unreferenced(p.id), format!("{label}: {what}"));
                    }
                    if chunks_ok && p.size > 0 {
                        self.check_incomplete_blob(&label, p);
                    }
                }
                other => self.problem(format!("{label}: complete is {other}, neither 0 nor 1")),
            }
        }
        for ((md5, size, _), ids) in contents {
            if ids.len() > 1 {
                let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                self.problem(format!(
                    "physical files {} hold the same content (md5 {md5}, {size} bytes, same SHA-256): \
                     it should be stored once",
                    ids.join(", ")
                ));
            }
        }
    }

    /// Chunk geometry and the progress bitmap agree with each other and with the size. False when the chunk layout
    /// is too broken to locate chunks in the blob.
    fn check_chunk_map(&mut self, label: &str, p: &PFileRow) -> bool {
        if !(MIN_CHUNK_SIZE as i64..=MAX_CHUNK_SIZE as i64).contains(&p.chunk_size) {
            self.problem(format!("{label}: chunk size {} out of range", p.chunk_size));
            return false;
        }
        let mut ok = true;
        let want_total = (p.size.max(0) as u64).div_ceil(p.chunk_size as u64) as i64;
        if p.total_chunks != want_total {
            self.problem(format!(
                "{label}: {} chunks recorded, but {} bytes in chunks of {} make {want_total}",
                p.total_chunks, p.size, p.chunk_size
            ));
            ok = false;
        }
        let want_map = (p.total_chunks.max(0) as usize).div_ceil(8);
        if p.chunk_map.len() != want_map {
            self.problem(format!(
                "{label}: chunk map of {} bytes, {want_map} expected for {} chunks",
                p.chunk_map.len(),
                p.total_chunks
            ));
            ok = false;
        }
        let set: i64 = p.chunk_map.iter().map(|b| b.count_ones() as i64).sum();
        if set != p.chunks_uploaded {
            self.problem(format!(
                "{label}: chunks_uploaded is {}, but the chunk map marks {}",
                p.chunks_uploaded,
                count(set, "chunk", "chunks")
            ));
        }
        let beyond = (0..p.chunk_map.len() as i64 * 8).filter(|&i| i >= p.total_chunks && has_chunk(p, i)).count();
        if beyond > 0 {
            self.problem(format!(
                "{label}: the chunk map marks {} beyond the last one",
                count(beyond as i64, "chunk", "chunks")
            ));
            ok = false;
        }
        ok
    }

    /// The blob of a complete physical file: present, of the recorded size, with the recorded md5 and SHA-256.
    fn check_complete_blob(&mut self, label: &str, p: &PFileRow) {
        let Some(file) = self.open_blob(label, p) else { return };
        let hashes = match blobs::hash_file(&file, p.size as u64, &self.snap.proof_salt) {
            Ok(h) => h,
            Err(e) => return self.problem(format!("{label}: cannot read it: {e}")),
        };
        let mut wrong = Vec::new();
        if hashes.md5 != p.md5 {
            wrong.push(format!("md5 {} (recorded {})", hashes.md5, p.md5));
        }
        if Some(&hashes.sha256) != p.sha256.as_ref() {
            wrong.push(format!("SHA-256 {} (recorded {})", hashes.sha256, p.sha256.as_deref().unwrap_or("none")));
        }
        if p.proof_tag.as_ref().is_some_and(|tag| *tag != hashes.proof_tag) {
            wrong.push(format!("proof tag {} (recorded {})", hashes.proof_tag, p.proof_tag.as_deref().unwrap_or("")));
        }
        if !wrong.is_empty() {
            self.problem(format!("{label}: content on disk does not match: {}", wrong.join(", ")));
        }
    }

    /// The blob of an unfinished upload: it must exist once a chunk is recorded, at the file's size (it is created
    /// sparse at full size), and no recorded chunk may be a hole (bytes never written). The chunks the running
    /// hash covers must hash, from disk, to the state saved for them; the bytes of a recorded chunk beyond those
    /// cannot be checked (each was checked against its CRC when it landed, and nothing of it is stored).
    fn check_incomplete_blob(&mut self, label: &str, p: &PFileRow) {
        if p.chunks_uploaded == 0 {
            return; // the blob may or may not exist yet; nothing is promised about it
        }
        let Some(file) = self.open_blob(label, p) else { return };
        self.check_running_hash(label, p, &file);
        let mut holes = Vec::new();
        for i in (0..p.total_chunks).filter(|&i| has_chunk(p, i)) {
            let offset = i as u64 * p.chunk_size as u64;
            let len = (p.size as u64 - offset).min(p.chunk_size as u64);
            match blobs::has_data(&file, offset, len) {
                Ok(true) => {}
                Ok(false) => holes.push(i.to_string()),
                Err(e) => return self.problem(format!("{label}: cannot look for holes: {e}")),
            }
        }
        if !holes.is_empty() {
            let s = if holes.len() == 1 { "" } else { "s" };
            self.problem(format!(
                "{label}: chunk{s} {} recorded as received, but never written (a hole in the blob)",
                holes.join(", ")
            ));
        }
    }

    /// The saved running hash covers recorded chunks only, and is what hashing them from disk gives.
    fn check_running_hash(&mut self, label: &str, p: &PFileRow, file: &fs::File) {
        if p.hashed_chunks == 0 {
            return;
        }
        if p.hashed_chunks < 0 || p.hashed_chunks > p.total_chunks {
            return self.problem(format!("{label}: hashed_chunks {} out of range", p.hashed_chunks));
        }
        if let Some(i) = (0..p.hashed_chunks).find(|&i| !has_chunk(p, i)) {
            return self.problem(format!("{label}: its running hash covers chunk {i}, which is not recorded"));
        }
        let Some(saved) = p.hash_state.as_deref() else {
            return self.problem(format!("{label}: {} chunks hashed, but no hash state", p.hashed_chunks));
        };
        if blobs::RunningHash::restore(saved).is_none() {
            return self.problem(format!("{label}: its saved hash state is not one"));
        }
        let mut running = blobs::RunningHash::new(&self.snap.proof_salt);
        let len = (p.hashed_chunks as u64 * p.chunk_size as u64).min(p.size as u64);
        if let Err(e) = blobs::scan(file, 0, len, Some(&mut running)) {
            return self.problem(format!("{label}: cannot hash its first {} chunks: {e}", p.hashed_chunks));
        }
        if running.save() != saved {
            self.problem(format!(
                "{label}: the bytes of its first {} on disk do not hash to the state saved for them",
                count(p.hashed_chunks, "chunk", "chunks")
            ));
        }
    }

    /// Opens a blob that must exist with the recorded size; reports why not.
    fn open_blob(&mut self, label: &str, p: &PFileRow) -> Option<fs::File> {
        let what = if p.complete == 1 { "complete" } else { "with chunks recorded" };
        let file = match self.blobs.open_read(p.id) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.found.transient(Recheck::BlobMissing(p.id), format!("{label}: {what}, but its blob is missing"));
                return None;
            }
            Err(e) => {
                self.problem(format!("{label}: cannot open its blob: {e}"));
                return None;
            }
        };
        match file.metadata() {
            Ok(m) if !m.is_file() => self.problem(format!("{label}: its blob is not a regular file")),
            Ok(m) if m.len() != p.size as u64 => {
                self.problem(format!("{label}: {} bytes on disk, {} recorded", m.len(), p.size))
            }
            Ok(_) => return Some(file),
            Err(e) => self.problem(format!("{label}: cannot stat its blob: {e}")),
        }
        None
    }

    fn check_uploads(&mut self) {
        let snap = self.snap;
        for u in &snap.uploads {
            let label = format!("upload {} ({}:{})", u.id, self.user_name(u.user_id), u.path);
            if !self.users.contains_key(&u.user_id) {
                self.problem(format!("{label}: its user does not exist"));
            }
            if !matches!(netdisk_protocol::path::components(&u.path), Ok(names) if !names.is_empty()) {
                self.problem(format!("{label}: not a valid file path"));
            }
            match snap.pfiles.get(&u.pfile_id) {
                None => self.problem(format!("{label}: its physical file {} does not exist", u.pfile_id)),
                Some(p) if p.complete == 0 && p.uploader != Some(u.user_id) => self.problem(format!(
                    "{label}: bound to physical file {}, the unfinished upload of {}",
                    p.id,
                    p.uploader.map_or("nobody".into(), |o| self.user_name(o))
                )),
                Some(_) => {}
            }
        }
    }

    /// Every file under blobs/ must be the blob of a physical file row: `blobs/xx/ID`, `xx` the low byte of ID.
    fn check_blob_files(&mut self) {
        let root = self.data.join("blobs");
        let dirs = match fs::read_dir(&root) {
            Ok(d) => d,
            Err(e) => return self.problem(format!("blobs/: cannot read it: {e}")),
        };
        let mut dirs: Vec<_> = dirs.filter_map(|e| e.ok()).collect();
        dirs.sort_by_key(|e| e.file_name());
        for dir in dirs {
            let name = dir.file_name();
            let path = dir.path();
            let shard = name.to_str().filter(|s| s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit()));
            let is_dir = dir.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let (Some(shard), true) = (shard, is_dir) else {
                self.found.transient(
                    Recheck::UnknownBlob(path.clone(), None),
                    format!("blobs/{}: not a blob directory", name.to_string_lossy()),
                );
                continue;
            };
            let files = match fs::read_dir(&path) {
                Ok(f) => f,
                Err(e) => {
                    self.problem(format!("blobs/{shard}: cannot read it: {e}"));
                    continue;
                }
            };
            let mut files: Vec<_> = files.filter_map(|e| e.ok()).collect();
            files.sort_by_key(|e| e.file_name());
            for f in files {
                let fname = f.file_name();
                let rel = format!("blobs/{shard}/{}", fname.to_string_lossy());
                let id = fname.to_str().and_then(|name| blobs::blob_id(shard, name));
                match id {
                    Some(id) if self.snap.pfiles.contains_key(&id) => {}
                    Some(id) => self.found.transient(
                        Recheck::UnknownBlob(f.path(), Some(id)),
                        format!("{rel}: no physical file {id} in the database (a leftover blob, which a server start removes)"),
                    ),
                    None => self
                        .found
                        .transient(Recheck::UnknownBlob(f.path(), None), format!("{rel}: not the name of a blob")),
                }
            }
        }
    }
}

/// `1 node`, `2 nodes`.
fn count(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn has_chunk(p: &PFileRow, index: i64) -> bool {
    p.chunk_map.get(index as usize / 8).is_some_and(|b| b & (1 << (index % 8)) != 0)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
