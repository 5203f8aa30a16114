//! The mount's error type and the one table that turns every failure into an errno.

use netdisk_protocol::{BadAnswer, ErrorCode, WireError};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The server answered with an error.
    #[error("server: {0}")]
    Server(#[from] WireError),
    /// The server could not be reached, did not answer in time, or sent frames that do not decode.
    #[error("connection: {0}")]
    Connection(String),
    /// The server's answer decoded but broke a rule of `netdisk_protocol::answer` (a hostile or broken server):
    /// the call fails with EIO and the connection is closed. Logged once, where it is found (`client.rs`).
    #[error("{0}")]
    Protocol(#[from] BadAnswer),
    /// The local cache or staging directory failed.
    #[error("local i/o: {0}")]
    Local(#[from] std::io::Error),
    /// A plain errno decided by the mount itself (e.g. ENOENT for an unknown inode).
    #[error("errno {0}")]
    Errno(i32),
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

impl FsError {
    /// The errno an application sees for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Server(e) => match e.code {
                ErrorCode::NotFound => libc::ENOENT,
                ErrorCode::Exists => libc::EEXIST,
                ErrorCode::NotEmpty => libc::ENOTEMPTY,
                ErrorCode::NotDir => libc::ENOTDIR,
                ErrorCode::IsDir => libc::EISDIR,
                ErrorCode::Invalid => libc::EINVAL,
                ErrorCode::NameTooLong => libc::ENAMETOOLONG,
                ErrorCode::NotPermitted => libc::EPERM,
                ErrorCode::NoSpace => libc::ENOSPC,
                ErrorCode::QuotaExceeded => libc::EDQUOT,
                ErrorCode::FileTooBig => libc::EFBIG,
                ErrorCode::ReadOnly => libc::EROFS,
                ErrorCode::AuthFailed | ErrorCode::NotLoggedIn => libc::EACCES,
                ErrorCode::Busy => libc::EAGAIN,
                ErrorCode::Unsupported => libc::EOPNOTSUPP,
                ErrorCode::ChecksumMismatch | ErrorCode::UnknownUpload | ErrorCode::Io | ErrorCode::Unknown => {
                    libc::EIO
                }
            },
            FsError::Connection(_) | FsError::Protocol(_) => libc::EIO,
            FsError::Local(e) => e.raw_os_error().unwrap_or(libc::EIO),
            FsError::Errno(n) => *n,
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            FsError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

pub fn errno<T>(n: i32) -> Result<T> {
    Err(FsError::Errno(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno_of(wire: &str) -> i32 {
        let e: WireError = serde_json::from_str(&format!(r#"{{"code":"{wire}","message":"m"}}"#)).unwrap();
        FsError::Server(e).errno()
    }

    #[test]
    fn each_code_keeps_its_errno() {
        assert_eq!(errno_of("file_too_big"), libc::EFBIG);
        assert_eq!(errno_of("read_only"), libc::EROFS);
        assert_eq!(errno_of("no_space"), libc::ENOSPC);
        assert_eq!(errno_of("quota_exceeded"), libc::EDQUOT);
        assert_eq!(errno_of("io"), libc::EIO);
        // A code from a newer server that this mount does not know.
        assert_eq!(errno_of("some_future_code"), libc::EIO);
    }

    #[test]
    fn a_bad_answer_is_eio() {
        let bad = BadAnswer {
            request: netdisk_protocol::Kind::Stat,
            field: "attr.md5".into(),
            problem: "not 32 hex digits".into(),
        };
        assert_eq!(FsError::Protocol(bad).errno(), libc::EIO);
    }
}
