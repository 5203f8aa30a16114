//! Late payloads: a chunk judged needed when its head came, whose bytes come much later. Bytes a client sends may
//! land only in a chunk locked for them in an unfinished file of that client's own upload: never in content that is
//! sealed or that anyone else holds, and a failed check discards only that unfinished upload.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use netdisk_e2e::netdisk_protocol::frame::encode_message;
use netdisk_e2e::netdisk_protocol::{chunk_crc, ErrorCode, Kind, QueryChunk, UploadChunk};
use netdisk_e2e::{
    begin_upload, code_of, expect_code, json_string_field, random_bytes, read_response_frame, send_chunk, store,
    wait_until, Server, ServerOpts, UploadSlot,
};

use crate::{alice, assert_same_bytes, bob, server_with_alice_and_bob, CAROL, CAROL_PW};

type Conn = netdisk_e2e::netdisk_protocol::client::Client<TcpStream>;

/// The held-back chunk's connection must outlive the other connection's wait for the chunk (half of this, at most
/// 10 s) and the rest of the scenario, with room to spare on a loaded machine.
const STALL_SECS: u64 = 40;

/// Alice's connection sends the head of `UploadChunk` 0 of `x` (declaring the CRC of `garbage`) and no payload
/// byte; returns once the server has taken the chunk for it (its disk space is claimed), with the socket and the slot.
fn hold_chunk_zero(server: &Server, path: &str, x: &[u8], garbage: &[u8]) -> (TcpStream, UploadSlot) {
    let mut c1 = alice(server);
    let slot = begin_upload(&mut c1, path, x);
    let mut s1 = c1.into_stream();
    let req = UploadChunk { upload_id: slot.upload_id, index: 0, crc32c: chunk_crc(garbage) };
    s1.write_all(&encode_message(Kind::UploadChunk, 100, &req, garbage.len() as u32)).expect("head and header");
    let data = server.data_dir().to_path_buf();
    let claimed = wait_until(Duration::from_secs(10), || {
        store::blob_files(&data).iter().any(|p| p.metadata().is_ok_and(|m| m.blocks() * 512 >= garbage.len() as u64))
    });
    assert!(claimed, "the server never took chunk 0 for the held-back payload");
    (s1, slot)
}

/// Sends the held-back payload at last; returns the server's answer: the error code's name, or none for success.
fn send_late(s1: &mut TcpStream, garbage: &[u8]) -> Option<String> {
    s1.write_all(garbage).expect("the late payload");
    let frame = read_response_frame(s1).expect("an answer to the late chunk");
    (frame.head.kind == Kind::Error).then(|| json_string_field(&frame.header, "code").expect("an error code"))
}

/// Bob uploads `x` in full and carol gets it by proof: content two users share, read back by both.
fn share(server: &Server, x: &[u8]) -> (Conn, Conn) {
    let mut b = bob(server);
    b.upload("/x", x, 0o644).expect("bob uploads x");
    server.add_user(CAROL, CAROL_PW);
    let mut c = server.login(CAROL, CAROL_PW);
    assert!(c.upload("/x", x, 0o644).expect("carol's upload").instant, "carol gets x by proof");
    assert_same_bytes(&b.read_file("/x").expect("bob reads"), x, "bob's x");
    (b, c)
}

#[test]
fn a_late_chunk_never_lands_in_sealed_shared_content() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536).stall_timeout(STALL_SECS));
    let x = random_bytes(101, 4 * 65536 + 1000); // 5 chunks
    let garbage = random_bytes(102, 65536);
    let (mut s1, _) = hold_chunk_zero(&server, "/x-c1", &x, &garbage);

    // A second connection of alice's resumes the same unfinished content and sends every chunk: the four others
    // are stored; chunk 0, held by the first connection, is not taken (after a wait), so nothing can be sealed.
    let mut c2 = alice(&server);
    let slot = begin_upload(&mut c2, "/x", &x);
    for i in 1..slot.chunk_count {
        assert!(send_chunk(&mut c2, &slot, &x, i).expect("chunk").complete.is_none());
    }
    let res = send_chunk(&mut c2, &slot, &x, 0).expect("chunk 0 of the second connection");
    assert!(res.complete.is_none(), "a chunk another connection holds is not taken");
    let needed = c2.call(&QueryChunk { upload_id: slot.upload_id, indexes: vec![0, 1, 2, 3, 4] }).expect("query");
    assert_eq!(needed.needed, vec![0], "chunk 0 is still missing");
    expect_code(c2.stat("/x"), ErrorCode::NotFound, "nothing was sealed or placed");

    // Meanwhile the same content is uploaded by bob and shared with carol (their own sealed physical file).
    let (mut b, mut c) = share(&server, &x);
    // The late garbage completes alice's unfinished file, which fails its check: only that file is discarded.
    assert_eq!(send_late(&mut s1, &garbage), Some("checksum_mismatch".into()), "the garbage is refused");
    assert_same_bytes(&b.read_file("/x").expect("bob reads"), &x, "bob's x after the late chunk");
    assert_same_bytes(&c.read_file("/x").expect("carol reads"), &x, "carol's x after the late chunk");
    // Alice's upload was discarded with its physical file; she uploads x again and it is the shared content.
    code_of(c2.call(&QueryChunk { upload_id: slot.upload_id, indexes: vec![0] }), "the discarded upload");
    c2.upload("/x", &x, 0o644).expect("alice uploads x again");
    assert_same_bytes(&c2.read_file("/x").expect("alice reads"), &x, "alice's x");
    assert_eq!(store::pfiles(server.data_dir()).len(), 1, "one physical file for x, shared by three users");
    server.assert_fsck_clean();
}

#[test]
fn a_late_one_chunk_file_failing_its_check_removes_nothing_shared() {
    // 100,000 bytes: over the limit of a file sent whole, one chunk of 131,072.
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(131072).stall_timeout(STALL_SECS));
    let x = random_bytes(111, 100_000);
    let garbage = random_bytes(112, 100_000);
    let (mut s1, _) = hold_chunk_zero(&server, "/x-c1", &x, &garbage);
    // Alice's second connection sends the one chunk: it is held, so it is not taken and nothing is sealed.
    let mut c2 = alice(&server);
    let slot = begin_upload(&mut c2, "/x", &x);
    assert_eq!(slot.chunk_count, 1);
    assert!(send_chunk(&mut c2, &slot, &x, 0).expect("the chunk").complete.is_none());
    expect_code(c2.stat("/x"), ErrorCode::NotFound, "nothing was sealed or placed");
    let (mut b, mut c) = share(&server, &x);
    assert_eq!(send_late(&mut s1, &garbage), Some("checksum_mismatch".into()), "the garbage is refused");
    assert_same_bytes(&b.read_file("/x").expect("bob reads"), &x, "bob's x after the failed check");
    assert_same_bytes(&c.read_file("/x").expect("carol reads"), &x, "carol's x after the failed check");
    server.assert_fsck_clean();
}
