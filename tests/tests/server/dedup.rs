//! Instant upload across users: only with a proof of holding the whole content, only for content of the same
//! identity (SHA-256, not md5), and without revealing, before that proof, whether anyone holds it.

use netdisk_e2e::netdisk_protocol::{md5_hex, ownership_proof, ErrorCode, ProveOwnership, UploadFileRes};
use netdisk_e2e::{expect_code, random_bytes, upload_request, ServerOpts};

use crate::{alice, assert_same_bytes, bob, server_with_alice_and_bob, CAROL, CAROL_PW};

type Conn = netdisk_e2e::netdisk_protocol::client::Client<std::net::TcpStream>;

/// The challenge an `UploadFile` of `data` gets; panics on any other answer.
fn challenge(c: &mut Conn, path: &str, data: &[u8]) -> (u64, String) {
    match c.call(&upload_request(path, data)).expect("UploadFile") {
        UploadFileRes::Challenge { challenge_id, nonce } => (challenge_id, nonce),
        other => panic!("UploadFile {path} of content this user does not hold must be challenged, got {other:?}"),
    }
}

/// Asserts the answer is the ordinary upload (every chunk to be sent), not an instant one.
#[track_caller]
fn assert_ordinary(answer: UploadFileRes, what: &str) {
    match answer {
        UploadFileRes::Upload { .. } => {}
        other => panic!("{what}: expected the ordinary upload, got {other:?}"),
    }
}

/// The classic identical-prefix MD5 collision (two 128-byte blocks with the same md5). Appending the same bytes
/// to both keeps the md5 equal (Merkle–Damgård), so any two files starting with them collide.
const COLLISION_A: &str = "d131dd02c5e6eec4693d9a0698aff95c2fcab58712467eab4004583eb8fb7f8955ad340609f4b30283e488832571415a085125e8f7cdc99fd91dbdf280373c5bd8823e3156348f5bae6dacd436c919c6dd53e2b487da03fd02396306d248cda0e99f33420f577ee8ce54b67080a80d1ec69821bcb6a8839396f9652b6ff72a70";
const COLLISION_B: &str = "d131dd02c5e6eec4693d9a0698aff95c2fcab50712467eab4004583eb8fb7f8955ad340609f4b30283e4888325f1415a085125e8f7cdc99fd91dbd7280373c5bd8823e3156348f5bae6dacd436c919c6dd53e23487da03fd02396306d248cda0e99f33420f577ee8ce54b67080280d1ec69821bcb6a8839396f965ab6ff72a70";

