//! Uploads: chunking, resuming, instant uploads within one user, verification of chunks and of whole files,
//! and many clients at once.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use netdisk_e2e::netdisk_protocol::{
    chunk_crc, md5_hex, ErrorCode, ProveOwnership, QueryChunk, UploadChunk, UploadFileRes, MAX_INLINE_UPLOAD,
    MAX_PAYLOAD,
};
use netdisk_e2e::{
    begin_upload, code_of, expect_code, random_bytes, send_chunk, upload_request, wait_until, ServerOpts,
};

use crate::{
    alice, assert_same_bytes, bob, server_with_alice, server_with_alice_and_bob, ALICE, ALICE_PW, CAROL, CAROL_PW,
};

const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

#[test]
fn chunked_upload_then_download() {
    let chunk = 65536usize;
    let server = server_with_alice(ServerOpts::default().chunk_size(chunk as u32));
    let mut c = alice(&server);
    // 1 MiB plus an odd remainder: 17 chunks, the last one short.
    let data = random_bytes(1, 1024 * 1024 + 12345);
    let want_chunks = data.len().div_ceil(chunk) as u32;
    assert_eq!(want_chunks, 17);

    let out = c.upload("/big.bin", &data, 0o640).expect("upload");
    assert!(!out.instant, "new content is not instant");
    assert_eq!(out.chunks_sent, want_chunks, "every chunk is sent once");
    assert_eq!(out.attr.size, data.len() as u64);
    assert_eq!(out.attr.md5.as_deref(), Some(md5_hex(&data).as_str()));
    assert_eq!(out.attr.mode & 0o7777, 0o640);

    let attr = c.stat("/big.bin").expect("stat");
    assert_eq!(attr.size, data.len() as u64);
    assert_eq!(attr.md5.as_deref(), Some(md5_hex(&data).as_str()));
    assert_eq!(attr.ino, out.attr.ino);
    assert_eq!(attr.nlink, 1);

    assert_same_bytes(&c.read_file("/big.bin").expect("download"), &data, "whole download");

    // Ranges: across chunk boundaries, unaligned, clamped at the end, at the end, past the end.
    let size = data.len() as u64;
    let cases: [(u64, u32); 6] =
        [(0, 10), (65530, 20), (123_457, 300_001), (size - 10, 100), (size - 1, 1), (size, 50)];
    for (offset, len) in cases {
        let (res, bytes) = c.download("/big.bin", offset, len).expect("ranged download");
        let end = (offset + len as u64).min(size) as usize;
        assert_same_bytes(&bytes, &data[offset as usize..end], &format!("range {offset}+{len}"));
        assert_eq!(res.size, size);
        assert_eq!(res.offset, offset);
        assert_eq!(res.md5, md5_hex(&data));
    }
    // The whole file in ranges of an odd length, stitched together.
    let mut stitched = Vec::new();
    while (stitched.len() as u64) < size {
        let (_, bytes) = c.download("/big.bin", stitched.len() as u64, 100_003).expect("range");
        assert!(!bytes.is_empty(), "a range before the end is not empty");
        stitched.extend_from_slice(&bytes);
    }
    assert_same_bytes(&stitched, &data, "download in 100003-byte ranges");

    // Another connection of the same user sees the same bytes.
    assert_same_bytes(&alice(&server).read_file("/big.bin").expect("download"), &data, "second connection");
    expect_code(c.download("/missing", 0, 10), ErrorCode::NotFound, "download of a missing path");
}

#[test]
fn file_larger_than_one_download_range() {
    // Default chunk size (4 MiB): 16 MiB + 777 bytes is 5 chunks and needs two Download ranges of at most 16 MiB.
    let server = server_with_alice(ServerOpts::default());
    let mut c = alice(&server);
    let data = random_bytes(2, MAX_PAYLOAD as usize + 777);
    let out = c.upload("/huge", &data, 0o644).expect("upload");
    assert_eq!(out.chunks_sent, 5);
    let (res, first) = c.download("/huge", 0, MAX_PAYLOAD).expect("first range");
    assert_eq!(first.len(), MAX_PAYLOAD as usize, "the first range is a full payload");
    assert_eq!(res.size, data.len() as u64);
    assert_same_bytes(&c.read_file("/huge").expect("read_file"), &data, "read_file over two ranges");
}

