//! One serde struct per request and per response. Paths are absolute, `/`-separated, within the user's own tree.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::answer::{BadAnswer, Rules};
use crate::error::{DecodeError, WireError};
use crate::frame::encode_message;
use crate::kind::Kind;

/// A request type, tied to its kind on the wire and to the type of its successful response.
pub trait Request: Serialize + DeserializeOwned {
    const KIND: Kind;
    type Response: Serialize + DeserializeOwned;

    /// Checks a server's answer to this request (with `payload_len` bytes of payload) before anything uses it:
    /// the rules of `answer.rs`. A client fails the call on a [`BadAnswer`] and closes that connection.
    fn check_answer(&self, res: &Self::Response, payload_len: usize) -> Result<(), BadAnswer>;
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// What a node is; the POSIX file types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// The attributes of a node, as `stat(2)` reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// Stable node id: never reused, unchanged by rename and by new content.
    pub ino: u64,
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    /// Device number of a character or block device node.
    pub rdev: u64,
    /// md5 of a regular file's content (lowercase hex); `None` for other kinds.
    pub md5: Option<String>,
}

/// A time to set: now (by the server's clock) or a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetTime {
    Now,
    At(Timespec),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

// ---- requests and their responses ----

/// The first step of a login (`login.rs`): who, and a fresh nonce of the client's (64 hex digits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub user: String,
    pub client_nonce: String,
}
/// How to derive the login key, and the server's fresh nonce. A user that does not exist gets an answer of the
/// same shape (a salt derived from the name), so that names cannot be probed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRes {
    /// The password's salt, hex.
    pub salt: String,
    pub kdf: crate::login::Kdf,
    pub server_nonce: String,
}

/// The second step: [`client_proof`](crate::login::client_proof) over the exchange (the password never travels).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub proof: String,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRes {
    pub root: Attr,
    /// Chunk size for new uploads.
    pub chunk_size: u32,
    /// This server's proof salt (64 hex digits): what a [`ContentHasher`](crate::ContentHasher) needs to compute the
    /// proof tag that ownership challenges are answered from.
    pub proof_salt: String,
    /// [`server_signature`](crate::login::server_signature) over the exchange: the server holds this user's keys.
    pub server_signature: String,
}

