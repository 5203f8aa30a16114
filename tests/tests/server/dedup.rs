//! Instant upload across users: only with a proof of holding the content, and without revealing,
//! before that proof, whether anyone holds it.

use netdisk_e2e::netdisk_protocol::client::range_of;
use netdisk_e2e::netdisk_protocol::{md5_hex, ownership_proof, ByteRange, ErrorCode, ProveOwnership, UploadFileRes};
use netdisk_e2e::{expect_code, random_bytes, upload_request, ServerOpts};

use crate::{alice, assert_same_bytes, bob, server_with_alice_and_bob, CAROL, CAROL_PW};

/// The challenge an `UploadFile` of `data` gets; panics on any other answer.
fn challenge(
    c: &mut netdisk_e2e::netdisk_protocol::client::Client<std::net::TcpStream>,
    path: &str,
    data: &[u8],
) -> (u64, String, Vec<ByteRange>) {
    match c.call(&upload_request(path, data)).expect("UploadFile") {
        UploadFileRes::Challenge { challenge_id, ranges, nonce } => (challenge_id, nonce, ranges),
        other => panic!("UploadFile {path} of content this user does not hold must be challenged, got {other:?}"),
    }
}

fn check_ranges(ranges: &[ByteRange], size: u64, what: &str) {
    assert!(!ranges.is_empty(), "{what}: a challenge names at least one range");
    for r in ranges {
        assert!(r.len > 0, "{what}: empty range {r:?}");
        assert!(r.offset + r.len <= size, "{what}: range {r:?} outside the {size}-byte file");
    }
}

#[test]
fn cross_user_instant_upload_needs_a_proof() {
    let server = server_with_alice_and_bob(ServerOpts::default().chunk_size(65536));
    server.add_user(CAROL, CAROL_PW);
    // Large enough for several challenge ranges.
    let x1 = random_bytes(20, 300_000);
    let x2 = random_bytes(21, 300_000);
    let unknown = random_bytes(22, 300_000);
    let mut a = alice(&server);
    a.upload("/x1", &x1, 0o644).expect("alice uploads x1");
    a.upload("/x2", &x2, 0o644).expect("alice uploads x2");

    let mut b = bob(&server);
    // Content alice holds and content nobody holds get challenges of the same shape.
    let (held_id, held_nonce, held_ranges) = challenge(&mut b, "/x1", &x1);
    let (unknown_id, unknown_nonce, unknown_ranges) = challenge(&mut b, "/unknown", &unknown);
    check_ranges(&held_ranges, x1.len() as u64, "held content");
    check_ranges(&unknown_ranges, unknown.len() as u64, "unknown content");
    let shape = |r: &[ByteRange]| r.iter().map(|r| r.len).collect::<Vec<_>>();
    assert_eq!(shape(&held_ranges), shape(&unknown_ranges), "challenges must not reveal whether content is held");

    // A wrong proof: a normal upload, nothing instant, nothing in bob's tree.
    let wrong: Vec<String> = held_ranges.iter().map(|_| md5_hex(b"a guess")).collect();
    match b.call(&ProveOwnership { challenge_id: held_id, proofs: wrong }).expect("ProveOwnership") {
        UploadFileRes::Upload { chunk_count, .. } => assert_eq!(chunk_count, 5),
        other => panic!("a wrong proof must give a normal upload, got {other:?}"),
    }
    expect_code(b.stat("/x1"), ErrorCode::NotFound, "bob's /x1 after a wrong proof");
    assert!(b.names("/").expect("list").is_empty(), "nothing in bob's tree after a wrong proof");
    expect_code(b.download("/x1", 0, 100), ErrorCode::NotFound, "download after a wrong proof");
    // The same challenge cannot be answered twice.
    let right: Vec<String> = held_ranges.iter().map(|r| ownership_proof(&held_nonce, range_of(&x1, r))).collect();
    match b.call(&ProveOwnership { challenge_id: held_id, proofs: right }) {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::UnknownUpload), "a used challenge: {e}"),
        Ok(UploadFileRes::Instant { attr, .. }) => panic!("a used challenge gave an instant upload: {attr:?}"),
        Ok(_) => {}
    }

    // The right proof for content nobody holds: a normal upload too.
    let proofs = unknown_ranges.iter().map(|r| ownership_proof(&unknown_nonce, range_of(&unknown, r))).collect();
    match b.call(&ProveOwnership { challenge_id: unknown_id, proofs }).expect("ProveOwnership") {
        UploadFileRes::Upload { .. } => {}
        other => panic!("content nobody holds must be uploaded, got {other:?}"),
    }

    // The right proof for content alice holds: instant, and bob reads the same bytes.
    let (id, nonce, ranges) = challenge(&mut b, "/x2", &x2);
    check_ranges(&ranges, x2.len() as u64, "x2");
    // The bare md5 of each range is not a proof: the nonce must be hashed in.
    let bare: Vec<String> = ranges.iter().map(|r| md5_hex(range_of(&x2, r))).collect();
    match b.call(&ProveOwnership { challenge_id: id, proofs: bare }).expect("ProveOwnership") {
        UploadFileRes::Upload { .. } => {}
        other => panic!("a proof without the nonce must give a normal upload, got {other:?}"),
    }
    let (id, nonce2, ranges) = challenge(&mut b, "/x2", &x2);
    assert_ne!(nonce, nonce2, "every challenge has its own nonce");
    let proofs = ranges.iter().map(|r| ownership_proof(&nonce2, range_of(&x2, r))).collect();
    match b.call(&ProveOwnership { challenge_id: id, proofs }).expect("ProveOwnership") {
        UploadFileRes::Instant { attr, .. } => {
            assert_eq!(attr.size, x2.len() as u64);
            assert_eq!(attr.md5.as_deref(), Some(md5_hex(&x2).as_str()));
        }
        other => panic!("a right proof of held content must be instant, got {other:?}"),
    }
    assert_same_bytes(&b.read_file("/x2").expect("bob downloads x2"), &x2, "bob's instant copy");
    assert_eq!(b.names("/").expect("list"), vec!["x2".to_string()]);

    // After a wrong proof (and no chunk sent) bob is challenged again; proving it right this time is instant.
    let out = b.upload("/x1", &x1, 0o644).expect("bob uploads x1");
    assert!(out.instant, "bob's right proof after a wrong one is instant");
    assert_same_bytes(&b.read_file("/x1").expect("download"), &x1, "bob's x1");

    // Carol, through the client's normal flow, gets x1 instantly by proving she holds it.
    let mut c = server.login(CAROL, CAROL_PW);
    let out = c.upload("/mine", &x1, 0o644).expect("carol uploads x1");
    assert!(out.instant, "proven content held by others is instant");
    assert_eq!(out.chunks_sent, 0);
    assert_same_bytes(&c.read_file("/mine").expect("download"), &x1, "carol's copy");

    // Deleting alice's copies changes nothing for the others.
    a.delete_file("/x1").expect("delete");
    a.delete_file("/x2").expect("delete");
    assert_same_bytes(&b.read_file("/x2").expect("download"), &x2, "bob's x2 after alice deleted hers");
    assert_same_bytes(&c.read_file("/mine").expect("download"), &x1, "carol's x1 after alice deleted hers");
    server.assert_fsck_clean();
}

