//! The body of the `session` fuzz target (`fuzz/fuzz_targets/session.rs`), shared with the corpus replay test
//! (`server/tests/fuzz_corpus.rs`) so that both run exactly this code: one connection's bytes, sent over loopback
//! TCP to [`serve_connection`] (the loop a forked child runs) in a fresh copy of a prepared data directory.
//! It panics when the server breaks a promise: a panic while serving, a hang, a malformed answer, or a data
//! directory left inconsistent ([`crate::fsck::check`]). Nothing in the server calls it.
//!
//! The session is replayable: challenges come from [`Random::Counter`] and the data directory always starts the
//! same, so the bytes a scripted client sent ([`record`]) replay to the same answers: those recordings seed the corpus.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use netdisk_protocol::client::Client;
use netdisk_protocol::io::{read_frame, Direction, FrameError};
use netdisk_protocol::{AnyRequest, AnyResponse, Kind, MIN_CHUNK_SIZE};

use crate::blobs::Durability;
use crate::conn::{Conn, ConnError, Timeouts};
use crate::handler::Session;
use crate::listener::{read_request, serve_connection};
use crate::meta::Meta;
use crate::store::Random;

/// The user whose connection is fuzzed, and their password.
pub const USER: &str = "ann";
pub const PASSWORD: &str = "ann-pw";
/// Another user, holding content of their own (for cross-user instant uploads and isolation).
pub const OTHER: &str = "bob";
pub const OTHER_PASSWORD: &str = "bob-pw";
/// The smallest chunk size: a few KiB already make a multi-chunk upload.
pub const CHUNK_SIZE: u32 = MIN_CHUNK_SIZE;

/// What the prepared data directory holds, so scripts can refer to it.
pub mod content {
    /// ann's files: `/docs/hello.txt`, `/docs/big.bin` (3 chunks), `/docs/link` -> `hello.txt`, and an
    /// unfinished upload of [`partial`] to `/partial.bin` with its first chunk stored.
    pub const HELLO: &[u8] = b"hello, world\n";
    /// bob's `/shared.bin`: content ann can get by proof (several chunks).
    pub fn shared() -> Vec<u8> {
        bytes(200_000, 1)
    }
    pub fn big() -> Vec<u8> {
        bytes(3 * super::CHUNK_SIZE as usize - 100, 2)
    }
    pub fn partial() -> Vec<u8> {
        bytes(3 * super::CHUNK_SIZE as usize, 3)
    }
    /// `len` deterministic pseudo-random bytes.
    pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}

const TIMEOUTS: Timeouts =
    Timeouts { idle: Duration::from_secs(10), stall: Duration::from_secs(10), login: Duration::from_secs(10) };

/// One fuzz input: everything a client sends on one connection, as ann (or not logged in at all).
pub fn session(input: &[u8]) {
    let dir = prepared_dir();
    let (server_side, client_side) = loopback_pair();
    let (ended, answers) = std::thread::scope(|scope| {
        let mut writer = client_side.try_clone().expect("a second handle of the client socket");
        scope.spawn(move || {
            // The server may close first (a hostile frame): then the rest is refused, which is fine.
            let _ = writer.write_all(input);
            let _ = writer.shutdown(Shutdown::Write);
        });
        let reader = scope.spawn(move || {
            let mut answers = Vec::new();
            let _ = (&client_side).read_to_end(&mut answers);
            answers
        });
        let ended = serve(dir.path(), server_side);
        (ended, reader.join().expect("the reader thread"))
    });
    let complete = match ended {
        ConnError::Closed => true,
        ConnError::Hostile(_) | ConnError::Ended(_) => false,
        e => panic!("the connection ended with {e}"),
    };
    check_answers(input, &answers, complete);
    // The template's blobs were verified when it was built: unchanged, they need no hashing again.
    let problems = fsck_problems(dir.path());
    assert!(problems.is_empty(), "the data directory is inconsistent after the session:\n{}", problems.join("\n"));
}

