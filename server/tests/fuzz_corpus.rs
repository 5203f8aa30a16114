//! Replays every input of the `session` fuzz target's corpus (`fuzz/corpus/session/`) through the target's own body,
//! `netdisk_server::fuzz::session`, so the ordinary (stable) test suite catches a regression on any input the fuzzer
//! found interesting. `write_seeds` (ignored) records the scripted client sessions the fuzzer starts from:
//! `cargo test -p netdisk-server --test fuzz_corpus -- --ignored write_seeds` (see `fuzz/README.md`).

use std::path::PathBuf;

use netdisk_protocol::client::Client;
use netdisk_protocol::*;
use netdisk_server::fuzz::{content, record, Recorder, OTHER, PASSWORD, USER};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/session")
}

#[test]
fn session_corpus_replays() {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("fuzz/corpus/session")
        .map(|e| e.expect("corpus entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the session corpus is empty");
    for path in inputs {
        let data = std::fs::read(&path).expect("corpus file");
        if std::panic::catch_unwind(|| netdisk_server::fuzz::session(&data)).is_err() {
            panic!("corpus input {} fails", path.display());
        }
    }
}

type C = Client<Recorder>;

fn login(c: &mut C) {
    c.login(USER, PASSWORD).expect("login");
}

fn upload_request(path: &str, data: &[u8]) -> UploadFile {
    UploadFile {
        path: path.into(),
        size: data.len() as u64,
        md5: md5_hex(data),
        sha256: Some(netdisk_protocol::content::content_hashes(b"", data).sha256),
        mode: 0o644,
        mtime: Some(Timespec { sec: 1_600_000_000, nsec: 1 }),
        owner: Owner { uid: 1000, gid: 1000 },
    }
}

/// Starts an upload of new content (a challenge, if one comes, answered with no proof) and returns its upload id.
fn start_upload(c: &mut C, path: &str, declared: &[u8]) -> u64 {
    let answer = match c.call(&upload_request(path, declared)).expect("upload") {
        UploadFileRes::Challenge { challenge_id, .. } => {
            c.call(&ProveOwnership { challenge_id, proof: String::new() }).expect("prove")
        }
        // Challenged for this content before (one challenge a day): the ordinary upload at once.
        other => other,
    };
    let UploadFileRes::Upload { upload_id, .. } = answer else {
        panic!("an upload");
    };
    upload_id
}

fn send_chunk(c: &mut C, upload_id: u64, index: u32, bytes: &[u8]) {
    let _ = c.call_with_payload(&UploadChunk { upload_id, index, crc32c: chunk_crc(bytes) }, bytes);
}

fn chunks(data: &[u8]) -> Vec<&[u8]> {
    data.chunks(netdisk_server::fuzz::CHUNK_SIZE as usize).collect()
}

#[test]
#[ignore = "writes the seed inputs of fuzz/corpus/session"]
fn write_seeds() {
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    seeds.push((
        "read",
        record(|c| {
            login(c);
            let _ = c.stat("/docs/hello.txt");
            let _ = c.list_dir("/docs");
            let _ = c.call(&GetDir { path: "/".into(), after: Some("docs".into()), limit: 1 });
            let _ = c.call(&ReadLink { path: "/docs/link".into() });
            let _ = c.download("/docs/big.bin", 100, 5000);
            let _ = c.download("/docs/hello.txt", 50, 10);
            let _ = c.call(&StatFs {});
        }),
    ));
    seeds.push((
        "upload-small",
        record(|c| {
            login(c);
            c.upload("/new.txt", b"some new bytes", 0o640).expect("upload");
            let _ = c.read_file("/new.txt");
        }),
    ));
    seeds.push((
        "upload-chunks",
        record(|c| {
            login(c);
            let data = content::bytes(2 * netdisk_server::fuzz::CHUNK_SIZE as usize + 7, 9);
            c.upload("/docs/three.bin", &data, 0o644).expect("upload");
        }),
    ));
    seeds.push((
        "instant-own",
        record(|c| {
            login(c);
            c.upload("/copy.txt", content::HELLO, 0o644).expect("instant");
            c.upload("/docs/hello.txt", &content::big(), 0o644).expect("instant over a file");
        }),
    ));
    seeds.push((
        "instant-proof",
        record(|c| {
            login(c);
            c.upload("/mine.bin", &content::shared(), 0o644).expect("instant with a proof");
        }),
    ));
    seeds.push((
        "resume",
        record(|c| {
            login(c);
            c.upload("/partial.bin", &content::partial(), 0o644).expect("resumed upload");
        }),
    ));
    seeds.push((
        "resume-elsewhere",
        record(|c| {
            login(c);
            let data = content::partial();
            // ann's unfinished upload of this content: resumed at another path.
            let Ok(UploadFileRes::Upload { upload_id, .. }) = c.call(&upload_request("/docs/other.bin", &data)) else {
                panic!("a resumed upload");
            };
            let _ = c.call(&QueryChunk { upload_id, indexes: vec![0, 1, 2, 3] });
            send_chunk(c, upload_id, 2, chunks(&data)[2]);
            let _ = c.call(&DeleteFile { path: "/partial.bin".into() });
        }),
    ));
    seeds.push((
        "tree",
        record(|c| {
            login(c);
            let _ = c.mkdir("/a", 0o755);
            let _ = c.mkdir("/a/b", 0o700);
            let _ = c.rename("/docs/hello.txt", "/a/b/h", false);
            let _ = c.call(&Link { existing: "/a/b/h".into(), new: "/a/h2".into() });
            let _ = c.call(&Mknod {
                path: "/a/fifo".into(),
                kind: NodeKind::Fifo,
                mode: 0o644,
                rdev: 0,
                owner: Owner::default(),
            });
            let _ = c.call(&Symlink { path: "/a/s".into(), target: "/nowhere".into(), owner: Owner::default() });
            let _ = c.rename("/a", "/docs/a", true);
            let _ = c.rename("/docs", "/moved", false);
            let _ = c.rename("/moved", "/moved/a/inside", false);
            let _ = c.delete_file("/moved/a/h2");
            let _ = c.rmdir("/moved/a");
            let _ = c.delete_file("/moved/big.bin");
            let _ = c.names("/moved");
        }),
    ));
    seeds.push((
        "setattr",
        record(|c| {
            login(c);
            let set = |path: &str| SetAttr { path: path.into(), ..SetAttr::default() };
            let _ = c.call(&SetAttr { mode: Some(0o4755), uid: Some(7), gid: Some(8), ..set("/docs/big.bin") });
            let _ = c.call(&SetAttr { size: Some(5), ..set("/docs/big.bin") });
            let _ = c.call(&SetAttr { size: Some(9000), ..set("/docs/hello.txt") });
            let _ = c.call(&SetAttr { size: Some(0), ..set("/docs/hello.txt") });
            let _ = c.call(&SetAttr {
                atime: Some(SetTime::Now),
                mtime: Some(SetTime::At(Timespec { sec: -1, nsec: 999_999_999 })),
                ..set("/docs")
            });
            let _ = c.call(&SetAttr { size: Some(1), ..set("/docs") });
        }),
    ));
    seeds.push((
        "bad-chunks",
        record(|c| {
            login(c);
            let data = content::bytes(5000, 4);
            let id = start_upload(c, "/bad.bin", &data);
            let parts = chunks(&data);
            let _ = c.call_with_payload(&UploadChunk { upload_id: id, index: 0, crc32c: chunk_crc(b"x") }, parts[0]);
            let _ =
                c.call_with_payload(&UploadChunk { upload_id: id, index: 1, crc32c: chunk_crc(parts[1]) }, parts[0]);
            let _ =
                c.call_with_payload(&UploadChunk { upload_id: id, index: 7, crc32c: chunk_crc(parts[1]) }, parts[1]);
            let _ = c.call(&QueryChunk { upload_id: id, indexes: vec![1, 0, 1, 99] });
            send_chunk(c, id, 1, parts[1]);
            send_chunk(c, id, 1, parts[1]);
            send_chunk(c, id, 0, parts[0]);
        }),
    ));
    seeds.push((
        "lying-md5",
        record(|c| {
            login(c);
            let declared = content::bytes(6000, 5);
            let sent = content::bytes(6000, 6);
            let id = start_upload(c, "/liar.bin", &declared);
            for (i, part) in chunks(&sent).into_iter().enumerate() {
                send_chunk(c, id, i as u32, part);
            }
            let _ = c.stat("/liar.bin");
        }),
    ));
    seeds.push((
        "other-user",
        record(|c| {
            let _ = c.login(OTHER, PASSWORD);
            let _ = c.login(USER, "wrong");
            login(c);
            let _ = c.login(USER, PASSWORD);
            let _ = c.stat("/shared.bin");
            let _ = c.call(&QueryChunk { upload_id: 999, indexes: vec![0] });
        }),
    ));
    seeds.push((
        "not-logged-in",
        record(|c| {
            let _ = c.stat("/");
            send_chunk(c, 1, 0, b"payload before login");
            let _ = c.download("/docs/hello.txt", 0, 5);
            login(c);
            let _ = c.stat("/");
        }),
    ));
    seeds.push((
        "upload-conflicts",
        record(|c| {
            login(c);
            let data = content::bytes(6000, 7);
            let parts = chunks(&data);
            // The path becomes a directory before the last chunk arrives.
            let id = start_upload(c, "/x", &data);
            send_chunk(c, id, 0, parts[0]);
            let _ = c.mkdir("/x", 0o755);
            send_chunk(c, id, 1, parts[1]);
            // The parent directory goes away before the last chunk arrives.
            let _ = c.mkdir("/d", 0o755);
            let id = start_upload(c, "/d/f", &data);
            let _ = c.rmdir("/d");
            send_chunk(c, id, 0, parts[0]);
            send_chunk(c, id, 1, parts[1]);
            let _ = c.stat("/d/f");
        }),
    ));
    seeds.push((
        "same-content-twice",
        record(|c| {
            login(c);
            let data = content::bytes(9000, 8);
            let parts = chunks(&data);
            let first = start_upload(c, "/one", &data);
            send_chunk(c, first, 0, parts[0]);
            // The same content to a second path resumes the same physical file.
            if let Ok(UploadFileRes::Upload { upload_id, .. }) = c.call(&upload_request("/two", &data)) {
                send_chunk(c, upload_id, 1, parts[1]);
                send_chunk(c, upload_id, 2, parts[2]);
            }
            send_chunk(c, first, 2, parts[2]);
            let _ = c.upload("/one", &data, 0o644);
            let _ = c.call(&Link { existing: "/one".into(), new: "/three".into() });
            let _ = c.call(&SetAttr { path: "/three".into(), size: Some(100), ..SetAttr::default() });
            let _ = c.rename("/one", "/two", false);
            let _ = c.delete_file("/two");
            let _ = c.download("/three", 0, 200);
        }),
    ));
    // Hostile bytes after a valid request: the server closes the connection.
    let mut garbage = record(|c| {
        login(c);
        let _ = c.call(&Stat { path: "/docs/../../etc/passwd".into() });
    });
    let bad_json = b"{\"path\":1}";
    garbage.extend_from_slice(
        &FrameHead { kind: Kind::Stat, request_id: 9, header_len: bad_json.len() as u32, payload_len: 0 }.encode(),
    );
    garbage.extend_from_slice(bad_json);
    seeds.push(("garbage", garbage));

    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}