#[test]
fn small_files_are_challenged_too() {
    // A file smaller than the challenge ranges: the proof covers what there is.
    let server = server_with_alice_and_bob(ServerOpts::default());
    let small = b"a small file, shared".to_vec();
    let other = b"another small file!!".to_vec();
    assert_eq!(small.len(), other.len());
    alice(&server).upload("/s", &small, 0o644).expect("alice uploads");
    let mut b = bob(&server);
    let (id, _, ranges) = challenge(&mut b, "/s", &small);
    check_ranges(&ranges, small.len() as u64, "small file");
    // For a small file the one range is the whole file: its plain md5 (which anyone who knows the md5 has)
    // must not pass as a proof.
    match b.call(&ProveOwnership { challenge_id: id, proofs: vec![md5_hex(&small)] }).expect("ProveOwnership") {
        UploadFileRes::Upload { .. } => {}
        other => panic!("knowing the md5 of a small file must not be enough, got {other:?}"),
    }
    expect_code(b.stat("/s"), ErrorCode::NotFound, "bob's /s after proving only the md5");
    let (_, _, unknown_ranges) = challenge(&mut b, "/t", &other);
    assert_eq!(
        ranges.iter().map(|r| r.len).collect::<Vec<_>>(),
        unknown_ranges.iter().map(|r| r.len).collect::<Vec<_>>(),
        "same-size content, held or not, gets the same challenge shape"
    );
    let out = b.upload("/s", &small, 0o644).expect("bob uploads with a proof");
    assert!(out.instant);
    assert_eq!(b.read_file("/s").expect("download"), small);
    server.assert_fsck_clean();
}
