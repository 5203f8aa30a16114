//! Quotas and disk space hold under concurrency, and unfinished uploads do not pile up (issue 10, hole 4):
//! declared sizes are bounded by the quota and the disk; an upload in progress reserves its size against both,
//! decided in the transaction that creates it; unfinished uploads expire and are reclaimed.

use std::net::TcpStream;
use std::sync::{Arc, Barrier};

use netdisk_e2e::netdisk_protocol::client::{Client, ClientError};
use netdisk_e2e::netdisk_protocol::{
    chunk_crc, md5_hex, ownership_proof, ErrorCode, ProveOwnership, QueryChunk, SetAttr, UploadChunk, UploadFile,
    UploadFileRes, MAX_FILE_SIZE,
};
use netdisk_e2e::tmpfs::Tmpfs;
use netdisk_e2e::{code_of, expect_code, random_bytes, store, Server, ServerOpts};

use crate::{alice, server_with_alice, ALICE, ALICE_PW};

const MIB: u64 = 1 << 20;

/// An upload's handle as the server gave it.
struct Started {
    upload_id: u64,
    chunk_size: u32,
    chunk_count: u32,
}

/// Names `data` for `path` and gets the ordinary upload (answering a challenge rightly; nobody else holds it).
fn start(c: &mut Client<TcpStream>, path: &str, data: &[u8]) -> Result<Started, ClientError> {
    let req = c.upload_request(path, data, 0o644);
    let tag = c.hashes(data).proof_tag;
    let mut answer = c.call(&req)?;
    if let UploadFileRes::Challenge { challenge_id, nonce } = &answer {
        answer = c.call(&ProveOwnership { challenge_id: *challenge_id, proof: ownership_proof(&tag, nonce) })?;
    }
    match answer {
        UploadFileRes::Upload { upload_id, chunk_size, chunk_count } => {
            Ok(Started { upload_id, chunk_size, chunk_count })
        }
        other => panic!("an upload of new content to {path} was answered {other:?}"),
    }
}

/// Declares `size` bytes of content nobody has (no byte follows): the answer to the whole naming step.
fn declare(c: &mut Client<TcpStream>, path: &str, size: u64) -> Result<UploadFileRes, ClientError> {
    let req = UploadFile {
        path: path.into(),
        size,
        md5: md5_hex(path.as_bytes()),
        sha256: Some(netdisk_e2e::sha256_hex(path.as_bytes())),
        mode: 0o644,
        mtime: None,
        owner: Default::default(),
    };
    match c.call(&req)? {
        UploadFileRes::Challenge { challenge_id, .. } => {
            c.call(&ProveOwnership { challenge_id, proof: "0".repeat(64) })
        }
        other => Ok(other),
    }
}

/// Sends chunks `indexes` of an upload.
fn send_chunks(c: &mut Client<TcpStream>, up: &Started, data: &[u8], indexes: std::ops::Range<u32>) {
    for index in indexes {
        let start = index as usize * up.chunk_size as usize;
        let bytes = &data[start..(start + up.chunk_size as usize).min(data.len())];
        let req = UploadChunk { upload_id: up.upload_id, index, crc32c: chunk_crc(bytes) };
        c.call_with_payload(&req, bytes).unwrap_or_else(|e| panic!("chunk {index}: {e}"));
    }
}

/// Sum of the sizes of the files in alice's root.
fn used(c: &mut Client<TcpStream>) -> u64 {
    c.list_dir("/").expect("list /").iter().map(|e| e.attr.size).sum()
}

/// `n` connections of alice, each uploading its own content of `size` bytes at the same moment (a barrier);
/// returns how many succeeded. Every failure must be `QuotaExceeded`.
fn race(server: &Server, n: usize, size: usize, inline: bool) -> usize {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let mut c = server.login(ALICE, ALICE_PW);
            let barrier = barrier.clone();
            let data = random_bytes(1000 + i as u64 + size as u64, size);
            std::thread::spawn(move || {
                barrier.wait();
                let path = format!("/f{i}");
                let result = if inline {
                    c.upload_inline(&path, &data, 0o644).map(|_| ())
                } else {
                    c.upload(&path, &data, 0o644).map(|_| ())
                };
                match result {
                    Ok(()) => true,
                    Err(e) => {
                        assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "upload {i}: {e}");
                        false
                    }
                }
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("an uploading thread")).filter(|ok| *ok).count()
}

