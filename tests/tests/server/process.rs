//! The process model (L2, L6): the child cap, clients that vanish or stall mid-transfer, idle connections,
//! and stopping on SIGTERM.

use std::io::Write;
use std::time::{Duration, Instant};

use netdisk_e2e::netdisk_protocol::frame::encode_message;
use netdisk_e2e::netdisk_protocol::{chunk_crc, ErrorCode, Kind, QueryChunk, Stat, UploadChunk};
use netdisk_e2e::{
    begin_upload, json_string_field, proc_info, random_bytes, read_response_frame, read_until_closed, wait_until,
    Server, ServerOpts, UploadSlot,
};

use crate::{alice, assert_same_bytes, server_with_alice};

/// Reads the one frame an over-the-cap connection gets and checks it is the Busy error, then the close.
fn expect_busy(stream: &mut std::net::TcpStream) {
    let frame = read_response_frame(stream).expect("an over-the-cap connection gets an error frame");
    assert_eq!(frame.head.kind, Kind::Error, "kind of the busy frame");
    assert_eq!(frame.head.request_id, 0, "the busy frame answers no request");
    assert_eq!(frame.head.payload_len, 0);
    assert_eq!(
        json_string_field(&frame.header, "code").as_deref(),
        Some("busy"),
        "{:?}",
        String::from_utf8_lossy(&frame.header)
    );
    let closed = read_until_closed(stream, Duration::from_secs(10)).expect("the busy connection is closed");
    assert!(closed.received.is_empty(), "nothing after the busy frame");
}

#[test]
fn connections_over_the_cap_get_busy() {
    let server = server_with_alice(ServerOpts::default().max_children(2));
    let mut first = alice(&server);
    let mut second = alice(&server);
    assert_eq!(server.live_children().len(), 2);

    let mut third = server.raw_connect();
    expect_busy(&mut third);
    // Still busy while both are open, whatever the third one tries.
    let mut fourth = server.raw_connect();
    let _ = fourth.write_all(&encode_message(Kind::Stat, 1, &Stat { path: "/".into() }, 0));
    expect_busy(&mut fourth);

    // The two served connections carry on.
    first.upload("/one", b"first connection", 0o644).expect("upload on the first");
    assert_eq!(second.read_file("/one").expect("download on the second"), b"first connection");

    // After one closes, a new connection is served (once the server has reaped the child: poll, bounded).
    drop(first);
    let mut served = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let mut c = server.connect();
        match c.login(crate::ALICE, crate::ALICE_PW) {
            Ok(_) => {
                served = Some(c);
                true
            }
            Err(e) => {
                // Anything but the busy frame (which has request id 0, so the client calls it a protocol error)
                // would be a bug.
                assert!(
                    matches!(e, netdisk_e2e::netdisk_protocol::client::ClientError::Protocol(_))
                        || e.code() == Some(ErrorCode::Busy),
                    "a refused connection gets the busy frame, got {e}"
                );
                false
            }
        }
    });
    assert!(ok, "a connection is served again after one of the two closed; children: {:?}", server.children());
    let mut c = served.expect("served");
    assert_eq!(c.read_file("/one").expect("download"), b"first connection");
    // Two again: the next one is busy.
    let mut extra = server.raw_connect();
    expect_busy(&mut extra);
    drop(second);
}

/// A logged-in client with an upload of `data` at `path` that awaits its chunks.
fn pending_upload(server: &Server, path: &str, data: &[u8]) -> (std::net::TcpStream, UploadSlot) {
    let mut c = alice(server);
    let slot = begin_upload(&mut c, path, data);
    (c.into_stream(), slot)
}

