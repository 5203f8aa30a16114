//! Logging in: right and wrong passwords, unknown users, and every request before a login.

use netdisk_e2e::netdisk_protocol::client::ClientError;
use netdisk_e2e::netdisk_protocol::{
    md5_hex, DeleteFile, Download, ErrorCode, GetDir, Link, Mkdir, Mknod, NodeKind, Owner, ProveOwnership, QueryChunk,
    ReadLink, Rename, Rmdir, SetAttr, Stat, StatFs, Symlink, UploadChunk,
};
use netdisk_e2e::{code_of, expect_code, upload_request, ServerOpts};

use crate::{server_with_alice, ALICE, ALICE_PW};

fn message_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(ClientError::Server(e)) => e.message,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[test]
fn login_with_the_right_password_works() {
    let server = server_with_alice(ServerOpts::default());
    let mut client = server.connect();
    let res = client.login(ALICE, ALICE_PW).expect("login with the right password");
    assert_eq!(res.root.kind, NodeKind::Dir, "the root is a directory");
    assert_eq!(res.chunk_size, 4 * 1024 * 1024, "the default chunk size");
    // The session works after it.
    assert_eq!(client.stat("/").expect("stat / after login").kind, NodeKind::Dir);
    assert!(client.names("/").expect("list /").is_empty(), "a new user's tree is empty");

    // The chunk size follows --chunk-size.
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let res = server.connect().login(ALICE, ALICE_PW).expect("login");
    assert_eq!(res.chunk_size, 65536);
}

#[test]
fn wrong_password_and_unknown_user_fail_alike() {
    let server = server_with_alice(ServerOpts::default());

    let wrong = server.connect().login(ALICE, "not-the-password");
    let wrong_msg = message_of(server.connect().login(ALICE, "not-the-password"));
    expect_code(wrong, ErrorCode::AuthFailed, "wrong password");

    let unknown = server.connect().login("mallory", ALICE_PW);
    let unknown_msg = message_of(server.connect().login("mallory", ALICE_PW));
    expect_code(unknown, ErrorCode::AuthFailed, "unknown user");
    assert_eq!(wrong_msg, unknown_msg, "a wrong password and an unknown user must be indistinguishable");

    // Empty credentials are just wrong credentials.
    expect_code(server.connect().login("", ""), ErrorCode::AuthFailed, "empty user and password");
    expect_code(server.connect().login(ALICE, ""), ErrorCode::AuthFailed, "empty password");

    // A failed login leaves the connection usable: the right password then works on it.
    let mut client = server.connect();
    expect_code(client.login(ALICE, "nope"), ErrorCode::AuthFailed, "wrong password");
    client.login(ALICE, ALICE_PW).expect("the right password after a wrong one, same connection");
    client.stat("/").expect("stat after logging in");

    // A wrong password does not lock the user out of other connections either.
    server.login(ALICE, ALICE_PW).stat("/").expect("a fresh login");
}

#[test]
fn every_request_before_login_gets_not_logged_in() {
    let server = server_with_alice(ServerOpts::default());
    // Something for a hijacker to reach: the server must not let it be reached without a login.
    let mut owner = server.login(ALICE, ALICE_PW);
    owner.mkdir("/private", 0o755).expect("mkdir");
    owner.upload("/private/f", b"private bytes", 0o600).expect("upload");

    let mut c = server.connect();
    let md5 = md5_hex(b"x");
    let checks: Vec<(&str, ErrorCode)> = vec![
        ("Stat", code_of(c.call(&Stat { path: "/".into() }), "Stat")),
        ("Stat existing", code_of(c.call(&Stat { path: "/private/f".into() }), "Stat")),
        ("GetDir", code_of(c.call(&GetDir { path: "/".into(), after: None, limit: 10 }), "GetDir")),
        ("Mkdir", code_of(c.call(&Mkdir { path: "/d".into(), mode: 0o755, owner: Owner::default() }), "Mkdir")),
        ("Rmdir", code_of(c.call(&Rmdir { path: "/private".into() }), "Rmdir")),
        ("DeleteFile", code_of(c.call(&DeleteFile { path: "/private/f".into() }), "DeleteFile")),
        ("Rename", code_of(c.call(&Rename { from: "/private".into(), to: "/p2".into(), noreplace: false }), "Rename")),
        (
            "SetAttr",
            code_of(c.call(&SetAttr { path: "/private/f".into(), mode: Some(0o777), ..Default::default() }), "SetAttr"),
        ),
        (
            "Symlink",
            code_of(
                c.call(&Symlink { path: "/s".into(), target: "/private/f".into(), owner: Owner::default() }),
                "Symlink",
            ),
        ),
        ("ReadLink", code_of(c.call(&ReadLink { path: "/s".into() }), "ReadLink")),
        ("Link", code_of(c.call(&Link { existing: "/private/f".into(), new: "/l".into() }), "Link")),
        (
            "Mknod",
            code_of(
                c.call(&Mknod {
                    path: "/n".into(),
                    kind: NodeKind::Fifo,
                    mode: 0o644,
                    rdev: 0,
                    owner: Owner::default(),
                }),
                "Mknod",
            ),
        ),
        ("UploadFile", code_of(c.call(&upload_request("/u", b"x")), "UploadFile")),
        ("ProveOwnership", code_of(c.call(&ProveOwnership { challenge_id: 1, proof: md5.clone() }), "ProveOwnership")),
        ("QueryChunk", code_of(c.call(&QueryChunk { upload_id: 1, indexes: vec![0] }), "QueryChunk")),
        // A chunk with its payload: refused, and the payload must not break the framing.
        (
            "UploadChunk",
            code_of(c.call_with_payload(&UploadChunk { upload_id: 1, index: 0, crc32c: 0 }, b"x"), "UploadChunk"),
        ),
        ("Download", code_of(c.call(&Download { path: "/private/f".into(), offset: 0, len: 100 }), "Download")),
        ("StatFs", code_of(c.call(&StatFs {}), "StatFs")),
    ];
    for (what, code) in &checks {
        assert_eq!(*code, ErrorCode::NotLoggedIn, "{what} before login");
    }
    // The connection survived all of it and can still log in.
    c.login(ALICE, ALICE_PW).expect("login after refused requests");
    assert_eq!(c.read_file("/private/f").expect("read after login"), b"private bytes");
    // Nothing the refused requests asked for happened.
    assert_eq!(c.names("/").expect("list /"), vec!["private".to_string()]);
    assert_eq!(c.names("/private").expect("list /private"), vec!["f".to_string()]);
    assert_eq!(c.stat("/private/f").expect("stat").mode & 0o7777, 0o600);
}

