//! Hostile and unusual byte streams (L4, L5): invalid frames close only their own connection, without an answer;
//! valid frames are framed right however the bytes are split or batched.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use netdisk_e2e::netdisk_protocol::client::Client;
use netdisk_e2e::netdisk_protocol::frame::encode_message;
use netdisk_e2e::netdisk_protocol::io::{read_frame, Direction};
use netdisk_e2e::netdisk_protocol::{
    chunk_crc, md5_hex, Kind, QueryChunk, Request, Stat, UploadChunk, MAGIC, MAX_PAYLOAD, MAX_REQUEST_HEADER, VERSION,
};
use netdisk_e2e::{begin_upload, random_bytes, read_until_closed, write_or_closed, ReadHalf, Server, ServerOpts};

use crate::{alice, assert_same_bytes, server_with_alice, ALICE, ALICE_PW};

/// A frame head with every field chosen by the test.
fn head(magic: [u8; 4], version: u8, kind: u8, flags: u16, header_len: u32, payload_len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&magic);
    b.push(version);
    b.push(kind);
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&7u64.to_be_bytes());
    b.extend_from_slice(&header_len.to_be_bytes());
    b.extend_from_slice(&payload_len.to_be_bytes());
    b
}

/// A head for `header` (with the given kind and payload length) followed by the header and `payload`.
fn frame_bytes(kind: u8, header: &[u8], payload_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = head(MAGIC, VERSION, kind, 0, header.len() as u32, payload_len);
    b.extend_from_slice(header);
    b.extend_from_slice(payload);
    b
}

/// One complete, valid request frame.
fn request<R: Request>(id: u64, req: &R, payload: &[u8]) -> Vec<u8> {
    let mut b = encode_message(R::KIND, id, req, payload.len() as u32);
    b.extend_from_slice(payload);
    b
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Valid requests at the start of `bytes`, answered before the server meets the invalid part.
    answers: usize,
}