#[test]
fn empty_file_is_instant() {
    let server = server_with_alice(ServerOpts::default());
    let mut c = alice(&server);
    let out = c.upload("/empty", b"", 0o600).expect("upload of an empty file");
    assert!(out.instant, "an empty file needs no chunk");
    assert_eq!(out.chunks_sent, 0);
    assert_eq!(out.attr.size, 0);
    assert_eq!(out.attr.md5.as_deref(), Some(EMPTY_MD5));
    let attr = c.stat("/empty").expect("stat");
    assert_eq!(attr.size, 0);
    assert_eq!(attr.mode & 0o7777, 0o600);
    assert!(c.read_file("/empty").expect("download").is_empty());
    let (res, bytes) = c.download("/empty", 0, 4096).expect("download range");
    assert!(bytes.is_empty());
    assert_eq!(res.size, 0);
    assert_eq!(c.names("/").expect("list"), vec!["empty".to_string()]);
}

#[test]
fn upload_to_an_existing_path_replaces_the_content() {
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let mut c = alice(&server);
    let first = random_bytes(3, 200_000);
    let second = random_bytes(4, 70_000);
    let a1 = c.upload("/f", &first, 0o644).expect("first upload").attr;
    c.call(&netdisk_e2e::netdisk_protocol::Link { existing: "/f".into(), new: "/f-link".into() }).expect("hard link");
    let a2 = c.upload("/f", &second, 0o644).expect("second upload").attr;
    assert_eq!(a2.ino, a1.ino, "new content keeps the node");
    assert_eq!(a2.size, second.len() as u64);
    assert_eq!(a2.md5.as_deref(), Some(md5_hex(&second).as_str()));
    assert_same_bytes(&c.read_file("/f").expect("download"), &second, "replaced content");
    assert_same_bytes(&c.read_file("/f-link").expect("download"), &second, "the other name of the node");
    // Back to the first content: the user held it once, but no longer does (the only holder was replaced),
    // so whatever path the upload takes, the result must be right.
    c.upload("/f", &first, 0o644).expect("third upload");
    assert_same_bytes(&c.read_file("/f").expect("download"), &first, "first content again");
    // An empty upload empties it.
    let a3 = c.upload("/f", b"", 0o644).expect("empty upload").attr;
    assert_eq!(a3.ino, a1.ino);
    assert_eq!(a3.size, 0);
    assert!(c.read_file("/f-link").expect("download").is_empty());
    server.assert_fsck_clean();
}

#[test]
fn interrupted_upload_resumes_with_only_the_missing_chunks() {
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let data = random_bytes(5, 9 * 65536 + 1234); // 10 chunks, the last one short
    let sent_first = [0u32, 2, 3, 7, 9];

    let slot = {
        let mut c1 = alice(&server);
        let slot = begin_upload(&mut c1, "/resume.bin", &data);
        assert_eq!(slot.chunk_size, 65536);
        assert_eq!(slot.chunk_count, 10);
        let needed = c1.call(&QueryChunk { upload_id: slot.upload_id, indexes: (0..10).collect() }).expect("query");
        assert_eq!(needed.needed, (0..10).collect::<Vec<_>>(), "a new upload needs every chunk");
        for &i in &sent_first {
            let res = send_chunk(&mut c1, &slot, &data, i).expect("chunk");
            assert_eq!(res.index, i);
            assert!(res.complete.is_none(), "chunk {i} does not complete the file");
        }
        slot
        // c1 is dropped here: the connection goes away mid-upload.
    };

    let mut c2 = alice(&server);
    expect_code(c2.stat("/resume.bin"), ErrorCode::NotFound, "a half-uploaded file is invisible");
    match c2.call(&upload_request("/resume.bin", &data)).expect("UploadFile again") {
        UploadFileRes::Upload { upload_id, chunk_size, chunk_count } => {
            assert_eq!((chunk_size, chunk_count), (slot.chunk_size, slot.chunk_count), "same chunk layout");
            let needed = c2.call(&QueryChunk { upload_id, indexes: (0..chunk_count).collect() }).expect("query").needed;
            assert_eq!(needed, vec![1, 4, 5, 6, 8], "exactly the chunks not sent before are needed");
            // A query for a subset answers for that subset only.
            let some = c2.call(&QueryChunk { upload_id, indexes: vec![9, 8, 0, 1] }).expect("query").needed;
            let mut some_sorted = some.clone();
            some_sorted.sort_unstable();
            assert_eq!(some_sorted, vec![1, 8], "subset query");

            let (done, sent) = c2.send_missing_chunks(upload_id, chunk_size, chunk_count, &data).expect("finish");
            assert_eq!(sent, 5, "only the missing chunks are sent");
            let attr = done.expect("the last missing chunk completes the file");
            assert_eq!(attr.size, data.len() as u64);
            assert_eq!(attr.md5.as_deref(), Some(md5_hex(&data).as_str()));
        }
        other => panic!("resuming must answer Upload, got {other:?}"),
    }
    assert_same_bytes(&c2.read_file("/resume.bin").expect("download"), &data, "resumed upload");
    // Once complete, the same content is instant for this user.
    let again = c2.upload("/resume-copy.bin", &data, 0o644).expect("upload of held content");
    assert!(again.instant);
    server.assert_fsck_clean();
}

