//! The server's error type: a wire error to answer with, or an internal failure (logged). `to_wire` is the one
//! place that decides what a client is told about a failure: an errno it can act on (EFBIG, ENOSPC, EROFS ...)
//! keeps its meaning, and only what nobody can act on becomes `Io` (EIO).

use netdisk_protocol::path::PathError;
use netdisk_protocol::{ErrorCode, WireError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An answer for the client: not found, exists, not empty ...
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A concurrent change undid what the request had looked up (content released, a half-made physical file
    /// gone). The request runs again, a bounded number of times; only then does the client hear of it.
    #[error("race: {0}")]
    Race(&'static str),
    /// The client hung up while the request was being worked on: its work stopped, and nothing was changed.
    #[error("the client went away")]
    Abandoned,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for an error the client gets as is.
pub fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Result<T> {
    Err(Error::Wire(WireError::new(code, message)))
}

impl From<PathError> for Error {
    fn from(e: PathError) -> Error {
        let code = match e {
            PathError::NameTooLong | PathError::TooLong | PathError::TooDeep => ErrorCode::NameTooLong,
            PathError::NotAbsolute | PathError::Nul | PathError::BadComponent | PathError::Slash => ErrorCode::Invalid,
        };
        Error::Wire(WireError::new(code, e.to_string()))
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Error {
        Error::Io(std::io::Error::from(e))
    }
}

impl Error {
    /// What the client is told. Internal failures keep their details in the log, not on the wire.
    ///
    /// EDQUOT from the server's file system is a quota on the server's own account (the disk it may use), shared by
    /// every netdisk user: for a client that is the store being full, which deleting its own files may not cure,
    /// so it is `NoSpace` (ENOSPC), like a full disk. `QuotaExceeded` (EDQUOT) means this user's netdisk quota only.
    pub fn to_wire(&self) -> WireError {
        let full = || WireError::new(ErrorCode::NoSpace, "the server's disk is full");
        let read_only = || WireError::new(ErrorCode::ReadOnly, "the server's storage is read-only");
        match self {
            Error::Wire(e) => e.clone(),
            Error::Io(e) => match e.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => full(),
                Some(libc::EFBIG) => WireError::new(ErrorCode::FileTooBig, "the server cannot store a file that big"),
                Some(libc::EROFS) => read_only(),
                _ => WireError::new(ErrorCode::Io, "server i/o error (see the server log)"),
            },
            Error::Db(rusqlite::Error::SqliteFailure(f, _)) => match f.code {
                rusqlite::ErrorCode::DiskFull => full(),
                rusqlite::ErrorCode::ReadOnly => read_only(),
                _ => WireError::new(ErrorCode::Io, "server i/o error (see the server log)"),
            },
            Error::Db(_) => WireError::new(ErrorCode::Io, "server i/o error (see the server log)"),
            // Every race is retried where it can happen; one that outlives the retries is still only a "not now".
            Error::Race(why) => WireError::new(ErrorCode::Busy, format!("{why}; try again")),
            Error::Abandoned => WireError::new(ErrorCode::Io, "the request was abandoned"),
        }
    }

    /// True for failures worth a line in the log (not a client's honest mistake).
    pub fn is_internal(&self) -> bool {
        !matches!(self, Error::Wire(_) | Error::Abandoned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of_errno(errno: i32) -> ErrorCode {
        Error::Io(std::io::Error::from_raw_os_error(errno)).to_wire().code
    }

    #[test]
    fn errnos_keep_their_meaning() {
        assert_eq!(code_of_errno(libc::EFBIG), ErrorCode::FileTooBig);
        assert_eq!(code_of_errno(libc::ENOSPC), ErrorCode::NoSpace);
        assert_eq!(code_of_errno(libc::EDQUOT), ErrorCode::NoSpace);
        assert_eq!(code_of_errno(libc::EROFS), ErrorCode::ReadOnly);
        assert_eq!(code_of_errno(libc::EIO), ErrorCode::Io);
        let sqlite = |code| Error::Db(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None));
        assert_eq!(sqlite(rusqlite::ffi::SQLITE_READONLY).to_wire().code, ErrorCode::ReadOnly);
        assert_eq!(sqlite(rusqlite::ffi::SQLITE_FULL).to_wire().code, ErrorCode::NoSpace);
        assert_eq!(sqlite(rusqlite::ffi::SQLITE_IOERR).to_wire().code, ErrorCode::Io);
        assert_eq!(Error::Race("gone").to_wire().code, ErrorCode::Busy);
    }
}
