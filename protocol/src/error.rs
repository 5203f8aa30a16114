//! Decoding errors (a broken or hostile frame) and the error codes a server answers requests with.

use serde::{Deserialize, Serialize};

/// Why bytes are not a valid frame. Any of these means: close the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("unknown message type 0x{0:02x}")]
    UnknownKind(u8),
    #[error("non-zero flags 0x{0:04x}")]
    BadFlags(u16),
    #[error("header length {len} out of range (1..={max})")]
    HeaderLength { len: u32, max: u32 },
    #[error("payload length {len} out of range for {kind:?} (max {max})")]
    PayloadLength { kind: crate::Kind, len: u32, max: u32 },
    #[error("{0:?} is not a request")]
    NotARequest(crate::Kind),
    #[error("{0:?} is not a response")]
    NotAResponse(crate::Kind),
    /// `reason` may quote what the peer sent: it is shown cut and escaped.
    #[error("invalid JSON header for {kind:?}: {}", crate::answer::shown(.reason))]
    Json { kind: crate::Kind, reason: String },
}

/// The error code of an error response. The mount maps each to one errno.
/// On the wire a code is its snake_case name, so codes can be added without breaking older peers: a code a peer
/// does not know decodes as [`ErrorCode::Unknown`] (EIO on the mount).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No such file or directory (ENOENT).
    NotFound,
    /// The name exists already (EEXIST).
    Exists,
    /// Directory not empty (ENOTEMPTY).
    NotEmpty,
    /// A path component is not a directory (ENOTDIR).
    NotDir,
    /// The operation needs a non-directory (EISDIR).
    IsDir,
    /// Bad argument: a path with `..`, a rename into its own subtree, a bad md5 (EINVAL).
    Invalid,
    /// A name or path is too long (ENAMETOOLONG).
    NameTooLong,
    /// Not permitted, e.g. a hard link to a directory (EPERM).
    NotPermitted,
    /// The server's disk is full (ENOSPC).
    NoSpace,
    /// The change would take the user past their quota (EDQUOT).
    QuotaExceeded,
    /// A size beyond the largest file the server stores, `MAX_FILE_SIZE` (EFBIG).
    FileTooBig,
    /// The server's storage is read-only (EROFS).
    ReadOnly,
    /// Wrong user name or password.
    AuthFailed,
    /// A request other than login before a successful login (EACCES).
    NotLoggedIn,
    /// The server has no room for another connection; try again later.
    Busy,
    /// Bytes do not match the md5 they were declared with.
    ChecksumMismatch,
    /// An upload or challenge id that this user does not have (ESTALE).
    UnknownUpload,
    /// The operation is not supported (EOPNOTSUPP).
    Unsupported,
    /// The server failed (EIO); its log says why.
    Io,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

/// An error response: a code to act on and a message for people (shown cut and escaped: it comes from a peer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {}", crate::answer::shown(.message))]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError { code, message: message.into() }
    }
}
