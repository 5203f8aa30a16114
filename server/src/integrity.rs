//! Consistency checks of a whole data directory: the tree, link counts, content references, upload records and the
//! blobs on disk agree with each other. The `session` fuzz target runs them after every session.
//! Reads only: it never repairs anything, and the server does not call it while serving.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use netdisk_protocol::{is_md5_hex, MAX_NAME};
use rusqlite::{Connection, OpenFlags};

use crate::blobs::{self, Blobs, Durability};

/// Everything wrong with the data directory, one line each; empty when it is consistent.
/// The directory must be quiet (no connection writing to it). Complete content is hashed back from its blob, except
/// a blob that still holds the bytes `known` lists for it (files of the directory, by relative path, as they were
/// when last verified).
pub fn check(data_dir: &Path, known: &[(PathBuf, Vec<u8>)]) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = check_into(data_dir, known, &mut problems) {
        problems.push(format!("cannot check: {e}"));
    }
    problems
}

const DIR: i64 = 2;
const FILE: i64 = 1;

struct PFileRow {
    md5: String,
    size: i64,
    sha256: Option<String>,
    chunk_size: i64,
    total_chunks: i64,
    chunks_uploaded: i64,
    chunk_map: Vec<u8>,
    complete: bool,
    refs: i64,
}

fn check_into(
    data_dir: &Path,
    known: &[(PathBuf, Vec<u8>)],
    problems: &mut Vec<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let db = Connection::open_with_flags(data_dir.join("meta.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut say = |p: String| problems.push(p);

    let verdict: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if verdict != "ok" {
        say(format!("sqlite integrity_check: {verdict}"));
    }

    let roots: HashMap<i64, i64> = db
        .prepare("SELECT root, id FROM users")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;

    // Nodes: kind, owner, link count, content.
    struct NodeRow {
        user: i64,
        kind: i64,
        nlink: i64,
        size: i64,
        pfile: Option<i64>,
    }
    let nodes: HashMap<i64, NodeRow> = db
        .prepare("SELECT id, user_id, kind, nlink, size, pfile_id FROM nodes")?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                NodeRow { user: r.get(1)?, kind: r.get(2)?, nlink: r.get(3)?, size: r.get(4)?, pfile: r.get(5)? },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let entries: Vec<(i64, String, i64)> = db
        .prepare("SELECT parent, name, node FROM entries")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let pfiles: HashMap<i64, PFileRow> = db
        .prepare(
            "SELECT id, md5, size, sha256, chunk_size, total_chunks, chunks_uploaded, chunk_map, complete, refs FROM pfiles",
        )?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                PFileRow {
                    md5: r.get(1)?,
                    size: r.get(2)?,
                    sha256: r.get(3)?,
                    chunk_size: r.get(4)?,
                    total_chunks: r.get(5)?,
                    chunks_uploaded: r.get(6)?,
                    chunk_map: r.get(7)?,
                    complete: r.get(8)?,
                    refs: r.get(9)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let uploads: Vec<(i64, i64, String, i64)> = db
        .prepare("SELECT id, user_id, path, pfile_id FROM uploads")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;

    // Users' roots.
    for (root, user) in &roots {
        match nodes.get(root) {
            Some(n) if n.kind == DIR && n.user == *user => {}
            _ => say(format!("user {user}: root {root} is not a directory of theirs")),
        }
    }

    // Entries: proper names, between existing nodes of one user, in directories.
    let mut names_of: HashMap<i64, i64> = HashMap::new();
    let mut subdirs: HashMap<i64, i64> = HashMap::new();
    let mut children: HashMap<i64, Vec<i64>> = HashMap::new();
    for (parent, name, node) in &entries {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) || name.len() > MAX_NAME {
            say(format!("entry {parent}/{name:?}: not a proper name"));
        }
        let (Some(p), Some(n)) = (nodes.get(parent), nodes.get(node)) else {
            say(format!("entry {parent}/{name:?} -> {node}: a node is missing"));
            continue;
        };
        if p.kind != DIR {
            say(format!("entry {parent}/{name:?}: its parent is not a directory"));
        }
        if p.user != n.user {
            say(format!("entry {parent}/{name:?} -> {node}: crosses from user {} to user {}", p.user, n.user));
        }
        *names_of.entry(*node).or_default() += 1;
        if n.kind == DIR {
            *subdirs.entry(*parent).or_default() += 1;
        }
        children.entry(*parent).or_default().push(*node);
    }

    // Link counts, and every node reachable from its user's root (no orphans, no detached cycles).
    let mut reached: HashSet<i64> = HashSet::new();
    let mut stack: Vec<i64> = roots.keys().copied().collect();
    while let Some(id) = stack.pop() {
        if reached.insert(id) {
            stack.extend(children.get(&id).into_iter().flatten().copied());
        }
    }
    let mut refs_of: HashMap<i64, i64> = HashMap::new();
    for (id, n) in &nodes {
        let names = names_of.get(id).copied().unwrap_or(0);
        let is_root = roots.contains_key(id);
        if !reached.contains(id) {
            say(format!("node {id}: not reachable from its user's root"));
        }
        if n.kind == DIR {
            let want_names = if is_root { 0 } else { 1 };
            if names != want_names {
                say(format!("directory {id}: {names} names, expected {want_names}"));
            }
            let want_nlink = 2 + subdirs.get(id).copied().unwrap_or(0);
            if n.nlink != want_nlink {
                say(format!("directory {id}: nlink {}, expected {want_nlink}", n.nlink));
            }
        } else if n.nlink != names || names == 0 {
            say(format!("node {id}: nlink {} with {names} names", n.nlink));
        }
        match (n.kind, n.pfile) {
            (FILE, None) if n.size != 0 => say(format!("file {id}: size {} without content", n.size)),
            (FILE, None) | (_, None) => {}
            (FILE, Some(p)) => {
                *refs_of.entry(p).or_default() += 1;
                match pfiles.get(&p) {
                    // L8: an entry never points at an incomplete physical file.
                    Some(row) if !row.complete => say(format!("file {id}: refers to incomplete content {p}")),
                    Some(row) if row.size != n.size => {
                        say(format!("file {id}: size {} but its content {p} has {}", n.size, row.size))
                    }
                    Some(_) => {}
                    None => say(format!("file {id}: refers to missing content {p}")),
                }
            }
            (kind, Some(p)) => say(format!("node {id} of kind {kind}: refers to content {p}")),
        }
    }

    // Uploads: of existing users, into existing physical files.
    let mut bound: HashSet<i64> = HashSet::new();
    for (id, user, path, pfile) in &uploads {
        if !roots.values().any(|u| u == user) {
            say(format!("upload {id}: of unknown user {user}"));
        }
        if netdisk_protocol::path::components(path).is_err() {
            say(format!("upload {id}: bad path {path:?}"));
        }
        if !pfiles.contains_key(pfile) {
            say(format!("upload {id}: into missing content {pfile}"));
        }
        bound.insert(*pfile);
    }

    // Physical files: reference counts, chunk progress, nothing unreferenced, complete ones verified on disk.
    let blobs = Blobs::new(data_dir, Durability::Normal);
    for (id, p) in &pfiles {
        let refs = refs_of.get(id).copied().unwrap_or(0);
        if p.refs != refs {
            say(format!("content {id}: refs {} but {refs} files refer to it", p.refs));
        }
        if !is_md5_hex(&p.md5) {
            say(format!("content {id}: md5 {:?}", p.md5));
        }
        if p.chunk_size <= 0 || p.total_chunks != (p.size + p.chunk_size - 1) / p.chunk_size.max(1) {
            say(format!("content {id}: {} chunks of {} for {} bytes", p.total_chunks, p.chunk_size, p.size));
        }
        if p.complete {
            if refs == 0 && !bound.contains(id) {
                say(format!("content {id}: complete but nothing refers to it (leaked)"));
            }
            let Some(sha256) = &p.sha256 else {
                say(format!("content {id}: complete without a SHA-256"));
                continue;
            };
            let path = blobs.path(*id);
            let rel = path.strip_prefix(data_dir).unwrap_or(&path);
            let before = known.iter().find(|(p, _)| p == rel).map(|(_, bytes)| bytes);
            if before.is_some_and(|bytes| std::fs::read(&path).is_ok_and(|now| now == *bytes)) {
                continue;
            }
            let hashes = blobs.open_read(*id).and_then(|f| blobs::hash_file(&f, p.size as u64));
            match hashes {
                Ok(h) if h.md5 == p.md5 && h.sha256 == *sha256 => {}
                Ok(h) => say(format!("content {id}: stored bytes hash to {} / {}", h.md5, h.sha256)),
                Err(e) => say(format!("content {id}: blob unreadable: {e}")),
            }
        } else {
            if !bound.contains(id) {
                say(format!("content {id}: incomplete and no upload is bound to it (leaked)"));
            }
            if p.refs != 0 {
                say(format!("content {id}: incomplete with refs {}", p.refs));
            }
            let map_len = (p.total_chunks.max(0) as usize).div_ceil(8);
            let count: i64 = p.chunk_map.iter().map(|b| b.count_ones() as i64).sum();
            let beyond = (p.total_chunks.max(0)..(p.chunk_map.len() * 8) as i64)
                .any(|i| p.chunk_map[i as usize / 8] & (1 << (i % 8)) != 0);
            if p.chunk_map.len() != map_len || count != p.chunks_uploaded || beyond {
                say(format!(
                    "content {id}: chunk map of {} bytes with {count} bits for {} chunks, {} recorded",
                    p.chunk_map.len(),
                    p.total_chunks,
                    p.chunks_uploaded
                ));
            }
            if let Ok(meta) = std::fs::metadata(blobs.path(*id)) {
                if meta.len() != p.size as u64 {
                    say(format!("content {id}: unfinished blob of {} bytes, expected {}", meta.len(), p.size));
                }
            }
        }
    }

    // The directory holds the database and blobs named by existing physical files, nothing else.
    for entry in std::fs::read_dir(data_dir)? {
        let name = entry?.file_name();
        if !["meta.db", "meta.db-wal", "meta.db-shm", "blobs"].iter().any(|n| name == *n) {
            say(format!("stray entry {name:?} in the data directory"));
        }
    }
    for bucket in std::fs::read_dir(data_dir.join("blobs"))? {
        let bucket = bucket?;
        for blob in std::fs::read_dir(bucket.path())? {
            let blob = blob?;
            let id = blob.file_name().to_str().and_then(|n| n.parse::<i64>().ok());
            match id {
                Some(id) if pfiles.contains_key(&id) && blobs.path(id) == blob.path() => {}
                _ => say(format!("blob {} belongs to no physical file (leaked)", blob.path().display())),
            }
        }
    }
    Ok(())
}
