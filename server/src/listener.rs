//! The parent process: accept, fork one child per connection, reap children, stop on SIGTERM/SIGINT (L2).
//! Architecture Invariant: the parent is single-threaded and holds no SQLite connection while it forks.
//! Architecture Invariant: the parent never reads from a client; an over-cap client gets a "busy" frame and is closed.

use std::collections::HashSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netdisk_protocol::frame::encode_message;
use netdisk_protocol::{AnyRequest, ErrorCode, FrameHead, Kind, WireError};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::conn::{Conn, ConnError, Timeouts};
use crate::handler::{Flow, Session};
use crate::meta::Meta;

pub struct Config {
    pub data_dir: PathBuf,
    pub max_children: usize,
    pub chunk_size: u32,
    pub timeouts: Timeouts,
    pub durability: crate::blobs::Durability,
    /// Bytes of the disk that uploads leave free (for the metadata).
    pub reserve: u64,
    /// How long an unfinished upload may make no progress before it is reclaimed.
    pub upload_expiry: Duration,
    /// The data directory's lock (recovery.rs): held by the parent only, so it ends with the parent.
    pub lock_fd: std::os::fd::RawFd,
}

const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
/// How long children get to finish after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Serves until SIGTERM or SIGINT, then stops the children and returns.
pub fn serve(config: Config, listener: TcpListener) -> anyhow::Result<()> {
    // Signals arrive through a signalfd in the epoll set, never as asynchronous handlers.
    let signals = handled_signals();
    signals.thread_block()?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    epoll.add(&signal_fd, EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))?;

    let mut children: HashSet<Pid> = HashSet::new();
    let mut events = [EpollEvent::empty(); 4];
    'serve: loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events[..n] {
            match event.data() {
                SIGNALS => {
                    while let Some(info) = signal_fd.read_signal()? {
                        if info.ssi_signo == Signal::SIGCHLD as u32 {
                            reap(&mut children, false);
                        } else {
                            tracing::info!(signal = info.ssi_signo, children = children.len(), "stopping");
                            break 'serve;
                        }
                    }
                }
                _ => accept_all(&config, &listener, &epoll, &signal_fd, &mut children)?,
            }
        }
    }
    drop(listener);
    stop_children(&mut children, &signal_fd);
    Ok(())
}

fn accept_all(
    config: &Config,
    listener: &TcpListener,
    epoll: &Epoll,
    signal_fd: &SignalFd,
    children: &mut HashSet<Pid>,
) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE, ECONNABORTED ...: log and keep serving the others.
                tracing::warn!(error = %e, "accept failed");
                return Ok(());
            }
        };
        if children.len() >= config.max_children {
            // Children that exited since the last SIGCHLD was read still count: reap them first. Under a stream of
            // connections this loop may not return to epoll (and the signalfd) for a long time.
            reap(children, false);
        }
        if children.len() >= config.max_children {
            tracing::warn!(%peer, children = children.len(), "refusing connection: at the child limit");
            send_busy(stream, children.len());
            continue;
        }
        // SAFETY: the parent is single-threaded (no tokio, no helper threads), so the child gets a consistent copy.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                // The child owns one connection: close the parent's descriptors, restore default signals.
                let _ = nix::unistd::close(listener.as_raw_fd());
                let _ = nix::unistd::close(epoll.0.as_raw_fd());
                let _ = nix::unistd::close(signal_fd.as_raw_fd());
                let _ = nix::unistd::close(config.lock_fd);
                let _ = handled_signals().thread_unblock();
                let code = run_child(config, stream, peer);
                std::process::exit(code);
            }
            Ok(ForkResult::Parent { child }) => {
                children.insert(child);
                drop(stream);
            }
            Err(e) => {
                tracing::error!(error = %e, "fork failed");
                send_busy(stream, children.len());
            }
        }
    }
}