fn colliding_pair(suffix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let decode =
        |h: &str| (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect::<Vec<u8>>();
    let (mut a, mut b) = (decode(COLLISION_A), decode(COLLISION_B));
    a.extend_from_slice(suffix);
    b.extend_from_slice(suffix);
    assert_ne!(a, b);
    assert_eq!(md5_hex(&a), md5_hex(&b), "the pair collides");
    (a, b)
}

#[test]
fn cross_user_instant_upload_needs_a_proof_of_the_whole_content() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    server.add_user(CAROL, CAROL_PW);
    let x1 = random_bytes(20, 300_000);
    let x2 = random_bytes(21, 300_000);
    let unknown = random_bytes(22, 300_000);
    let mut a = alice(&server);
    a.upload("/x1", &x1, 0o644).expect("alice uploads x1");
    a.upload("/x2", &x2, 0o644).expect("alice uploads x2");

    let mut b = bob(&server);
    let (tag_x1, tag_x2, tag_unknown) =
        (b.hashes(&x1).proof_tag, b.hashes(&x2).proof_tag, b.hashes(&unknown).proof_tag);
    // Content alice holds and content nobody holds get challenges of the same shape.
    let (held_id, held_nonce) = challenge(&mut b, "/x1", &x1);
    let (unknown_id, unknown_nonce) = challenge(&mut b, "/unknown", &unknown);
    assert_eq!(held_nonce.len(), unknown_nonce.len(), "challenges must not reveal whether content is held");
    assert_ne!(held_nonce, unknown_nonce);

    // A wrong proof: a normal upload, nothing instant, nothing in bob's tree.
    let wrong = ownership_proof(&b.hashes(b"a guess").proof_tag, &held_nonce);
    let answer = b.call(&ProveOwnership { challenge_id: held_id, proof: wrong }).expect("ProveOwnership");
    assert_ordinary(answer, "a wrong proof");
    expect_code(b.stat("/x1"), ErrorCode::NotFound, "bob's /x1 after a wrong proof");
    assert!(b.names("/").expect("list").is_empty(), "nothing in bob's tree after a wrong proof");
    // The same challenge cannot be answered twice.
    let right = ownership_proof(&tag_x1, &held_nonce);
    match b.call(&ProveOwnership { challenge_id: held_id, proof: right }) {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::UnknownUpload), "a used challenge: {e}"),
        Ok(other) => panic!("a used challenge must be refused, got {other:?}"),
    }
    // And no new challenge for that content: a wrong answer ends the instant path for it (for a day).
    assert_ordinary(b.call(&upload_request("/x1", &x1)).expect("UploadFile"), "x1 after a wrong proof");
    let out = b.upload("/x1", &x1, 0o644).expect("bob uploads x1 in full");
    assert!(!out.instant && out.chunks_sent == 5, "bob sent x1 in full: {out:?}");

    // The right proof for content nobody holds: a normal upload too.
    let proof = ownership_proof(&tag_unknown, &unknown_nonce);
    let answer = b.call(&ProveOwnership { challenge_id: unknown_id, proof }).expect("ProveOwnership");
    assert_ordinary(answer, "content nobody holds");

    // The right proof for content alice holds: instant, and bob reads the same bytes. SHA-256 of the content (which
    // anyone may know) is not a proof, nor is the tag of a store with another salt.
    let (id, nonce) = challenge(&mut b, "/x2", &x2);
    match b.call(&ProveOwnership { challenge_id: id, proof: ownership_proof(&tag_x2, &nonce) }).expect("prove") {
        UploadFileRes::Instant { attr, .. } => {
            assert_eq!(attr.size, x2.len() as u64);
            assert_eq!(attr.md5.as_deref(), Some(md5_hex(&x2).as_str()));
        }
        other => panic!("a right proof of held content must be instant, got {other:?}"),
    }
    assert_same_bytes(&b.read_file("/x2").expect("bob downloads x2"), &x2, "bob's instant copy");

    // Carol, through the client's normal flow, gets x1 instantly by proving she holds it.
    let mut c = server.login(CAROL, CAROL_PW);
    let out = c.upload("/mine", &x1, 0o644).expect("carol uploads x1");
    assert!(out.instant, "proven content held by others is instant");
    assert_same_bytes(&c.read_file("/mine").expect("download"), &x1, "carol's copy");

    // Deleting alice's copies changes nothing for the others.
    a.delete_file("/x1").expect("delete");
    a.delete_file("/x2").expect("delete");
    assert_same_bytes(&b.read_file("/x2").expect("download"), &x2, "bob's x2 after alice deleted hers");
    assert_same_bytes(&c.read_file("/mine").expect("download"), &x1, "carol's x1 after alice deleted hers");
    server.assert_fsck_clean();
}

/// Hole: knowing most of a file (all but a secret field) and trying again and again used to pass the proof.
#[test]
fn partial_knowledge_never_passes_and_cannot_retry() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    let secret = random_bytes(30, 300_000);
    alice(&server).upload("/secret", &secret, 0o600).expect("alice uploads");
    let mut b = bob(&server);
    // Bob knows every byte but the last 64 (a key, a password in a template ...).
    let mut known = secret.clone();
    known[300_000 - 64..].fill(0);
    let known_tag = b.hashes(&known).proof_tag;
    let req = upload_request("/got", &secret); // the secret file's md5, SHA-256 and size: all public knowledge here
    let (id, nonce) = match b.call(&req).expect("UploadFile") {
        UploadFileRes::Challenge { challenge_id, nonce } => (challenge_id, nonce),
        other => panic!("challenge expected, got {other:?}"),
    };
    let answer =
        b.call(&ProveOwnership { challenge_id: id, proof: ownership_proof(&known_tag, &nonce) }).expect("prove");
    assert_ordinary(answer, "a proof from partial knowledge");
    // Every later try, on this connection or another, gets no challenge at all.
    for attempt in 0..20 {
        let mut c = if attempt % 2 == 0 { bob(&server) } else { server.login(crate::BOB, crate::BOB_PW) };
        assert_ordinary(c.call(&req).expect("UploadFile"), &format!("try {attempt} after the failed proof"));
    }
    // A missing answer counts as a wrong one: a challenge left unanswered ends the instant path as well.
    let other = random_bytes(31, 200_000);
    alice(&server).upload("/other", &other, 0o600).expect("alice uploads");
    let req = upload_request("/other", &other);
    assert!(matches!(b.call(&req).expect("UploadFile"), UploadFileRes::Challenge { .. }));
    assert_ordinary(b.call(&req).expect("UploadFile"), "the same content after an unanswered challenge");
    expect_code(b.stat("/got"), ErrorCode::NotFound, "bob has nothing");
    assert!(b.names("/").expect("list").is_empty());
    server.assert_fsck_clean();
}

