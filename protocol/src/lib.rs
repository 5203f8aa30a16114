//! The netdisk wire protocol: one framing for every request and response, shared by the server and the mount.
//! This crate does no I/O of its own beyond `std::io::{Read, Write}`: no sockets, no tokio, no nix.
//!
//! # Wire format
//!
//! Every message is a frame: a fixed 24-byte head, a JSON header, then raw payload bytes.
//!
//! ```text
//!  0        4     5     6         8                  16           20           24
//!  +--------+-----+-----+---------+------------------+------------+------------+
//!  | magic  | ver | kind| flags   |    request id    | header len | payload len|
//!  | "NDSK" |  1  |  u8 | u16 = 0 |       u64        |    u32     |    u32     |
//!  +--------+-----+-----+---------+------------------+------------+------------+
//!  | header: `header len` bytes of UTF-8 JSON (one struct of `message`)        |
//!  +---------------------------------------------------------------------------+
//!  | payload: `payload len` raw bytes (chunk, small file or downloaded bytes)  |
//!  +---------------------------------------------------------------------------+
//! ```
//!
//! All integers are big-endian. A response carries the request id of the request it answers,
//! so a client may pipeline requests on one connection and match the replies.
//! Response kinds are the request kind with the high bit set; `0xFF` is the error response.
//!
//! # Validation order (lesson L5)
//!
//! [`FrameHead::decode`] checks, before a single byte of JSON is looked at: the magic, the version,
//! that the kind is known, that flags are zero, that the header length is within [`MAX_REQUEST_HEADER`]
//! (requests) or [`MAX_RESPONSE_HEADER`] (responses), and that the payload length is zero for every kind
//! that carries no payload, at most [`MAX_PAYLOAD`] for `UploadChunk` and the `Download` reply, and at most
//! [`MAX_INLINE_UPLOAD`] for `UploadFile` (a small file sent whole).
//! Then the header must be UTF-8 and one JSON object (not, say, an array of the struct's fields).
//! A frame that fails any check means the peer is hostile or broken: the receiver closes the connection.
//!
//! # Limits
//!
//! | limit | value |
//! |---|---|
//! | request header | 388 KiB (`MAX_REQUEST_HEADER`: two paths of `MAX_PATH` bytes, every byte escaped, fit) |
//! | response header | 1 MiB |
//! | payload | 16 MiB (`UploadFile`: 64 KiB) |
//! | path | 32 KiB from the user's root (`MAX_PATH`), at most 2048 names (`MAX_DEPTH`) of at most 255 bytes (`MAX_NAME`) |
//! | directory depth | 2048 below the user's root (`MAX_DEPTH`; a rename of a subtree included) |
//! | chunk indexes in one `QueryChunk` | 4096 |
//! | entries in one `GetDir` page | 512 |
//! | file size | 16 TiB (`MAX_FILE_SIZE`, as ext4 with 4 KiB blocks) |

pub mod answer;
pub mod client;
pub mod content;
pub mod error;
pub mod frame;
pub mod fuzz;
pub mod io;
pub mod kind;
pub mod login;
pub mod message;
pub mod path;
pub mod upload;

pub use answer::BadAnswer;
pub use content::{constant_time_eq, is_md5_hex, is_sha256_hex, ownership_proof, ContentHasher, ContentHashes};
pub use error::{DecodeError, ErrorCode, WireError};
pub use frame::{FrameHead, HEAD_LEN, MAGIC, VERSION};
pub use kind::Kind;
pub use message::*;

/// Largest JSON header of a request frame. The largest legal request names two paths (`Rename`, `Link`; a
/// `Symlink`'s path and target) of at most [`MAX_PATH`] bytes each. JSON may write a byte as six (a control byte
/// becomes `\u00XX`; anything else takes at most two, `\"` or `\n`), so each path takes at most `6 * MAX_PATH`
/// bytes; every other field (names of fields, numbers, an md5 and a SHA-256 in hex) takes well under 4 KiB in all.
/// So every request a client may legally send fits, and the server's read buffer (`server/src/conn.rs`) is sized
/// from this.
pub const MAX_REQUEST_HEADER: u32 = (2 * 6 * MAX_PATH + 4096) as u32;
/// Largest JSON header of a response frame (a page of directory entries).
pub const MAX_RESPONSE_HEADER: u32 = 1024 * 1024;
/// Largest payload of any frame: one upload chunk or one download range.
pub const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Largest file sent inline: as the payload of its `UploadFile`, stored at once, in one round trip. (Bigger
/// files are named by md5 first, so that content the server holds never travels.)
pub const MAX_INLINE_UPLOAD: u32 = 64 * 1024;
/// Largest file the server stores (16 TiB, ext4's limit with 4 KiB blocks). Every size a client declares (an
/// upload's, a truncate's) is checked against it: beyond it the answer is `FileTooBig` (EFBIG).
pub const MAX_FILE_SIZE: u64 = 16 << 40;
/// Longest path, in bytes, from the user's root (which the mount puts before every path it sends). Far past a
/// local `PATH_MAX` (4096): a program's own path may be 4095 bytes relative to a directory that lies deep in
/// the mount, and the mount's path to that directory comes on top of it.
pub const MAX_PATH: usize = 32 * 1024;
/// Deepest a directory may lie below its user's root (the root is at depth 0, `/a` at 1), and so the most names a
/// path may have: every walk of a path, and of the tree above a directory, takes at most this many steps. A
/// rename, which moves a whole subtree, is refused with `NameTooLong` when it would nest a directory deeper than
/// this (the tree could otherwise grow deeper than any path reaches, and every walk of it without bound).
/// An explicit number, not derived from [`MAX_PATH`]: the 2048 that a 4096-byte path of one-byte names reached.
pub const MAX_DEPTH: usize = 2048;
/// Longest single name (path component), in bytes.
pub const MAX_NAME: usize = 255;
/// Most chunk indexes a `QueryChunk` may ask about at once.
pub const MAX_QUERY_INDEXES: usize = 4096;
/// Most entries the server returns in one `GetDir` page.
pub const MAX_DIR_PAGE: u32 = 512;
/// Smallest and largest chunk size a server may choose.
pub const MIN_CHUNK_SIZE: u32 = 4096;
pub const MAX_CHUNK_SIZE: u32 = MAX_PAYLOAD;

/// Bytes for people: `1023 B`, `1.5 GiB` (powers of 1024).
pub fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Lowercase hex md5 of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data))
}

/// The checksum an uploaded chunk travels with: CRC-32C (hardware-accelerated, many GB/s), so that checking
/// a chunk costs next to nothing next to the one md5 pass each side makes over the file.
pub fn chunk_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// `chunk_crc` of bytes that come in pieces: start from 0, feed each piece in order.
pub fn chunk_crc_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}
