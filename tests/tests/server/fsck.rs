//! `netdisk-server fsck`: a store built through the protocol (content shared across users, an interrupted upload,
//! hard links, renames, deletes, a truncation) is clean, also while its server runs; each corruption planted in it
//! afterwards (server stopped, database edited with SQLite, blobs edited on disk) is reported, with exit status 1.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use netdisk_e2e::netdisk_protocol::{md5_hex, Link, Owner, SetAttr, Symlink};
use netdisk_e2e::{begin_upload, random_bytes, send_chunk, FsckRun, Server, ServerOpts, STOP_TIMEOUT};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{alice, bob, server_with_alice_and_bob};

const CHUNK: u32 = 65536;

/// A store built through the protocol, and the contents the tests corrupt in it.
struct Store {
    server: Server,
    /// alice's /docs/a2, also named /docs/a-link: one physical file, one node with two names.
    a: Vec<u8>,
    /// alice's /shared and bob's /shared-copy (an instant upload by proof): one physical file, two nodes.
    shared: Vec<u8>,
    /// bob's interrupted upload of /partial: chunks 0 and 2 of 5 stored.
    partial: Vec<u8>,
}

fn build() -> Store {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(CHUNK));
    let a = random_bytes(900, 200_000);
    let shared = random_bytes(902, 300_000);
    let partial = random_bytes(906, 4 * CHUNK as usize + 100);

    let mut c = alice(&server);
    c.mkdir("/docs", 0o755).expect("mkdir");
    c.mkdir("/docs/sub", 0o755).expect("mkdir");
    c.mkdir("/scratch", 0o755).expect("mkdir");
    c.mkdir("/c1", 0o755).expect("mkdir");
    c.mkdir("/c1/c2", 0o755).expect("mkdir");
    c.upload("/docs/a", &a, 0o644).expect("upload");
    c.upload("/docs/sub/b", &random_bytes(901, 1000), 0o644).expect("upload");
    c.upload("/shared", &shared, 0o644).expect("upload");
    c.upload("/gone", &random_bytes(903, 70_000), 0o644).expect("upload");
    c.upload("/replaced", &random_bytes(904, 5000), 0o644).expect("upload");
    c.upload("/replaced", &random_bytes(905, 6000), 0o644).expect("upload over it");
    c.upload("/empty", b"", 0o644).expect("upload an empty file");
    c.call(&Link { existing: "/docs/a".into(), new: "/docs/a-link".into() }).expect("hard link");
    c.call(&Symlink { path: "/to-a".into(), target: "docs/a2".into(), owner: Owner::default() }).expect("symlink");
    c.rename("/docs/a", "/docs/a2", false).expect("rename a file");
    c.rename("/docs/sub", "/moved", false).expect("rename a directory");
    c.delete_file("/gone").expect("delete");
    c.rmdir("/scratch").expect("rmdir");
    c.call(&SetAttr { path: "/moved/b".into(), size: Some(600), ..Default::default() }).expect("truncate");

    let mut d = bob(&server);
    let out = d.upload("/shared-copy", &shared, 0o644).expect("bob uploads alice's content");
    assert!(out.instant, "content alice holds is instant for bob once he proves he has it");
    let slot = begin_upload(&mut d, "/partial", &partial);
    assert_eq!(slot.chunk_count, 5);
    for i in [0, 2] {
        send_chunk(&mut d, &slot, &partial, i).expect("chunk");
    }
    Store { server, a, shared, partial }
}

/// A built store whose server is stopped, ready to be corrupted.
fn stopped() -> Store {
    let mut store = build();
    store.server.terminate(STOP_TIMEOUT).expect("the server stops on SIGTERM");
    store
}

impl Store {
    fn db(&self) -> Connection {
        Connection::open(self.server.data_dir().join("meta.db")).expect("open the database")
    }

    fn sql(&self, sql: &str, params: impl rusqlite::Params) {
        let n = self.db().execute(sql, params).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(n > 0, "{sql}: changed nothing");
    }

