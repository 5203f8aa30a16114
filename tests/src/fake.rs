//! A fake netdisk server, to test the mount against a hostile one: it listens on `127.0.0.1:0`, logs its user in the
//! way a real server does (it knows the password [`PASSWORD`]; an [`FakeServer::impostor`] does not, and signs its
//! login answer with garbage), then answers every other request as the test's script says,
//! marking the answers it knows to be lies. It records, per connection, whether a request ever came on a
//! connection after a lie (a client must drop such a connection). Each connection has its own thread; dropping the
//! guard stops accepting, shuts every connection down and joins every thread. Nothing is forked or spawned.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use netdisk_protocol::io::{read_frame, Direction};
use netdisk_protocol::{
    login, AnyRequest, AnyResponse, Attr, ErrorCode, Kind, LoginRes, NodeKind, Timespec, WireError,
};

use crate::IO_TIMEOUT;

/// The password the fake knows (any user name).
pub const PASSWORD: &str = "pw";

/// The proof salt the fake sends at login.
pub const SALT: &str = "5a175a175a175a175a175a175a175a175a175a175a175a175a175a175a175a17";

/// One answer of the script.
pub struct Reply {
    pub answer: AnyResponse,
    pub payload: Vec<u8>,
    /// The answer breaks the protocol: the client must fail the call and never use this connection again.
    pub lie: bool,
}

impl Reply {
    pub fn honest(answer: AnyResponse) -> Reply {
        Reply { answer, payload: Vec::new(), lie: false }
    }

    pub fn lie(answer: AnyResponse) -> Reply {
        Reply { answer, payload: Vec::new(), lie: true }
    }

    pub fn with_payload(mut self, payload: Vec<u8>) -> Reply {
        self.payload = payload;
        self
    }
}

/// What the fake saw.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// Connections accepted.
    pub connections: usize,
    /// Every request but logins, in order of arrival: (connection number, kind, whether the answer was a lie).
    pub requests: Vec<(usize, Kind, bool)>,
    /// Requests that came on a connection after it had carried a lie: (connection number, kind).
    pub after_a_lie: Vec<(usize, Kind)>,
}

impl Record {
    pub fn lies(&self) -> usize {
        self.requests.iter().filter(|(_, _, lie)| *lie).count()
    }
}

type Script = dyn Fn(&AnyRequest) -> Reply + Send + Sync;
/// Each connection's socket (to shut it down) and thread (to join it).
type Connections = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

pub struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    connections: Connections,
    record: Arc<Mutex<Record>>,
}

impl FakeServer {
    /// Starts listening; `script` answers every request after the login.
    pub fn start(script: impl Fn(&AnyRequest) -> Reply + Send + Sync + 'static) -> FakeServer {
        FakeServer::listen(Some(PASSWORD), Arc::new(script))
    }

    /// A server that does not know the user's password: it takes any login proof and answers as a real server
    /// would, but cannot sign the answer.
    pub fn impostor(script: impl Fn(&AnyRequest) -> Reply + Send + Sync + 'static) -> FakeServer {
        FakeServer::listen(None, Arc::new(script))
    }

    fn listen(password: Option<&str>, script: Arc<Script>) -> FakeServer {
        let password = Arc::new(password.map(login::KnownPassword::new));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the listener's address");
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Connections = Arc::default();
        let record: Arc<Mutex<Record>> = Arc::default();
        let accept = {
            let (stop, connections, record) = (stop.clone(), connections.clone(), record.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let number = {
                        let mut r = record.lock().expect("record lock");
                        r.connections += 1;
                        r.connections
                    };
                    let Ok(handle) = stream.try_clone() else { continue };
                    let (script, record, password) = (script.clone(), record.clone(), password.clone());
                    let thread = std::thread::spawn(move || {
                        serve(stream, number, &*script, &record, password.as_ref().as_ref())
                    });
                    connections.lock().expect("connections lock").push((handle, thread));
                }
            })
        };
        FakeServer { addr, stop, accept: Some(accept), connections, record }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn record(&self) -> Record {
        self.record.lock().expect("record lock").clone()
    }
}

/// Answers one connection until it closes (or fails, or stays silent past [`IO_TIMEOUT`]).
fn serve(
    mut stream: TcpStream,
    number: usize,
    script: &Script,
    record: &Mutex<Record>,
    password: Option<&login::KnownPassword>,
) {
    let mut exchange = String::new();
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut lied = false;
    while let Ok(frame) = read_frame(&mut stream, Direction::Request) {
        let Ok(request) = AnyRequest::decode(frame.head.kind, &frame.header) else { return };
        let reply = match &request {
            AnyRequest::Hello(r) => {
                let (res, message) = match password {
                    Some(known) => known.hello(r),
                    None => login::KnownPassword::new("an impostor's guess").hello(r),
                };
                exchange = message;
                Reply::honest(AnyResponse::Hello(res))
            }
            AnyRequest::Login(r) => {
                let signature = match password {
                    Some(known) => known.login(&exchange, r),
                    None => Some("00".repeat(32)),
                };
                match signature {
                    Some(server_signature) => {
                        Reply::honest(AnyResponse::Login(LoginRes { server_signature, ..login_answer() }))
                    }
                    None => Reply::honest(AnyResponse::Error(WireError::new(ErrorCode::AuthFailed, "wrong password"))),
                }
            }
            other => script(other),
        };
        if !matches!(request, AnyRequest::Hello(_) | AnyRequest::Login(_)) {
            let mut r = record.lock().expect("record lock");
            if lied {
                r.after_a_lie.push((number, request.kind()));
            }
            r.requests.push((number, request.kind(), reply.lie));
        }
        lied |= reply.lie;
        if send(&mut stream, frame.head.request_id, &reply).is_err() {
            return;
        }
    }
}

fn send(stream: &mut TcpStream, request_id: u64, reply: &Reply) -> io::Result<()> {
    let len = u32::try_from(reply.payload.len()).map_err(io::Error::other)?;
    stream.write_all(&reply.answer.encode(request_id, len))?;
    stream.write_all(&reply.payload)?;
    stream.flush()
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let connections = std::mem::take(&mut *self.connections.lock().expect("connections lock"));
        for (stream, thread) in connections {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = thread.join();
        }
    }
}

/// The answer a real server gives a login: the root directory, a chunk size, a proof salt.
pub fn login_answer() -> LoginRes {
    LoginRes {
        root: attr(1, NodeKind::Dir, 0),
        chunk_size: 1 << 20,
        proof_salt: SALT.into(),
        server_signature: "00".repeat(32),
    }
}

/// Sound attributes of a node as a real server sends them (a file's content is `md5` of `size` bytes).
pub fn attr(ino: u64, kind: NodeKind, size: u64) -> Attr {
    let t = Timespec { sec: 1_700_000_000, nsec: 0 };
    Attr {
        ino,
        kind,
        mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        nlink: if kind == NodeKind::Dir { 2 } else { 1 },
        size,
        atime: t,
        mtime: t,
        ctime: t,
        rdev: 0,
        md5: (kind == NodeKind::File).then(|| netdisk_protocol::md5_hex(&vec![b'x'; size as usize])),
    }
}