#[test]
fn same_user_instant_upload() {
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let mut c = alice(&server);
    let data = random_bytes(6, 300_000);
    let a = c.upload("/a", &data, 0o644).expect("first upload");
    assert!(!a.instant);
    assert_eq!(a.chunks_sent, 5);
    // Same content, another path: md5 + size is enough within one user, no challenge, no chunk.
    match c.call(&upload_request("/b", &data)).expect("UploadFile") {
        UploadFileRes::Instant { attr, .. } => {
            assert_eq!(attr.size, data.len() as u64);
            assert_eq!(attr.md5.as_deref(), Some(md5_hex(&data).as_str()));
            assert_ne!(attr.ino, a.attr.ino, "a new path is a new node");
        }
        other => panic!("same-user upload of held content must be Instant, got {other:?}"),
    }
    let c_out = c.upload("/dir-less-copy", &data, 0o600).expect("third copy via the client");
    assert!(c_out.instant);
    assert_eq!(c_out.chunks_sent, 0);
    for path in ["/a", "/b", "/dir-less-copy"] {
        assert_same_bytes(&c.read_file(path).expect("download"), &data, path);
    }
    // Deleting the first copy keeps the others.
    c.delete_file("/a").expect("delete /a");
    assert_same_bytes(&c.read_file("/b").expect("download"), &data, "/b after deleting /a");
    // Another connection of the same user also gets it instantly.
    assert!(alice(&server).upload("/from-conn-2", &data, 0o644).expect("upload").instant);
}

#[test]
fn chunk_not_matching_its_md5_is_refused_and_still_needed() {
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let mut c = alice(&server);
    let data = random_bytes(7, 3 * 65536 + 100); // 4 chunks
    let slot = begin_upload(&mut c, "/checked", &data);
    assert_eq!(slot.chunk_count, 4);

    // Chunk 1's bytes with the checksum of other bytes.
    let bytes = slot.chunk(&data, 1);
    let mut flipped = bytes.to_vec();
    flipped[100] ^= 0xFF;
    let res =
        c.call_with_payload(&UploadChunk { upload_id: slot.upload_id, index: 1, crc32c: chunk_crc(&flipped) }, bytes);
    expect_code(res, ErrorCode::ChecksumMismatch, "chunk bytes that do not match their md5");
    // Corrupted bytes declared with the right checksum of the real chunk.
    let res = c.call_with_payload(
        &UploadChunk { upload_id: slot.upload_id, index: 2, crc32c: chunk_crc(slot.chunk(&data, 2)) },
        &{
            let mut b = slot.chunk(&data, 2).to_vec();
            b[0] ^= 1;
            b
        },
    );
    expect_code(res, ErrorCode::ChecksumMismatch, "corrupted bytes");
    let needed = c.call(&QueryChunk { upload_id: slot.upload_id, indexes: vec![0, 1, 2, 3] }).expect("query").needed;
    assert_eq!(needed, vec![0, 1, 2, 3], "refused chunks are still needed");

    // A payload of the wrong length is refused too, and the framing survives it.
    let short = &slot.chunk(&data, 0)[..1000];
    let res =
        c.call_with_payload(&UploadChunk { upload_id: slot.upload_id, index: 0, crc32c: chunk_crc(short) }, short);
    code_of(res, "a chunk of the wrong length");
    // The last chunk at full chunk size (longer than the file's remainder) is refused.
    let long = &data[3 * 65536 - (65536 - 100)..];
    assert_eq!(long.len(), 65536);
    let res = c.call_with_payload(&UploadChunk { upload_id: slot.upload_id, index: 3, crc32c: chunk_crc(long) }, long);
    code_of(res, "a last chunk longer than the file's remainder");
    // A chunk index past the end is refused.
    let res =
        c.call_with_payload(&UploadChunk { upload_id: slot.upload_id, index: 4, crc32c: chunk_crc(b"abc") }, b"abc");
    code_of(res, "a chunk index past the end");

    // The right bytes then work, and the file is exactly the data.
    let needed = c.call(&QueryChunk { upload_id: slot.upload_id, indexes: vec![0, 1, 2, 3] }).expect("query").needed;
    assert_eq!(needed, vec![0, 1, 2, 3], "nothing was stored by the refused chunks");
    let (done, sent) = c.send_missing_chunks(slot.upload_id, slot.chunk_size, slot.chunk_count, &data).expect("send");
    assert_eq!(sent, 4);
    assert!(done.is_some());
    assert_same_bytes(&c.read_file("/checked").expect("download"), &data, "after refused chunks");
    server.assert_fsck_clean();
}