/// One page of a directory: entries sorted by name, starting after `after`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetDir {
    pub path: String,
    pub after: Option<String>,
    pub limit: u32,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetDirRes {
    /// Attributes of the directory itself.
    pub dir: Attr,
    pub entries: Vec<DirEntry>,
    /// More entries follow the last one of this page.
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub path: String,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatRes {
    pub attr: Attr,
}

/// Owner of a node being created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mkdir {
    pub path: String,
    pub mode: u32,
    pub owner: Owner,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirRes {
    pub attr: Attr,
    /// The parent directory just after the change (see [`UploadFileRes::Instant`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Attr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rmdir {
    pub path: String,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RmdirRes {
    /// The parent directory just after the change (see [`UploadFileRes::Instant`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Attr>,
}

/// Removes a name that is not a directory (`unlink(2)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteFile {
    pub path: String,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteFileRes {
    /// The parent directory just after the change (see [`UploadFileRes::Instant`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Attr>,
}

/// Atomic rename of a file or a whole directory, replacing the target unless `noreplace`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    pub from: String,
    pub to: String,
    pub noreplace: bool,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameRes {}

/// Changes the given attributes; `None` leaves one as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub path: String,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttrRes {
    pub attr: Attr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symlink {
    pub path: String,
    pub target: String,
    pub owner: Owner,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymlinkRes {
    pub attr: Attr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadLink {
    pub path: String,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadLinkRes {
    pub target: String,
}

/// A hard link: `new` becomes another name of the node at `existing`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub existing: String,
    pub new: String,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRes {
    pub attr: Attr,
}

/// A fifo, socket or device node; the server keeps it as metadata only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mknod {
    pub path: String,
    pub kind: NodeKind,
    pub mode: u32,
    pub rdev: u64,
    pub owner: Owner,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MknodRes {
    pub attr: Attr,
}

/// Puts `size` bytes with this md5 and SHA-256 at `path` (replacing a regular file's content, keeping its node).
/// A file of at most [`MAX_INLINE_UPLOAD`](crate::MAX_INLINE_UPLOAD) bytes may come whole as the payload: the
/// server checks it against the hashes and answers `Instant` (the bytes themselves prove ownership).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadFile {
    pub path: String,
    pub size: u64,
    pub md5: String,
    /// The content's identity. Required for everything but placing content this user holds already by md5 alone
    /// (a copy of one of their own files); without it the server refuses when two of their contents share the md5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Permission bits of a file that does not exist yet.
    pub mode: u32,
    /// Modification time to record; `None` means the server's now.
    pub mtime: Option<Timespec>,
    pub owner: Owner,
}

/// The answer to `UploadFile` and to `ProveOwnership`.
// A message lives for one request; boxing the attributes would only cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadFileRes {
    /// Done: the server held the content; no byte needs to be sent.
    Instant {
        attr: Attr,
        /// The directory the file is in, read just after the change (a new name changes its times): a client
        /// takes it as fresh instead of asking for it again. Absent from older servers, or when the directory
        /// went away meanwhile.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dir: Option<Attr>,
    },
    /// Send the chunks `QueryChunk` says are missing, each with `UploadChunk`.
    Upload { upload_id: u64, chunk_size: u32, chunk_count: u32 },
    /// Prove you hold the whole content: answer [`ownership_proof`](crate::ownership_proof) of its proof tag and
    /// this nonce. Asked whether or not anyone holds the content; one challenge per user and content in a long
    /// while, so a wrong or missing answer leaves only the ordinary upload.
    Challenge { challenge_id: u64, nonce: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProveOwnership {
    pub challenge_id: u64,
    /// [`ownership_proof`](crate::ownership_proof) of the content's proof tag and the challenge's nonce.
    pub proof: String,
}

/// Which of these chunk indexes does the upload still need? (L3, step one)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryChunk {
    pub upload_id: u64,
    pub indexes: Vec<u32>,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryChunkRes {
    pub needed: Vec<u32>,
}

/// One chunk's bytes follow this header as the payload. (L3, step two)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadChunk {
    pub upload_id: u64,
    pub index: u32,
    /// CRC-32C of this chunk's bytes (`chunk_crc`), checked by the server after they land: it catches bytes
    /// damaged on the way, so that one chunk is sent again. What the content is, is settled by the file's md5
    /// and SHA-256, which the server computes itself from what it stored.
    pub crc32c: u32,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadChunkRes {
    pub index: u32,
    /// Set when this chunk completed the file: verified, synced and placed at its path.
    pub complete: Option<Attr>,
}

/// A byte range of a file; the bytes follow the response header as its payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    pub path: String,
    pub offset: u64,
    pub len: u32,
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRes {
    /// md5 of the whole file the bytes come from, so a client can key its cache by content.
    pub md5: String,
    pub size: u64,
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFsRes {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

macro_rules! requests {
    ($($name:ident => $res:ident,)*) => {
        $(impl Request for $name {
            const KIND: Kind = Kind::$name;
            type Response = $res;

            fn check_answer(&self, res: &$res, payload_len: usize) -> Result<(), BadAnswer> {
                Rules::check(self, res, payload_len).map_err(|flaw| flaw.answering(Kind::$name))
            }
        })*

        /// Any request, decoded from a frame whose kind was validated first.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum AnyRequest {
            $($name($name),)*
        }

        impl AnyRequest {
            /// Parses the JSON header of a request frame of the given (already validated) kind.
            /// The header must be UTF-8 (serde_json checks only the strings it keeps, not those of fields it skips)
            /// and one JSON object: serde would also take an array of a struct's fields in order (`["/"]` as a
            /// `Stat`), a second encoding of every request that no client sends.
            pub fn decode(kind: Kind, header: &[u8]) -> Result<AnyRequest, DecodeError> {
                let json = |e: serde_json::Error| DecodeError::Json { kind, reason: e.to_string() };
                let text = std::str::from_utf8(header)
                    .map_err(|e| DecodeError::Json { kind, reason: format!("the header is not UTF-8: {e}") })?;
                if !text.trim_ascii_start().starts_with('{') {
                    return Err(DecodeError::Json { kind, reason: "the header is not a JSON object".into() });
                }
                match kind {
                    $(Kind::$name => serde_json::from_str(text).map(AnyRequest::$name).map_err(json),)*
                    other => Err(DecodeError::NotARequest(other)),
                }
            }

            pub fn kind(&self) -> Kind {
                match self {
                    $(AnyRequest::$name(_) => Kind::$name,)*
                }
            }

            /// Encodes the head and JSON header of this request; `payload_len` payload bytes are to follow.
            pub fn encode(&self, request_id: u64, payload_len: u32) -> Vec<u8> {
                match self {
                    $(AnyRequest::$name(r) => encode_message(Kind::$name, request_id, r, payload_len),)*
                }
            }
        }

        /// Any response (named by the request it answers) or an error, decoded from a frame whose kind was validated first.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum AnyResponse {
            $($name($res),)*
            Error(WireError),
        }

        impl AnyResponse {
            /// Parses the JSON header of a response frame of the given (already validated) kind.
            pub fn decode(kind: Kind, header: &[u8]) -> Result<AnyResponse, DecodeError> {
                let json = |e: serde_json::Error| DecodeError::Json { kind, reason: e.to_string() };
                if kind == Kind::Error {
                    return serde_json::from_slice(header).map(AnyResponse::Error).map_err(json);
                }
                $(if Kind::$name.response() == Some(kind) {
                    return serde_json::from_slice(header).map(AnyResponse::$name).map_err(json);
                })*
                Err(DecodeError::NotAResponse(kind))
            }

            pub fn kind(&self) -> Kind {
                match self {
                    $(AnyResponse::$name(_) => Kind::$name.response().expect("requests have responses"),)*
                    AnyResponse::Error(_) => Kind::Error,
                }
            }

            /// Encodes the head and JSON header of this response; `payload_len` payload bytes are to follow.
            pub fn encode(&self, request_id: u64, payload_len: u32) -> Vec<u8> {
                match self {
                    $(AnyResponse::$name(r) => encode_message(self.kind(), request_id, r, payload_len),)*
                    AnyResponse::Error(e) => encode_message(Kind::Error, request_id, e, payload_len),
                }
            }
        }
    };
}

requests! {
    Hello => HelloRes,
    Login => LoginRes,
    GetDir => GetDirRes,
    Stat => StatRes,
    Mkdir => MkdirRes,
    Rmdir => RmdirRes,
    DeleteFile => DeleteFileRes,
    Rename => RenameRes,
    SetAttr => SetAttrRes,
    Symlink => SymlinkRes,
    ReadLink => ReadLinkRes,
    Link => LinkRes,
    Mknod => MknodRes,
    UploadFile => UploadFileRes,
    ProveOwnership => UploadFileRes,
    QueryChunk => QueryChunkRes,
    UploadChunk => UploadChunkRes,
    Download => DownloadRes,
    StatFs => StatFsRes,
}
