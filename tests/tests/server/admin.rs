//! Administration beside a running server: quotas, passwords, removing users, store statistics.

use netdisk_e2e::netdisk_protocol::{ErrorCode, SetAttr};
use netdisk_e2e::{code_of, expect_code, random_bytes, ServerOpts};

use crate::{alice, assert_same_bytes, bob, server_with_alice_and_bob, ALICE, ALICE_PW, BOB};

#[track_caller]
fn admin_ok(server: &netdisk_e2e::Server, args: &[&str]) -> String {
    let (ok, out) = server.admin(args, None);
    assert!(ok, "netdisk-server {} failed: {out}", args.join(" "));
    out
}

/// The `user list` line of `name`.
fn listed(server: &netdisk_e2e::Server, name: &str) -> Option<String> {
    let out = admin_ok(server, &["user", "list"]);
    out.lines().find(|l| l.split_whitespace().next() == Some(name)).map(str::to_string)
}

#[test]
fn a_quota_bounds_what_a_user_can_add() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    admin_ok(&server, &["user", "quota", ALICE, "100K"]);
    assert!(listed(&server, ALICE).expect("alice is listed").contains("100.0 KiB"));
    let mut a = alice(&server);
    a.upload_inline("/a", &random_bytes(1, 60_000), 0o644).expect("within the quota");

    // Another 50 KB, sent whole or in chunks: over the quota, refused, nothing created.
    let more = random_bytes(2, 50_000);
    expect_code(a.upload_inline("/b", &more, 0o644), ErrorCode::QuotaExceeded, "a small file over the quota");
    let big = random_bytes(3, 200_000);
    expect_code(a.upload("/c", &big, 0o644), ErrorCode::QuotaExceeded, "a chunked upload over the quota");
    for path in ["/b", "/c"] {
        expect_code(a.stat(path), ErrorCode::NotFound, path);
    }
    // Replacing a file counts the difference; growing it by truncate too; shrinking is always allowed.
    a.upload("/a", &random_bytes(4, 90_000), 0o644).expect("replaced by a bigger file within the quota");
    let grow = SetAttr { path: "/a".into(), size: Some(200_000), ..Default::default() };
    assert_eq!(code_of(a.call(&grow), "truncate up"), ErrorCode::QuotaExceeded);
    a.call(&SetAttr { path: "/a".into(), size: Some(1000), ..Default::default() }).expect("truncate down");
    // Other users are not bound by alice's quota.
    bob(&server).upload("/big", &big, 0o644).expect("bob has no quota");

    admin_ok(&server, &["user", "quota", ALICE, "none"]);
    a.upload("/c", &big, 0o644).expect("no quota any more");
    let line = listed(&server, ALICE).expect("alice is listed");
    assert!(line.split_whitespace().nth(1) == Some("2") && line.contains("none"), "2 files, no quota: {line}");
    server.assert_fsck_clean();
}

#[test]
fn passwords_change_and_users_go() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    let shared = random_bytes(10, 150_000);
    let own = random_bytes(11, 150_000);
    let mut a = alice(&server);
    a.upload("/shared", &shared, 0o644).expect("upload");
    a.upload("/own", &own, 0o644).expect("upload");
    a.mkdir("/dir", 0o755).expect("mkdir");
    assert!(bob(&server).upload("/copy", &shared, 0o644).expect("bob's copy").instant, "held content is instant");

    let (ok, out) = server.admin(&["user", "passwd", ALICE], Some("a-new-password"));
    assert!(ok, "passwd: {out}");
    let mut old = server.connect();
    expect_code(old.login(ALICE, ALICE_PW), ErrorCode::AuthFailed, "the old password");
    server.login(ALICE, "a-new-password").stat("/own").expect("the new password works");
    assert!(!server.admin(&["user", "passwd", "nobody"], Some("x")).0, "no such user");

    let stats = admin_ok(&server, &["stats"]);
    assert!(stats.contains("physical files  2"), "shared content is stored once:\n{stats}");
    assert!(stats.contains("dedup saves     146.5 KiB"), "bob's copy costs nothing:\n{stats}");

    let out = admin_ok(&server, &["user", "remove", ALICE]);
    assert!(out.contains("removed user alice: 4 files and directories, 1 physical files freed"), "{out}");
    assert!(listed(&server, ALICE).is_none() && listed(&server, BOB).is_some());
    expect_code(server.connect().login(ALICE, "a-new-password"), ErrorCode::AuthFailed, "a removed user");
    assert_same_bytes(&bob(&server).read_file("/copy").expect("bob's copy"), &shared, "shared content stays");
    assert!(!server.admin(&["user", "remove", ALICE], None).0, "removing twice fails");
    let stats = admin_ok(&server, &["stats"]);
    assert!(stats.contains("users           1") && stats.contains("physical files  1"), "{stats}");
    server.assert_fsck_clean();
}
