//! Arbitrary bytes as everything a client sends on one connection, served by the real connection loop over loopback
//! TCP in a fresh copy of a prepared data directory, which must stay consistent.
//! The body is `netdisk_server::fuzz::session`, which `server/tests/fuzz_corpus.rs` replays on stable.
//!
//! Inputs stay raw wire bytes; the mutator only knows where frames are: most mutations change one frame's JSON
//! header or payload (and write its new lengths into its head), or drop, repeat or swap whole frames, so a
//! mutated session still gets past its first frames. The rest are libFuzzer's own byte mutations.
#![no_main]

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use netdisk_protocol::{FrameHead, HEAD_LEN};

fuzz_target!(|data: &[u8]| netdisk_server::fuzz::session(data));

#[derive(Clone)]
struct Frame {
    head: FrameHead,
    header: Vec<u8>,
    payload: Vec<u8>,
}

/// The whole request frames at the start of `data`, and the bytes after them.
fn split(mut data: &[u8]) -> (Vec<Frame>, Vec<u8>) {
    let mut frames = Vec::new();
    while data.len() >= HEAD_LEN {
        let Ok(head) = FrameHead::decode_request(data[..HEAD_LEN].try_into().expect("HEAD_LEN bytes")) else {
            break;
        };
        let header_end = HEAD_LEN + head.header_len as usize;
        let end = header_end + head.payload_len as usize;
        if data.len() < end {
            break;
        }
        frames.push(Frame {
            head,
            header: data[HEAD_LEN..header_end].to_vec(),
            payload: data[header_end..end].to_vec(),
        });
        data = &data[end..];
    }
    (frames, data.to_vec())
}

fn join(frames: &[Frame], tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let head = FrameHead { header_len: f.header.len() as u32, payload_len: f.payload.len() as u32, ..f.head };
        out.extend_from_slice(&head.encode());
        out.extend_from_slice(&f.header);
        out.extend_from_slice(&f.payload);
    }
    out.extend_from_slice(tail);
    out
}

/// libFuzzer's mutation of one part, which may grow up to `max` bytes.
fn mutate_part(bytes: &mut Vec<u8>, max: usize) {
    let size = bytes.len();
    bytes.resize(size.max(max), 0);
    let new_size = fuzzer_mutate(bytes, size, max.max(size));
    bytes.truncate(new_size);
}

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let (mut frames, tail) = split(&data[..size]);
    let mut state = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    if frames.is_empty() || next(5) == 0 {
        return fuzzer_mutate(data, size, max_size);
    }
    let i = next(frames.len());
    match next(8) {
        0..=3 => mutate_part(&mut frames[i].header, 1024),
        4 => mutate_part(&mut frames[i].payload, 8192),
        5 => {
            let copy = frames[i].clone();
            let at = next(frames.len() + 1);
            frames.insert(at, copy);
        }
        6 => {
            frames.remove(i);
        }
        _ => {
            let j = next(frames.len());
            frames.swap(i, j);
        }
    }
    let out = join(&frames, &tail);
    if out.len() > max_size {
        return fuzzer_mutate(data, size, max_size);
    }
    data[..out.len()].copy_from_slice(&out);
    out.len()
});
