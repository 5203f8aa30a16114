//! Hostile paths and user isolation: nothing escapes the data directory, nobody reaches another user's tree.

use std::collections::BTreeSet;

use netdisk_e2e::netdisk_protocol::client::{Client, ClientError};
use netdisk_e2e::netdisk_protocol::{
    chunk_crc, DeleteFile, Download, ErrorCode, GetDir, Link, Mkdir, Mknod, NodeKind, Owner, ProveOwnership,
    QueryChunk, ReadLink, Rename, Rmdir, SetAttr, Stat, Symlink, UploadChunk, UploadFileRes,
};
use netdisk_e2e::{begin_upload, expect_code, random_bytes, send_chunk, tree_of, upload_request, ServerOpts};

use crate::{alice, assert_same_bytes, bob, server_with_alice, server_with_alice_and_bob};

type Conn = Client<std::net::TcpStream>;

/// Every operation that takes a path, with the hostile path in that place.
fn refusals(c: &mut Conn, path: &str) -> Vec<(&'static str, Result<String, ClientError>)> {
    let p = || path.to_string();
    vec![
        ("Mkdir", c.call(&Mkdir { path: p(), mode: 0o755, owner: Owner::default() }).map(|r| format!("{r:?}"))),
        ("UploadFile", c.call(&upload_request(path, b"hostile content")).map(|r| format!("{r:?}"))),
        ("UploadFile empty", c.call(&upload_request(path, b"")).map(|r| format!("{r:?}"))),
        ("Stat", c.call(&Stat { path: p() }).map(|r| format!("{r:?}"))),
        ("GetDir", c.call(&GetDir { path: p(), after: None, limit: 10 }).map(|r| format!("{r:?}"))),
        ("Download", c.call(&Download { path: p(), offset: 0, len: 10 }).map(|r| format!("{r:?}"))),
        ("DeleteFile", c.call(&DeleteFile { path: p() }).map(|r| format!("{r:?}"))),
        ("Rmdir", c.call(&Rmdir { path: p() }).map(|r| format!("{r:?}"))),
        ("Rename to", c.call(&Rename { from: "/legit".into(), to: p(), noreplace: false }).map(|r| format!("{r:?}"))),
        (
            "Rename from",
            c.call(&Rename { from: p(), to: "/renamed".into(), noreplace: false }).map(|r| format!("{r:?}")),
        ),
        ("Link new", c.call(&Link { existing: "/legit".into(), new: p() }).map(|r| format!("{r:?}"))),
        ("Link existing", c.call(&Link { existing: p(), new: "/linked".into() }).map(|r| format!("{r:?}"))),
        (
            "Symlink",
            c.call(&Symlink { path: p(), target: "/legit".into(), owner: Owner::default() }).map(|r| format!("{r:?}")),
        ),
        ("ReadLink", c.call(&ReadLink { path: p() }).map(|r| format!("{r:?}"))),
        (
            "Mknod",
            c.call(&Mknod { path: p(), kind: NodeKind::Fifo, mode: 0o644, rdev: 0, owner: Owner::default() })
                .map(|r| format!("{r:?}")),
        ),
        ("SetAttr", c.call(&SetAttr { path: p(), mode: Some(0o777), ..Default::default() }).map(|r| format!("{r:?}"))),
    ]
}

#[test]
fn hostile_paths_are_refused_and_nothing_escapes() {
    let server = server_with_alice(ServerOpts::default());
    let mut c = alice(&server);
    c.mkdir("/a", 0o755).expect("mkdir /a");
    let legit = random_bytes(50, 3000);
    c.upload("/legit", &legit, 0o644).expect("upload /legit");

    // A name that nothing else uses: if it shows up anywhere on disk, a path escaped.
    let tag = format!(
        "escape-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos()
    );
    let before = tree_of(server.root_dir());
    let long_name = format!("/{}", "n".repeat(256));
    let long_name_deep = format!("/a/{}", "m".repeat(256));
    let long_path = "/abcd".repeat(1000); // 5000 bytes of valid names
    assert_eq!(long_path.len(), 5000);
    let table: Vec<String> = vec![
        "/..".into(),
        format!("/../{tag}"),
        "/a/../b".into(),
        format!("/a/../../{tag}"),
        format!("/a/../../../../../../../../tmp/{tag}"),
        "/.".into(),
        "/./a".into(),
        "/a/.".into(),
        "relative".into(),
        tag.clone(),
        "".into(),
        "/a\0b".into(),
        format!("/{tag}\0/x"),
        "//x".into(),
        "/a//b".into(),
        long_name,
        long_name_deep,
        long_path,
    ];
    for path in &table {
        for (op, result) in refusals(&mut c, path) {
            match result {
                Err(ClientError::Server(e)) => assert!(
                    matches!(e.code, ErrorCode::Invalid | ErrorCode::NameTooLong),
                    "{op} {path:?}: expected Invalid or NameTooLong, got {e}"
                ),
                Err(e) => panic!("{op} {path:?}: the connection broke: {e}"),
                Ok(v) => panic!("{op} {path:?}: a hostile path was accepted: {v}"),
            }
        }
    }
    // Long names get the specific code where the path is otherwise fine.
    expect_code(c.stat(&format!("/{}", "n".repeat(256))), ErrorCode::NameTooLong, "a 256-byte name");
    // The longest allowed name works.
    let max_name = format!("/{}", "k".repeat(255));
    c.mkdir(&max_name, 0o755).expect("a 255-byte name is fine");
    c.rmdir(&max_name).expect("rmdir");

    // Nothing changed in the user's tree, and the server still serves.
    assert_eq!(c.names("/").expect("list"), vec!["a".to_string(), "legit".to_string()]);
    assert!(c.names("/a").expect("list").is_empty());
    assert_same_bytes(&c.read_file("/legit").expect("download"), &legit, "/legit");

    // Nothing on disk outside the server's own layout, and no trace of the tag anywhere near.
    let after = tree_of(server.root_dir());
    let new: BTreeSet<&String> = after.difference(&before).collect();
    for path in &new {
        let allowed = ["data/meta.db-wal", "data/meta.db-shm", "data/meta.db-journal"].contains(&path.as_str());
        assert!(allowed, "hostile paths created {path} in the server's directory (new: {new:?})");
    }
    for path in &after {
        assert!(!path.contains(&tag), "{path} holds the hostile name");
        assert!(!path.contains("abcd/abcd"), "{path} comes from the long path");
    }
    for dir in [std::env::temp_dir(), server.root_dir().to_path_buf(), server.data_dir().to_path_buf()] {
        assert!(!dir.join(&tag).exists(), "{} exists", dir.join(&tag).display());
    }
    assert!(!std::path::Path::new("/tmp").join(&tag).exists());
}