/// The server hashes a file as its chunks land, in file order, whichever connection brings them: chunks that
/// come early are hashed when the gap before them is filled. Any order gives the same file, and a lie sent
/// out of order is still caught.
#[test]
fn chunks_in_any_order_over_several_connections_make_the_same_file() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    let data = random_bytes(21, 10 * 65536 + 777);
    let order = [3, 1, 0, 9, 2, 10, 8, 4, 5, 7, 6];
    let mut connections = [alice(&server), alice(&server), alice(&server)];
    let slot = begin_upload(&mut connections[0], "/shuffled", &data);
    assert_eq!(slot.chunk_count, 11);
    let mut complete = None;
    for (n, index) in order.into_iter().enumerate() {
        let res = send_chunk(&mut connections[n % 3], &slot, &data, index).expect("chunk");
        assert_eq!(res.complete.is_some(), n == order.len() - 1, "only the last chunk completes the file");
        complete = res.complete;
    }
    assert_eq!(complete.expect("complete").md5.as_deref(), Some(md5_hex(&data).as_str()));
    assert_same_bytes(&connections[1].read_file("/shuffled").expect("download"), &data, "shuffled upload");

    // Content nobody holds, declared and then sent as other bytes, last chunk first.
    let (claimed, lie) = (random_bytes(22, data.len()), random_bytes(23, data.len()));
    let mut liar = alice(&server);
    let slot = begin_upload(&mut liar, "/lie", &claimed);
    let mut last = None;
    for index in (0..slot.chunk_count).rev() {
        last = Some(send_chunk(&mut liar, &slot, &lie, index));
    }
    expect_code(last.expect("sent"), ErrorCode::ChecksumMismatch, "out-of-order chunks of other bytes");
    expect_code(liar.stat("/lie"), ErrorCode::NotFound, "stat of the lie");
}

