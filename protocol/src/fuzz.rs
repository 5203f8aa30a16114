//! The body of the `frame` fuzz target (`fuzz/fuzz_targets/frame.rs`), shared with the corpus replay test
//! (`protocol/tests/fuzz_corpus.rs`) so that both run exactly this code.
//! It panics when the decoder breaks one of its promises (that is its purpose); nothing else calls it.

use crate::error::DecodeError;
use crate::frame::{FrameHead, HEAD_LEN};
use crate::io::{read_frame, Direction};
use crate::kind::Kind;
use crate::message::{AnyRequest, AnyResponse};
use crate::path::{components, join, PathError};
use crate::{MAX_DEPTH, MAX_NAME, MAX_PATH, MAX_REQUEST_HEADER, MAX_RESPONSE_HEADER};

/// Reads `data` as a stream of frames, once as a server reads requests and once as a client reads responses, and
/// checks every frame: a head decodes the same way whichever direction asks, a valid head re-encodes to its bytes,
/// a header that decodes encodes to a frame that decodes to the same value, and every path of a decoded request
/// obeys the path rules. The bytes as text go through the path rules too.
pub fn frame(data: &[u8]) {
    for direction in [Direction::Request, Direction::Response] {
        let mut rest = data;
        while rest.len() >= HEAD_LEN {
            let head_bytes: [u8; HEAD_LEN] = rest[..HEAD_LEN].try_into().expect("HEAD_LEN bytes");
            check_head(&head_bytes);
            let available = rest.len();
            let Ok(frame) = read_frame(&mut rest, direction) else {
                // A broken head closes the connection; a short header or payload is all the stream holds.
                break;
            };
            assert_eq!(frame.head.encode(), head_bytes, "a valid head re-encodes to its own bytes");
            assert_eq!(available - rest.len(), HEAD_LEN + frame.header.len() + frame.payload.len());
            match direction {
                Direction::Request => check_request(frame.head, &frame.header),
                Direction::Response => check_response(frame.head, &frame.header),
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_path(text);
    }
}

/// The three decoders agree, and what they accept is within the limits.
fn check_head(bytes: &[u8; HEAD_LEN]) {
    let any = FrameHead::decode(bytes);
    let request = FrameHead::decode_request(bytes);
    let response = FrameHead::decode_response(bytes);
    let head = match any {
        Ok(head) => head,
        Err(e) => {
            assert_eq!(request.as_ref().err(), Some(&e));
            assert_eq!(response.as_ref().err(), Some(&e));
            return;
        }
    };
    assert_eq!(head.encode(), *bytes, "a valid head re-encodes to its own bytes");
    assert_eq!(request.is_ok(), head.kind.is_request());
    assert_eq!(response.is_ok(), !head.kind.is_request());
    assert_eq!(Kind::from_u8(head.kind as u8), Some(head.kind));
    let max_header = if head.kind.is_request() { MAX_REQUEST_HEADER } else { MAX_RESPONSE_HEADER };
    assert!((1..=max_header).contains(&head.header_len), "header length {} accepted", head.header_len);
    let max_payload = head.kind.max_payload();
    assert!(head.payload_len <= max_payload, "payload length {} accepted for {:?}", head.payload_len, head.kind);
}

fn check_request(head: FrameHead, header: &[u8]) {
    let Ok(request) = AnyRequest::decode(head.kind, header) else {
        return;
    };
    assert_eq!(request.kind(), head.kind);
    for path in request_paths(&request) {
        check_path(path);
    }
    let bytes = request.encode(head.request_id, head.payload_len);
    let head_bytes: [u8; HEAD_LEN] = bytes[..HEAD_LEN].try_into().expect("HEAD_LEN bytes");
    let json = &bytes[HEAD_LEN..];
    match FrameHead::decode_request(&head_bytes) {
        Ok(again) => {
            assert_eq!(again, FrameHead { header_len: json.len() as u32, ..head });
            let decoded = AnyRequest::decode(again.kind, json).expect("an encoded request decodes");
            assert_eq!(decoded, request, "a request survives encoding and decoding");
        }
        // The encoding may be longer than what was received (absent options are written as `null`).
        Err(DecodeError::HeaderLength { .. }) => assert!(json.len() > MAX_REQUEST_HEADER as usize),
        Err(e) => panic!("an encoded request has a broken head: {e}"),
    }
}

fn check_response(head: FrameHead, header: &[u8]) {
    let Ok(response) = AnyResponse::decode(head.kind, header) else {
        return;
    };
    assert_eq!(response.kind(), head.kind);
    let bytes = response.encode(head.request_id, head.payload_len);
    let head_bytes: [u8; HEAD_LEN] = bytes[..HEAD_LEN].try_into().expect("HEAD_LEN bytes");
    let json = &bytes[HEAD_LEN..];
    match FrameHead::decode_response(&head_bytes) {
        Ok(again) => {
            assert_eq!(again, FrameHead { header_len: json.len() as u32, ..head });
            let decoded = AnyResponse::decode(again.kind, json).expect("an encoded response decodes");
            assert_eq!(decoded, response, "a response survives encoding and decoding");
        }
        Err(DecodeError::HeaderLength { .. }) => assert!(json.len() > MAX_RESPONSE_HEADER as usize),
        Err(e) => panic!("an encoded response has a broken head: {e}"),
    }
}

/// The paths a request names (a symlink's target is text, not a path of the tree).
fn request_paths(request: &AnyRequest) -> Vec<&str> {
    match request {
        AnyRequest::Hello(_)
        | AnyRequest::Login(_)
        | AnyRequest::ProveOwnership(_)
        | AnyRequest::QueryChunk(_)
        | AnyRequest::UploadChunk(_)
        | AnyRequest::StatFs(_) => Vec::new(),
        AnyRequest::GetDir(r) => vec![&r.path],
        AnyRequest::Stat(r) => vec![&r.path],
        AnyRequest::Mkdir(r) => vec![&r.path],
        AnyRequest::Rmdir(r) => vec![&r.path],
        AnyRequest::DeleteFile(r) => vec![&r.path],
        AnyRequest::Rename(r) => vec![&r.from, &r.to],
        AnyRequest::SetAttr(r) => vec![&r.path],
        AnyRequest::Symlink(r) => vec![&r.path],
        AnyRequest::ReadLink(r) => vec![&r.path],
        AnyRequest::Link(r) => vec![&r.existing, &r.new],
        AnyRequest::Mknod(r) => vec![&r.path],
        AnyRequest::UploadFile(r) => vec![&r.path],
        AnyRequest::Download(r) => vec![&r.path],
    }
}

/// An accepted path is within the limits and made of proper names that rebuild it; a refused one breaks the rule
/// its error names.
fn check_path(path: &str) {
    let names = match components(path) {
        Ok(names) => names,
        Err(e) => {
            let rest = path.strip_prefix('/').unwrap_or(path);
            let mut names = rest.strip_suffix('/').unwrap_or(rest).split('/');
            let broken = match e {
                PathError::TooLong => path.len() > MAX_PATH,
                PathError::NotAbsolute => !path.starts_with('/'),
                PathError::Nul => path.contains('\0'),
                PathError::BadComponent => names.any(|n| n.is_empty() || n == "." || n == ".."),
                PathError::NameTooLong => names.any(|n| n.len() > MAX_NAME),
                // A path is split at '/': none of its names can hold one.
                PathError::Slash => false,
                PathError::TooDeep => names.count() > MAX_DEPTH,
            };
            assert!(broken, "{path:?} refused with {e:?}");
            return;
        }
    };
    assert!(path.len() <= MAX_PATH && path.starts_with('/') && !path.contains('\0'), "{path:?} accepted");
    assert!(names.len() <= MAX_DEPTH, "{path:?} accepted with {} names", names.len());
    for name in &names {
        assert!(!name.is_empty() && *name != "." && *name != "..", "{path:?} gave the name {name:?}");
        assert!(!name.contains('/') && name.len() <= MAX_NAME, "{path:?} gave the name {name:?}");
    }
    let rebuilt = names.iter().fold("/".to_string(), |dir, name| join(&dir, name));
    assert!(path == rebuilt || path == format!("{rebuilt}/"), "{path:?} rebuilt as {rebuilt:?}");
    assert_eq!(components(&rebuilt).as_deref(), Ok(&names[..]), "{rebuilt:?} splits as {path:?} did");
}
