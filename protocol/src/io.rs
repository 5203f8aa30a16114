//! Blocking reads and writes of whole frames over any `Read`/`Write` (the client's side; the server frames on its own buffer).

use std::io::{self, Read, Write};

use serde::Serialize;

use crate::error::DecodeError;
use crate::frame::{encode_message, FrameHead, HEAD_LEN};
use crate::kind::Kind;

/// A whole frame: validated head, raw JSON header, payload.
#[derive(Debug)]
pub struct Frame {
    pub head: FrameHead,
    pub header: Vec<u8>,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

/// Which side's frames a reader expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// Reads one frame, validating the head before reading (let alone parsing) the header.
pub fn read_frame<R: Read>(reader: &mut R, direction: Direction) -> Result<Frame, FrameError> {
    let mut head_bytes = [0u8; HEAD_LEN];
    reader.read_exact(&mut head_bytes)?;
    let head = match direction {
        Direction::Request => FrameHead::decode_request(&head_bytes)?,
        Direction::Response => FrameHead::decode_response(&head_bytes)?,
    };
    let mut header = vec![0u8; head.header_len as usize];
    reader.read_exact(&mut header)?;
    let mut payload = vec![0u8; head.payload_len as usize];
    reader.read_exact(&mut payload)?;
    Ok(Frame { head, header, payload })
}

/// Writes one frame: head, JSON of `message`, then `payload`.
pub fn write_frame<W: Write, T: Serialize>(
    writer: &mut W,
    kind: Kind,
    request_id: u64,
    message: &T,
    payload: &[u8],
) -> io::Result<()> {
    let payload_len = u32::try_from(payload.len()).map_err(|_| io::Error::other("payload over 4 GiB"))?;
    let head_and_header = encode_message(kind, request_id, message, payload_len);
    writer.write_all(&head_and_header)?;
    writer.write_all(payload)?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AnyRequest, Stat, UploadChunk};
    use proptest::prelude::*;

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, Kind::Stat, 1, &Stat { path: "/a".into() }, &[]).unwrap();
        for cut in 0..bytes.len() {
            let err = read_frame(&mut &bytes[..cut], Direction::Request).unwrap_err();
            assert!(
                matches!(err, FrameError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof),
                "cut {cut}: {err}"
            );
        }
        assert!(read_frame(&mut &bytes[..], Direction::Request).is_ok());
    }

    #[test]
    fn invalid_json_headers_are_decode_errors() {
        let bad: &[&[u8]] = &[b"{", b"null", b"[]", b"{\"path\":1}", b"\xff\xfe", b"{\"path\":\"/a\"", b"{}"];
        for header in bad {
            let err = AnyRequest::decode(Kind::Stat, header).unwrap_err();
            assert!(matches!(err, DecodeError::Json { .. }), "{header:?}");
        }
        assert!(AnyRequest::decode(Kind::StatRes, b"{}").is_err());
    }

    #[test]
    fn headers_must_be_objects_not_field_arrays() {
        let cases: &[(Kind, &[u8])] = &[
            (Kind::Stat, br#"["/"]"#),
            (Kind::StatFs, b"[]"),
            (Kind::Download, br#"["/f",0,100]"#),
            (Kind::Login, br#"["alice","pw"]"#),
        ];
        for (kind, header) in cases {
            let err = AnyRequest::decode(*kind, header).unwrap_err();
            assert!(matches!(err, DecodeError::Json { .. }), "{kind:?} {header:?}");
        }
        assert_eq!(
            AnyRequest::decode(Kind::Stat, br#" {"path":"/"}"#).unwrap(),
            AnyRequest::Stat(Stat { path: "/".into() })
        );
        assert!(AnyRequest::decode(Kind::StatFs, b"{}").is_ok());
    }

    #[test]
    fn headers_must_be_utf8_even_in_ignored_fields() {
        // StatFs has no fields: serde_json skips "path" without checking its bytes.
        for header in [b"{\"path\":\"\xc0\xae\xc0\xae\"}".as_slice(), b"{\"x\":\"\xff\"}", b"{} \xff"] {
            let err = AnyRequest::decode(Kind::StatFs, header).unwrap_err();
            assert!(matches!(err, DecodeError::Json { .. }), "{header:?}");
        }
    }

    proptest! {
        #[test]
        fn head_round_trips(kind_index in 0usize..Kind::ALL.len(), id: u64, header_len in 1u32..=crate::MAX_REQUEST_HEADER, payload in 0u32..=crate::MAX_PAYLOAD) {
            let kind = Kind::ALL[kind_index];
            let payload_len = payload.min(kind.max_payload());
            let head = FrameHead { kind, request_id: id, header_len, payload_len };
            prop_assert_eq!(FrameHead::decode(&head.encode()), Ok(head));
        }

        #[test]
        fn random_heads_never_panic(bytes in proptest::array::uniform24(any::<u8>())) {
            let _ = FrameHead::decode(&bytes);
        }

        #[test]
        fn messages_round_trip(path in "/[a-zA-Z0-9 ._\u{e9}\u{4e2d}-]{1,60}", id: u64, index: u32, payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let stat = Stat { path: path.clone() };
            let mut bytes = Vec::new();
            write_frame(&mut bytes, Kind::Stat, id, &stat, &[]).unwrap();
            let frame = read_frame(&mut &bytes[..], Direction::Request).unwrap();
            prop_assert_eq!(frame.head.request_id, id);
            prop_assert_eq!(AnyRequest::decode(frame.head.kind, &frame.header).unwrap(), AnyRequest::Stat(stat));

            let chunk = UploadChunk { upload_id: id, index, crc32c: crate::chunk_crc(&payload) };
            let mut bytes = Vec::new();
            write_frame(&mut bytes, Kind::UploadChunk, id, &chunk, &payload).unwrap();
            let frame = read_frame(&mut &bytes[..], Direction::Request).unwrap();
            prop_assert_eq!(&frame.payload, &payload);
            prop_assert_eq!(AnyRequest::decode(frame.head.kind, &frame.header).unwrap(), AnyRequest::UploadChunk(chunk));
        }

        #[test]
        fn random_headers_never_panic(kind_index in 0usize..Kind::ALL.len(), header in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = AnyRequest::decode(Kind::ALL[kind_index], &header);
        }
    }
}
