//! Replays every input of the `frame` fuzz target's corpus (`fuzz/corpus/frame/`) through the target's own body,
//! `netdisk_protocol::fuzz::frame`, so the ordinary (stable) test suite catches a regression on any input the fuzzer
//! found interesting. `write_seeds` (ignored) writes the hand-made seed inputs the fuzzer starts from:
//! `cargo test -p netdisk-protocol --test fuzz_corpus -- --ignored write_seeds` (see `fuzz/README.md`).

use std::path::PathBuf;

use netdisk_protocol::*;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frame")
}

#[test]
fn frame_corpus_replays() {
    let mut inputs: Vec<PathBuf> =
        std::fs::read_dir(corpus_dir()).expect("fuzz/corpus/frame").map(|e| e.expect("corpus entry").path()).collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the frame corpus is empty");
    for path in inputs {
        let data = std::fs::read(&path).expect("corpus file");
        if std::panic::catch_unwind(|| netdisk_protocol::fuzz::frame(&data)).is_err() {
            panic!("corpus input {} fails", path.display());
        }
    }
}

fn attr(ino: u64, kind: NodeKind) -> Attr {
    let t = Timespec { sec: 1_700_000_000, nsec: 5 };
    Attr {
        ino,
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        nlink: 1,
        size: 5,
        atime: t,
        mtime: t,
        ctime: t,
        rdev: 0,
        md5: (kind == NodeKind::File).then(|| md5_hex(b"hello")),
    }
}

