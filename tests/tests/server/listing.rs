//! Directory listings: never a partial file (L8), never a deleted one (L1), and every entry exactly once across pages.

use std::collections::BTreeSet;

use netdisk_e2e::netdisk_protocol::{
    DeleteFile, ErrorCode, GetDir, Mkdir, NodeKind, Owner, UploadFile, UploadFileRes, MAX_DIR_PAGE,
};
use netdisk_e2e::{begin_upload, expect_code, random_bytes, send_chunk, upload_request, Pipeline, Rng, ServerOpts};

use crate::{alice, assert_same_bytes, server_with_alice, ALICE, ALICE_PW};

#[test]
fn a_file_being_uploaded_is_never_listed() {
    let server = server_with_alice(ServerOpts::default().chunk_size(65536));
    let mut uploader = alice(&server);
    let mut watcher = alice(&server);
    uploader.upload("/visible", b"already complete", 0o644).expect("upload");

    let data = random_bytes(30, 4 * 65536 + 99); // 5 chunks
    let slot = begin_upload(&mut uploader, "/partial", &data);
    for i in 0..slot.chunk_count - 1 {
        assert!(send_chunk(&mut uploader, &slot, &data, i).expect("chunk").complete.is_none());
        for c in [&mut watcher, &mut uploader] {
            assert_eq!(c.names("/").expect("list"), vec!["visible".to_string()], "after chunk {i}");
            expect_code(c.stat("/partial"), ErrorCode::NotFound, "stat of a partial file");
            expect_code(c.download("/partial", 0, 10), ErrorCode::NotFound, "download of a partial file");
        }
    }
    // The same user asking for the same content on the other connection gets the upload, not the file.
    match watcher.call(&upload_request("/partial-copy", &data)).expect("UploadFile") {
        UploadFileRes::Instant { attr, .. } => panic!("instant upload of content still being uploaded: {attr:?}"),
        UploadFileRes::Upload { .. } | UploadFileRes::Challenge { .. } => {}
    }
    expect_code(watcher.stat("/partial-copy"), ErrorCode::NotFound, "the copy is not there either");

    let done = send_chunk(&mut uploader, &slot, &data, slot.chunk_count - 1).expect("last chunk");
    assert!(done.complete.is_some(), "the last chunk completes the file");
    let names = watcher.names("/").expect("list");
    assert!(names.contains(&"partial".to_string()) && names.contains(&"visible".to_string()), "{names:?}");
    assert_same_bytes(&watcher.read_file("/partial").expect("download"), &data, "the completed file");
    // Whether the other connection's pending upload of the same content shows up now is the server's choice;
    // if it does, it must hold the complete content.
    if names.contains(&"partial-copy".to_string()) {
        assert_same_bytes(&watcher.read_file("/partial-copy").expect("download"), &data, "the copy");
    }
}

#[test]
fn a_deleted_file_never_reappears() {
    let server = server_with_alice(ServerOpts::default());
    let mut c1 = alice(&server);
    let mut c2 = alice(&server);
    c1.upload("/keep", b"stays", 0o644).expect("upload");
    for i in 0..50u64 {
        let name = format!("r{i:02}");
        let path = format!("/{name}");
        let content = random_bytes(1000 + i, 100 + i as usize);
        c1.upload(&path, &content, 0o644).expect("upload");
        assert!(c2.names("/").expect("list").contains(&name), "round {i}: the new file is listed");
        let deleter = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        deleter.delete_file(&path).expect("delete");
        for (label, c) in [("uploader", &mut c1), ("other connection", &mut c2)] {
            assert_eq!(c.names("/").expect("list"), vec!["keep".to_string()], "round {i}, {label}");
            expect_code(c.stat(&path), ErrorCode::NotFound, "stat of a deleted file");
            expect_code(c.download(&path, 0, 10), ErrorCode::NotFound, "download of a deleted file");
        }
        expect_code(c2.delete_file(&path), ErrorCode::NotFound, "deleting twice");
    }

    // Pipelined: create, list, delete, list, sent in one burst without waiting for any answer.
    // The server answers in order, so the second listing must not hold the name.
    let mut p = Pipeline::new(server.raw_connect());
    p.login(ALICE, ALICE_PW);
    let list = GetDir { path: "/".into(), after: None, limit: MAX_DIR_PAGE };
    for i in 0..20 {
        let path = format!("/p{i:02}");
        let create = upload_request(&path, b"");
        let delete = DeleteFile { path: path.clone() };
        p.send(&create, &[]).expect("send");
        p.send(&list, &[]).expect("send");
        p.send(&delete, &[]).expect("send");
        p.send(&list, &[]).expect("send");
        assert!(matches!(p.recv(&create).expect("create"), UploadFileRes::Instant { .. }));
        let before: Vec<String> = p.recv(&list).expect("list").entries.into_iter().map(|e| e.name).collect();
        assert_eq!(before, vec!["keep".to_string(), format!("p{i:02}")], "listing before the delete");
        p.recv(&delete).expect("delete");
        let after: Vec<String> = p.recv(&list).expect("list").entries.into_iter().map(|e| e.name).collect();
        assert_eq!(after, vec!["keep".to_string()], "listing right after the delete");
    }
    assert_eq!(c1.read_file("/keep").expect("download"), b"stays");
}