#[test]
fn a_client_vanishing_mid_payload_ends_its_child_cleanly() {
    let server = server_with_alice(ServerOpts::default());
    let mut bystander = alice(&server);
    let data = random_bytes(70, 1024 * 1024); // one 1 MiB chunk at the default chunk size
    let (mut stream, slot) = pending_upload(&server, "/vanish", &data);
    assert_eq!(slot.chunk_count, 1);
    assert_eq!(server.live_children().len(), 2);

    // The head and header announce 1 MiB; 100 KiB follow; then the client is gone.
    let req = UploadChunk { upload_id: slot.upload_id, index: 0, crc32c: chunk_crc(&data) };
    stream.write_all(&encode_message(Kind::UploadChunk, 10, &req, data.len() as u32)).expect("head and header");
    stream.write_all(&data[..100 * 1024]).expect("100 KiB of the payload");
    stream.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(100));
    drop(stream);

    assert!(
        server.wait_for_children(1, Duration::from_secs(10)),
        "the vanished client's child must exit and be reaped; children: {:?}",
        server.children()
    );
    assert!(server.zombies().is_empty(), "zombies: {:?}", server.zombies());
    // The server still serves, the bystander too, and the upload resumes with the chunk still needed.
    bystander.stat("/").expect("the bystander carries on");
    let mut c = alice(&server);
    expect_code_not_found(&mut c, "/vanish");
    let (done, sent) = {
        let slot = begin_upload(&mut c, "/vanish", &data);
        let needed = c.call(&QueryChunk { upload_id: slot.upload_id, indexes: vec![0] }).expect("query").needed;
        assert_eq!(needed, vec![0], "a chunk whose bytes never all arrived is still needed");
        c.send_missing_chunks(slot.upload_id, slot.chunk_size, slot.chunk_count, &data).expect("send")
    };
    assert_eq!(sent, 1);
    assert!(done.is_some());
    assert_same_bytes(&c.read_file("/vanish").expect("download"), &data, "after the vanished attempt");
}

fn expect_code_not_found(c: &mut netdisk_e2e::netdisk_protocol::client::Client<std::net::TcpStream>, path: &str) {
    netdisk_e2e::expect_code(c.stat(path), ErrorCode::NotFound, path);
}

