//! The server's error type: a wire error to answer with, or an internal failure (logged, answered as EIO or ENOSPC).

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for an error the client gets as is.
pub fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Result<T> {
    Err(Error::Wire(WireError::new(code, message)))
}

impl From<PathError> for Error {
    fn from(e: PathError) -> Error {
        let code = match e {
            PathError::NameTooLong | PathError::TooLong => ErrorCode::NameTooLong,
            PathError::NotAbsolute | PathError::Nul | PathError::BadComponent => ErrorCode::Invalid,
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
    pub fn to_wire(&self) -> WireError {
        match self {
            Error::Wire(e) => e.clone(),
            Error::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) => {
                WireError::new(ErrorCode::NoSpace, "the server's disk is full")
            }
            Error::Db(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull => {
                WireError::new(ErrorCode::NoSpace, "the server's disk is full")
            }
            Error::Io(_) | Error::Db(_) => WireError::new(ErrorCode::Io, "server i/o error (see the server log)"),
        }
    }

    /// True for failures worth a line in the log (not a client's honest mistake).
    pub fn is_internal(&self) -> bool {
        !matches!(self, Error::Wire(_))
    }
}