#[test]
fn lying_client_cannot_poison_content() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    let x = random_bytes(8, 5 * 65536 + 4321); // what the liar claims: 6 chunks, 3 challenge ranges
    let y = random_bytes(9, x.len()); // what the liar sends
    let mut liar = alice(&server);

    // Declared: md5 and size of X. Sent: the chunks of Y, each with its (correct) chunk checksum.
    let slot = begin_upload(&mut liar, "/poison", &x);
    assert_eq!(slot.chunk_count, 6);
    for i in 0..slot.chunk_count - 1 {
        let res = send_chunk(&mut liar, &slot, &y, i).expect("each chunk matches its own checksum");
        assert!(res.complete.is_none());
    }
    let last = send_chunk(&mut liar, &slot, &y, slot.chunk_count - 1);
    expect_code(last, ErrorCode::ChecksumMismatch, "the chunk completing a file whose md5 is not the declared one");
    assert!(!liar.names("/").expect("list").contains(&"poison".to_string()), "the lie is never listed");
    expect_code(liar.stat("/poison"), ErrorCode::NotFound, "stat of the lie");
    expect_code(liar.download("/poison", 0, 100), ErrorCode::NotFound, "download of the lie");
    expect_code(alice(&server).stat("/poison"), ErrorCode::NotFound, "stat from another connection");

    // Bob claims X with a proof computed from the bytes the liar stored (Y), carol with one from the true X:
    // nobody holds X complete, so neither may be instant.
    server.add_user(CAROL, CAROL_PW);
    let mut b = bob(&server);
    let mut carol = server.login(CAROL, CAROL_PW);
    for (label, client, source) in
        [("proof from the stored bytes", &mut b, &y), ("proof from the claimed content", &mut carol, &x)]
    {
        match client.call(&upload_request("/claimed", &x)).expect("UploadFile") {
            UploadFileRes::Challenge { challenge_id, nonce } => {
                let proof = netdisk_e2e::netdisk_protocol::ownership_proof(&client.hashes(source).proof_tag, &nonce);
                match client.call(&ProveOwnership { challenge_id, proof }).expect("ProveOwnership") {
                    UploadFileRes::Upload { .. } => {}
                    other => panic!("{label}: content nobody holds complete must be uploaded, got {other:?}"),
                }
            }
            other => panic!("{label}: a claim of content the user does not hold must be challenged, got {other:?}"),
        }
        expect_code(client.stat("/claimed"), ErrorCode::NotFound, "the claimed file");
    }

    // The liar's progress was reset: a new attempt needs every chunk, and the true bytes then work.
    let mut retry = alice(&server);
    let slot = begin_upload(&mut retry, "/poison", &x);
    let needed =
        retry.call(&QueryChunk { upload_id: slot.upload_id, indexes: (0..slot.chunk_count).collect() }).expect("query");
    assert_eq!(needed.needed, (0..slot.chunk_count).collect::<Vec<_>>(), "progress of a refused file is reset");
    let (done, _) = retry.send_missing_chunks(slot.upload_id, slot.chunk_size, slot.chunk_count, &x).expect("send");
    assert_eq!(done.expect("complete").md5.as_deref(), Some(md5_hex(&x).as_str()));
    assert_same_bytes(&retry.read_file("/poison").expect("download"), &x, "the true content");

    // Bob finishing his own upload of X gets X.
    let out = b.upload("/claimed", &x, 0o644).expect("bob's upload");
    assert_same_bytes(&b.read_file("/claimed").expect("download"), &x, "bob's content");
    assert_eq!(out.attr.md5.as_deref(), Some(md5_hex(&x).as_str()));
    server.assert_fsck_clean();
}

#[test]
fn sixteen_clients_upload_at_once() {
    let server = Arc::new(server_with_alice(ServerOpts::default().chunk_size(262_144)));
    let n = 16;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let server = Arc::clone(&server);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let data = random_bytes(100 + i as u64, 2 * 1024 * 1024 + i * 4099);
                let mut c = server.login(ALICE, ALICE_PW);
                barrier.wait();
                let path = format!("/client-{i:02}.bin");
                let out = c.upload(&path, &data, 0o644).unwrap_or_else(|e| panic!("client {i}: upload: {e}"));
                assert!(!out.instant, "client {i}");
                assert_eq!(out.chunks_sent as usize, data.len().div_ceil(262_144), "client {i}: chunks");
                let back = c.read_file(&path).unwrap_or_else(|e| panic!("client {i}: download: {e}"));
                assert_same_bytes(&back, &data, &format!("client {i}"));
                md5_hex(&data)
            })
        })
        .collect();
    let md5s: Vec<String> = threads.into_iter().map(|t| t.join().expect("client thread")).collect();

    let mut c = alice(&server);
    let entries = c.list_dir("/").expect("list");
    assert_eq!(entries.len(), n, "every upload is listed");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.name, format!("client-{i:02}.bin"));
        assert_eq!(e.attr.md5.as_deref(), Some(md5s[i].as_str()));
    }
    // All connection processes end when their clients are gone (only `c` is left).
    assert!(server.wait_for_children(1, Duration::from_secs(10)), "children: {:?}", server.children());
    server.assert_fsck_clean();
}

/// A client stream that runs a hook just before the first `UploadChunk` frame goes out: it lets a test put another
/// connection's work at an exact point inside `Client::upload`.
struct BeforeFirstChunk<'a> {
    inner: std::net::TcpStream,
    hook: Option<Box<dyn FnOnce() + 'a>>,
}

