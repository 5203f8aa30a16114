//! File bytes between the socket and a file through a pipe with `splice(2)`: no copy through user space.
//! Architecture Invariant: `SPLICE_F_NONBLOCK` with a non-blocking socket; EAGAIN waits on epoll with the stall timeout (L6).

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::sys::epoll::EpollFlags;
use nix::unistd::{pipe2, read};

use crate::conn::{Conn, ConnError};

/// A pipe between socket and file, sized as large as the system allows (up to 1 MiB).
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A smaller pipe only costs more splice calls; keep the default when the system refuses 1 MiB.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(1 << 20));
        let capacity = fcntl(&write, FcntlArg::F_GETPIPE_SZ)? as usize;
        Ok(Pipe { read, write, capacity })
    }

    /// Throws away `len` bytes sitting in the pipe.
    fn drain(&mut self, mut len: usize) -> Result<(), ConnError> {
        let mut scratch = vec![0u8; 64 * 1024];
        while len > 0 {
            let want = scratch.len().min(len);
            match read(&self.read, &mut scratch[..want]) {
                Ok(0) => break,
                Ok(n) => len -= n,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);

/// Moves `len` payload bytes from the connection into `file` at `offset`: first the bytes the
/// read buffer already holds (L4), then socket -> pipe -> file.
///
/// The outer error means the connection is unusable. The inner error is the file's (e.g. ENOSPC):
/// then the rest of the payload has been read and dropped, so the connection can go on.
pub fn receive_to_file(
    conn: &mut Conn,
    pipe: &mut Pipe,
    file: &File,
    offset: u64,
    len: u64,
) -> Result<io::Result<()>, ConnError> {
    use std::os::unix::fs::FileExt;
    let mut off = offset as i64;
    let buffered = conn.take_buffered(len as usize);
    let from_buffer = buffered.len() as u64;
    if let Err(e) = file.write_all_at(buffered, offset) {
        conn.discard_payload(len - from_buffer)?;
        return Ok(Err(e));
    }
    off += from_buffer as i64;
    let mut remaining = len - from_buffer;
    let mut in_pipe = 0usize;
    while remaining > 0 || in_pipe > 0 {
        if remaining > 0 && in_pipe < pipe.capacity {
            let want = (remaining as usize).min(pipe.capacity - in_pipe);
            match splice(conn.sock.fd(), None, &pipe.write, None, want, FLAGS) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => {
                    remaining -= n as u64;
                    in_pipe += n;
                    conn.stats.bytes_in += n as u64;
                }
                // The socket is empty (or the pipe full): with nothing to write out, wait for the peer.
                Err(Errno::EAGAIN) if in_pipe == 0 => {
                    conn.sock.wait(EpollFlags::EPOLLIN, conn.timeouts.stall, "receiving a chunk")?;
                    continue;
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if in_pipe > 0 {
            match splice(&pipe.read, None, file, Some(&mut off), in_pipe, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(0) => return Err(ConnError::Io(io::Error::other("splice into the file made no progress"))),
                Ok(n) => in_pipe -= n,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    pipe.drain(in_pipe)?;
                    conn.discard_payload(remaining)?;
                    return Ok(Err(e.into()));
                }
            }
        }
    }
    Ok(Ok(()))
}

/// Sends `len` bytes of `file` from `offset` as the payload of a response whose head is already sent:
/// file -> pipe -> socket. Any error leaves the framing broken, so the caller closes the connection.
pub fn send_from_file(conn: &mut Conn, pipe: &mut Pipe, file: &File, offset: u64, len: u64) -> Result<(), ConnError> {
    let mut off = offset as i64;
    let mut remaining = len;
    let mut in_pipe = 0usize;
    while remaining > 0 || in_pipe > 0 {
        if remaining > 0 && in_pipe < pipe.capacity {
            let want = (remaining as usize).min(pipe.capacity - in_pipe);
            match splice(file, Some(&mut off), &pipe.write, None, want, FLAGS) {
                Ok(0) => return Err(ConnError::Io(io::Error::other("file ended before the promised bytes"))),
                Ok(n) => {
                    remaining -= n as u64;
                    in_pipe += n;
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if in_pipe > 0 {
            match splice(&pipe.read, None, conn.sock.fd(), None, in_pipe, FLAGS) {
                Ok(n) => {
                    in_pipe -= n;
                    conn.stats.bytes_out += n as u64;
                }
                Err(Errno::EAGAIN) => {
                    conn.sock.wait(EpollFlags::EPOLLOUT, conn.timeouts.stall, "sending a download")?
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
