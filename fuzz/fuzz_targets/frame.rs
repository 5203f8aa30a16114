//! Arbitrary bytes as a stream of frames: heads, lengths, JSON headers of requests and responses, paths.
//! The body is `netdisk_protocol::fuzz::frame`, which `protocol/tests/fuzz_corpus.rs` replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netdisk_protocol::fuzz::frame(data));