#[test]
fn users_cannot_reach_each_others_trees() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    let mut a = alice(&server);
    a.mkdir("/secret", 0o700).expect("mkdir");
    let secret = random_bytes(51, 10_000);
    a.upload("/secret/f", &secret, 0o600).expect("upload");
    a.upload("/s.txt", b"alice's text", 0o644).expect("upload");
    a.call(&Symlink { path: "/sl".into(), target: "/secret/f".into(), owner: Owner::default() }).expect("symlink");
    // An unfinished upload and an open challenge of alice's.
    let partial = random_bytes(52, 3 * 65536);
    let slot = begin_upload(&mut a, "/partial", &partial);
    send_chunk(&mut a, &slot, &partial, 0).expect("chunk 0");
    let other = random_bytes(53, 1000);
    let UploadFileRes::Challenge { challenge_id, ranges, nonce } =
        a.call(&upload_request("/other", &other)).expect("UploadFile")
    else {
        panic!("new content is challenged")
    };

    let mut b = bob(&server);
    assert!(b.names("/").expect("list").is_empty(), "bob's root is empty");
    for path in ["/secret", "/secret/f", "/s.txt", "/sl", "/partial"] {
        expect_code(b.stat(path), ErrorCode::NotFound, &format!("bob stats {path}"));
    }
    expect_code(b.list_dir("/secret"), ErrorCode::NotFound, "bob lists alice's dir");
    expect_code(b.download("/secret/f", 0, 100), ErrorCode::NotFound, "bob downloads alice's file");
    expect_code(b.download("/s.txt", 0, 100), ErrorCode::NotFound, "bob downloads alice's file");
    expect_code(b.delete_file("/s.txt"), ErrorCode::NotFound, "bob deletes alice's file");
    expect_code(b.rmdir("/secret"), ErrorCode::NotFound, "bob removes alice's dir");
    expect_code(b.rename("/s.txt", "/mine", false), ErrorCode::NotFound, "bob renames alice's file");
    expect_code(b.rename("/secret", "/mine", false), ErrorCode::NotFound, "bob renames alice's dir");
    expect_code(b.call(&Link { existing: "/s.txt".into(), new: "/l".into() }), ErrorCode::NotFound, "bob links");
    expect_code(
        b.call(&SetAttr { path: "/s.txt".into(), mode: Some(0o777), ..Default::default() }),
        ErrorCode::NotFound,
        "bob chmods",
    );
    expect_code(b.call(&ReadLink { path: "/sl".into() }), ErrorCode::NotFound, "bob reads alice's symlink");
    // Alice's upload and challenge ids mean nothing to bob.
    expect_code(
        b.call(&QueryChunk { upload_id: slot.upload_id, indexes: vec![0, 1, 2] }),
        ErrorCode::UnknownUpload,
        "bob queries alice's upload",
    );
    let chunk1 = slot.chunk(&partial, 1);
    expect_code(
        b.call_with_payload(&UploadChunk { upload_id: slot.upload_id, index: 1, crc32c: chunk_crc(chunk1) }, chunk1),
        ErrorCode::UnknownUpload,
        "bob sends a chunk to alice's upload",
    );
    let proofs = ranges
        .iter()
        .map(|r| {
            netdisk_e2e::netdisk_protocol::ownership_proof(
                &nonce,
                netdisk_e2e::netdisk_protocol::client::range_of(&other, r),
            )
        })
        .collect();
    expect_code(
        b.call(&ProveOwnership { challenge_id, proofs }),
        ErrorCode::UnknownUpload,
        "bob answers alice's challenge",
    );
    assert!(b.names("/").expect("list").is_empty(), "bob's root is still empty");

    // Bob's own names are his own.
    b.mkdir("/secret", 0o755).expect("bob's /secret");
    b.upload("/s.txt", b"bob's text", 0o644).expect("bob's /s.txt");
    assert!(b.names("/secret").expect("list").is_empty());
    assert_eq!(b.read_file("/s.txt").expect("download"), b"bob's text");

    // Alice's tree is untouched by all of it.
    assert_eq!(a.names("/").expect("list"), vec!["s.txt", "secret", "sl"]);
    assert_eq!(a.read_file("/s.txt").expect("download"), b"alice's text");
    assert_same_bytes(&a.read_file("/secret/f").expect("download"), &secret, "alice's secret");
    assert_eq!(a.stat("/s.txt").expect("stat").mode & 0o7777, 0o644);
    let needed = a.call(&QueryChunk { upload_id: slot.upload_id, indexes: vec![0, 1, 2] }).expect("query").needed;
    assert_eq!(needed, vec![1, 2], "bob's chunk did not count for alice's upload");
}
