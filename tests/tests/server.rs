//! End-to-end scenarios against real `netdisk-server` processes over loopback TCP.
//! Every test starts its own server (own port, own data directory) and bounds every wait.
//! The server binary must be built first: `cargo build --workspace --bins && cargo test --workspace`.

use std::net::TcpStream;

use netdisk_e2e::netdisk_protocol::client::Client;
use netdisk_e2e::{Server, ServerOpts};

#[path = "server/admin.rs"]
mod admin;
#[path = "server/auth.rs"]
mod auth;
#[path = "server/dedup.rs"]
mod dedup;
#[path = "server/depth.rs"]
mod depth;
#[path = "server/errno.rs"]
mod errno;
#[path = "server/frames.rs"]
mod frames;
#[path = "server/fsck.rs"]
mod fsck;
#[path = "server/hostile.rs"]
mod hostile;
#[path = "server/late.rs"]
mod late;
#[path = "server/listing.rs"]
mod listing;
#[path = "server/process.rs"]
mod process;
#[path = "server/quota.rs"]
mod quota;
#[path = "server/resize.rs"]
mod resize;
#[path = "server/security.rs"]
mod security;
#[path = "server/sessions.rs"]
mod sessions;
#[path = "server/tree.rs"]
mod tree;
#[path = "server/upload.rs"]
mod upload;

pub const ALICE: &str = "alice";
pub const ALICE_PW: &str = "alice-secret-pw";
pub const BOB: &str = "bob";
pub const BOB_PW: &str = "bob-other-pw";
pub const CAROL: &str = "carol";
pub const CAROL_PW: &str = "carol-third-pw";

/// A server with `opts` and the user alice.
pub fn server_with_alice(opts: ServerOpts) -> Server {
    let server = Server::start(opts);
    server.add_user(ALICE, ALICE_PW);
    server
}

/// A server with `opts` and the users alice and bob.
pub fn server_with_alice_and_bob(opts: ServerOpts) -> Server {
    let server = server_with_alice(opts);
    server.add_user(BOB, BOB_PW);
    server
}

pub fn alice(server: &Server) -> Client<TcpStream> {
    server.login(ALICE, ALICE_PW)
}

pub fn bob(server: &Server) -> Client<TcpStream> {
    server.login(BOB, BOB_PW)
}

/// Asserts two byte strings are equal without printing megabytes when they are not.
#[track_caller]
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first_diff = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    panic!("{what}: {} bytes, expected {} bytes; first difference at byte {first_diff}", got.len(), want.len());
}