#[test]
fn parallel_uploads_never_pass_the_quota_together() {
    let server = server_with_alice(ServerOpts::default().chunk_size(256 * 1024));
    let (ok, out) = server.admin(&["user", "quota", ALICE, "1M"], None);
    assert!(ok, "user quota: {out}");
    let mut a = alice(&server);

    // 20 uploads of 1 MiB at once: the quota holds exactly one.
    assert_eq!(race(&server, 20, MIB as usize, false), 1, "uploads of 1 MiB under a 1 MiB quota");
    assert_eq!(used(&mut a), MIB);
    assert_eq!(store::upload_count(server.data_dir()), 0, "a refused upload left a record");
    for i in 0..20 {
        let _ = a.delete_file(&format!("/f{i}"));
    }
    // 20 of 300,000 bytes in chunks: exactly three fit.
    assert_eq!(race(&server, 20, 300_000, false), 3, "uploads of 300,000 bytes under a 1 MiB quota");
    assert_eq!(used(&mut a), 900_000);
    for i in 0..20 {
        let _ = a.delete_file(&format!("/f{i}"));
    }
    // Small files sent whole: 20 of 60,000 bytes, 17 fit.
    assert_eq!(race(&server, 20, 60_000, true), 17, "small files under a 1 MiB quota");
    assert_eq!(used(&mut a), 17 * 60_000);
    assert!(store::pfiles(server.data_dir()).iter().all(|p| p.complete), "a refused small file left its row");
    server.assert_fsck_clean();
}

#[test]
fn an_unfinished_upload_counts_against_the_quota_until_it_is_placed() {
    let server = server_with_alice(ServerOpts::default().chunk_size(64 * 1024));
    let (ok, out) = server.admin(&["user", "quota", ALICE, "1M"], None);
    assert!(ok, "user quota: {out}");
    let mut a = alice(&server);
    let first = random_bytes(1, 1_000_000);
    let up = start(&mut a, "/first", &first).expect("the first upload fits");
    send_chunks(&mut a, &up, &first, 0..2);
    // Its 1,000,000 bytes are reserved: 400,000 more do not fit, in chunks, nor 60,000 sent whole.
    let second = random_bytes(2, 400_000);
    expect_code(a.upload("/second", &second, 0o644), ErrorCode::QuotaExceeded, "a second upload");
    expect_code(a.upload_inline("/small", &random_bytes(3, 60_000), 0o644), ErrorCode::QuotaExceeded, "a small file");
    a.upload_inline("/tiny", b"tiny", 0o644).expect("what fits beside the reservation");
    let grow = SetAttr { path: "/tiny".into(), size: Some(100_000), ..Default::default() };
    expect_code(a.call(&grow), ErrorCode::QuotaExceeded, "a truncate beside the reservation");
    // Replacing the unfinished upload at the same path releases its reservation.
    a.upload("/first", &random_bytes(4, 900_000), 0o644).expect("the same path, other content");
    assert_eq!(a.stat("/first").expect("stat").size, 900_000);
    assert_eq!(store::upload_count(server.data_dir()), 0);
    server.assert_fsck_clean();
}

#[test]
fn a_declared_size_beyond_the_disk_is_refused_at_once() {
    let tmpfs = Tmpfs::mount("32m");
    let server = server_with_alice(ServerOpts::default().data_dir(tmpfs.path().join("data")).reserve_mib(2));
    let mut a = alice(&server);
    let before = store::db_bytes(server.data_dir());
    for size in [40 * MIB, 1 << 40, MAX_FILE_SIZE] {
        expect_code(declare(&mut a, "/big", size), ErrorCode::NoSpace, &format!("a declared size of {size}"));
    }
    // ~16 PiB: beyond the largest file, refused before anything is built.
    expect_code(declare(&mut a, "/huge", 16 << 50), ErrorCode::FileTooBig, "a declared size of 16 PiB");
    assert_eq!(store::upload_count(server.data_dir()), 0, "a refused upload left a record");
    assert!(store::pfiles(server.data_dir()).is_empty(), "a refused upload left a physical file");
    assert!(store::blob_files(server.data_dir()).is_empty(), "a refused upload left a blob");
    let after = store::db_bytes(server.data_dir());
    assert!(after < before + 256 * 1024, "the database grew from {before} to {after} bytes");
    // What fits still does.
    a.upload("/fits", &random_bytes(1, 3 * MIB as usize), 0o644).expect("an upload that fits");
    server.assert_fsck_clean();
    drop(server);
    drop(tmpfs);
}

/// A 64 MiB disk with a 4 MiB reserve: about 60 MiB for uploads.
fn small_disk() -> (Tmpfs, Server) {
    let tmpfs = Tmpfs::mount("64m");
    let opts = ServerOpts::default().data_dir(tmpfs.path().join("data")).reserve_mib(4).chunk_size(MIB as u32);
    let server = server_with_alice(opts);
    (tmpfs, server)
}