/// Runs `script` as a client against a fresh prepared data directory and returns every byte it sent:
/// replayed by [`session`], those bytes get the same answers.
pub fn record(script: impl FnOnce(&mut Client<Recorder>)) -> Vec<u8> {
    let dir = prepared_dir();
    drive(dir.path(), |stream| {
        let mut client = Client::new(Recorder { stream, sent: Vec::new() });
        script(&mut client);
        client.into_stream().sent
    })
}

/// A client's stream that keeps a copy of what it sends.
pub struct Recorder {
    stream: TcpStream,
    sent: Vec<u8>,
}

impl Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.sent.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// The answers are whole, valid response frames, one per request in order (its id, and its response kind or an
/// error), for every request up to the first broken frame, which gets none. The stream may stop early only when
/// the server hung up (a hostile frame, too many failed logins): then the client may not get to read everything.
fn check_answers(input: &[u8], answers: &[u8], complete: bool) {
    let mut requests = Vec::new();
    let mut rest = input;
    while let Ok(frame) = read_frame(&mut rest, Direction::Request) {
        if AnyRequest::decode(frame.head.kind, &frame.header).is_err() {
            break;
        }
        requests.push(frame.head);
    }
    let mut rest = answers;
    let mut answered = 0;
    while !rest.is_empty() {
        let frame = match read_frame(&mut rest, Direction::Response) {
            Ok(frame) => frame,
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof && !complete => return,
            Err(e) => panic!("the server sent a broken frame: {e}"),
        };
        if let Err(e) = AnyResponse::decode(frame.head.kind, &frame.header) {
            panic!("the server sent an answer that does not decode: {e}");
        }
        let Some(request) = requests.get(answered) else {
            panic!("answer {answered} ({:?}) to no request", frame.head.kind);
        };
        assert_eq!(frame.head.request_id, request.request_id, "answer {answered} carries another request's id");
        assert!(
            frame.head.kind == Kind::Error || Some(frame.head.kind) == request.kind.response(),
            "{:?} in answer to {:?}",
            frame.head.kind,
            request.kind
        );
        answered += 1;
    }
    if complete {
        assert_eq!(answered, requests.len(), "requests left without an answer");
    }
}

/// One connection served the way a forked child serves it, with replayable challenges.
fn serve(data_dir: &Path, stream: TcpStream) -> ConnError {
    let meta = Meta::open(&data_dir.join("meta.db")).expect("the prepared database opens");
    let settings =
        crate::store::Settings::new(data_dir.to_path_buf(), CHUNK_SIZE, Durability::Normal, 0, TIMEOUTS.stall);
    let session = Session::new(meta, &settings).expect("a session");
    let mut session = session.with_random(Random::Counter(1));
    let mut conn = Conn::new(stream, TIMEOUTS).expect("a connection");
    match read_request(&mut conn) {
        Ok((head, request)) => serve_connection(&mut session, &mut conn, head, request),
        Err(e) => e,
    }
}

/// Serves one connection on another thread while `client` talks to it.
fn drive<T>(data_dir: &Path, client: impl FnOnce(TcpStream) -> T) -> T {
    let (server_side, client_side) = loopback_pair();
    std::thread::scope(|scope| {
        scope.spawn(|| serve(data_dir, server_side));
        client(client_side)
    })
}

fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let client = TcpStream::connect(listener.local_addr().expect("its address")).expect("a loopback connection");
    // Without it a request written in two parts (head, then payload) waits for a delayed ACK.
    client.set_nodelay(true).expect("TCP_NODELAY");
    let (server, _) = listener.accept().expect("the loopback connection");
    (server, client)
}

/// A new temporary directory, in memory (`/dev/shm`) where there is one: on a disk, syncs and removals
/// would take most of a session's time.
fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    builder.tempdir_in("/dev/shm").or_else(|_| builder.tempdir()).expect("a temporary directory")
}

/// A fresh copy of the prepared data directory (removed when dropped).
fn prepared_dir() -> tempfile::TempDir {
    let dir = scratch_dir("netdisk-fuzz-");
    for (path, bytes) in template() {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("files are inside the directory")).expect("a directory");
        std::fs::write(path, bytes).expect("a copy of the template");
    }
    std::fs::create_dir_all(dir.path().join("blobs")).expect("the blobs directory");
    dir
}

