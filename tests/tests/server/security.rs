//! Hostile paths and user isolation: nothing escapes the data directory, nobody reaches another user's tree.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use netdisk_e2e::netdisk_protocol::client::{Client, ClientError};
use netdisk_e2e::netdisk_protocol::frame::encode_message;
use netdisk_e2e::netdisk_protocol::{
    chunk_crc, md5_hex, ownership_proof, DeleteFile, Download, ErrorCode, FrameHead, GetDir, Kind, Link, Mkdir, Mknod,
    NodeKind, Owner, ProveOwnership, QueryChunk, ReadLink, Rename, Request, Rmdir, SetAttr, Stat, Symlink, UploadChunk,
    UploadFileRes, MAX_DEPTH, MAX_PATH,
};
use netdisk_e2e::{
    begin_upload, code_of, expect_code, json_string_field, random_bytes, read_response_frame, read_until_closed,
    send_chunk, tree_of, upload_request, ServerOpts,
};

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
    let user_tree_before = user_tree(&mut c, "/");
    let long_name = format!("/{}", "n".repeat(256));
    let long_name_deep = format!("/a/{}", "m".repeat(256));
    let long_path = "/abcd".repeat(MAX_PATH / 5 + 1); // valid names, a few bytes past the limit
    assert!(long_path.len() > MAX_PATH);
    let deep_path = "/x".repeat(MAX_DEPTH + 1); // short, but one name more than any path may have
    assert!(deep_path.len() < MAX_PATH);
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
        deep_path,
        // Relative forms.
        "../x".into(),
        "./x".into(),
        "~/x".into(),
        format!("../../{tag}"),
        // `.` and `..` in every position.
        "/a/./b".into(),
        "/a/b/..".into(),
        "/a/..".into(),
        "/a/../..".into(),
        "/.../..".into(),
        // Windows forms: not absolute `/` paths.
        format!("\\..\\..\\{tag}"),
        format!("..\\{tag}"),
        format!("C:\\{tag}"),
        format!("\\\\host\\share\\{tag}"),
        // NUL anywhere.
        "/\0".into(),
        "\0/x".into(),
        "/a/\0".into(),
        // Over-long, counted in bytes: 128 two-byte characters; a path one byte over the limit.
        format!("/{}", "\u{e9}".repeat(128)),
        path_of_len(MAX_PATH + 1),
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
    // A path of exactly the longest length is a path (of names that do not exist), not a refusal.
    expect_code(c.stat(&path_of_len(MAX_PATH)), ErrorCode::NotFound, "a path of exactly MAX_PATH bytes");
    expect_code(c.stat(&"/x".repeat(MAX_DEPTH)), ErrorCode::NotFound, "a path of exactly MAX_DEPTH names");

    refused_on_the_wire(&server, &tag);
    backslashes_are_plain_bytes_of_a_name(&mut c, &tag);
    symlink_targets_are_never_followed(&mut c, &tag);

    // Nothing changed in the user's tree, and the server still serves.
    assert_eq!(user_tree(&mut c, "/"), user_tree_before, "the user's tree after the hostile paths");
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
    // The server runs as whoever runs the tests (root here): look where an escape would land.
    let parent = server.root_dir().parent().expect("the server's directory has a parent").to_path_buf();
    let cwd = std::env::current_dir().expect("cwd");
    for dir in [Path::new("/"), Path::new("/tmp"), Path::new("/etc"), Path::new("/root"), &parent, &cwd] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(!name.contains(&tag), "{} appeared outside the data directory", entry.path().display());
        }
    }
}

/// A path of exactly `len` bytes made of valid names.
fn path_of_len(len: usize) -> String {
    let mut path = String::new();
    while path.len() < len {
        let name = (len - path.len() - 1).min(200);
        assert!(name > 0, "no room for a name");
        path.push('/');
        path.push_str(&"p".repeat(name));
    }
    assert_eq!(path.len(), len);
    path
}