#[test]
fn stalled_clients_are_closed_after_the_stall_timeout() {
    let server = server_with_alice(ServerOpts::default().stall_timeout(1));
    let stat_frame = encode_message(Kind::Stat, 1, &Stat { path: "/".into() }, 0);

    // Connections first (the login takes a moment), then the partial frames, sent back to back.
    let mut half_head = server.raw_connect();
    let mut half_header = server.raw_connect();
    let data = random_bytes(71, 200_000);
    let (mut mid_payload, slot) = pending_upload(&server, "/stalled", &data);
    let req = UploadChunk { upload_id: slot.upload_id, index: 0, crc32c: chunk_crc(&data) };
    let mut chunk_start = encode_message(Kind::UploadChunk, 10, &req, data.len() as u32);
    chunk_start.extend_from_slice(&data[..50_000]);

    // Half a frame head, before login.
    half_head.write_all(&stat_frame[..12]).expect("half a head");
    // A whole head and half its header.
    half_header.write_all(&stat_frame[..24 + 4]).expect("head and part of the header");
    // Logged in, mid-payload of a chunk.
    mid_payload.write_all(&chunk_start).expect("head, header and part of the payload");
    let sent_at = Instant::now();
    // A logged-in connection that is idle between requests is not stalled (idle timeout: the default 600 s).
    let mut idle = alice(&server);

    for (name, stream) in
        [("half a head", &mut half_head), ("half a header", &mut half_header), ("mid-payload", &mut mid_payload)]
    {
        let closed = read_until_closed(stream, Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{name}: a stalled connection must be closed (stall timeout 1 s)"));
        let after = sent_at.elapsed();
        assert!(closed.received.is_empty(), "{name}: no answer to half a request");
        assert!(after >= Duration::from_millis(500), "{name}: closed after {after:?}, before the stall timeout");
        assert!(after <= Duration::from_secs(8), "{name}: closed only after {after:?}");
    }
    assert!(
        server.wait_for_children(1, Duration::from_secs(10)),
        "the stalled connections' children exit; children: {:?}",
        server.children()
    );
    idle.stat("/").expect("an idle (not stalled) connection stays open");
    expect_code_not_found(&mut idle, "/stalled");
}

#[test]
fn a_slow_but_steady_upload_is_not_a_stall() {
    let server = server_with_alice(ServerOpts::default().stall_timeout(1));
    let data = random_bytes(72, 200_000);
    let (mut stream, slot) = pending_upload(&server, "/slow", &data);
    let req = UploadChunk { upload_id: slot.upload_id, index: 0, crc32c: chunk_crc(&data) };
    let mut reader =
        netdisk_e2e::netdisk_protocol::client::Client::new(netdisk_e2e::ReadHalf(stream.try_clone().expect("clone")));
    stream.write_all(&encode_message(Kind::UploadChunk, 1, &req, data.len() as u32)).expect("head");
    // 2.5 s in all, more than the stall timeout, but never 1 s without progress.
    for piece in data.chunks(20_000) {
        std::thread::sleep(Duration::from_millis(250));
        stream.write_all(piece).expect("a piece of the payload: the connection must stay open");
    }
    let (res, _) = reader.call_with_payload(&req, &[]).expect("the slow chunk is accepted");
    assert!(res.complete.is_some());
    assert_same_bytes(&alice(&server).read_file("/slow").expect("download"), &data, "slow upload");
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let server = server_with_alice(ServerOpts::default().idle_timeout(2));
    let mut idle = alice(&server).into_stream();
    let started = Instant::now();
    let mut busy = alice(&server);
    // The busy one sends a request every 500 ms for 3.5 s: longer than the idle timeout in all, never idle that long.
    while started.elapsed() < Duration::from_millis(3500) {
        busy.stat("/").expect("a connection with requests stays open");
        std::thread::sleep(Duration::from_millis(500));
    }
    let closed = read_until_closed(&mut idle, Duration::from_secs(10)).expect("the idle connection is closed");
    let after = started.elapsed();
    assert!(closed.received.is_empty());
    assert!(after >= Duration::from_millis(1500), "closed after {after:?}, before the idle timeout");
    assert!(after <= Duration::from_secs(10), "closed only after {after:?}");
    busy.stat("/").expect("still open");
    assert!(server.wait_for_children(1, Duration::from_secs(10)), "children: {:?}", server.children());
}

#[test]
fn sigterm_stops_the_server_and_its_children() {
    let mut server = server_with_alice(ServerOpts::default());
    let mut a = alice(&server);
    a.upload("/f", b"content", 0o644).expect("upload");
    let mut b = alice(&server).into_stream();
    // One connection mid-payload, too.
    let data = random_bytes(73, 300_000);
    let (mut mid, slot) = pending_upload(&server, "/mid", &data);
    let req = UploadChunk { upload_id: slot.upload_id, index: 0, crc32c: chunk_crc(&data) };
    mid.write_all(&encode_message(Kind::UploadChunk, 10, &req, data.len() as u32)).expect("head");
    mid.write_all(&data[..1000]).expect("some payload");
    let children: Vec<i32> = server.live_children().iter().map(|p| p.pid).collect();
    assert_eq!(children.len(), 3, "one child per connection: {:?}", server.children());

    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(10));
    let status =
        status.unwrap_or_else(|| panic!("the server did not exit within 10 s of SIGTERM\n{}", server.log_tail()));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    eprintln!("server stopped in {:?}", started.elapsed());

    // No connection process outlives the server.
    let left: Vec<_> = children
        .iter()
        .filter_map(|pid| proc_info(*pid))
        .filter(|p| p.comm.starts_with("netdisk-server") && p.state != 'Z')
        .collect();
    assert!(left.is_empty(), "connection processes left after the server exited: {left:?}");
    // Every client sees its connection end.
    for (name, stream) in [("idle", &mut b), ("mid-payload", &mut mid)] {
        read_until_closed(stream, Duration::from_secs(5)).unwrap_or_else(|_| panic!("{name}: connection still open"));
    }
    assert!(a.stat("/").is_err(), "the logged-in client's connection is gone");
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let mut server = server_with_alice(ServerOpts::default());
    let second = std::process::Command::new(netdisk_e2e::server_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(server.data_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run a second netdisk-server");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second server serves the same data directory");
    assert!(
        err.contains(&format!("another netdisk-server (pid {}) serves", server.pid())),
        "the refusal does not name the server holding the directory: {err}"
    );
    assert!(second.stdout.is_empty(), "the second server printed: {}", String::from_utf8_lossy(&second.stdout));
    // The first one serves on; once it is stopped, the directory is free again.
    alice(&server).stat("/").expect("the first server still answers");
    server.terminate(Duration::from_secs(10)).expect("the server stops");
    server.restart();
    alice(&server).stat("/").expect("a server started again on the directory answers");
}