/// The prepared data directory's files (relative path, bytes), built once per process through the real server.
fn template() -> &'static [(PathBuf, Vec<u8>)] {
    static TEMPLATE: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = scratch_dir("netdisk-fuzz-template-");
        build(dir.path());
        let problems = fsck_problems(dir.path());
        assert!(problems.is_empty(), "the prepared data directory is inconsistent:\n{}", problems.join("\n"));
        let mut files = Vec::new();
        let mut pending = vec![dir.path().to_path_buf()];
        while let Some(d) = pending.pop() {
            for entry in std::fs::read_dir(&d).expect("the template directory") {
                let path = entry.expect("a template entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let rel = path.strip_prefix(dir.path()).expect("inside the template").to_path_buf();
                    files.push((rel, std::fs::read(&path).expect("a template file")));
                }
            }
        }
        files
    })
}

fn build(dir: &Path) {
    use netdisk_protocol::{ProveOwnership, UploadFileRes};

    std::fs::create_dir_all(dir.join("blobs")).expect("the blobs directory");
    let mut meta = Meta::open(&dir.join("meta.db")).expect("a new database");
    meta.add_user(USER, &cheap_hash(PASSWORD)).expect("ann");
    meta.add_user(OTHER, &cheap_hash(OTHER_PASSWORD)).expect("bob");
    drop(meta);
    // A fixed proof salt (a store makes a random one): recorded proofs replay as right ones.
    let db = rusqlite::Connection::open(dir.join("meta.db")).expect("the database");
    db.execute("UPDATE settings SET value = ? WHERE name = 'proof_salt'", [[7u8; 32].to_vec()]).expect("the salt");
    drop(db);
    drive(dir, |stream| {
        let mut bob = Client::new(stream);
        bob.login(OTHER, OTHER_PASSWORD).expect("bob logs in");
        bob.upload("/shared.bin", &content::shared(), 0o644).expect("bob's upload");
    });
    drive(dir, |stream| {
        let mut ann = Client::new(stream);
        ann.login(USER, PASSWORD).expect("ann logs in");
        ann.mkdir("/docs", 0o755).expect("mkdir");
        ann.upload("/docs/hello.txt", content::HELLO, 0o644).expect("ann's upload");
        ann.upload("/docs/big.bin", &content::big(), 0o600).expect("ann's upload");
        let link =
            netdisk_protocol::Symlink { path: "/docs/link".into(), target: "hello.txt".into(), owner: <_>::default() };
        ann.call(&link).expect("symlink");
        // An upload left unfinished after its first chunk.
        let data = content::partial();
        let req = ann.upload_request("/partial.bin", &data, 0o644);
        let Ok(UploadFileRes::Challenge { challenge_id, .. }) = ann.call(&req) else { panic!("a challenge") };
        let proof = ProveOwnership { challenge_id, proof: String::new() };
        let Ok(UploadFileRes::Upload { upload_id, chunk_size, .. }) = ann.call(&proof) else { panic!("an upload") };
        let first = &data[..chunk_size as usize];
        let chunk = netdisk_protocol::UploadChunk { upload_id, index: 0, crc32c: netdisk_protocol::chunk_crc(first) };
        ann.call_with_payload(&chunk, first).expect("the first chunk");
    });
}

/// A stored password with the smallest argon2id cost: a login costs microseconds, not the real tens of milliseconds.
fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).expect("argon2 parameters");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::from_b64("bmV0ZGlzay1mdXp6").expect("a salt");
    let phc = argon.hash_password(password.as_bytes(), &salt).expect("a hash").to_string();
    crate::users::from_phc(&phc).expect("an argon2id hash converts")
}

/// Everything `netdisk-server fsck` finds wrong with a data directory, one line each.
fn fsck_problems(dir: &Path) -> Vec<String> {
    match crate::fsck::check(dir) {
        Ok(report) => report.problems,
        Err(e) => vec![format!("cannot check: {e}")],
    }
}