    fn int(&self, sql: &str, params: impl rusqlite::Params) -> i64 {
        self.db().query_row(sql, params, |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The physical file holding `data`.
    fn pfile_of(&self, data: &[u8]) -> i64 {
        self.int("SELECT id FROM pfiles WHERE md5 = ? AND size = ?", params![md5_hex(data), data.len() as i64])
    }

    fn blob(&self, id: i64) -> PathBuf {
        self.server.data_dir().join("blobs").join(format!("{:02x}", id & 0xff)).join(id.to_string())
    }

    /// The node at `path` in `user`'s tree.
    fn node(&self, user: &str, path: &str) -> i64 {
        let db = self.db();
        let mut node: i64 = db.query_row("SELECT root FROM users WHERE name = ?", [user], |r| r.get(0)).unwrap();
        for name in path.split('/').filter(|n| !n.is_empty()) {
            node = db
                .query_row("SELECT node FROM entries WHERE parent = ? AND name = ?", params![node, name], |r| r.get(0))
                .optional()
                .unwrap()
                .unwrap_or_else(|| panic!("{user}:{path} not found"));
        }
        node
    }

    /// Runs fsck and asserts it failed (exit 1) with exactly one problem line containing each of `wants`.
    #[track_caller]
    fn expect_problems(&self, wants: &[&str]) -> FsckRun {
        let run = self.server.fsck();
        assert_eq!(run.code, Some(1), "fsck must report the planted corruption:\n{}", run.output());
        let problems = run.problems();
        for want in wants {
            let n = problems.iter().filter(|p| p.contains(want)).count();
            assert_eq!(n, 1, "one problem line must contain {want:?}:\n{}", run.output());
        }
        assert_eq!(problems.len(), wants.len(), "exactly the planted problems:\n{}", run.output());
        assert!(
            run.summary().ends_with(&format!("checked, {}", plural(wants.len()))),
            "summary counts the problems:\n{}",
            run.output()
        );
        run
    }
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 problem".into()
    } else {
        format!("{n} problems")
    }
}

/// Every file of the data directory and its md5 (`-wal`/`-shm` aside, which any SQLite reader may create).
fn contents(store: &Store) -> BTreeMap<String, String> {
    let root = store.server.data_dir();
    netdisk_e2e::tree_of(root)
        .into_iter()
        .filter(|p| !p.ends_with('/') && !p.ends_with("-wal") && !p.ends_with("-shm"))
        .map(|p| {
            let bytes = std::fs::read(root.join(&p)).unwrap();
            (p, md5_hex(&bytes))
        })
        .collect()
}

#[test]
fn a_store_built_through_the_protocol_is_clean() {
    let mut store = build();
    // While the server runs (it keeps running; fsck only reads).
    store.server.assert_fsck_clean();
    store.server.terminate(STOP_TIMEOUT).expect("the server stops");
    let before = contents(&store);
    let run = store.server.fsck();
    assert!(run.clean(), "{}", run.output());
    assert!(run.problems().is_empty(), "{}", run.output());
    assert_eq!(contents(&store), before, "fsck changed the data directory");
    // The summary counts what is there: 2 users; 5 physical files (a, shared, /replaced's second content, the
    // truncated b and bob's unfinished upload), their sizes summed.
    let nodes = store.int("SELECT count(*) FROM nodes", []);
    let bytes = store.a.len() + store.shared.len() + 6000 + 600 + store.partial.len();
    assert_eq!(store.int("SELECT count(*) FROM pfiles", []), 5);
    assert_eq!(
        run.summary(),
        format!("fsck: 2 users, {nodes} nodes, 5 physical files ({bytes} bytes) checked, no problems")
    );
    // Data directories that cannot be checked at all: exit status 2.
    let missing = netdisk_e2e::fsck(&store.server.root_dir().join("no-such-dir"));
    assert_eq!(missing.code, Some(2), "{}", missing.output());
}

#[test]
fn fsck_while_clients_change_the_store() {
    // fsck reads one snapshot of the database and only reads blobs: run again and again while two users upload,
    // share, rename, replace and delete, it finds nothing wrong, and the clients see no error caused by it.
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(CHUNK));
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let mut a = alice(&server);
            let mut b = bob(&server);
            for i in 0..30u64 {
                let data = random_bytes(1000 + i, 50_000 + i as usize * 3000);
                a.upload(&format!("/w{i}"), &data, 0o644).expect("upload");
                a.rename(&format!("/w{i}"), &format!("/r{i}"), false).expect("rename");
                assert!(b.upload(&format!("/copy{i}"), &data, 0o644).expect("bob's copy").instant);
                if i >= 1 {
                    a.upload(&format!("/r{}", i - 1), &random_bytes(2000 + i, 20_000), 0o644).expect("replace");
                    b.delete_file(&format!("/copy{}", i - 1)).expect("delete");
                }
                if i >= 2 {
                    a.delete_file(&format!("/r{}", i - 2)).expect("delete");
                }
                // An upload left unfinished, then resumed and finished on the next round.
                let partial = random_bytes(3000 + i, 3 * CHUNK as usize);
                let slot = begin_upload(&mut b, &format!("/p{i}"), &partial);
                send_chunk(&mut b, &slot, &partial, 1).expect("chunk");
                if i >= 1 {
                    let prev = random_bytes(3000 + i - 1, 3 * CHUNK as usize);
                    b.upload(&format!("/p{}", i - 1), &prev, 0o644).expect("resume");
                }
            }
        });
        let mut runs = 0;
        loop {
            // Checked before the run, so that one run at least starts after the clients' last change.
            let finished = worker.is_finished();
            let run = server.fsck();
            assert!(run.clean(), "fsck while clients work (run {runs}):\n{}", run.output());
            runs += 1;
            if finished {
                break;
            }
        }
        worker.join().expect("the clients' thread");
    });
}

