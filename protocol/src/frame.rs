//! The fixed frame head: encoding, and validation of every field before any JSON is parsed (L5).

use crate::error::DecodeError;
use crate::kind::Kind;
use crate::{MAX_REQUEST_HEADER, MAX_RESPONSE_HEADER};

pub const MAGIC: [u8; 4] = *b"NDSK";
pub const VERSION: u8 = 1;
/// Size of the encoded head in bytes.
pub const HEAD_LEN: usize = 24;

/// A validated frame head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub kind: Kind,
    pub request_id: u64,
    pub header_len: u32,
    pub payload_len: u32,
}

impl FrameHead {
    pub fn encode(&self) -> [u8; HEAD_LEN] {
        let mut out = [0u8; HEAD_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.kind as u8;
        // out[6..8]: flags, zero
        out[8..16].copy_from_slice(&self.request_id.to_be_bytes());
        out[16..20].copy_from_slice(&self.header_len.to_be_bytes());
        out[20..24].copy_from_slice(&self.payload_len.to_be_bytes());
        out
    }

    /// Decodes and validates a head: magic, version, kind, flags and both lengths.
    pub fn decode(bytes: &[u8; HEAD_LEN]) -> Result<FrameHead, DecodeError> {
        let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        if bytes[4] != VERSION {
            return Err(DecodeError::BadVersion(bytes[4]));
        }
        let kind = Kind::from_u8(bytes[5]).ok_or(DecodeError::UnknownKind(bytes[5]))?;
        let flags = u16::from_be_bytes([bytes[6], bytes[7]]);
        if flags != 0 {
            return Err(DecodeError::BadFlags(flags));
        }
        let request_id = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let header_len = u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes"));
        let payload_len = u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes"));

        let max_header = if kind.is_request() { MAX_REQUEST_HEADER } else { MAX_RESPONSE_HEADER };
        if header_len == 0 || header_len > max_header {
            return Err(DecodeError::HeaderLength { len: header_len, max: max_header });
        }
        let max_payload = kind.max_payload();
        if payload_len > max_payload {
            return Err(DecodeError::PayloadLength { kind, len: payload_len, max: max_payload });
        }
        Ok(FrameHead { kind, request_id, header_len, payload_len })
    }

    /// Decodes a head that must belong to a request.
    pub fn decode_request(bytes: &[u8; HEAD_LEN]) -> Result<FrameHead, DecodeError> {
        let head = FrameHead::decode(bytes)?;
        if !head.kind.is_request() {
            return Err(DecodeError::NotARequest(head.kind));
        }
        Ok(head)
    }

    /// Decodes a head that must belong to a response.
    pub fn decode_response(bytes: &[u8; HEAD_LEN]) -> Result<FrameHead, DecodeError> {
        let head = FrameHead::decode(bytes)?;
        if head.kind.is_request() {
            return Err(DecodeError::NotAResponse(head.kind));
        }
        Ok(head)
    }
}

/// Encodes the head and JSON header of a message; the caller sends `payload_len` payload bytes after it.
pub fn encode_message<T: serde::Serialize>(kind: Kind, request_id: u64, message: &T, payload_len: u32) -> Vec<u8> {
    let json = serde_json::to_vec(message).expect("messages always serialize");
    let head = FrameHead { kind, request_id, header_len: json.len() as u32, payload_len };
    let mut out = Vec::with_capacity(HEAD_LEN + json.len());
    out.extend_from_slice(&head.encode());
    out.extend_from_slice(&json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MAX_INLINE_UPLOAD, MAX_PAYLOAD};

    fn head_bytes(kind: u8, header_len: u32, payload_len: u32) -> [u8; HEAD_LEN] {
        let mut b = [0u8; HEAD_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = kind;
        b[8..16].copy_from_slice(&7u64.to_be_bytes());
        b[16..20].copy_from_slice(&header_len.to_be_bytes());
        b[20..24].copy_from_slice(&payload_len.to_be_bytes());
        b
    }

    #[test]
    fn malformed_heads_are_rejected_before_json() {
        let good = head_bytes(Kind::Stat as u8, 10, 0);
        assert!(FrameHead::decode(&good).is_ok());

        let mut bad_magic = good;
        bad_magic[0] = b'X';
        let mut bad_version = good;
        bad_version[4] = 9;
        let mut bad_flags = good;
        bad_flags[7] = 1;

        type Check = fn(&DecodeError) -> bool;
        let cases: Vec<([u8; HEAD_LEN], Check)> = vec![
            (bad_magic, |e| matches!(e, DecodeError::BadMagic(_))),
            (bad_version, |e| matches!(e, DecodeError::BadVersion(9))),
            (bad_flags, |e| matches!(e, DecodeError::BadFlags(1))),
            (head_bytes(0x00, 10, 0), |e| matches!(e, DecodeError::UnknownKind(0))),
            (head_bytes(0x14, 10, 0), |e| matches!(e, DecodeError::UnknownKind(0x14))),
            (head_bytes(0x7F, 10, 0), |e| matches!(e, DecodeError::UnknownKind(0x7F))),
            (head_bytes(Kind::Stat as u8, 0, 0), |e| matches!(e, DecodeError::HeaderLength { .. })),
            (head_bytes(Kind::Stat as u8, MAX_REQUEST_HEADER + 1, 0), |e| {
                matches!(e, DecodeError::HeaderLength { .. })
            }),
            (head_bytes(Kind::Stat as u8, u32::MAX, 0), |e| matches!(e, DecodeError::HeaderLength { .. })),
            (head_bytes(Kind::Stat as u8, 10, 1), |e| matches!(e, DecodeError::PayloadLength { .. })),
            (head_bytes(Kind::UploadChunk as u8, 10, MAX_PAYLOAD + 1), |e| {
                matches!(e, DecodeError::PayloadLength { .. })
            }),
            (head_bytes(Kind::UploadChunk as u8, 10, u32::MAX), |e| matches!(e, DecodeError::PayloadLength { .. })),
            (head_bytes(Kind::Download as u8, 10, 5), |e| matches!(e, DecodeError::PayloadLength { .. })),
            (head_bytes(Kind::GetDirRes as u8, MAX_RESPONSE_HEADER + 1, 0), |e| {
                matches!(e, DecodeError::HeaderLength { .. })
            }),
        ];
        for (i, (bytes, check)) in cases.iter().enumerate() {
            let err = FrameHead::decode(bytes).expect_err(&format!("case {i} must fail"));
            assert!(check(&err), "case {i}: unexpected error {err:?}");
        }
    }

    #[test]
    fn direction_is_checked() {
        let res = head_bytes(Kind::StatRes as u8, 10, 0);
        assert!(matches!(FrameHead::decode_request(&res), Err(DecodeError::NotARequest(_))));
        let req = head_bytes(Kind::Stat as u8, 10, 0);
        assert!(matches!(FrameHead::decode_response(&req), Err(DecodeError::NotAResponse(_))));
    }

    #[test]
    fn payload_limits_follow_the_kind() {
        assert!(FrameHead::decode(&head_bytes(Kind::UploadChunk as u8, 10, MAX_PAYLOAD)).is_ok());
        assert!(FrameHead::decode(&head_bytes(Kind::DownloadRes as u8, 10, MAX_PAYLOAD)).is_ok());
        assert!(FrameHead::decode(&head_bytes(Kind::GetDirRes as u8, MAX_RESPONSE_HEADER, 0)).is_ok());
        assert!(FrameHead::decode(&head_bytes(Kind::UploadFile as u8, 10, MAX_INLINE_UPLOAD)).is_ok());
        assert!(FrameHead::decode(&head_bytes(Kind::UploadFile as u8, 10, MAX_INLINE_UPLOAD + 1)).is_err());
        assert!(FrameHead::decode(&head_bytes(Kind::Stat as u8, 10, 1)).is_err());
    }

    /// A path of exactly `MAX_PATH` bytes whose every byte but the slashes JSON writes as six (`\u0001`).
    fn worst_path() -> String {
        let name = "\u{1}".repeat(crate::MAX_NAME);
        let path = format!("/{name}").repeat(crate::MAX_PATH / (crate::MAX_NAME + 1));
        assert_eq!(path.len(), crate::MAX_PATH);
        assert!(crate::path::components(&path).is_ok(), "a legal path");
        path
    }

    #[test]
    fn the_largest_legal_requests_fit_the_request_header() {
        use crate::message::*;
        let (path, other) = (worst_path(), worst_path());
        let owner = Owner { uid: u32::MAX, gid: u32::MAX };
        let t = Some(crate::Timespec { sec: i64::MIN, nsec: 999_999_999 });
        let requests = [
            AnyRequest::Rename(Rename { from: path.clone(), to: other.clone(), noreplace: true }),
            AnyRequest::Link(Link { existing: path.clone(), new: other.clone() }),
            AnyRequest::Symlink(Symlink { path: path.clone(), target: other.clone(), owner }),
            AnyRequest::GetDir(GetDir {
                path: path.clone(),
                after: Some("\u{1}".repeat(crate::MAX_NAME)),
                limit: u32::MAX,
            }),
            AnyRequest::UploadFile(UploadFile {
                path: path.clone(),
                size: u64::MAX,
                md5: "f".repeat(32),
                sha256: Some("f".repeat(64)),
                mode: u32::MAX,
                mtime: t,
                owner,
            }),
        ];
        let mut largest = 0;
        for request in requests {
            let bytes = request.encode(u64::MAX, 0);
            let head = FrameHead::decode_request(&bytes[..HEAD_LEN].try_into().unwrap())
                .unwrap_or_else(|e| panic!("{:?}: {e}", request.kind()));
            assert_eq!(head.header_len as usize, bytes.len() - HEAD_LEN);
            assert_eq!(AnyRequest::decode(head.kind, &bytes[HEAD_LEN..]).unwrap(), request);
            largest = largest.max(head.header_len);
        }
        // Two paths of six bytes a byte, nearly all of the limit: the reasoning in MAX_REQUEST_HEADER holds.
        assert!(largest > 12 * crate::MAX_PATH as u32 - 12 * 128, "largest header {largest}");
        assert!(largest <= MAX_REQUEST_HEADER, "largest header {largest}");
    }
}