/// A stream that keeps a copy of every byte written to it: what a relay on the path would capture.
struct Recorded<S> {
    inner: S,
    sent: Vec<u8>,
}

impl<S: std::io::Read> std::io::Read for Recorded<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: std::io::Write> std::io::Write for Recorded<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn a_captured_login_neither_shows_the_password_nor_logs_in_again() {
    use netdisk_e2e::netdisk_protocol::io::{read_frame, Direction};
    use netdisk_e2e::netdisk_protocol::{AnyResponse, Kind};
    use std::io::Write;
    let server = server_with_alice(ServerOpts::default());
    let mut client =
        netdisk_e2e::netdisk_protocol::client::Client::new(Recorded { inner: server.raw_connect(), sent: Vec::new() });
    client.login(ALICE, ALICE_PW).expect("login");
    let captured = client.into_stream().sent;
    let shows = |needle: &[u8]| captured.windows(needle.len()).any(|w| w == needle);
    assert!(!shows(ALICE_PW.as_bytes()), "the password crossed the wire");
    assert!(!shows(hex_of(ALICE_PW).as_bytes()), "the password crossed the wire in hex");

    // Replayed on a new connection, byte for byte: the server's fresh nonce makes the old proof worthless.
    let mut replay = server.raw_connect();
    replay.write_all(&captured).expect("replay");
    let hello = read_frame(&mut replay, Direction::Response).expect("an answer to the replayed Hello");
    assert_eq!(hello.head.kind, Kind::HelloRes);
    let login = read_frame(&mut replay, Direction::Response).expect("an answer to the replayed Login");
    assert_eq!(login.head.kind, Kind::Error, "a replayed login must fail");
    let Ok(AnyResponse::Error(error)) = AnyResponse::decode(login.head.kind, &login.header) else { panic!("an error") };
    assert_eq!(error.code, ErrorCode::AuthFailed);
}

fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_name_nobody_has_gets_a_salt_like_anyone_else() {
    use netdisk_e2e::netdisk_protocol::Hello;
    let server = server_with_alice(ServerOpts::default());
    let hello = |user: &str| {
        let mut c = server.connect();
        c.call(&Hello { user: user.into(), client_nonce: "ab".repeat(32) }).expect("a hello is answered")
    };
    let (nobody, again, alice) = (hello("nobody"), hello("nobody"), hello(ALICE));
    assert_eq!(nobody.salt, again.salt, "the same name, the same salt: nothing tells it from a real user");
    assert_eq!((nobody.salt.len(), nobody.kdf), (alice.salt.len(), alice.kdf));
    assert_ne!(nobody.server_nonce, again.server_nonce, "a fresh nonce every time");
}

#[test]
fn a_user_name_cannot_forge_or_flood_the_servers_log() {
    let server = server_with_alice(ServerOpts::default());
    let forged = "eve\n2026-12-03T00:00:00Z  INFO netdisk_server::handler: logged in user=root";
    assert!(server.connect().login(forged, "guess").is_err());
    let huge = "x".repeat(64 * 1024);
    let before = server.log().len();
    for _ in 0..3 {
        assert!(server.connect().login(&huge, "guess").is_err());
    }
    let grown = server.log().len() - before;
    let log = server.log();
    for line in log.lines().filter(|l| l.contains("logged in user=root")) {
        assert!(line.contains("login refused"), "a forged log line: {line}");
    }
    assert!(log.lines().all(|l| !l.starts_with("2026-12-03T00:00:00Z")), "a line began where the name said");
    assert!(grown < 3 * 2048, "three logins with a 64 KiB name grew the log by {grown} bytes");
}