#[test]
fn a_flipped_byte_in_a_blob() {
    let store = stopped();
    let id = store.pfile_of(&store.a);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(store.blob(id)).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 123_456).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], 123_456).unwrap();
    let run = store.expect_problems(&[&format!("physical file {id} (blobs/")]);
    let line = run.problems()[0];
    assert!(line.contains("content on disk does not match"), "{line}");
    assert!(line.contains(&format!("(recorded {})", md5_hex(&store.a))), "{line}");
    assert!(line.contains("SHA-256"), "{line}");
}

#[test]
fn a_truncated_blob() {
    let store = stopped();
    let id = store.pfile_of(&store.shared);
    std::fs::OpenOptions::new().write(true).open(store.blob(id)).unwrap().set_len(1000).unwrap();
    store.expect_problems(&[&format!(
        "physical file {id} (blobs/{:02x}/{id}): 1000 bytes on disk, 300000 recorded",
        id
    )]);
}

#[test]
fn a_deleted_blob() {
    let store = stopped();
    let id = store.pfile_of(&store.a);
    std::fs::remove_file(store.blob(id)).unwrap();
    store.expect_problems(&[&format!("physical file {id} (blobs/{:02x}/{id}): complete, but its blob is missing", id)]);
}

#[test]
fn unknown_files_under_blobs() {
    let store = stopped();
    let blobs = store.server.data_dir().join("blobs");
    std::fs::create_dir_all(blobs.join("ff")).unwrap();
    std::fs::write(blobs.join("ff").join("255"), b"a blob no row knows").unwrap();
    std::fs::write(blobs.join("ff").join("junk.tmp"), b"junk").unwrap();
    std::fs::write(blobs.join("stray"), b"junk").unwrap();
    store.expect_problems(&[
        "blobs/ff/255: no physical file 255 in the database",
        "blobs/ff/junk.tmp: not the name of a blob",
        "blobs/stray: not a blob directory",
    ]);
}

#[test]
fn a_wrong_reference_count() {
    let store = stopped();
    let id = store.pfile_of(&store.shared);
    store.sql("UPDATE pfiles SET refs = refs + 1 WHERE id = ?", [id]);
    store.expect_problems(&[&format!("physical file {id} (blobs/{:02x}/{id}): refs 3, but 2 nodes refer to it", id)]);
}

#[test]
fn a_listed_file_pointing_at_an_incomplete_physical_file() {
    let store = stopped();
    let partial = store.pfile_of(&store.partial);
    let node = store.node("alice", "/empty");
    // refs and size follow, so that the one thing wrong is the reference to unfinished content.
    store.sql(
        "UPDATE nodes SET pfile_id = ?, size = ? WHERE id = ?",
        params![partial, store.partial.len() as i64, node],
    );
    store.sql("UPDATE pfiles SET refs = 1 WHERE id = ?", [partial]);
    store.expect_problems(&[&format!(
        "alice:/empty (node {node}): refers to physical file {partial}, which is incomplete"
    )]);
}

#[test]
fn an_entry_crossing_users() {
    let store = stopped();
    let bobs = store.node("bob", "/shared-copy");
    let alice_docs = store.node("alice", "/docs");
    store.sql("UPDATE entries SET parent = ? WHERE node = ?", [alice_docs, bobs]);
    store.expect_problems(&[
        &format!("entry \"shared-copy\" in alice:/docs (node {alice_docs}): crosses users"),
        &format!("alice:/docs/shared-copy (node {bobs}): is in the tree of alice but belongs to bob"),
    ]);
}