impl std::io::Read for BeforeFirstChunk<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl std::io::Write for BeforeFirstChunk<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let starts_chunk = buf.len() >= 24
            && buf[..4] == netdisk_e2e::netdisk_protocol::MAGIC
            && buf[5] == netdisk_e2e::netdisk_protocol::Kind::UploadChunk as u8;
        if starts_chunk {
            if let Some(hook) = self.hook.take() {
                hook();
            }
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn same_content_finished_by_another_connection_during_an_upload() {
    // Connection A runs the client's whole upload flow. Right before A sends its first chunk, connection B of the
    // same user starts an upload of the same content (a resume of A's) and sends every chunk but the first.
    // A's first chunk then completes the file; the rest of A's list is no longer needed. The upload must succeed.
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let data = random_bytes(12, 6 * 65536 + 5);
    let hook = || {
        let mut b = alice(&server);
        let mut answer = b.call(&upload_request("/b", &data)).expect("B: UploadFile");
        // A has not stored a chunk yet, so B is challenged; nobody holds the content complete, so the proof
        // leads into A's unfinished upload of it.
        if let UploadFileRes::Challenge { challenge_id, nonce } = &answer {
            let proof = netdisk_e2e::netdisk_protocol::ownership_proof(&b.hashes(&data).proof_tag, nonce);
            answer = b.call(&ProveOwnership { challenge_id: *challenge_id, proof }).expect("B: ProveOwnership");
        }
        match answer {
            UploadFileRes::Upload { upload_id, chunk_size, chunk_count } => {
                assert_eq!(chunk_count, 7);
                let slot = netdisk_e2e::UploadSlot { upload_id, chunk_size, chunk_count };
                for i in 1..chunk_count {
                    let res = send_chunk(&mut b, &slot, &data, i).expect("B: chunk");
                    assert!(res.complete.is_none(), "B's chunk {i} does not complete the file (chunk 0 is missing)");
                }
            }
            other => panic!("B: the same user's unfinished upload of this content is resumed, got {other:?}"),
        }
    };
    let mut a = netdisk_e2e::netdisk_protocol::client::Client::new(BeforeFirstChunk {
        inner: server.raw_connect(),
        hook: Some(Box::new(hook)),
    });
    a.login(ALICE, ALICE_PW).expect("A: login");
    let out = a.upload("/a", &data, 0o644).expect("A: upload, finished together with B");
    assert!(!out.instant);
    assert_eq!(out.attr.md5.as_deref(), Some(md5_hex(&data).as_str()));
    assert_same_bytes(&a.read_file("/a").expect("download /a"), &data, "/a");
    // B's path gets the content once B asks again (B's own client would do that after its last chunk).
    let mut b = alice(&server);
    assert!(b.upload("/b", &data, 0o644).expect("B: upload again").instant);
    assert_same_bytes(&b.read_file("/b").expect("download /b"), &data, "/b");
    server.assert_fsck_clean();
}

#[test]
fn one_user_uploads_the_same_content_on_several_connections_at_once() {
    let server = Arc::new(server_with_alice(ServerOpts::default().chunk_size(65536)));
    let data = Arc::new(random_bytes(11, 40 * 65536 + 17));
    let n = 4;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (server, data, barrier) = (Arc::clone(&server), Arc::clone(&data), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut c = server.login(ALICE, ALICE_PW);
                barrier.wait();
                let path = format!("/same-{i}");
                c.upload(&path, &data, 0o644).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                assert_same_bytes(&c.read_file(&path).expect("download"), &data, &path);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("upload thread");
    }
    let mut c = alice(&server);
    assert_eq!(c.names("/").expect("list").len(), n);
    for i in 0..n {
        let attr = c.stat(&format!("/same-{i}")).expect("stat");
        assert_eq!(attr.md5.as_deref(), Some(md5_hex(&data).as_str()));
    }
    server.assert_fsck_clean();
}

#[test]
fn upload_requests_with_bad_arguments_are_refused() {
    let server = server_with_alice(ServerOpts::default());
    let mut c = alice(&server);
    let mut req = upload_request("/f", b"abc");
    req.md5 = "not-an-md5".into();
    expect_code(c.call(&req), ErrorCode::Invalid, "a malformed md5");
    let mut req = upload_request("/f", b"abc");
    req.md5 = req.md5.to_uppercase();
    expect_code(c.call(&req), ErrorCode::Invalid, "an uppercase md5");
    // Uploading onto a directory.
    c.mkdir("/dir", 0o755).expect("mkdir");
    expect_code(c.call(&upload_request("/dir", b"abc")), ErrorCode::IsDir, "upload onto a directory");
    // Into a missing directory.
    expect_code(c.call(&upload_request("/nodir/f", b"abc")), ErrorCode::NotFound, "upload into a missing dir");
    // Unknown upload and challenge ids.
    expect_code(c.call(&QueryChunk { upload_id: 0xDEAD_BEEF, indexes: vec![0] }), ErrorCode::UnknownUpload, "query");
    expect_code(
        c.call(&ProveOwnership { challenge_id: 0xDEAD_BEEF, proof: md5_hex(b"x") }),
        ErrorCode::UnknownUpload,
        "unknown challenge",
    );
    expect_code(
        c.call_with_payload(&UploadChunk { upload_id: 0xDEAD_BEEF, index: 0, crc32c: chunk_crc(b"x") }, b"x"),
        ErrorCode::UnknownUpload,
        "chunk of an unknown upload",
    );
    // The connection is fine after all that.
    c.upload("/ok", b"fine", 0o644).expect("upload after refusals");
    assert_eq!(c.read_file("/ok").expect("download"), b"fine");
    assert_eq!(c.names("/").expect("list"), vec!["dir".to_string(), "ok".to_string()]);
}

#[test]
fn normal_durability_serves_the_same_protocol() {
    // --durability normal skips the fsyncs; everything a client can observe is the same.
    let server = server_with_alice(ServerOpts::default().chunk_size(65536).durability("normal"));
    let mut c = alice(&server);
    let data = random_bytes(31, 5 * 65536 + 99);
    let out = c.upload("/n", &data, 0o644).expect("upload");
    assert!(!out.instant && out.chunks_sent == 6, "a chunked upload: {out:?}");
    assert_same_bytes(&c.read_file("/n").expect("download"), &data, "normal durability");
    let again = c.upload("/n2", &data, 0o644).expect("instant upload");
    assert!(again.instant && again.chunks_sent == 0);
    c.call(&netdisk_e2e::netdisk_protocol::SetAttr { path: "/n".into(), size: Some(10), ..Default::default() })
        .expect("truncate");
    assert_eq!(c.read_file("/n").expect("download"), &data[..10]);
    assert_same_bytes(&c.read_file("/n2").expect("download"), &data, "the other copy keeps its content");
}

/// Files in the server's blob store (one per physical file kept).
fn blob_files(server: &netdisk_e2e::Server) -> usize {
    let root = server.data_dir().join("blobs");
    let dirs = std::fs::read_dir(&root).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    dirs.iter().map(|d| std::fs::read_dir(d.path()).map(|f| f.count()).unwrap_or(0)).sum()
}

/// A small file sent whole inside its `UploadFile`: stored in one round trip, deduplicated like any other,
/// and refused without leaving anything behind when its bytes or its target are wrong.
#[test]
fn small_files_sent_whole() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    let data = random_bytes(31, MAX_INLINE_UPLOAD as usize);
    let mut a = alice(&server);
    let attr = a.upload_inline("/whole", &data, 0o640).expect("inline upload");
    assert_eq!((attr.size, attr.mode & 0o7777), (data.len() as u64, 0o640));
    assert_eq!(attr.md5.as_deref(), Some(md5_hex(&data).as_str()));
    assert_same_bytes(&alice(&server).read_file("/whole").expect("download"), &data, "inline upload");
    assert_eq!(blob_files(&server), 1);

    // The same content from another user (no challenge: the bytes are the proof) and at a second path of
    // the same user: one physical file still.
    let mut b = bob(&server);
    b.upload_inline("/copy", &data, 0o644).expect("inline upload of held content");
    a.upload_inline("/again", &data, 0o644).expect("inline upload of own content");
    assert_same_bytes(&b.read_file("/copy").expect("download"), &data, "bob's copy");
    assert_eq!(blob_files(&server), 1, "content held already is not kept twice");

    // Replacing a file's content; the old content goes when nothing refers to it.
    let other = random_bytes(32, 1000);
    b.upload_inline("/copy", &other, 0o644).expect("replace");
    assert_same_bytes(&b.read_file("/copy").expect("download"), &other, "replaced");
    assert_eq!(blob_files(&server), 2);

    // Bytes that are not the declared md5, a size that is not the payload's, a directory as the target:
    // refused, nothing created, and the connection goes on.
    let mut req = upload_request("/lie", &data);
    req.md5 = md5_hex(b"something else");
    expect_code(a.call_with_payload(&req, &data), ErrorCode::ChecksumMismatch, "bytes not matching their md5");
    let mut req = upload_request("/short", &data);
    req.size -= 1;
    expect_code(a.call_with_payload(&req, &data), ErrorCode::Invalid, "size other than the payload's");
    a.mkdir("/dir", 0o755).expect("mkdir");
    expect_code(a.call_with_payload(&upload_request("/dir", &other), &other), ErrorCode::IsDir, "a directory");
    expect_code(
        a.call_with_payload(&upload_request("/missing/f", &other), &other),
        ErrorCode::NotFound,
        "a missing parent",
    );
    for path in ["/lie", "/short", "/missing"] {
        expect_code(a.stat(path), ErrorCode::NotFound, path);
    }
    assert_eq!(blob_files(&server), 2, "refused uploads leave no physical file");
    assert_same_bytes(&a.read_file("/whole").expect("still served"), &data, "after refusals");

    // An unfinished chunked upload to the same path is replaced by the whole file.
    let big = random_bytes(33, 3 * 65536);
    let slot = begin_upload(&mut a, "/grows", &big);
    send_chunk(&mut a, &slot, &big, 0).expect("first chunk");
    a.upload_inline("/grows", &other, 0o644).expect("inline over an unfinished upload");
    expect_code(send_chunk(&mut a, &slot, &big, 1), ErrorCode::UnknownUpload, "the replaced upload");
    assert_same_bytes(&a.read_file("/grows").expect("download"), &other, "whole file wins");
    server.assert_fsck_clean();
}

