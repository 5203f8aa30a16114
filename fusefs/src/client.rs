//! The connection pool to the server: several logged-in connections, one request at a time on each, every call
//! bounded by a timeout so that no FUSE request can hang on a dead server. Connections come from a [`Dialer`]: TCP
//! in the mount, an in-process server in the fs layer's unit tests.
//! Architecture Invariant: every answer is checked (`netdisk_protocol::answer`) before it leaves this file; a
//! connection that brought a bad answer is closed, never pooled again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use netdisk_protocol::frame::{encode_message, FrameHead};
use netdisk_protocol::{
    answer, login, BadAnswer, DecodeError, HelloRes, Kind, LoginRes, ProveOwnership, Request, UploadFile,
    UploadFileRes, WireError, HEAD_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::error::{FsError, Result};

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub addr: String,
    pub user: String,
    pub password: String,
}

/// A byte stream to the server.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type Dialed<'a> = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Stream>>> + Send + 'a>>;

/// Opens a new stream to the server (the transport: the pool logs in on it and speaks the protocol over it).
pub trait Dialer: Send + Sync {
    fn dial(&self) -> Dialed<'_>;
    /// The server's address, for messages.
    fn address(&self) -> String;
}

/// TCP to `addr`, without Nagle's delay (requests are small and each waits for its answer).
pub struct Tcp(pub String);

impl Dialer for Tcp {
    fn dial(&self) -> Dialed<'_> {
        Box::pin(async move {
            let stream = TcpStream::connect(&self.0).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    }

    fn address(&self) -> String {
        self.0.clone()
    }
}

struct Connection {
    stream: Box<dyn Stream>,
    next_id: u64,
}

pub struct Remote {
    dialer: Box<dyn Dialer>,
    user: String,
    password: String,
    /// SaltedPassword for the last salt and cost the server asked for: argon2id runs once, not at every connection.
    salted: Mutex<Option<(String, login::Kdf, [u8; 32])>>,
    idle: Mutex<Vec<Connection>>,
    slots: Semaphore,
    timeout: Duration,
}

fn connection_error(what: impl std::fmt::Display) -> FsError {
    FsError::Connection(what.to_string())
}

impl Connection {
    async fn open(remote: &Remote) -> Result<(Connection, LoginRes)> {
        let address = remote.dialer.address();
        let stream = tokio::time::timeout(remote.timeout, remote.dialer.dial())
            .await
            .map_err(|_| connection_error(format!("connecting to {address} timed out")))?
            .map_err(|e| connection_error(format!("cannot connect to {address}: {e}")))?;
        let mut conn = Connection { stream, next_id: 1 };
        let res = tokio::time::timeout(remote.timeout, conn.login(remote))
            .await
            .map_err(|_| connection_error("login timed out"))??;
        Ok((conn, res))
    }

    /// Logs in (`netdisk_protocol::login`): the password never travels, and the server proves it holds this user's
    /// keys, so an impostor cannot complete a login.
    async fn login(&mut self, remote: &Remote) -> Result<LoginRes> {
        let hello = login::hello(&remote.user);
        let (challenge, _) = self.call(&hello, &[]).await?;
        let salted = remote.salted_password(&challenge).await?;
        let (proof, message) = login::answer(&hello, &challenge, &salted);
        let (res, _) = self.call(&proof, &[]).await?;
        if !login::server_signature_is_right(&salted, &message, &res.server_signature) {
            return Err(connection_error(format!(
                "the server at {} could not prove that it holds {}'s keys: not the real server",
                remote.dialer.address(),
                remote.user
            )));
        }
        Ok(res)
    }

    async fn call<R: Request>(&mut self, req: &R, payload: &[u8]) -> Result<(R::Response, Vec<u8>)> {
        let id = self.next_id;
        self.next_id += 1;
        let head = encode_message(R::KIND, id, req, payload.len() as u32);
        self.stream.write_all(&head).await.map_err(connection_error)?;
        if !payload.is_empty() {
            self.stream.write_all(payload).await.map_err(connection_error)?;
        }
        let mut head_bytes = [0u8; HEAD_LEN];
        self.stream.read_exact(&mut head_bytes).await.map_err(connection_error)?;
        let head = FrameHead::decode_response(&head_bytes).map_err(connection_error)?;
        let mut header = vec![0u8; head.header_len as usize];
        self.stream.read_exact(&mut header).await.map_err(connection_error)?;
        let mut body = vec![0u8; head.payload_len as usize];
        self.stream.read_exact(&mut body).await.map_err(connection_error)?;
        if head.request_id != id {
            return Err(connection_error(format!("answer to request {} while waiting for {id}", head.request_id)));
        }
        let json =
            |e: serde_json::Error| connection_error(DecodeError::Json { kind: head.kind, reason: e.to_string() });
        if head.kind == Kind::Error {
            let err: WireError = serde_json::from_slice(&header).map_err(json)?;
            answer::check_error(R::KIND, &err).map_err(rejected)?;
            return Err(FsError::Server(err));
        }
        if Some(head.kind) != R::KIND.response() {
            return Err(connection_error(format!("{:?} in answer to {:?}", head.kind, R::KIND)));
        }
        let res = serde_json::from_slice(&header).map_err(json)?;
        req.check_answer(&res, body.len()).map_err(rejected)?;
        Ok((res, body))
    }
}

/// A bad answer, logged here once (its server strings cut and escaped); the caller drops the connection it came on.
fn rejected(bad: BadAnswer) -> FsError {
    tracing::warn!(error = %bad, "the server broke the protocol; closing that connection");
    FsError::Protocol(bad)
}

impl Remote {
    /// Connects over TCP and logs in once, so that a wrong address or password fails here, before anything is
    /// mounted.
    pub async fn connect(
        credentials: Credentials,
        connections: usize,
        timeout: Duration,
    ) -> Result<(Remote, LoginRes)> {
        let Credentials { addr, user, password } = credentials;
        Remote::with_dialer(Box::new(Tcp(addr)), user, password, connections, timeout).await
    }