/// Hole: dedup matched md5 + size, so a colliding file took the place of another user's (and the proof of 3
/// windows rarely touched the 128 bytes that differ).
#[test]
fn an_md5_collision_never_substitutes_content() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    let (evil, good) = colliding_pair(&random_bytes(40, 300_000));
    let mut a = alice(&server);
    a.upload("/planted", &evil, 0o644).expect("the attacker uploads one of the pair");
    let mut b = bob(&server);
    let out = b.upload("/report.pdf", &good, 0o644).expect("the victim uploads the other");
    assert!(!out.instant, "content of another identity is never instant: {out:?}");
    assert_same_bytes(&b.read_file("/report.pdf").expect("download"), &good, "the victim's own bytes");
    // Within one user too: naming content by its identity finds the right one of two that collide (here by proof
    // of the victim's copy: alice holds those bytes too).
    a.upload("/good-too", &good, 0o644).expect("alice uploads the other of the pair");
    assert_same_bytes(&a.read_file("/good-too").expect("download"), &good, "alice's second file");
    assert_same_bytes(&a.read_file("/planted").expect("download"), &evil, "alice's first file");
    // Named by md5 alone (a copy of one of her own files), two contents she holds collide: refused, not guessed.
    let mut by_md5 = upload_request("/copy", &good);
    by_md5.sha256 = None;
    expect_code(a.call(&by_md5), ErrorCode::Invalid, "md5 alone between two colliding contents");
    a.delete_file("/planted").expect("delete");
    match a.call(&by_md5).expect("md5 alone, one content") {
        UploadFileRes::Instant { attr, .. } => assert_eq!(attr.size, good.len() as u64),
        other => panic!("a copy of her one content with that md5 is instant, got {other:?}"),
    }
    assert_same_bytes(&a.read_file("/copy").expect("download"), &good, "the copy");
    server.assert_fsck_clean();
}

#[test]
fn small_files_are_challenged_too() {
    let server = server_with_alice_and_bob(ServerOpts::default());
    let small = b"a small file, shared".to_vec();
    alice(&server).upload("/s", &small, 0o644).expect("alice uploads");
    let mut b = bob(&server);
    let (id, _) = challenge(&mut b, "/s", &small);
    // Its plain md5 or SHA-256 (which anyone who knows them has) is not a proof.
    let sha = netdisk_e2e::sha256_hex(&small);
    let answer = b.call(&ProveOwnership { challenge_id: id, proof: sha }).expect("ProveOwnership");
    assert_ordinary(answer, "knowing the hashes of a small file");
    expect_code(b.stat("/s"), ErrorCode::NotFound, "bob's /s after proving only the hashes");
    // Sent whole, the bytes themselves are the proof.
    b.upload_inline("/s", &small, 0o644).expect("bob sends it whole");
    assert_eq!(b.read_file("/s").expect("download"), small);
    server.assert_fsck_clean();
}

/// Not a test but a measurement (no timing belongs in a test): how long a wrong `ProveOwnership` takes for content
/// another user holds and for content nobody holds, interleaved, 200 of each, each content challenged once.
/// `cargo test -p netdisk-e2e --test server -- --ignored proof_timing --nocapture`
#[test]
#[ignore = "a measurement: prints figures"]
fn proof_timing() {
    use std::time::{Duration, Instant};
    let server = server_with_alice_and_bob(ServerOpts::default());
    let tries = 200;
    let held: Vec<Vec<u8>> = (0..tries).map(|i| random_bytes(1000 + i, 70_000)).collect();
    let unheld: Vec<Vec<u8>> = (0..tries).map(|i| random_bytes(5000 + i, 70_000)).collect();
    let mut a = alice(&server);
    for (i, data) in held.iter().enumerate() {
        a.upload(&format!("/h{i}"), data, 0o644).expect("alice uploads");
    }
    let mut b = bob(&server);
    let mut time_wrong_proof = |path: &str, data: &[u8]| -> Duration {
        let (challenge_id, _) = challenge(&mut b, path, data);
        let proof = "0".repeat(64);
        let started = Instant::now();
        assert_ordinary(b.call(&ProveOwnership { challenge_id, proof }).expect("prove"), "a wrong proof");
        started.elapsed()
    };
    let (mut t_held, mut t_unheld) = (Vec::new(), Vec::new());
    for i in 0..tries as usize {
        t_held.push(time_wrong_proof(&format!("/h{i}"), &held[i]));
        t_unheld.push(time_wrong_proof(&format!("/u{i}"), &unheld[i]));
    }
    let summary = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() / 10], v[v.len() * 9 / 10])
    };
    let (h, u) = (summary(&mut t_held), summary(&mut t_unheld));
    println!("wrong ProveOwnership, {tries} each: held median {:?} (p10 {:?}, p90 {:?}); not held median {:?} (p10 {:?}, p90 {:?})", h.0, h.1, h.2, u.0, u.1, u.2);
}