#[test]
fn replacing_an_upload_whose_content_completed_elsewhere_releases_it() {
    // alice's second connection resumes her first connection's upload at another path; the first finishes it (/a),
    // which leaves the second's upload (/b) bound to now complete content. /a is deleted: only that upload keeps the
    // content. When /b's upload is then replaced (new content at /b) or forgotten (content alice holds placed at
    // /b), nothing refers to the content any more: it must be released, not leaked (fsck checks).
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let held = random_bytes(21, 7000);
    alice(&server).upload("/held", &held, 0o644).expect("upload");
    for round in 0..2u64 {
        let data = random_bytes(13 + round, 3 * 65536 + 1);
        let (a, b) = (format!("/a{round}"), format!("/b{round}"));
        let mut c1 = alice(&server);
        let slot = begin_upload(&mut c1, &a, &data);
        send_chunk(&mut c1, &slot, &data, 0).expect("chunk 0");
        let mut c2 = alice(&server);
        match c2.call(&upload_request(&b, &data)).expect("UploadFile on the second connection") {
            UploadFileRes::Upload { upload_id, .. } => assert_ne!(upload_id, slot.upload_id),
            other => panic!("a stored chunk makes the second connection resume, got {other:?}"),
        }
        let (done, _) = c1.send_missing_chunks(slot.upload_id, slot.chunk_size, slot.chunk_count, &data).expect("send");
        assert!(done.is_some(), "the first connection completes {a}");
        c1.delete_file(&a).expect("delete");
        if round == 0 {
            // New content at /b: a new upload replaces the stale one.
            c2.upload(&b, &random_bytes(20, 5000), 0o644).expect("new content at /b");
        } else {
            // Content alice holds at /b: instant, and the stale upload is forgotten.
            assert!(c2.upload(&b, &held, 0o644).expect("held content at /b").instant);
        }
        server.assert_fsck_clean();
    }
}