fn cases() -> Vec<Case> {
    let stat = br#"{"path":"/"}"#.to_vec();
    let stat_kind = Kind::Stat as u8;
    let chunk_header = format!(r#"{{"upload_id":1,"index":0,"md5":"{}"}}"#, md5_hex(b"x")).into_bytes();
    let with = |mut h: Vec<u8>, tail: &[u8]| {
        h.extend_from_slice(tail);
        h
    };
    let random = random_bytes(60, 1024 * 1024);
    assert_ne!(random[..4], MAGIC, "the random bytes do not start like a frame");
    vec![
        Case { name: "bad magic", bytes: with(head(*b"XDSK", VERSION, stat_kind, 0, 12, 0), &stat), answers: 0 },
        Case { name: "lowercase magic", bytes: with(head(*b"ndsk", VERSION, stat_kind, 0, 12, 0), &stat), answers: 0 },
        Case { name: "version 0", bytes: with(head(MAGIC, 0, stat_kind, 0, 12, 0), &stat), answers: 0 },
        Case { name: "version 2", bytes: with(head(MAGIC, 2, stat_kind, 0, 12, 0), &stat), answers: 0 },
        Case { name: "kind 0x00", bytes: with(head(MAGIC, VERSION, 0x00, 0, 12, 0), &stat), answers: 0 },
        Case { name: "kind 0x13", bytes: with(head(MAGIC, VERSION, 0x13, 0, 12, 0), &stat), answers: 0 },
        Case { name: "kind 0x7f", bytes: with(head(MAGIC, VERSION, 0x7F, 0, 12, 0), &stat), answers: 0 },
        Case { name: "kind 0x80", bytes: with(head(MAGIC, VERSION, 0x80, 0, 12, 0), &stat), answers: 0 },
        Case { name: "a response kind (StatRes)", bytes: frame_bytes(Kind::StatRes as u8, &stat, 0, &[]), answers: 0 },
        Case {
            name: "the error kind",
            bytes: frame_bytes(Kind::Error as u8, br#"{"code":"io","message":"x"}"#, 0, &[]),
            answers: 0,
        },
        Case { name: "flags 0x0001", bytes: with(head(MAGIC, VERSION, stat_kind, 1, 12, 0), &stat), answers: 0 },
        Case { name: "flags 0x8000", bytes: with(head(MAGIC, VERSION, stat_kind, 0x8000, 12, 0), &stat), answers: 0 },
        Case { name: "header length 0", bytes: head(MAGIC, VERSION, stat_kind, 0, 0, 0), answers: 0 },
        Case {
            name: "header length 64 KiB + 1",
            bytes: with(head(MAGIC, VERSION, stat_kind, 0, MAX_REQUEST_HEADER + 1, 0), &[b' '; 4096]),
            answers: 0,
        },
        Case { name: "header length u32::MAX", bytes: head(MAGIC, VERSION, stat_kind, 0, u32::MAX, 0), answers: 0 },
        Case { name: "payload on Stat", bytes: frame_bytes(stat_kind, &stat, 5, b"hello"), answers: 0 },
        Case {
            name: "payload on Login",
            bytes: frame_bytes(Kind::Login as u8, br#"{"user":"alice","password":"x"}"#, 1, b"!"),
            answers: 0,
        },
        Case {
            name: "payload on Download",
            bytes: frame_bytes(Kind::Download as u8, br#"{"path":"/","offset":0,"len":1}"#, 3, b"abc"),
            answers: 0,
        },
        Case {
            name: "UploadChunk payload 16 MiB + 1",
            bytes: frame_bytes(Kind::UploadChunk as u8, &chunk_header, MAX_PAYLOAD + 1, &[0u8; 1000]),
            answers: 0,
        },
        Case {
            name: "UploadChunk payload u32::MAX",
            bytes: frame_bytes(Kind::UploadChunk as u8, &chunk_header, u32::MAX, &[]),
            answers: 0,
        },
        Case { name: "invalid JSON", bytes: frame_bytes(stat_kind, b"{not json", 0, &[]), answers: 0 },
        Case { name: "JSON of the wrong type", bytes: frame_bytes(stat_kind, br#"{"path":1}"#, 0, &[]), answers: 0 },
        Case { name: "JSON null", bytes: frame_bytes(stat_kind, b"null", 0, &[]), answers: 0 },
        Case { name: "JSON array", bytes: frame_bytes(stat_kind, b"[]", 0, &[]), answers: 0 },
        Case { name: "JSON missing fields", bytes: frame_bytes(Kind::Mkdir as u8, b"{}", 0, &[]), answers: 0 },
        Case { name: "invalid UTF-8", bytes: frame_bytes(stat_kind, b"\xff\xfe\xfd\"", 0, &[]), answers: 0 },
        Case {
            name: "JSON with trailing garbage",
            bytes: frame_bytes(stat_kind, br#"{"path":"/"}xyz"#, 0, &[]),
            answers: 0,
        },
        Case { name: "1 MiB of random bytes", bytes: random, answers: 0 },
        Case {
            name: "a valid request, then random bytes",
            bytes: with(request(1, &Stat { path: "/".into() }, &[]), &random_bytes(61, 100_000)),
            answers: 1,
        },
        Case {
            name: "a valid chunk with its payload, then a bad head",
            bytes: with(
                request(1, &UploadChunk { upload_id: 1, index: 0, crc32c: chunk_crc(b"x") }, b"x"),
                &head(*b"XXXX", VERSION, stat_kind, 0, 12, 0),
            ),
            answers: 1,
        },
    ]
}

/// Sends `case` on a new connection (logged in or not) and checks the server answers only the valid part, then closes.
fn check_case(server: &Server, case: &Case, logged_in: bool) {
    let label = format!("{} ({})", case.name, if logged_in { "logged in" } else { "before login" });
    let mut stream = if logged_in {
        let mut c = server.connect();
        c.login(ALICE, ALICE_PW).expect("login");
        c.into_stream()
    } else {
        server.raw_connect()
    };
    // The server may close before it has read everything: a failed write is fine, a missing close is not.
    let _ = write_or_closed(&mut stream, &case.bytes);
    let closed = read_until_closed(&mut stream, Duration::from_secs(10)).unwrap_or_else(|got| {
        panic!(
            "{label}: the server did not close the connection within 10 s ({} bytes received)\n{}",
            got.len(),
            server.log_tail()
        )
    });
    let mut rest = &closed.received[..];
    let mut frames = 0;
    while !rest.is_empty() {
        read_frame(&mut rest, Direction::Response)
            .unwrap_or_else(|e| panic!("{label}: the server sent something that is not a frame: {e}"));
        frames += 1;
    }
    assert_eq!(frames, case.answers, "{label}: frames answered before the close");
}

#[test]
fn hostile_frames_close_only_their_connection() {
    let server = server_with_alice(ServerOpts::default());
    let mut keeper = alice(&server);
    keeper.upload("/before", b"uploaded before the attacks", 0o644).expect("upload");
    for (i, case) in cases().iter().enumerate() {
        for logged_in in [false, true] {
            check_case(&server, case, logged_in);
            // The other, logged-in connection carries on.
            assert_eq!(keeper.stat("/before").expect("stat on the other connection").size, 27, "after {}", case.name);
            let content = random_bytes(1000 + i as u64 * 2 + logged_in as u64, 5000);
            let path = format!("/after-{i}-{logged_in}");
            keeper.upload(&path, &content, 0o644).unwrap_or_else(|e| panic!("upload after {}: {e}", case.name));
            assert_same_bytes(&keeper.read_file(&path).expect("download"), &content, &path);
        }
    }
    // New connections are served too, and every attacker's process is gone (only the keeper's is left).
    assert_eq!(alice(&server).read_file("/before").expect("download"), b"uploaded before the attacks");
    assert!(
        server.wait_for_children(1, Duration::from_secs(10)),
        "children after the attacks: {:?}",
        server.children()
    );
}

#[test]
fn frames_split_into_single_bytes_or_batched_in_one_write_are_framed_right() {
    let server = server_with_alice(ServerOpts::default().chunk_size(4096));
    // A query, the three chunks of a 10000-byte file and a stat, all in one write (L4: payloads of several
    // requests arrive in one read).
    let data = random_bytes(62, 10_000);
    let mut c = alice(&server);
    let slot = begin_upload(&mut c, "/batched", &data);
    assert_eq!(slot.chunk_count, 3);
    let mut stream: TcpStream = c.into_stream();
    let chunk_req =
        |i: u32| UploadChunk { upload_id: slot.upload_id, index: i, crc32c: chunk_crc(slot.chunk(&data, i)) };
    let query = QueryChunk { upload_id: slot.upload_id, indexes: vec![0, 1, 2] };
    let stat = Stat { path: "/batched".into() };
    let mut batch = request(1, &query, &[]);
    for i in 0..3 {
        batch.extend(request(i as u64 + 2, &chunk_req(i), slot.chunk(&data, i)));
    }
    batch.extend(request(5, &stat, &[]));
    stream.write_all(&batch).expect("one write of five requests");

    let mut reader = Client::new(ReadHalf(stream.try_clone().expect("clone")));
    assert_eq!(reader.call(&query).expect("query").needed, vec![0, 1, 2]);
    for i in 0..3 {
        let (res, _) = reader.call_with_payload(&chunk_req(i), &[]).unwrap_or_else(|e| panic!("chunk {i}: {e}"));
        assert_eq!(res.index, i);
        assert_eq!(res.complete.is_some(), i == 2, "only the last chunk completes the file");
    }
    let attr = reader.call(&stat).expect("stat").attr;
    assert_eq!((attr.size, attr.md5.as_deref()), (10_000, Some(md5_hex(&data).as_str())));

    // One request written a byte at a time.
    let one = request(6, &stat, &[]);
    for b in &one {
        stream.write_all(std::slice::from_ref(b)).expect("one byte");
        stream.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(reader.call(&stat).expect("stat of a byte-by-byte request").attr.size, 10_000);

    let mut c = alice(&server);
    assert_same_bytes(&c.read_file("/batched").expect("download"), &data, "batched upload");
}
