//! One client connection, in its own child process: a non-blocking socket, one epoll set, a read buffer, timeouts.
//! Framing happens here: the head is validated before the header is read, and the header before it is parsed (L5);
//! payload bytes already in the buffer are handed over before splice moves the rest (L4).
//! Architecture Invariant: every wait is bounded: the idle timeout between requests, the stall timeout inside one (L6).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use netdisk_protocol::frame::encode_message;
use netdisk_protocol::{DecodeError, FrameHead, Kind, HEAD_LEN, MAX_REQUEST_HEADER};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("peer closed the connection")]
    Closed,
    #[error("timed out {0}")]
    TimedOut(&'static str),
    #[error("hostile or broken frame: {0}")]
    Hostile(String),
    /// The server ended it after answering (too many failed logins, a session whose user is gone).
    #[error("closed by the server: {0}")]
    Ended(&'static str),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

impl From<DecodeError> for ConnError {
    fn from(e: DecodeError) -> ConnError {
        ConnError::Hostile(e.to_string())
    }
}

impl From<Errno> for ConnError {
    fn from(e: Errno) -> ConnError {
        match e {
            Errno::ECONNRESET | Errno::EPIPE => ConnError::Closed,
            e => ConnError::Io(io::Error::from(e)),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Longest wait for the next request.
    pub idle: Duration,
    /// Longest wait for progress inside a frame or a transfer.
    pub stall: Duration,
    /// Longest a connection may stay without a login, from its accept: whatever it sends meanwhile, a peer that
    /// has not logged in by then is closed (so silent or chatty strangers cannot keep connection slots).
    pub login: Duration,
}

/// Counters for the connection's log line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A non-blocking socket and the epoll set that says when it is ready.
pub struct Socket {
    stream: TcpStream,
    epoll: Epoll,
    interest: EpollFlags,
}

impl Socket {
    pub fn new(stream: TcpStream) -> io::Result<Socket> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        epoll.add(&stream, EpollEvent::new(interest, 0))?;
        Ok(Socket { stream, epoll, interest })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Waits until the socket is readable (`EPOLLIN`) or writable (`EPOLLOUT`), or an error/hang-up shows.
    pub fn wait(&mut self, want: EpollFlags, timeout: Duration, what: &'static str) -> Result<(), ConnError> {
        let interest = want | EpollFlags::EPOLLRDHUP;
        if interest != self.interest {
            self.epoll.modify(&self.stream, &mut EpollEvent::new(interest, 0))?;
            self.interest = interest;
        }
        let ms = EpollTimeout::try_from(timeout).unwrap_or(EpollTimeout::MAX);
        let mut events = [EpollEvent::empty()];
        loop {
            match self.epoll.wait(&mut events, ms) {
                Ok(0) => return Err(ConnError::TimedOut(what)),
                // Readiness, an error or a hang-up: the next read or write tells which.
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

pub struct Conn {
    pub sock: Socket,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pub timeouts: Timeouts,
    pub stats: Stats,
    /// When the current request must have arrived: its head and header, and a payload the server drops.
    request_deadline: Instant,
    /// When the peer must have logged in (`None` once it has).
    login_by: Option<Instant>,
}

/// The wait `timeout` for `what`, cut short to what is left before `deadline` (the end of a request's idle timeout).
fn within(deadline: Instant, timeout: Duration, what: &'static str) -> (Duration, &'static str) {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < timeout {
        (left, "receiving a request (not complete within the idle timeout)")
    } else {
        (timeout, what)
    }
}

/// Room for a head, the largest request header (388 KiB), and some payload read along with them.
const BUF_SIZE: usize = 512 * 1024;
const _: () = assert!(BUF_SIZE >= HEAD_LEN + MAX_REQUEST_HEADER as usize);

impl Conn {
    pub fn new(stream: TcpStream, timeouts: Timeouts) -> io::Result<Conn> {
        Ok(Conn {
            sock: Socket::new(stream)?,
            buf: vec![0; BUF_SIZE],
            start: 0,
            end: 0,
            timeouts,
            stats: Stats::default(),
            request_deadline: Instant::now() + timeouts.idle.min(timeouts.login),
            login_by: Some(Instant::now() + timeouts.login),
        })
    }

    /// The peer logged in: from now on only the idle and stall timeouts apply.
    pub fn logged_in(&mut self) {
        self.login_by = None;
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads more bytes into the buffer, waiting up to `timeout` for them.
    fn fill(&mut self, timeout: Duration, what: &'static str) -> Result<(), ConnError> {
        if self.start > 0 && self.buffered() > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        } else if self.buffered() == 0 {
            self.start = 0;
            self.end = 0;
        }
        loop {
            match self.sock.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => {
                    self.end += n;
                    self.stats.bytes_in += n as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.sock.wait(EpollFlags::EPOLLIN, timeout, what)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(ConnError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next request's validated head and raw JSON header. Its payload (if any) is still to be taken.
    ///
    /// Between bytes the stall timeout applies; the whole head and header must arrive within the idle timeout of
    /// the previous request, so a peer dribbling one byte just inside the stall timeout cannot hold its process.
    pub fn next_request(&mut self) -> Result<(FrameHead, Vec<u8>), ConnError> {
        let idle = Instant::now() + self.timeouts.idle;
        let deadline = self.login_by.map_or(idle, |login_by| login_by.min(idle));
        self.request_deadline = deadline;
        while self.buffered() < HEAD_LEN {
            let (timeout, what) = if self.buffered() == 0 {
                let what = if self.login_by.is_some() { "waiting for a login" } else { "waiting for a request" };
                (deadline.saturating_duration_since(Instant::now()), what)
            } else {
                within(deadline, self.timeouts.stall, "inside a frame head")
            };
            self.fill(timeout, what)?;
        }
        let head_bytes: [u8; HEAD_LEN] =
            self.buf[self.start..self.start + HEAD_LEN].try_into().expect("HEAD_LEN bytes");
        let head = FrameHead::decode_request(&head_bytes)?;
        let need = HEAD_LEN + head.header_len as usize;
        while self.buffered() < need {
            if self.start + need > self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let (timeout, what) = within(deadline, self.timeouts.stall, "inside a frame header");
            self.fill(timeout, what)?;
        }
        let header = self.buf[self.start + HEAD_LEN..self.start + need].to_vec();
        self.start += need;
        self.stats.requests += 1;
        Ok((head, header))
    }

    /// Takes up to `max` payload bytes that arrived with the request (L4: they go to the file first).
    pub fn take_buffered(&mut self, max: usize) -> &[u8] {
        let n = self.buffered().min(max);
        let taken = &self.buf[self.start..self.start + n];
        self.start += n;
        taken
    }

    /// Reads and drops `len` payload bytes, keeping the framing intact after a refused or failed payload.
    /// Like the head and header, a payload nobody wants (one sent before login, say) must arrive within the
    /// request's idle timeout, however steadily it trickles.
    pub fn discard_payload(&mut self, mut len: u64) -> Result<(), ConnError> {
        len -= self.take_buffered(len as usize).len() as u64;
        while len > 0 {
            let (timeout, what) = within(self.request_deadline, self.timeouts.stall, "discarding a payload");
            self.fill(timeout, what)?;
            len -= self.take_buffered(len as usize).len() as u64;
        }
        Ok(())
    }

    /// Writes all of `bytes`, waiting for room as needed.
    pub fn send(&mut self, mut bytes: &[u8]) -> Result<(), ConnError> {
        while !bytes.is_empty() {
            match self.sock.stream.write(bytes) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => {
                    bytes = &bytes[n..];
                    self.stats.bytes_out += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.sock.wait(EpollFlags::EPOLLOUT, self.timeouts.stall, "sending a response")?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => {
                    return Err(ConnError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// True while the peer keeps the connection open: a non-blocking look at the socket for a hang-up or an
    /// error, consuming no byte (a pipelined request stays buffered). Long work asks it every few MiB, so that a
    /// request its client gave up on (the mount closes a connection whose call timed out) stops.
    pub fn peer_is_there(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        // Only a hang-up is asked for (POLLRDHUP: the peer shut its side; nix names no such flag, and its
        // `revents()` reads none back); POLLHUP and POLLERR always come. So any event at all means gone.
        let mut fds = [PollFd::new(self.sock.fd(), PollFlags::from_bits_retain(libc::POLLRDHUP))];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(events) => events == 0,
            // Cannot tell (EINTR): carry on; the next look decides.
            Err(_) => true,
        }
    }

    /// Sends a message without payload.
    pub fn send_message<T: serde::Serialize>(
        &mut self,
        kind: Kind,
        request_id: u64,
        message: &T,
    ) -> Result<(), ConnError> {
        self.send(&encode_message(kind, request_id, message, 0))
    }
}