/// A small file whose bytes stop halfway (the client goes away) leaves nothing behind: no entry, no physical file.
#[test]
fn a_small_file_cut_off_halfway_leaves_nothing() {
    use std::io::Write;
    let server = server_with_alice_and_bob(ServerOpts::default());
    let data = random_bytes(41, 20_000);
    let mut stream = server.raw_connect();
    netdisk_e2e::netdisk_protocol::client::Client::new(&stream).login(crate::ALICE, crate::ALICE_PW).expect("login");
    let mut bytes = Vec::new();
    bytes.extend(netdisk_e2e::netdisk_protocol::frame::encode_message(
        netdisk_e2e::netdisk_protocol::Kind::UploadFile,
        3,
        &upload_request("/cut", &data),
        data.len() as u32,
    ));
    bytes.extend_from_slice(&data[..data.len() / 2]);
    stream.write_all(&bytes).expect("send");
    assert!(wait_until(Duration::from_secs(20), || blob_files(&server) == 1), "the half file reaches its blob");
    drop(stream);
    assert!(server.wait_for_children(0, Duration::from_secs(20)), "the connection process ends");
    expect_code(alice(&server).stat("/cut"), ErrorCode::NotFound, "the cut-off file");
    assert_eq!(blob_files(&server), 0, "no blob left");
    server.assert_fsck_clean();
}