/// Every node under `dir`, recursively, with what an fsck would compare (not times).
fn user_tree(c: &mut Conn, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.list_dir(dir).unwrap_or_else(|err| panic!("list {dir}: {err}")) {
        let path = netdisk_e2e::netdisk_protocol::path::join(dir, &e.name);
        let a = &e.attr;
        out.push(format!("{path} {:?} {:o} {} {} {:?} ino={}", a.kind, a.mode, a.nlink, a.size, a.md5, a.ino));
        if a.kind == NodeKind::Dir {
            out.extend(user_tree(c, &path));
        }
    }
    out
}

/// The JSON header of every path-taking request, with `PATH` where a path goes (as a JSON string literal).
fn path_headers() -> Vec<(&'static str, Kind, String)> {
    let owner = r#""owner":{"uid":0,"gid":0}"#;
    let md5 = md5_hex(b"hostile content");
    vec![
        ("Mkdir", Kind::Mkdir, format!(r#"{{"path":PATH,"mode":493,{owner}}}"#)),
        (
            "UploadFile",
            Kind::UploadFile,
            format!(r#"{{"path":PATH,"size":15,"md5":"{md5}","mode":420,"mtime":null,{owner}}}"#),
        ),
        ("Stat", Kind::Stat, r#"{"path":PATH}"#.into()),
        ("GetDir", Kind::GetDir, r#"{"path":PATH,"after":null,"limit":10}"#.into()),
        ("Download", Kind::Download, r#"{"path":PATH,"offset":0,"len":10}"#.into()),
        ("DeleteFile", Kind::DeleteFile, r#"{"path":PATH}"#.into()),
        ("Rmdir", Kind::Rmdir, r#"{"path":PATH}"#.into()),
        ("Rename from", Kind::Rename, r#"{"from":PATH,"to":"/renamed","noreplace":false}"#.into()),
        ("Rename to", Kind::Rename, r#"{"from":"/legit","to":PATH,"noreplace":false}"#.into()),
        ("Link existing", Kind::Link, r#"{"existing":PATH,"new":"/linked"}"#.into()),
        ("Link new", Kind::Link, r#"{"existing":"/legit","new":PATH}"#.into()),
        ("Symlink", Kind::Symlink, format!(r#"{{"path":PATH,"target":"/legit",{owner}}}"#)),
        ("ReadLink", Kind::ReadLink, r#"{"path":PATH}"#.into()),
        ("Mknod", Kind::Mknod, format!(r#"{{"path":PATH,"kind":"fifo","mode":420,"rdev":0,{owner}}}"#)),
        ("SetAttr", Kind::SetAttr, r#"{"path":PATH,"mode":511}"#.into()),
    ]
}

/// One request frame with a raw JSON header.
fn raw_request(kind: Kind, header: &[u8]) -> Vec<u8> {
    let head = FrameHead { kind, request_id: 1, header_len: header.len() as u32, payload_len: 0 };
    let mut out = head.encode().to_vec();
    out.extend_from_slice(header);
    out
}

/// Paths spelled in raw JSON for every path-taking request: escapes are decoded before the path is checked (and
/// refused), and bytes that are not UTF-8 (or a lone surrogate) make a broken frame: the connection is closed.
fn refused_on_the_wire(server: &netdisk_e2e::Server, tag: &str) {
    let mut raw = alice(server).into_stream();
    let mut ask = |what: &str, frame: Vec<u8>| -> Vec<u8> {
        raw.write_all(&frame).unwrap_or_else(|e| panic!("{what}: send: {e}"));
        let answer = read_response_frame(&mut raw).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!(answer.head.kind, Kind::Error, "{what}: {}", String::from_utf8_lossy(&answer.header));
        answer.header
    };
    for (op, kind, template) in path_headers() {
        // The template itself is a valid request: a plain missing path gets an answer, not a closed connection.
        let header = template.replace("PATH", r#""/no/such""#);
        let answer = ask(&format!("{op} control"), raw_request(kind, header.as_bytes()));
        assert_eq!(json_string_field(&answer, "code").as_deref(), Some("not_found"), "{op} control");

        let escaped = [
            format!(r#""\u002f\u002e\u002e\u002f{tag}""#),
            format!(r#""\/..\/{tag}""#),
            r#""/a\u0000b""#.to_string(),
            r#""/legit/\u002e""#.to_string(),
            format!(r#""\u002e\u002e/{tag}""#),
        ];
        for path in &escaped {
            let what = format!("{op} {path}");
            let answer = ask(&what, raw_request(kind, template.replace("PATH", path).as_bytes()));
            assert_eq!(json_string_field(&answer, "code").as_deref(), Some("invalid"), "{what}");
        }

        let not_utf8: [&[u8]; 4] = [b"\"/\xff\"", b"\"/\xc0\xae\xc0\xae\"", b"\"/\xed\xa0\x80\"", br#""/\ud800""#];
        for path in not_utf8 {
            let what = format!("{op} {}", String::from_utf8_lossy(path));
            let (before, after) = template.split_once("PATH").expect("a PATH in the template");
            let header = [before.as_bytes(), path, after.as_bytes()].concat();
            let mut stream = alice(server).into_stream();
            let _ = stream.write_all(&raw_request(kind, &header));
            let closed = read_until_closed(&mut stream, Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{what}: the connection is still open"));
            assert!(closed.received.is_empty(), "{what}: answered: {}", String::from_utf8_lossy(&closed.received));
        }
    }
}

/// Inside a `/` path a backslash is an ordinary byte of a name, as on Linux (`cp` on the mount can store `a\b`):
/// `/..\..\TAG` is one name in the user's root, never a way out.
fn backslashes_are_plain_bytes_of_a_name(c: &mut Conn, tag: &str) {
    let name = format!("..\\..\\{tag}");
    let dir = format!("/{name}");
    c.mkdir(&dir, 0o755).expect("a name with backslashes");
    c.upload(&format!("{dir}/\\..\\x"), b"", 0o644).expect("an empty file named with backslashes");
    assert!(c.names("/").expect("list").contains(&name), "the name is listed as given");
    assert_eq!(c.names(&dir).expect("list"), vec!["\\..\\x".to_string()]);
    c.delete_file(&format!("{dir}/\\..\\x")).expect("delete");
    c.rmdir(&dir).expect("rmdir");
}

/// A symlink's target is the user's text: stored as given, read back as given, never followed by the server.
fn symlink_targets_are_never_followed(c: &mut Conn, tag: &str) {
    let targets = [
        "../../../../../../../../etc/passwd".to_string(),
        "/etc/passwd".to_string(),
        format!("/tmp/{tag}"),
        format!("../{tag}"),
        "/legit".to_string(),
    ];
    for (i, target) in targets.iter().enumerate() {
        let link = format!("/link-{i}");
        c.call(&Symlink { path: link.clone(), target: target.clone(), owner: Owner::default() }).expect("symlink");
        assert_eq!(&c.call(&ReadLink { path: link.clone() }).expect("readlink").target, target);
        assert_eq!(c.stat(&link).expect("stat").kind, NodeKind::Symlink);
        code_of(c.download(&link, 0, 4096), &format!("download of symlink {link} -> {target}"));
        expect_code(c.stat(&format!("{link}/x")), ErrorCode::NotDir, "a path through a symlink");
        expect_code(c.list_dir(&link), ErrorCode::NotDir, "listing a symlink");
        code_of(c.mkdir(&format!("{link}/d"), 0o755), "mkdir through a symlink");
        code_of(c.upload(&format!("{link}/f"), b"", 0o644), "upload through a symlink");
        code_of(c.rename("/legit", &format!("{link}/x"), false), "rename through a symlink");
        c.delete_file(&link).expect("remove the symlink");
    }
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
    let UploadFileRes::Challenge { challenge_id, nonce } =
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
    let proof = ownership_proof(&a.hashes(&other).proof_tag, &nonce);
    expect_code(
        b.call(&ProveOwnership { challenge_id, proof }),
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

/// Sends one request frame (request id 1) and returns the whole answer frame as bytes: head, header, payload.
fn answer_bytes<R: Request>(stream: &mut TcpStream, req: &R) -> Vec<u8> {
    stream.write_all(&encode_message(R::KIND, 1, req, 0)).expect("send a request");
    let frame = read_response_frame(stream).expect("an answer frame");
    let mut out = frame.head.encode().to_vec();
    out.extend_from_slice(&frame.header);
    out.extend_from_slice(&frame.payload);
    out
}

/// Bob's requests aimed at alice's names (paths, an upload id), each with its whole answer frame.
fn bob_probes(stream: &mut TcpStream, alice_upload: u64) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut probe = |what: String, bytes: Vec<u8>| out.push((what, bytes));
    for path in ["/secret", "/secret/f", "/secret/sub/deep", "/s.txt", "/sl", "/empty", "/partial"] {
        let p = || path.to_string();
        probe(format!("Stat {path}"), answer_bytes(stream, &Stat { path: p() }));
        probe(format!("GetDir {path}"), answer_bytes(stream, &GetDir { path: p(), after: None, limit: 100 }));
        probe(format!("Download {path}"), answer_bytes(stream, &Download { path: p(), offset: 0, len: 1 << 20 }));
        probe(format!("ReadLink {path}"), answer_bytes(stream, &ReadLink { path: p() }));
        probe(
            format!("SetAttr {path}"),
            answer_bytes(stream, &SetAttr { path: p(), mode: Some(0o777), size: Some(0), ..Default::default() }),
        );
        probe(
            format!("Rename {path} to /mine"),
            answer_bytes(stream, &Rename { from: p(), to: "/mine".into(), noreplace: false }),
        );
        probe(format!("Link {path}"), answer_bytes(stream, &Link { existing: p(), new: "/mine".into() }));
        probe(format!("DeleteFile {path}"), answer_bytes(stream, &DeleteFile { path: p() }));
        probe(format!("Rmdir {path}"), answer_bytes(stream, &Rmdir { path: p() }));
        // Into alice's directory: creating, renaming or linking there.
        let inside = format!("{path}/new");
        probe(
            format!("Mkdir {inside}"),
            answer_bytes(stream, &Mkdir { path: inside.clone(), mode: 0o755, owner: Owner::default() }),
        );
        probe(format!("UploadFile {inside}"), answer_bytes(stream, &upload_request(&inside, b"bob's bytes")));
        probe(format!("UploadFile empty {inside}"), answer_bytes(stream, &upload_request(&inside, b"")));
        probe(
            format!("Symlink {inside}"),
            answer_bytes(stream, &Symlink { path: inside.clone(), target: "/x".into(), owner: Owner::default() }),
        );
        probe(
            format!("Mknod {inside}"),
            answer_bytes(
                stream,
                &Mknod { path: inside.clone(), kind: NodeKind::Fifo, mode: 0o644, rdev: 0, owner: Owner::default() },
            ),
        );
        probe(
            format!("Rename /bobs to {inside}"),
            answer_bytes(stream, &Rename { from: "/bobs".into(), to: inside.clone(), noreplace: false }),
        );
        probe(format!("Link /bobs to {inside}"), answer_bytes(stream, &Link { existing: "/bobs".into(), new: inside }));
    }
    probe(
        "QueryChunk of alice's upload".into(),
        answer_bytes(stream, &QueryChunk { upload_id: alice_upload, indexes: vec![0, 1, 2] }),
    );
    // Bob's own tree, seen by him: the same whatever alice holds.
    probe("Stat /".into(), answer_bytes(stream, &Stat { path: "/".into() }));
    probe("GetDir /".into(), answer_bytes(stream, &GetDir { path: "/".into(), after: None, limit: 100 }));
    probe("Stat /bobs".into(), answer_bytes(stream, &Stat { path: "/bobs".into() }));
    out
}

#[test]
fn another_users_names_get_exactly_the_answers_of_missing_ones() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    let mut a = alice(&server);
    a.mkdir("/secret", 0o700).expect("mkdir");
    a.mkdir("/secret/sub", 0o700).expect("mkdir");
    let secret = random_bytes(54, 100_000);
    a.upload("/secret/f", &secret, 0o600).expect("upload");
    a.upload("/secret/sub/deep", b"deep", 0o600).expect("upload");
    a.upload("/s.txt", b"alice's text", 0o644).expect("upload");
    a.upload("/empty", b"", 0o644).expect("upload");
    a.call(&Symlink { path: "/sl".into(), target: "/secret/f".into(), owner: Owner::default() }).expect("symlink");
    // An unfinished upload of alice's, with a stored chunk.
    let partial = random_bytes(55, 3 * 65536);
    let slot = begin_upload(&mut a, "/partial", &partial);
    send_chunk(&mut a, &slot, &partial, 0).expect("chunk 0");

    let mut b = bob(&server);
    b.upload("/bobs", b"bob's own file", 0o644).expect("bob's file");
    let mut stream = b.into_stream();
    let while_alice_holds = bob_probes(&mut stream, slot.upload_id);

    // Alice's names go away: her files and directories, and her upload (finished, then deleted).
    send_chunk(&mut a, &slot, &partial, 1).expect("chunk 1");
    assert!(send_chunk(&mut a, &slot, &partial, 2).expect("chunk 2").complete.is_some());
    for f in ["/secret/f", "/secret/sub/deep", "/s.txt", "/empty", "/sl", "/partial"] {
        a.delete_file(f).unwrap_or_else(|e| panic!("alice deletes {f}: {e}"));
    }
    a.rmdir("/secret/sub").expect("rmdir");
    a.rmdir("/secret").expect("rmdir");
    assert!(a.names("/").expect("list").is_empty());
    let after_alice_left = bob_probes(&mut stream, slot.upload_id);

    assert_eq!(while_alice_holds.len(), after_alice_left.len());
    for ((what, held), (_, missing)) in while_alice_holds.iter().zip(&after_alice_left) {
        assert_eq!(
            String::from_utf8_lossy(held),
            String::from_utf8_lossy(missing),
            "{what}: bob's answer depends on whether alice holds the name"
        );
        if !what.starts_with("Stat /") && what != "GetDir /" {
            assert_eq!(held[5], Kind::Error as u8, "{what}: not an error: {}", String::from_utf8_lossy(held));
        }
    }
    // Bob's tree is what it was; his one file untouched.
    let mut b = Client::new(stream);
    assert_eq!(b.names("/").expect("list"), vec!["bobs".to_string()]);
    assert_eq!(b.read_file("/bobs").expect("download"), b"bob's own file");
}

/// Answers a challenge with `proof`, or with the right proof of `data` when `proof` is `None`.
fn prove(c: &mut Conn, res: UploadFileRes, data: &[u8], proof: Option<String>) -> UploadFileRes {
    let UploadFileRes::Challenge { challenge_id, nonce } = res else {
        panic!("content this user does not hold must be challenged, got {res:?}")
    };
    let proof = proof.unwrap_or_else(|| ownership_proof(&c.hashes(data).proof_tag, &nonce));
    c.call(&ProveOwnership { challenge_id, proof }).expect("ProveOwnership")
}

#[test]
fn knowing_an_md5_is_not_enough_to_obtain_a_file() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    let big = random_bytes(56, 300_000); // several chunks
    let small = b"a small secret of alice's".to_vec();
    let mut a = alice(&server);
    a.upload("/big", &big, 0o600).expect("upload");
    a.upload("/small", &small, 0o600).expect("upload");
    // And an unfinished upload of alice's with a chunk stored: its id must mean nothing to others.
    let pending = random_bytes(57, 3 * 65536);
    let slot = begin_upload(&mut a, "/pending", &pending);
    send_chunk(&mut a, &slot, &pending, 0).expect("chunk 0");

    // Each (user, content) gets one challenge a day: every wrong answer is tried by a user of its own.
    let users = std::cell::Cell::new(0);
    let new_user = || {
        users.set(users.get() + 1);
        let name = format!("eve{}", users.get());
        server.add_user(&name, "eve-password");
        server.login(&name, "eve-password")
    };
    for (name, data) in [("big", &big), ("small", &small)] {
        let target = format!("/got-{name}");
        let req = upload_request(&target, data);
        let hashes = netdisk_e2e::netdisk_protocol::content::content_hashes(b"", data);
        let attempts: Vec<(&str, String)> = vec![
            ("an empty proof", String::new()),
            ("zeros", "0".repeat(64)),
            ("the file's md5", hashes.md5.clone()),
            ("the file's SHA-256", hashes.sha256.clone()),
            ("a tag of another salt", hashes.proof_tag.clone()),
            ("not hex", "not a proof at all".into()),
        ];
        for (what, proof) in attempts {
            let mut e = new_user();
            let res = e.call(&req).expect("UploadFile");
            match prove(&mut e, res, data, Some(proof)) {
                UploadFileRes::Upload { upload_id, chunk_count, .. } => {
                    // A fresh upload of this user's: every chunk is still needed, none of alice's progress shows.
                    let needed =
                        e.call(&QueryChunk { upload_id, indexes: (0..chunk_count).collect() }).expect("query").needed;
                    assert_eq!(needed, (0..chunk_count).collect::<Vec<_>>(), "{name}, {what}: chunks needed");
                }
                other => panic!("{name}, {what}: a wrong proof must give a normal upload, got {other:?}"),
            }
            expect_code(e.stat(&target), ErrorCode::NotFound, &format!("{name}, {what}: stat"));
            // Asked again: no second challenge.
            let again = e.call(&req).expect("UploadFile");
            assert!(matches!(again, UploadFileRes::Upload { .. }), "{name}, {what}: asked again: {again:?}");
        }
        // No proof at all: the challenge ignored, chunks asked about with guessed upload ids.
        let mut e = new_user();
        let res = e.call(&req).expect("UploadFile");
        assert!(matches!(res, UploadFileRes::Challenge { .. }), "{name}: a challenge");
        for upload_id in (0..64).chain([slot.upload_id]) {
            match e.call(&QueryChunk { upload_id, indexes: vec![0] }) {
                Ok(q) => assert_eq!(q.needed, vec![0], "{name}: upload {upload_id} is this user's, nothing stored"),
                Err(e) => assert_eq!(e.code(), Some(ErrorCode::UnknownUpload), "{name}: upload {upload_id}: {e}"),
            }
        }
        // A challenge answered on another connection of the same user, even rightly: unknown there.
        let mut e = new_user();
        let UploadFileRes::Challenge { challenge_id, nonce } = e.call(&req).expect("UploadFile") else {
            panic!("a challenge")
        };
        let proof = ownership_proof(&e.hashes(data).proof_tag, &nonce);
        let name_now = format!("eve{}", users.get());
        let mut other_conn = server.login(&name_now, "eve-password");
        expect_code(
            other_conn.call(&ProveOwnership { challenge_id, proof }),
            ErrorCode::UnknownUpload,
            &format!("{name}: a challenge answered on another connection"),
        );
        // Alice's md5 and identity with another size, and size 0, get nothing either.
        let mut b = bob(&server);
        let mut other_size = req.clone();
        other_size.size += 1;
        let res = b.call(&other_size).expect("UploadFile");
        assert!(!matches!(res, UploadFileRes::Instant { .. }), "{name}: another size is not instant: {res:?}");
        let mut zero = req.clone();
        zero.size = 0;
        expect_code(b.call(&zero), ErrorCode::ChecksumMismatch, &format!("{name}: size 0 with alice's md5"));
        expect_code(b.stat(&target), ErrorCode::NotFound, &format!("{name}: after everything"));
    }
    assert_eq!(bob(&server).names("/").expect("list"), Vec::<String>::new(), "nothing in bob's tree");
    assert_eq!(a.names("/").expect("list"), vec!["big".to_string(), "small".to_string()]);
    // With the content itself, the proof works: the refusals above were about the proof, not the content.
    let mut b = bob(&server);
    let res = b.call(&upload_request("/got-big", &big)).expect("UploadFile");
    assert!(matches!(prove(&mut b, res, &big, None), UploadFileRes::Instant { .. }), "a right proof is instant");
    assert_same_bytes(&b.read_file("/got-big").expect("download"), &big, "bob's proven copy");
}

/// Asserts that nobody can see or obtain content `x` at `path` (alice's lie) — neither alice on any connection nor
/// bob with a right proof of `x`.
fn assert_no_file(server: &netdisk_e2e::Server, liar: &mut Conn, path: &str, x: &[u8], what: &str) {
    expect_code(liar.stat(path), ErrorCode::NotFound, &format!("{what}: stat"));
    expect_code(liar.download(path, 0, 1 << 20), ErrorCode::NotFound, &format!("{what}: download"));
    let mut other = alice(server);
    expect_code(other.stat(path), ErrorCode::NotFound, &format!("{what}: stat on another connection"));
    assert!(!other.names("/").expect("list").iter().any(|n| format!("/{n}") == path), "{what}: listed");
    // Nobody holds `x` complete: even a right proof of it gives a normal upload, not `x`'s file.
    let mut b = bob(server);
    let res = match b.call(&upload_request("/claim", x)).expect("UploadFile") {
        challenge @ UploadFileRes::Challenge { .. } => prove(&mut b, challenge, x, None),
        // Challenged for `x` before: no second challenge, the ordinary upload at once.
        other => other,
    };
    match res {
        UploadFileRes::Upload { .. } => {}
        other => panic!("{what}: content nobody holds complete must be uploaded, got {other:?}"),
    }
    expect_code(b.stat("/claim"), ErrorCode::NotFound, &format!("{what}: bob's claim"));
}

#[test]
fn a_declared_md5_with_other_bytes_never_makes_a_file() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    let mut liar = alice(&server);

    // Several chunks: x is claimed, y is sent.
    let x = random_bytes(58, 4 * 65536 + 999);
    let y = random_bytes(59, x.len());
    let slot = begin_upload(&mut liar, "/multi", &x);
    assert_eq!(slot.chunk_count, 5);
    for i in 0..slot.chunk_count {
        // y's bytes declared with x's chunk md5: each chunk refused at once.
        let req = UploadChunk { upload_id: slot.upload_id, index: i, crc32c: chunk_crc(slot.chunk(&x, i)) };
        expect_code(liar.call_with_payload(&req, slot.chunk(&y, i)), ErrorCode::ChecksumMismatch, "y as x's chunk");
    }
    assert_no_file(&server, &mut liar, "/multi", &x, "chunks of other bytes");
    // x's chunks except one of y's, which carries its own (true) md5: the file is refused when it completes.
    for i in 0..slot.chunk_count {
        let source = if i == 2 { &y } else { &x };
        let res = send_chunk(&mut liar, &slot, source, i);
        if i + 1 < slot.chunk_count {
            assert!(res.expect("a chunk matching its own md5").complete.is_none());
        } else {
            expect_code(res, ErrorCode::ChecksumMismatch, "the chunk completing a file that is not x");
        }
    }
    assert_no_file(&server, &mut liar, "/multi", &x, "one chunk of other bytes");

    // A single chunk: the whole file in one UploadChunk.
    let sx = random_bytes(60, 40_000);
    let sy = random_bytes(61, sx.len());
    let mut flipped = sx.clone();
    flipped[20_000] ^= 0x01;
    let lies: Vec<(&str, u32, &[u8])> = vec![
        ("other bytes declared with the file's checksum", chunk_crc(&sx), &sy),
        ("other bytes with their own checksum", chunk_crc(&sy), &sy),
        ("one flipped bit, declared with the file's checksum", chunk_crc(&sx), &flipped),
        ("one flipped bit with its own checksum", chunk_crc(&flipped), &flipped),
    ];
    for (i, (what, crc, bytes)) in lies.iter().enumerate() {
        let path = format!("/single-{i}");
        let slot = begin_upload(&mut liar, &path, &sx);
        assert_eq!(slot.chunk_count, 1, "{what}");
        let req = UploadChunk { upload_id: slot.upload_id, index: 0, crc32c: *crc };
        expect_code(liar.call_with_payload(&req, bytes), ErrorCode::ChecksumMismatch, what);
        assert_no_file(&server, &mut liar, &path, &sx, what);
        // Sending the lie again on the same upload does not make it true either.
        match liar.call_with_payload(&req, bytes) {
            Ok(res) => panic!("{what}, again: accepted: {res:?}"),
            Err(e) => assert!(
                matches!(e.code(), Some(ErrorCode::ChecksumMismatch | ErrorCode::UnknownUpload)),
                "{what}, again: {e}"
            ),
        }
        assert_no_file(&server, &mut liar, &path, &sx, what);
    }

    // The lies poisoned nothing: the true bytes then upload and read back exactly.
    for (path, data) in [("/multi", &x), ("/single-0", &sx)] {
        liar.upload(path, data, 0o644).unwrap_or_else(|e| panic!("honest upload of {path}: {e}"));
        assert_same_bytes(&liar.read_file(path).expect("download"), data, path);
    }
    assert_eq!(liar.names("/").expect("list"), vec!["multi".to_string(), "single-0".to_string()]);
}
