//! Hostile peers all at once (L2, L5, L6): 100,000 garbage frames, each on its own connection; senders that dribble
//! a frame a byte at a time; connections stalled mid-frame and mid-payload; a flood of connections over the child
//! cap. Meanwhile an honest client uploads and downloads, and each of its rounds must finish within a second.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, RwLock};
use std::time::{Duration, Instant};

use netdisk_e2e::netdisk_protocol::client::Client;
use netdisk_e2e::netdisk_protocol::frame::encode_message;
use netdisk_e2e::netdisk_protocol::io::{read_frame, Direction};
use netdisk_e2e::netdisk_protocol::{
    chunk_crc, login, Hello, Kind, Stat, UploadChunk, HEAD_LEN, MAGIC, MAX_PAYLOAD, MAX_REQUEST_HEADER, VERSION,
};
use netdisk_e2e::{
    begin_upload, json_string_field, random_bytes, read_until_closed, wait_until, ProcInfo, ReadHalf, Rng, Server,
    ServerOpts,
};

use crate::{alice, assert_same_bytes, server_with_alice, ALICE, ALICE_PW};

/// Garbage frames sent in all, each on a connection of its own.
const GARBAGE_FRAMES: u64 = 100_000;
/// Threads sending them (each waits for its connection to be closed before the next).
const GARBAGE_THREADS: u64 = 6;
const MAX_CHILDREN: usize = 16;
const STALL_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// Slack on top of a server timeout for a 2-core machine busy with this very test.
const MARGIN: Duration = Duration::from_secs(3);
/// Connections opened at once by the flood, far over the child cap.
const FLOOD: usize = 200;
/// Every honest round (upload of new content, then its download) must finish within this.
const HONEST_ROUND: Duration = Duration::from_secs(1);

/// What is wrong with a garbage frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Garbage {
    RandomBytes,
    BadMagic,
    BadVersion,
    UnknownKind,
    BadFlags,
    AbsurdHeaderLength,
    AbsurdPayloadLength,
    HeaderNotAnObject,
    /// A valid frame cut short, then the sender's side of the connection shut.
    Truncated,
}

const GARBAGE: [Garbage; 9] = [
    Garbage::RandomBytes,
    Garbage::BadMagic,
    Garbage::BadVersion,
    Garbage::UnknownKind,
    Garbage::BadFlags,
    Garbage::AbsurdHeaderLength,
    Garbage::AbsurdPayloadLength,
    Garbage::HeaderNotAnObject,
    Garbage::Truncated,
];