#[derive(Clone)]
enum Create {
    Dir(String),
    EmptyFile(String),
}

fn mkdir_req(name: &str) -> Mkdir {
    Mkdir { path: format!("/big/{name}"), mode: 0o755, owner: Owner::default() }
}

fn empty_req(name: &str) -> UploadFile {
    upload_request(&format!("/big/{name}"), b"")
}

#[test]
fn getdir_pages_list_every_entry_once_in_order() {
    let server = server_with_alice(ServerOpts::default());
    let mut c = alice(&server);
    c.mkdir("/big", 0o755).expect("mkdir");

    // 1200 names, created in a shuffled order: mostly directories, every fifth an empty file, a few names that
    // test byte order (upper case, digits, multi-byte UTF-8, spaces).
    let mut names: Vec<String> = (0..1190).map(|i| format!("e{i:04}")).collect();
    names.extend(
        ["A", "Zeta", "a b", "z", "\u{e9}t\u{e9}", "\u{4e2d}\u{6587}", "0", "e0500x", "e05", "~"].map(String::from),
    );
    assert_eq!(names.len(), 1200);
    let mut rng = Rng::new(31);
    for i in (1..names.len()).rev() {
        names.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let ops: Vec<Create> = names
        .iter()
        .enumerate()
        .map(|(i, n)| if i % 5 == 0 { Create::EmptyFile(n.clone()) } else { Create::Dir(n.clone()) })
        .collect();

    // Created through one pipelined connection: a writer thread sends, this thread reads the answers.
    let mut p = Pipeline::new(server.raw_connect());
    p.login(ALICE, ALICE_PW);
    let mut w = p.writer();
    let to_send = ops.clone();
    let writer = std::thread::spawn(move || {
        for op in &to_send {
            match op {
                Create::Dir(n) => w.send(&mkdir_req(n), &[]),
                Create::EmptyFile(n) => w.send(&empty_req(n), &[]),
            }
            .expect("send a request");
        }
    });
    for op in &ops {
        match op {
            Create::Dir(n) => {
                p.recv(&mkdir_req(n)).unwrap_or_else(|e| panic!("mkdir {n}: {e}"));
            }
            Create::EmptyFile(n) => match p.recv(&empty_req(n)).unwrap_or_else(|e| panic!("create {n}: {e}")) {
                UploadFileRes::Instant { .. } => {}
                other => panic!("an empty file is instant, got {other:?}"),
            },
        }
    }
    writer.join().expect("writer thread");

    let mut want: Vec<String> = names.clone();
    want.sort(); // byte order
    let files: BTreeSet<&String> =
        ops.iter().filter_map(|o| if let Create::EmptyFile(n) = o { Some(n) } else { None }).collect();

    // Pages of 100.
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = c.call(&GetDir { path: "/big".into(), after: after.clone(), limit: 100 }).expect("GetDir");
        pages += 1;
        assert!(pages <= 100, "the listing does not end");
        assert!(page.entries.len() <= 100, "a page holds at most `limit` entries");
        assert_eq!(page.dir.kind, NodeKind::Dir);
        for e in &page.entries {
            let want_kind = if files.contains(&e.name) { NodeKind::File } else { NodeKind::Dir };
            assert_eq!(e.attr.kind, want_kind, "{}", e.name);
        }
        got.extend(page.entries.iter().map(|e| e.name.clone()));
        if !page.more {
            break;
        }
        assert!(!page.entries.is_empty(), "a page with more to come is not empty");
        after = got.last().cloned();
    }
    assert!(pages >= 12, "1200 entries in pages of 100 take at least 12 pages, got {pages}");
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no entry twice");
    assert_eq!(got.len(), want.len(), "every entry once");
    assert_eq!(got, want, "entries in byte order of their names");

    // The client's own paging (pages of MAX_DIR_PAGE) gives the same.
    assert_eq!(c.names("/big").expect("list_dir"), want);

    // A huge limit is capped at MAX_DIR_PAGE.
    let page = c.call(&GetDir { path: "/big".into(), after: None, limit: 100_000 }).expect("GetDir");
    assert!(page.entries.len() <= MAX_DIR_PAGE as usize, "{} entries in one page", page.entries.len());
    assert!(page.more);
    assert_eq!(page.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>(), want[..page.entries.len()]);

    // `after` a name that is not in the directory continues after where it would sort.
    let page = c.call(&GetDir { path: "/big".into(), after: Some("e0599zz".into()), limit: 3 }).expect("GetDir");
    assert_eq!(page.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["e0600", "e0601", "e0602"]);
    // `after` the last name: an empty last page.
    let page = c.call(&GetDir { path: "/big".into(), after: want.last().cloned(), limit: 10 }).expect("GetDir");
    assert!(page.entries.is_empty() && !page.more);

    expect_code(c.call(&GetDir { path: "/nope".into(), after: None, limit: 10 }), ErrorCode::NotFound, "no dir");
    c.upload("/file", b"x", 0o644).expect("upload");
    expect_code(c.call(&GetDir { path: "/file".into(), after: None, limit: 10 }), ErrorCode::NotDir, "a file");
}