#[test]
#[ignore = "writes the seed inputs of fuzz/corpus/frame"]
fn write_seeds() {
    let owner = Owner { uid: 1000, gid: 100 };
    let t = Timespec { sec: 1_700_000_000, nsec: 999_999_999 };
    let requests: Vec<(AnyRequest, &[u8])> = vec![
        (AnyRequest::Hello(Hello { user: "ann".into(), client_nonce: "cd".repeat(32) }), b""),
        (AnyRequest::Login(Login { proof: "ef".repeat(32) }), b""),
        (AnyRequest::GetDir(GetDir { path: "/docs/".into(), after: Some("a".into()), limit: 512 }), b""),
        (AnyRequest::Stat(Stat { path: "/docs/hello.txt".into() }), b""),
        (AnyRequest::Mkdir(Mkdir { path: "/d\u{e9}j\u{e0}".into(), mode: 0o1777, owner }), b""),
        (AnyRequest::Rmdir(Rmdir { path: "/a/b".into() }), b""),
        (AnyRequest::DeleteFile(DeleteFile { path: "/a\\\"b\n".into() }), b""),
        (AnyRequest::Rename(Rename { from: "/a".into(), to: "/b/c".into(), noreplace: true }), b""),
        (
            AnyRequest::SetAttr(SetAttr {
                path: "/f".into(),
                mode: Some(0o4755),
                uid: Some(0),
                gid: None,
                size: Some(4097),
                atime: Some(SetTime::Now),
                mtime: Some(SetTime::At(t)),
            }),
            b"",
        ),
        (AnyRequest::Symlink(Symlink { path: "/l".into(), target: "../x/./y".into(), owner }), b""),
        (AnyRequest::ReadLink(ReadLink { path: "/l".into() }), b""),
        (AnyRequest::Link(Link { existing: "/f".into(), new: "/g".into() }), b""),
        (
            AnyRequest::Mknod(Mknod { path: "/dev".into(), kind: NodeKind::CharDevice, mode: 0o600, rdev: 259, owner }),
            b"",
        ),
        (
            AnyRequest::UploadFile(UploadFile {
                path: "/up".into(),
                size: 5,
                md5: md5_hex(b"hello"),
                sha256: Some(netdisk_protocol::content::content_hashes(b"", b"hello").sha256),
                mode: 0o644,
                mtime: Some(t),
                owner,
            }),
            b"",
        ),
        (
            AnyRequest::ProveOwnership(ProveOwnership {
                challenge_id: u64::MAX,
                proof: ownership_proof(&"0f".repeat(32), "00ff"),
            }),
            b"",
        ),
        (AnyRequest::QueryChunk(QueryChunk { upload_id: 1, indexes: vec![0, 1, 4096, u32::MAX] }), b""),
        (AnyRequest::UploadChunk(UploadChunk { upload_id: 1, index: 0, crc32c: chunk_crc(b"hello") }), b"hello"),
        (AnyRequest::Download(Download { path: "/f".into(), offset: 1, len: 16 * 1024 * 1024 }), b""),
        (AnyRequest::StatFs(StatFs {}), b""),
    ];
    let file = attr(7, NodeKind::File);
    let dir = attr(1, NodeKind::Dir);
    let responses: Vec<(AnyResponse, &[u8])> = vec![
        (
            AnyResponse::Hello(HelloRes {
                salt: "01".repeat(16),
                kdf: netdisk_protocol::login::DEFAULT_KDF,
                server_nonce: "23".repeat(32),
            }),
            b"",
        ),
        (
            AnyResponse::Login(LoginRes {
                root: dir.clone(),
                chunk_size: 4096,
                proof_salt: "ab".repeat(32),
                server_signature: "45".repeat(32),
            }),
            b"",
        ),
        (
            AnyResponse::GetDir(GetDirRes {
                dir: dir.clone(),
                entries: vec![
                    DirEntry { name: "hello.txt".into(), attr: file.clone() },
                    DirEntry { name: "l".into(), attr: attr(8, NodeKind::Symlink) },
                ],
                more: true,
            }),
            b"",
        ),
        (AnyResponse::Stat(StatRes { attr: file.clone() }), b""),
        (AnyResponse::Rmdir(RmdirRes { dir: None }), b""),
        (AnyResponse::ReadLink(ReadLinkRes { target: "x".into() }), b""),
        (AnyResponse::UploadFile(UploadFileRes::Instant { attr: file.clone(), dir: None }), b""),
        (AnyResponse::UploadFile(UploadFileRes::Upload { upload_id: 3, chunk_size: 4096, chunk_count: 2 }), b""),
        (
            AnyResponse::ProveOwnership(UploadFileRes::Challenge { challenge_id: 9, nonce: "0123456789abcdef".into() }),
            b"",
        ),
        (AnyResponse::QueryChunk(QueryChunkRes { needed: vec![1, 2] }), b""),
        (AnyResponse::UploadChunk(UploadChunkRes { index: 1, complete: Some(file.clone()) }), b""),
        (AnyResponse::Download(DownloadRes { md5: md5_hex(b"hello"), size: 5, offset: 0 }), b"hello"),
        (
            AnyResponse::StatFs(StatFsRes {
                block_size: 4096,
                blocks: 1 << 30,
                blocks_free: 1,
                blocks_available: 0,
                files: 10,
                files_free: 5,
                name_max: 255,
            }),
            b"",
        ),
        (AnyResponse::Error(WireError::new(ErrorCode::NotFound, "/x: no such file or directory")), b""),
    ];
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut all_requests = Vec::new();
    for (i, (request, payload)) in requests.iter().enumerate() {
        let mut bytes = request.encode(i as u64 + 1, payload.len() as u32);
        bytes.extend_from_slice(payload);
        std::fs::write(dir.join(format!("seed-request-{:?}", request.kind())), &bytes).unwrap();
        all_requests.extend_from_slice(&bytes);
    }
    std::fs::write(dir.join("seed-requests"), &all_requests).unwrap();
    for (i, (response, payload)) in responses.iter().enumerate() {
        let mut bytes = response.encode(i as u64 + 1, payload.len() as u32);
        bytes.extend_from_slice(payload);
        std::fs::write(dir.join(format!("seed-response-{:?}-{i}", response.kind())), &bytes).unwrap();
    }
    std::fs::write(dir.join("seed-path"), "/a/b c/\u{4e2d}/./../d//").unwrap();
}