#[test]
fn unfinished_uploads_reserve_the_disk() {
    let (tmpfs, server) = small_disk();
    let mut a = alice(&server);
    let first = random_bytes(1, 40 * MIB as usize);
    let up = start(&mut a, "/first", &first).expect("40 MiB fit");
    send_chunks(&mut a, &up, &first, 0..3);
    // 37 MiB of it are still to come: another 30 MiB would not fit beside them.
    let mut b = alice(&server);
    expect_code(declare(&mut b, "/second", 30 * MIB), ErrorCode::NoSpace, "an upload beside a reservation");
    assert_eq!(store::upload_count(server.data_dir()), 1, "the refused upload left a record");
    // 10 MiB do fit beside it.
    b.upload("/third", &random_bytes(3, 10 * MIB as usize), 0o644).expect("an upload that fits beside");
    // The first upload can always finish: its space was kept for it.
    send_chunks(&mut a, &up, &first, 3..up.chunk_count);
    assert_eq!(a.stat("/first").expect("stat").size, 40 * MIB);
    server.assert_fsck_clean();
    drop(server);
    drop(tmpfs);
}

#[test]
fn expired_uploads_are_reclaimed_and_their_space_is_usable_again() {
    let (tmpfs, server) = small_disk();
    let mut a = alice(&server);
    let first = random_bytes(1, 40 * MIB as usize);
    let up = start(&mut a, "/first", &first).expect("40 MiB fit");
    send_chunks(&mut a, &up, &first, 0..20);
    let held = store::pfiles(server.data_dir());
    assert_eq!(held.len(), 1);
    let second = random_bytes(2, 30 * MIB as usize);
    let mut b = alice(&server);
    expect_code(b.upload("/second", &second, 0o644), ErrorCode::NoSpace, "an upload beside a reservation");
    // Left for longer than the default expiry (72 hours): the next new upload reclaims it, and fits.
    assert_eq!(store::age_unfinished(server.data_dir(), 73 * 3600), 1);
    b.upload("/second", &second, 0o644).expect("the space of the expired upload is free again");
    assert!(!store::blob_path(server.data_dir(), held[0].id).exists(), "the expired upload's blob is left");
    assert_eq!(store::upload_count(server.data_dir()), 0, "the expired upload's record is left");
    // Its client comes back: the upload is unknown, and starting anew works (when there is room).
    let query = QueryChunk { upload_id: up.upload_id, indexes: vec![20, 21] };
    assert_eq!(code_of(a.call(&query), "a query on an expired upload"), ErrorCode::UnknownUpload);
    let bytes = &first[20 * MIB as usize..21 * MIB as usize];
    let chunk = UploadChunk { upload_id: up.upload_id, index: 20, crc32c: chunk_crc(bytes) };
    assert_eq!(code_of(a.call_with_payload(&chunk, bytes), "a chunk of an expired upload"), ErrorCode::UnknownUpload);
    a.delete_file("/second").expect("delete");
    a.upload("/first", &first, 0o644).expect("the upload started anew");
    assert_eq!(a.stat("/first").expect("stat").size, 40 * MIB);
    server.assert_fsck_clean();
    drop(server);
    drop(tmpfs);
}

#[test]
fn a_server_start_reclaims_uploads_older_than_the_expiry() {
    let mut server = server_with_alice(ServerOpts::default().chunk_size(64 * 1024).upload_expiry_hours(2.0));
    let mut a = alice(&server);
    let old = random_bytes(1, 300_000);
    let up_old = start(&mut a, "/old", &old).expect("start");
    send_chunks(&mut a, &up_old, &old, 0..2);
    drop(a);
    server.terminate(std::time::Duration::from_secs(10)).expect("the server stops");
    // Three hours without progress: past the 2-hour expiry.
    assert_eq!(store::age_unfinished(server.data_dir(), 3 * 3600), 1);
    server.restart();
    let mut a2 = alice(&server);
    let recent = random_bytes(2, 300_000);
    let up_recent = start(&mut a2, "/recent", &recent).expect("start");
    send_chunks(&mut a2, &up_recent, &recent, 0..1);
    drop(a2);
    server.terminate(std::time::Duration::from_secs(10)).expect("the server stops");
    // One hour: within it.
    assert_eq!(store::age_unfinished(server.data_dir(), 3600), 1);
    server.restart();
    let pfiles = store::pfiles(server.data_dir());
    assert_eq!(pfiles.len(), 1, "{pfiles:?}");
    assert_eq!(pfiles[0].md5, md5_hex(&recent), "the recent upload survives a start, the expired one does not");
    assert_eq!(store::blob_files(server.data_dir()).len(), 1, "the expired upload's blob is left");
    let mut a = alice(&server);
    let chunk = UploadChunk { upload_id: up_old.upload_id, index: 2, crc32c: chunk_crc(&old[131072..196608]) };
    expect_code(a.call_with_payload(&chunk, &old[131072..196608]), ErrorCode::UnknownUpload, "the expired upload");
    a.upload("/recent", &recent, 0o644).expect("the recent upload resumes");
    server.assert_fsck_clean();
}