/// Request kinds with a valid JSON header for each.
fn valid_requests() -> Vec<(Kind, Vec<u8>)> {
    [
        (Kind::Login, format!(r#"{{"user":"{ALICE}","password":"{ALICE_PW}"}}"#)),
        (Kind::Stat, r#"{"path":"/"}"#.to_string()),
        (Kind::GetDir, r#"{"path":"/","after":null,"limit":10}"#.to_string()),
        (Kind::Download, r#"{"path":"/f","offset":0,"len":100}"#.to_string()),
        (Kind::Mkdir, r#"{"path":"/d","mode":493,"owner":{"uid":0,"gid":0}}"#.to_string()),
        (Kind::QueryChunk, r#"{"upload_id":1,"indexes":[0,1]}"#.to_string()),
        (Kind::UploadChunk, r#"{"upload_id":1,"index":0,"crc32c":0}"#.to_string()),
        (Kind::StatFs, "{}".to_string()),
    ]
    .into_iter()
    .map(|(k, h)| (k, h.into_bytes()))
    .collect()
}

/// Headers that are not one JSON object. The arrays are positional forms serde would accept for a struct
/// (`["/"]` is a `Stat`, `[]` a `StatFs`, the login array even holds the right password): the protocol's header
/// is an object, and anything else is a broken frame.
fn not_objects() -> Vec<(Option<Kind>, Vec<u8>)> {
    let any = None;
    vec![
        (any, b"null".to_vec()),
        (any, b"true".to_vec()),
        (any, b"0".to_vec()),
        (any, b"-7".to_vec()),
        (any, b"1e999".to_vec()),
        (any, br#""/""#.to_vec()),
        (any, b"[[]]".to_vec()),
        (any, b"{".to_vec()),
        (any, b"}".to_vec()),
        (any, br#"{"path":"/""#.to_vec()),
        (any, b"\xff\xfe{}".to_vec()),
        (any, b"{\"path\":\"\xc0\xae\xc0\xae\"}".to_vec()),
        (any, b"\0{}".to_vec()),
        (Some(Kind::Stat), br#"["/"]"#.to_vec()),
        (Some(Kind::StatFs), b"[]".to_vec()),
        (Some(Kind::Download), br#"["/f",0,100]"#.to_vec()),
        (Some(Kind::Login), format!(r#"["{ALICE}","{ALICE_PW}"]"#).into_bytes()),
    ]
}

fn head(magic: [u8; 4], version: u8, kind: u8, flags: u16, header_len: u32, payload_len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEAD_LEN);
    b.extend_from_slice(&magic);
    b.push(version);
    b.push(kind);
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&7u64.to_be_bytes());
    b.extend_from_slice(&header_len.to_be_bytes());
    b.extend_from_slice(&payload_len.to_be_bytes());
    b
}

/// The bytes of one garbage frame of `kind`.
fn garbage_frame(
    kind: Garbage,
    rng: &mut Rng,
    requests: &[(Kind, Vec<u8>)],
    not_objects: &[(Option<Kind>, Vec<u8>)],
) -> Vec<u8> {
    let (req_kind, header) = &requests[rng.below(requests.len() as u64) as usize];
    let (k, h) = (*req_kind as u8, header.len() as u32);
    let mut out = match kind {
        Garbage::RandomBytes => {
            let len = HEAD_LEN + rng.below(2048) as usize;
            let mut b = rng.bytes(len);
            if b[..4] == MAGIC {
                b[0] ^= 0xFF;
            }
            return b;
        }
        Garbage::BadMagic => {
            let mut magic = MAGIC;
            while magic == MAGIC {
                magic = (rng.next_u64() as u32).to_be_bytes();
            }
            head(magic, VERSION, k, 0, h, 0)
        }
        Garbage::BadVersion => head(MAGIC, ((2 + rng.below(255)) % 256) as u8, k, 0, h, 0),
        Garbage::UnknownKind => {
            let byte = loop {
                let b = rng.below(256) as u8;
                if Kind::from_u8(b).is_none_or(|k| !k.is_request()) {
                    break b;
                }
            };
            head(MAGIC, VERSION, byte, 0, h, 0)
        }
        Garbage::BadFlags => head(MAGIC, VERSION, k, 1 + rng.below(0xFFFF) as u16, h, 0),
        Garbage::AbsurdHeaderLength => {
            let len = match rng.below(3) {
                0 => 0,
                1 => u32::MAX,
                _ => MAX_REQUEST_HEADER + 1 + rng.below((u32::MAX - MAX_REQUEST_HEADER - 1) as u64) as u32,
            };
            head(MAGIC, VERSION, k, 0, len, 0)
        }
        Garbage::AbsurdPayloadLength => {
            if *req_kind == Kind::UploadChunk {
                head(MAGIC, VERSION, k, 0, h, MAX_PAYLOAD + 1 + rng.below((u32::MAX - MAX_PAYLOAD) as u64) as u32)
            } else {
                head(MAGIC, VERSION, k, 0, h, 1 + rng.below(u32::MAX as u64) as u32)
            }
        }
        Garbage::HeaderNotAnObject => {
            let (kind, bad) = &not_objects[rng.below(not_objects.len() as u64) as usize];
            let kind = kind.unwrap_or(*req_kind);
            let mut b = head(MAGIC, VERSION, kind as u8, 0, bad.len() as u32, 0);
            b.extend_from_slice(bad);
            return b;
        }
        Garbage::Truncated => {
            let payload = if *req_kind == Kind::UploadChunk { b"x".as_slice() } else { &[] };
            let mut b = head(MAGIC, VERSION, k, 0, h, payload.len() as u32);
            b.extend_from_slice(header);
            b.extend_from_slice(payload);
            b.truncate(1 + rng.below(b.len() as u64 - 1) as usize);
            return b;
        }
    };
    out.extend_from_slice(header);
    out
}

/// True when `bytes` are exactly the busy error frame an over-the-cap connection gets.
fn is_busy_frame(mut bytes: &[u8]) -> bool {
    match read_frame(&mut bytes, Direction::Response) {
        Ok(frame) => {
            frame.head.kind == Kind::Error
                && frame.head.request_id == 0
                && json_string_field(&frame.header, "code").as_deref() == Some("busy")
                && bytes.is_empty()
        }
        Err(_) => false,
    }
}

/// What the garbage senders saw.
#[derive(Default)]
struct GarbageTally {
    /// Frames a connection process read and answered by closing, without a byte in reply (per kind).
    closed_silently: [AtomicU64; GARBAGE.len()],
    /// Connections refused with the busy frame (their frame is sent again on a new connection).
    busy: AtomicU64,
    connections: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl GarbageTally {
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().expect("failures");
        if f.len() < 20 {
            f.push(what);
        }
    }
    fn total(&self) -> u64 {
        self.closed_silently.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Sends garbage frames until `next` passes [`GARBAGE_FRAMES`]; each connection must be closed without an answer.
/// `gate` is held (shared) for each connection, so that the flood can hold it (exclusively) to have the cap alone.
fn send_garbage(server: &Server, thread: u64, next: &AtomicU64, gate: &RwLock<()>, tally: &GarbageTally) {
    let mut rng = Rng::new(0x6A5B_0000 + thread);
    let requests = valid_requests();
    let not_objects = not_objects();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= GARBAGE_FRAMES {
            return;
        }
        let slot = (i % GARBAGE.len() as u64) as usize;
        let kind = GARBAGE[slot];
        let frame = garbage_frame(kind, &mut rng, &requests, &not_objects);
        loop {
            let _pass = gate.read().expect("gate");
            let mut stream = server.raw_connect();
            tally.connections.fetch_add(1, Ordering::Relaxed);
            // The server may close before it has read it all: a failed write is fine, a missing close is not.
            let _ = stream.write_all(&frame);
            if kind == Garbage::Truncated {
                let _ = stream.shutdown(Shutdown::Write);
            }
            match read_until_closed(&mut stream, Duration::from_secs(10)) {
                Ok(closed) if closed.received.is_empty() => {
                    tally.closed_silently[slot].fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(closed) if is_busy_frame(&closed.received) => {
                    tally.busy.fetch_add(1, Ordering::Relaxed);
                }
                Ok(closed) => {
                    let got = &closed.received[..closed.received.len().min(200)];
                    tally.fail(format!(
                        "{kind:?} {:?}: answered with {:?}",
                        frame_prefix(&frame),
                        String::from_utf8_lossy(got)
                    ));
                    break;
                }
                Err(_) => {
                    tally.fail(format!("{kind:?} {:?}: not closed within 10 s", frame_prefix(&frame)));
                    break;
                }
            }
        }
    }
}

fn frame_prefix(frame: &[u8]) -> String {
    String::from_utf8_lossy(&frame[..frame.len().min(80)]).into_owned()
}

/// One honest round: an upload of new content, then its download; returns how long it took.
fn honest_round(client: &mut Client<TcpStream>, round: u64) -> Duration {
    let data = random_bytes(0x0E57_0000 + round, 16_384 + (round as usize % 7) * 3000);
    let path = format!("/honest-{}", round % 4);
    let started = Instant::now();
    client.upload(&path, &data, 0o644).unwrap_or_else(|e| panic!("honest round {round}: upload: {e}"));
    let up = started.elapsed();
    let got = client.read_file(&path).unwrap_or_else(|e| panic!("honest round {round}: download: {e}"));
    let took = started.elapsed();
    if took > HONEST_ROUND / 4 {
        eprintln!("hostile: slow honest round {round}: {took:?} (upload {up:?})");
    }
    assert_same_bytes(&got, &data, &format!("honest round {round}"));
    took
}

/// The connection process serving `stream`, waited for (bounded).
fn child_of(server: &Server, stream: &TcpStream, what: &str) -> ProcInfo {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = server.child_serving(stream);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("{what}: no connection process serves it; children: {:?}", server.children()))
}

/// Connections stalled mid-frame and mid-payload: each must be closed, and its process gone (reaped), within the
/// stall timeout (plus a margin), and not long before it. Returns how long the slowest took to go.
fn stalled_connections(server: &Server, established: mpsc::Sender<()>) -> Duration {
    let stat = encode_message(Kind::Stat, 1, &Stat { path: "/".into() }, 0);
    let mut half_head = server.raw_connect();
    let mut half_header = server.raw_connect();
    let data = random_bytes(0x57A1, 200_000);
    let mut uploader = alice(server);
    let slot = begin_upload(&mut uploader, "/stalled", &data);
    assert_eq!(slot.chunk_count, 1);
    let mut mid_payload = uploader.into_stream();
    let req = UploadChunk { upload_id: slot.upload_id, index: 0, crc32c: chunk_crc(&data) };
    let mut chunk_start = encode_message(Kind::UploadChunk, 10, &req, data.len() as u32);
    chunk_start.extend_from_slice(&data[..data.len() / 2]);

    let children = [
        ("half a head", child_of(server, &half_head, "half a head")),
        ("head and half a header", child_of(server, &half_header, "head and half a header")),
        ("mid-payload", child_of(server, &mid_payload, "mid-payload")),
    ];
    established.send(()).expect("signal");
    half_head.write_all(&stat[..HEAD_LEN / 2]).expect("half a head");
    half_header.write_all(&stat[..HEAD_LEN + 4]).expect("a head and part of its header");
    mid_payload.write_all(&chunk_start).expect("head, header and half the payload");
    let sent = Instant::now();

    let mut slowest = Duration::ZERO;
    for ((what, child), stream) in children.iter().zip([&mut half_head, &mut half_header, &mut mid_payload]) {
        let deadline = (STALL_TIMEOUT + MARGIN).saturating_sub(sent.elapsed());
        assert!(
            wait_until(deadline, || !child.exists()),
            "{what}: connection process {} still there {:?} after the stall ({STALL_TIMEOUT:?} timeout): {:?}",
            child.pid,
            sent.elapsed(),
            netdisk_e2e::proc_info(child.pid)
        );
        let gone = sent.elapsed();
        assert!(
            gone >= STALL_TIMEOUT - Duration::from_millis(300),
            "{what}: gone after {gone:?}, before the stall timeout"
        );
        slowest = slowest.max(gone);
        let closed = read_until_closed(stream, Duration::from_secs(1)).unwrap_or_else(|_| panic!("{what}: still open"));
        assert!(closed.received.is_empty(), "{what}: answered half a request");
    }
    slowest
}

/// Sends `bytes` on `stream` one a second (each well within the stall timeout) until the server closes it, which
/// must happen once its idle timeout has passed since `started` (and not before), without a byte in answer, and
/// with the process serving it gone. Returns when it was closed.
fn dribble_until_closed(
    server: &Server,
    stream: &mut TcpStream,
    started: Instant,
    bytes: &[u8],
    what: &str,
) -> Duration {
    let child = child_of(server, stream, what);
    let mut sent = 0;
    let closed = loop {
        if sent < bytes.len() && stream.write_all(&bytes[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        match read_until_closed(stream, Duration::from_secs(1)) {
            Ok(closed) => break closed,
            Err(received) => assert!(received.is_empty(), "{what}: answered before the request was complete"),
        }
        let open = started.elapsed();
        assert!(
            open < IDLE_TIMEOUT + MARGIN,
            "{what}: the connection is still open after {open:?} ({sent} bytes sent)"
        );
    };
    let after = started.elapsed();
    assert!(closed.received.is_empty(), "{what}: answered");
    assert!(sent < bytes.len(), "{what}: all {sent} bytes were sent before the close");
    assert!(
        after >= IDLE_TIMEOUT - Duration::from_millis(500),
        "{what}: closed after {after:?}, before the idle timeout"
    );
    assert!(wait_until(MARGIN, || !child.exists()), "{what}: process {} is still there", child.pid);
    after
}

/// Requests dribbled a byte at a time, every byte within the stall timeout. A login faster than the idle timeout
/// in all is served; a slower one is closed once the idle timeout has passed, and so is a chunk's payload that an
/// unauthenticated peer dribbles (the server has no use for it but must read it to keep the framing).
fn dribblers(server: &Server, established: mpsc::Sender<()>) -> (Duration, Duration) {
    let hello = Hello { user: ALICE.into(), client_nonce: "ab".repeat(32) };
    let frame = encode_message(Kind::Hello, 1, &hello, 0);
    let chunk = UploadChunk { upload_id: 1, index: 0, crc32c: chunk_crc(b"x") };
    let chunk_head = encode_message(Kind::UploadChunk, 1, &chunk, 1 << 20);
    let mut fast = server.raw_connect();
    let mut slow = server.raw_connect();
    let slow_started = Instant::now();
    let mut payload = server.raw_connect();
    let payload_started = Instant::now();
    payload.write_all(&chunk_head).expect("the head and header of a chunk, before any login");
    established.send(()).expect("signal");

    std::thread::scope(|s| {
        let fast_thread = s.spawn(|| {
            // A byte every 45 ms, ~3 s in all: longer than the stall timeout, well within the idle timeout.
            // Each byte is due at a fixed time from the start, so that late wake-ups do not add up.
            let started = Instant::now();
            for (i, b) in frame.iter().enumerate() {
                std::thread::sleep(
                    (started + Duration::from_millis(45) * i as u32).saturating_duration_since(Instant::now()),
                );
                fast.write_all(std::slice::from_ref(b)).expect("a byte of the login: the connection must stay open");
            }
            let took = started.elapsed();
            assert!(took > STALL_TIMEOUT, "the fast dribbler took {took:?}, not longer than the stall timeout");
            let mut reader = Client::new(ReadHalf(fast.try_clone().expect("clone")));
            let challenge = reader.call(&hello).expect("a login dribbled within the idle timeout is served");
            let salt = login::salt_of(&challenge).expect("the salt");
            let salted = login::salted_password(ALICE_PW, &salt, &challenge.kdf).expect("SaltedPassword");
            let (proof, _) = login::answer(&hello, &challenge, &salted);
            let mut c = Client::new(fast.try_clone().expect("clone"));
            let res = c.call(&proof).expect("and its login completes");
            assert_eq!(res.root.kind, netdisk_e2e::netdisk_protocol::NodeKind::Dir);
            c.stat("/").expect("the dribbled login's session works");
            took
        });
        let payload_thread = s.spawn(|| {
            let bytes = vec![0u8; 1 << 20];
            dribble_until_closed(server, &mut payload, payload_started, &bytes, "a chunk payload dribbled before login")
        });
        // The whole login would take over a minute.
        let slow_closed = dribble_until_closed(server, &mut slow, slow_started, &frame, "a login dribbled too slowly");
        payload_thread.join().expect("payload dribbler");
        (fast_thread.join().expect("fast dribbler"), slow_closed)
    })
}

/// Waits (bounded) until no more of `streams` become readable for a while; returns which are readable.
fn readable(streams: &[TcpStream]) -> Vec<bool> {
    use std::os::fd::AsRawFd;
    let mut ready = vec![false; streams.len()];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let pending: Vec<usize> = (0..streams.len()).filter(|i| !ready[*i]).collect();
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|i| libc::pollfd { fd: streams[*i].as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for open sockets this function borrows.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 500) };
        if n <= 0 {
            break;
        }
        for (fd, i) in fds.iter().zip(&pending) {
            if fd.revents != 0 {
                ready[*i] = true;
            }
        }
    }
    ready
}

/// Opens [`FLOOD`] connections at once: the ones over the cap get the busy frame and are closed, the others are
/// served; after all are closed, the parent serves new connections again. Returns (served, busy).
fn flood(server: &Server) -> (usize, usize) {
    let mut streams: Vec<TcpStream> = (0..FLOOD).map(|_| server.raw_connect()).collect();
    let ready = readable(&streams);
    let (mut served, mut busy) = (0, 0);
    for (stream, ready) in streams.iter_mut().zip(ready) {
        if !ready {
            served += 1;
            continue;
        }
        let closed = read_until_closed(stream, Duration::from_secs(5)).expect("a refused connection is closed");
        assert!(
            is_busy_frame(&closed.received),
            "a connection over the cap gets exactly the busy frame, got {:?}",
            String::from_utf8_lossy(&closed.received)
        );
        busy += 1;
    }
    assert!(busy >= FLOOD - MAX_CHILDREN, "{busy} of {FLOOD} connections refused with a cap of {MAX_CHILDREN}");
    assert!((1..MAX_CHILDREN).contains(&served), "{served} flood connections served (cap {MAX_CHILDREN})");
    drop(streams);
    // The parent keeps accepting: once the flood's processes are gone, a new client is served.
    let mut again = None;
    let ok = wait_until(Duration::from_secs(5), || {
        let mut c = server.connect();
        let ok = c.login(ALICE, ALICE_PW).is_ok();
        if ok {
            again = Some(c);
        }
        ok
    });
    assert!(ok, "no new connection served within 5 s after the flood; children: {:?}", server.children());
    again.expect("served").stat("/").expect("a connection after the flood works");
    (served, busy)
}

#[test]
fn hostile_peers_do_not_disturb_an_honest_client() {
    let started = Instant::now();
    let server = server_with_alice(
        ServerOpts::default()
            .max_children(MAX_CHILDREN)
            .stall_timeout(STALL_TIMEOUT.as_secs())
            .idle_timeout(IDLE_TIMEOUT.as_secs()),
    );
    let mut honest = alice(&server);
    let next_frame = AtomicU64::new(0);
    let gate = RwLock::new(());
    let tally = GarbageTally::default();
    let attack_over = AtomicBool::new(false);
    /// Ends the honest client's loop when the attack is over, also when a part of it panics.
    struct Over<'a>(&'a AtomicBool);
    impl Drop for Over<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    let (honest_rounds, stalled_gone, (fast_dribble, slow_closed), (served, busy)) = std::thread::scope(|s| {
        let honest_thread = s.spawn(|| {
            let mut times = Vec::new();
            while !attack_over.load(Ordering::Relaxed) || times.len() < 3 {
                times.push(honest_round(&mut honest, times.len() as u64));
                std::thread::sleep(Duration::from_millis(20));
            }
            times
        });
        let garbage: Vec<_> = (0..GARBAGE_THREADS)
            .map(|t| {
                let (server, next_frame, gate, tally) = (&server, &next_frame, &gate, &tally);
                s.spawn(move || send_garbage(server, t, next_frame, gate, tally))
            })
            .collect();
        let over = Over(&attack_over);
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        let stalled = s.spawn(|| stalled_connections(&server, tx));
        let dribbled = s.spawn(|| dribblers(&server, tx2));
        // The flood comes once the stalled and dribbling connections have their processes; garbage waits meanwhile,
        // so that every garbage frame reaches a connection process and the flood has the cap to itself.
        rx.recv().expect("stalled connections set up");
        rx.recv().expect("dribblers set up");
        let flooded = {
            let _exclusive = gate.write().expect("gate");
            flood(&server)
        };
        for g in garbage {
            g.join().expect("garbage sender");
        }
        let stalled = stalled.join().expect("stalled connections");
        let dribbled = dribbled.join().expect("dribblers");
        drop(over);
        (honest_thread.join().expect("honest client"), stalled, dribbled, flooded)
    });

    let truncated = tally.closed_silently[GARBAGE.len() - 1].load(Ordering::Relaxed);
    let max_round = *honest_rounds.iter().max().expect("rounds");
    let mean = honest_rounds.iter().sum::<Duration>() / honest_rounds.len() as u32;
    let mut sorted = honest_rounds.clone();
    sorted.sort();
    let p99 = sorted[sorted.len() * 99 / 100];
    eprintln!(
        "hostile: {} garbage frames ({} truncated) over {} connections ({} refused busy, sent again); \
         flood of {FLOOD}: {served} served, {busy} busy; stalled children gone after at most {stalled_gone:?} \
         (stall timeout {STALL_TIMEOUT:?}); dribbled login served after {fast_dribble:?}, too slow one closed after \
         {slow_closed:?} (idle timeout {IDLE_TIMEOUT:?}); honest rounds: {}, max {max_round:?}, p99 {p99:?}, mean {mean:?}; \
         {:?} in all",
        tally.total(),
        truncated,
        tally.connections.load(Ordering::Relaxed),
        tally.busy.load(Ordering::Relaxed),
        honest_rounds.len(),
        started.elapsed()
    );
    for (i, per_kind) in tally.closed_silently.iter().enumerate() {
        eprintln!("  {:?}: {}", GARBAGE[i], per_kind.load(Ordering::Relaxed));
    }
    // Every garbage frame reached a connection process, which closed the connection without a word.
    let failures = tally.failures.lock().expect("failures").clone();
    assert!(failures.is_empty(), "garbage frames not handled as hostile:\n{}", failures.join("\n"));
    assert_eq!(tally.total(), GARBAGE_FRAMES, "garbage frames read by a connection process");
    // At most GARBAGE_THREADS garbage connections are open at once, and with the others far fewer than the cap:
    // the server refuses them only in the moment between a child closing its socket and being reaped.
    let refused = tally.busy.load(Ordering::Relaxed);
    assert!(refused < GARBAGE_FRAMES / 100, "{refused} garbage connections refused busy while the server had room");
    // The server's own account: one "hostile or broken frame" line per garbage frame that was complete enough to
    // judge (a truncated frame is just a peer that went away).
    let log = server.log();
    let judged_hostile = log.lines().filter(|l| l.contains("reason=hostile or broken frame")).count() as u64;
    assert_eq!(judged_hostile, GARBAGE_FRAMES - truncated, "connections the server logged as hostile");

    // The parent lives, serves, and leaves no zombie once the attack is over.
    let parent = netdisk_e2e::proc_info(server.pid()).expect("the server process exists");
    assert_ne!(parent.state, 'Z', "the server process died");
    alice(&server).stat("/").expect("a new connection after the attack");
    drop(honest);
    assert!(
        wait_until(Duration::from_secs(5), || server.children().is_empty()),
        "connection processes left after the attack: {:?}",
        server.children()
    );
    assert!(server.zombies().is_empty());

    let slow: Vec<&Duration> = honest_rounds.iter().filter(|d| **d > HONEST_ROUND).collect();
    assert!(
        slow.is_empty(),
        "{} of {} honest rounds took longer than {HONEST_ROUND:?} under attack: {slow:?}",
        slow.len(),
        honest_rounds.len()
    );
}
