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