#[test]
fn a_recorded_chunk_that_was_never_written() {
    let store = stopped();
    let id = store.pfile_of(&store.partial);
    assert_eq!(store.int("SELECT chunks_uploaded FROM pfiles WHERE id = ?", [id]), 2);
    // Chunks 0 and 2 are stored; record chunk 3 too (bit 3 of the map), as a crash that lost its bytes would leave it.
    store.sql("UPDATE pfiles SET chunk_map = x'0d', chunks_uploaded = 3 WHERE id = ?", [id]);
    store.expect_problems(&[&format!(
        "physical file {id} (blobs/{:02x}/{id}): chunk 3 recorded as received, but never written",
        id
    )]);
    // The count of stored chunks must agree with the map.
    store.sql("UPDATE pfiles SET chunk_map = x'05' WHERE id = ?", [id]);
    store.expect_problems(&["chunks_uploaded is 3, but the chunk map marks 2 chunks"]);
}

#[test]
fn a_recorded_chunk_whose_bytes_changed() {
    let store = stopped();
    let id = store.pfile_of(&store.partial);
    // Chunk 0 came first, so the running hash covers it; chunk 2 came early and waits for chunk 1.
    assert_eq!(store.int("SELECT hashed_chunks FROM pfiles WHERE id = ?", [id]), 1);
    let blob = std::fs::OpenOptions::new().read(true).write(true).open(store.blob(id)).expect("open the blob");
    let mut byte = [0u8; 1];
    blob.read_exact_at(&mut byte, 1234).expect("read");
    blob.write_all_at(&[byte[0] ^ 0x20], 1234).expect("flip a byte of chunk 0");
    store.expect_problems(&[&format!(
        "physical file {id} (blobs/{id:02x}/{id}): the bytes of its first 1 chunk on disk do not hash to the state saved"
    )]);
    // A running hash that claims a chunk that is not recorded.
    blob.write_all_at(&byte, 1234).expect("restore the byte");
    store.sql("UPDATE pfiles SET hashed_chunks = 2 WHERE id = ?", [id]);
    store.expect_problems(&["its running hash covers chunk 1, which is not recorded"]);
}

#[test]
fn a_directory_cycle() {
    let store = stopped();
    let c1 = store.node("alice", "/c1");
    let c2 = store.node("alice", "/c1/c2");
    let root = store.node("alice", "/");
    // /c1 moves into its own child: both leave the tree, and the parents' link counts are now wrong.
    store.sql("UPDATE entries SET parent = ? WHERE node = ?", [c2, c1]);
    store.expect_problems(&[
        &format!("directories form a cycle, detached from every root: nodes {c1} in {c2} in {c1}"),
        &format!("node {c1} (directory of alice): not reachable"),
        &format!("node {c2} (directory of alice): not reachable"),
        &format!("alice:/ (node {root}): nlink 5, but it has 2 subdirectories (nlink should be 4)"),
        &format!("node {c2} (directory of alice): nlink 2, but it has 1 subdirectory (nlink should be 3)"),
    ]);
}

#[test]
fn wrong_link_counts_and_an_entry_under_a_file() {
    let store = stopped();
    let a = store.node("alice", "/docs/a2");
    store.sql("UPDATE nodes SET nlink = 1 WHERE id = ?", [a]);
    let empty = store.node("alice", "/empty");
    let link_parent = store.node("alice", "/docs");
    store.sql("UPDATE entries SET parent = ? WHERE parent = ? AND name = 'a-link'", [empty, link_parent]);
    store.expect_problems(&[
        &format!("alice:/docs/a2 (node {a}): nlink 1, but 2 entries name it"),
        &format!("entry \"a-link\" in alice:/empty (node {empty}): its parent is a file, not a directory"),
    ]);
}

#[test]
fn a_user_id_sequence_that_would_give_an_id_again() {
    let store = stopped();
    // bob has the highest id; a sequence set back below it would hand his id to the next new user.
    store.sql("UPDATE sqlite_sequence SET seq = 1 WHERE name = 'users'", []);
    store.expect_problems(&["users: the id sequence is at 1, below user id 2 in use"]);
}

#[test]
fn a_damaged_database() {
    let store = stopped();
    // An index that no longer matches its table, the way a torn write or a bad disk leaves one.
    let db = store.db();
    db.pragma_update(None, "writable_schema", true).unwrap();
    db.execute(
        "UPDATE sqlite_master SET sql = 'CREATE INDEX nodes_pfile ON nodes(user_id)' WHERE name = 'nodes_pfile'",
        [],
    )
    .unwrap();
    drop(db);
    let run = store.server.fsck();
    assert_eq!(run.code, Some(1), "{}", run.output());
    assert!(run.problems().iter().all(|p| p.starts_with("database: integrity_check: ")), "{}", run.output());
    assert!(run.problems().iter().any(|p| p.contains("missing from index nodes_pfile")), "{}", run.output());
}