fn send_busy(mut stream: TcpStream, children: usize) {
    let err = WireError::new(ErrorCode::Busy, format!("server busy ({children} connections); try again later"));
    let _ = stream.set_nonblocking(true);
    // The socket is new and its send buffer empty: this write does not block, and a failure changes nothing.
    let _ = stream.write_all(&encode_message(Kind::Error, 0, &err, 0));
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Collects exited children. Outside a stop, a child killed by a signal is worth a warning.
fn reap(children: &mut HashSet<Pid>, stopping: bool) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    children.remove(&pid);
                }
                if let (WaitStatus::Signaled(pid, sig, _), false) = (status, stopping) {
                    tracing::warn!(%pid, ?sig, "connection process killed");
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "waitpid failed");
                return;
            }
        }
    }
}

/// SIGTERM to every child, wait for them (bounded), SIGKILL the rest.
fn stop_children(children: &mut HashSet<Pid>, signal_fd: &SignalFd) {
    for pid in children.iter() {
        let _ = kill(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while !children.is_empty() && Instant::now() < deadline {
        reap(children, true);
        if children.is_empty() {
            break;
        }
        // Wait for the next SIGCHLD (or a short tick) instead of spinning.
        let mut fds = [nix::poll::PollFd::new(signal_fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
        while let Ok(Some(_)) = signal_fd.read_signal() {}
    }
    for pid in children.iter() {
        let _ = kill(*pid, Signal::SIGKILL);
    }
    while !children.is_empty() {
        match waitpid(None, None) {
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    children.remove(&pid);
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
}

/// The child: read the first request, open SQLite (after fork), then serve the connection until it ends.
/// Returns the exit code.
fn run_child(config: &Config, stream: TcpStream, peer: std::net::SocketAddr) -> i32 {
    let span = tracing::info_span!("conn", %peer, pid = std::process::id());
    let _enter = span.enter();
    let started = Instant::now();
    let mut conn = match Conn::new(stream, config.timeouts) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the socket");
            return 1;
        }
    };
    // The database is opened only once a valid first request has arrived: a peer sending garbage costs a fork
    // and a read, not a database connection, so a flood of hostile connections stays cheap for everyone else.
    let mut session = None;
    let ended = match read_request(&mut conn) {
        Err(e) => e,
        Ok((head, request)) => match open_session(config) {
            Some(s) => serve_connection(session.insert(s), &mut conn, head, request),
            None => return 1,
        },
    };
    let s = conn.stats;
    let user = session.as_ref().and_then(Session::user_name).unwrap_or("-").to_string();
    let secs = started.elapsed().as_secs_f64();
    match ended {
        ConnError::Closed => {
            tracing::info!(%user, requests = s.requests, bytes_in = s.bytes_in, bytes_out = s.bytes_out, secs, "connection closed")
        }
        e => {
            tracing::warn!(%user, requests = s.requests, bytes_in = s.bytes_in, bytes_out = s.bytes_out, secs, reason = %e, "connection dropped")
        }
    }
    0
}

fn open_session(config: &Config) -> Option<Session> {
    let meta = match Meta::open(&config.data_dir.join("meta.db")) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the database");
            return None;
        }
    };
    let settings = crate::store::Settings::new(
        config.data_dir.clone(),
        config.chunk_size,
        config.durability,
        config.reserve,
        config.timeouts.stall,
    )
    .upload_expiry(config.upload_expiry);
    match Session::new(meta, &settings) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the session");
            None
        }
    }
}

/// The next request: its validated head, then (only then) its parsed JSON header (L5).
pub fn read_request(conn: &mut Conn) -> Result<(FrameHead, AnyRequest), ConnError> {
    let (head, header) = conn.next_request()?;
    let request = AnyRequest::decode(head.kind, &header).map_err(|e| ConnError::Hostile(e.to_string()))?;
    Ok((head, request))
}

/// Answers `request` and every following one until the connection ends; returns why it ended.
/// (The `session` fuzz target drives a connection through here too, see `fuzz.rs`.)
pub fn serve_connection(
    session: &mut Session,
    conn: &mut Conn,
    mut head: FrameHead,
    mut request: AnyRequest,
) -> ConnError {
    loop {
        match session.handle(conn, head, request) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Close(why)) => return ConnError::Ended(why),
            Err(e) => return e,
        }
        (head, request) = match read_request(conn) {
            Ok(x) => x,
            Err(e) => return e,
        };
    }
}
