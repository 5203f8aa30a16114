//! Sessions end with their user: a password change or a removal ends every logged-in connection of that user
//! (idle or in the middle of an upload) at its next request, and a new user never gets a removed user's id.

use std::time::Duration;

use netdisk_e2e::netdisk_protocol::client::ClientError;
use netdisk_e2e::netdisk_protocol::{md5_hex, ErrorCode, Stat, UploadFileRes};
use netdisk_e2e::{begin_upload, random_bytes, read_until_closed, send_chunk, store, upload_request, ServerOpts};

use crate::{alice, bob, server_with_alice, server_with_alice_and_bob, ALICE, ALICE_PW, BOB, CAROL, CAROL_PW};

type Conn = netdisk_e2e::netdisk_protocol::client::Client<std::net::TcpStream>;

/// How long the server may take to close a connection whose session ended.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer must be the "session ended" refusal, and the server must close the connection after it.
#[track_caller]
fn assert_session_ended<T: std::fmt::Debug>(conn: Conn, answer: Result<T, ClientError>, what: &str) {
    match answer {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::NotLoggedIn, "{what}: {e:?}");
            assert!(e.message.starts_with("session ended"), "{what}: {e:?}");
        }
        other => panic!("{what}: expected the session to be ended, got {other:?}"),
    }
    let mut stream = conn.into_stream();
    let closed = read_until_closed(&mut stream, CLOSE_TIMEOUT);
    assert!(closed.is_ok_and(|c| c.received.is_empty()), "{what}: the server must close the connection");
}

fn user_id(server: &netdisk_e2e::Server, name: &str) -> Option<i64> {
    use rusqlite::OptionalExtension;
    store::open(server.data_dir())
        .query_row("SELECT id FROM users WHERE name = ?", [name], |r| r.get(0))
        .optional()
        .expect("read users")
}

#[test]
fn a_password_change_ends_open_sessions() {
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let data = random_bytes(60, 3 * 65536);
    let mut idle = alice(&server);
    idle.mkdir("/dir", 0o755).expect("mkdir");
    let mut uploading = alice(&server);
    let slot = begin_upload(&mut uploading, "/big", &data);
    send_chunk(&mut uploading, &slot, &data, 0).expect("the first chunk, before the password changes");

    let (ok, out) = server.admin(&["user", "passwd", ALICE], Some("a-new-password"));
    assert!(ok, "passwd: {out}");

    // An idle connection: its next request is refused and the connection closed.
    let answer = idle.call(&Stat { path: "/dir".into() });
    assert_session_ended(idle, answer, "a request after the password changed");
    // A connection in the middle of an upload: the chunk (with its payload) is refused, nothing of it is recorded.
    let answer = send_chunk(&mut uploading, &slot, &data, 1);
    assert_session_ended(uploading, answer, "a chunk after the password changed");
    let pfile = store::pfiles_of(server.data_dir(), &md5_hex(&data));
    assert_eq!(pfile.len(), 1, "{pfile:?}");
    assert_eq!(pfile[0].chunks_uploaded, 1, "the refused chunk is not recorded: {pfile:?}");

    // The old password opens nothing; a session with the new one lives on (its generation is the current one).
    assert!(server.connect().login(ALICE, ALICE_PW).is_err(), "the old password");
    let mut fresh = server.login(ALICE, "a-new-password");
    fresh.stat("/dir").expect("a session with the new password");
    fresh.mkdir("/dir/sub", 0o755).expect("and its next request");
    server.assert_fsck_clean();
}

#[test]
fn removing_a_user_ends_open_sessions_and_their_id_is_never_given_again() {
    let server = server_with_alice_and_bob(ServerOpts::default());
    let mut a = alice(&server);
    a.mkdir("/kept", 0o755).expect("mkdir");
    let mut b = bob(&server);
    b.mkdir("/bobs", 0o755).expect("bob works before his removal");
    let bob_id = user_id(&server, BOB).expect("bob has an id");

    let (ok, out) = server.admin(&["user", "remove", BOB], None);
    assert!(ok, "remove: {out}");
    // bob had the highest id: a table that reuses ids would give it to carol.
    server.add_user(CAROL, CAROL_PW);
    let secret = random_bytes(61, 100_000);
    let mut c = server.login(CAROL, CAROL_PW);
    c.upload("/secret", &secret, 0o600).expect("carol's private file");

    // bob's connection, still open, asks for carol's content by its md5 (an instant upload of "his own" content).
    let answer = b.call(&upload_request("/stolen", &secret));
    assert!(!matches!(answer, Ok(UploadFileRes::Instant { .. })), "the removed user got carol's file: {answer:?}");
    assert_session_ended(b, answer, "a removed user's request");
    // Nothing landed anywhere; alice's session is untouched.
    assert_eq!(c.names("/").expect("carol's tree"), vec!["secret".to_string()]);
    assert_eq!(a.names("/").expect("alice's session goes on"), vec!["kept".to_string()]);
    let carol_id = user_id(&server, CAROL).expect("carol has an id");
    assert!(carol_id > bob_id, "carol gets a new id ({carol_id}), not bob's ({bob_id})");
    server.assert_fsck_clean();
}

#[test]
fn a_removed_users_connection_can_do_nothing() {
    // Any request, not just an upload: the connection of a removed user is ended at once, whatever it asks.
    let server = server_with_alice_and_bob(ServerOpts::default());
    let mut b = bob(&server);
    let (ok, out) = server.admin(&["user", "remove", BOB], None);
    assert!(ok, "remove: {out}");
    let answer = b.mkdir("/after", 0o755);
    assert_session_ended(b, answer, "mkdir by a removed user");
    assert!(user_id(&server, BOB).is_none());
    alice(&server).stat("/").expect("other users go on");
    server.assert_fsck_clean();
}

/// Strangers that never log in, silent or chatty, hold a connection slot only until the login timeout (not the idle
/// timeout, which any request before a login would restart): then honest users get in again.
#[test]
fn strangers_that_never_log_in_lose_their_slots_at_the_login_timeout() {
    use netdisk_e2e::wait_until;
    let server = server_with_alice(ServerOpts::default().max_children(3).login_timeout(2));
    let _silent: Vec<std::net::TcpStream> = (0..2).map(|_| server.raw_connect()).collect();
    let mut chatty = server.connect();
    assert_eq!(chatty.stat("/").map_err(|e| e.code()).unwrap_err(), Some(ErrorCode::NotLoggedIn));
    assert!(server.wait_for_children(3, Duration::from_secs(10)), "every slot is held");
    assert!(server.connect().login(ALICE, ALICE_PW).is_err(), "no slot for an honest user while they are held");
    // The chatty stranger keeps asking (each request would restart an idle timer of 600 s): it is closed anyway.
    let closed = wait_until(Duration::from_secs(20), || chatty.stat("/").is_err_and(|e| e.code().is_none()));
    assert!(closed, "a stranger sending requests without a login was not closed");
    assert!(server.wait_for_children(0, Duration::from_secs(20)), "strangers still hold slots");
    let mut honest = server.connect();
    honest.login(ALICE, ALICE_PW).expect("a slot again for an honest user");
    assert!(honest.stat("/").is_ok());
}