    /// Like [`Remote::connect`], over any transport.
    pub async fn with_dialer(
        dialer: Box<dyn Dialer>,
        user: String,
        password: String,
        connections: usize,
        timeout: Duration,
    ) -> Result<(Remote, LoginRes)> {
        let mut remote = Remote {
            dialer,
            user,
            password,
            salted: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(connections.max(1)),
            timeout,
        };
        let (conn, login) = Connection::open(&remote).await?;
        remote.idle.get_mut().expect("pool lock").push(conn);
        Ok((remote, login))
    }

    /// SaltedPassword for the salt and cost the server asked for (computed off the runtime's threads, then kept).
    async fn salted_password(&self, challenge: &HelloRes) -> Result<[u8; 32]> {
        let cached = self.salted.lock().expect("salted lock").clone();
        if let Some((salt, kdf, salted)) = cached {
            if salt == challenge.salt && kdf == challenge.kdf {
                return Ok(salted);
            }
        }
        let salt = login::salt_of(challenge).map_err(connection_error)?;
        let (password, kdf) = (self.password.clone(), challenge.kdf);
        let salted = tokio::task::spawn_blocking(move || login::salted_password(&password, &salt, &kdf))
            .await
            .map_err(connection_error)?
            .map_err(connection_error)?;
        *self.salted.lock().expect("salted lock") = Some((challenge.salt.clone(), challenge.kdf, salted));
        Ok(salted)
    }

    /// Sends one request and waits for its answer, within the timeout.
    pub async fn call<R: Request>(&self, req: &R) -> Result<R::Response> {
        Ok(self.call_with_payload(req, &[]).await?.0)
    }

    pub async fn call_with_payload<R: Request>(&self, req: &R, payload: &[u8]) -> Result<(R::Response, Vec<u8>)> {
        let mut session = self.session().await?;
        session.call_with_payload(req, payload).await
    }

    /// One connection for a conversation that must stay on it (an upload's challenge and its proof).
    pub async fn session(&self) -> Result<Session<'_>> {
        let slot = self.slots.acquire().await.map_err(connection_error)?;
        let conn = self.idle.lock().expect("pool lock").pop();
        Ok(Session { remote: self, conn, _slot: slot })
    }
}

/// Exclusive use of one pooled connection; it goes back to the pool when dropped (unless it broke).
pub struct Session<'a> {
    remote: &'a Remote,
    conn: Option<Connection>,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

impl Session<'_> {
    pub async fn call<R: Request>(&mut self, req: &R) -> Result<R::Response> {
        Ok(self.call_with_payload(req, &[]).await?.0)
    }

    /// Answers the ownership challenge the server gave for `asked` (on this session: the connection that asked it).
    /// The answer is checked against `asked` too (its size fixes the chunk count of an upload).
    pub async fn prove(&mut self, asked: &UploadFile, proof: &ProveOwnership) -> Result<UploadFileRes> {
        let answer = self.call(proof).await?;
        if let Err(bad) = answer::check_proven(asked, &answer) {
            self.conn = None;
            return Err(rejected(bad));
        }
        Ok(answer)
    }

    /// Sends one request and waits for its answer, within the timeout. A pooled connection the server closed
    /// meanwhile (idle timeout, restart) gets one fresh try, unless this session already used it.
    pub async fn call_with_payload<R: Request>(&mut self, req: &R, payload: &[u8]) -> Result<(R::Response, Vec<u8>)> {
        let timeout = self.remote.timeout;
        let reused = self.conn.is_some();
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => Connection::open(self.remote).await?.0,
        };
        match tokio::time::timeout(timeout, conn.call(req, payload)).await {
            Ok(Ok(answer)) => {
                self.conn = Some(conn);
                Ok(answer)
            }
            Ok(Err(FsError::Server(e))) => {
                self.conn = Some(conn);
                Err(FsError::Server(e))
            }
            Ok(Err(FsError::Connection(why))) if reused => {
                tracing::debug!(%why, "pooled connection failed; reconnecting");
                let mut conn = Connection::open(self.remote).await?.0;
                let answer = tokio::time::timeout(timeout, conn.call(req, payload))
                    .await
                    .map_err(|_| connection_error(format!("{:?} timed out", R::KIND)))?;
                if matches!(answer, Ok(_) | Err(FsError::Server(_))) {
                    self.conn = Some(conn);
                }
                answer
            }
            // A broken connection or a bad answer (`FsError::Protocol`): the connection is dropped, never pooled.
            Ok(Err(e)) => Err(e),
            // The connection is dropped here, not pooled: closing it is what tells the server that this call was
            // given up (a long truncate then stops and never lands), and its late answer could never be matched.
            Err(_) => Err(connection_error(format!("{:?} timed out after {timeout:?}", R::KIND))),
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.remote.idle.lock().expect("pool lock").push(conn);
        }
    }
}
