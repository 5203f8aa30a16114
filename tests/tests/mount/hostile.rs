//! The mount against a fake server whose answers lie (issue 11): every lie is EIO for that call (or a sane result),
//! never a panic, never a file written outside the mount, never a forged log line; the connection that carried it
//! is dropped, and the mount keeps serving.

use std::collections::BTreeMap;
use std::path::Path;

use netdisk_e2e::fake::{attr, FakeServer, Reply};
use netdisk_e2e::mount::Mount;
use netdisk_e2e::netdisk_protocol::{
    md5_hex, AnyRequest, AnyResponse, Attr, DirEntry, Download, DownloadRes, ErrorCode, GetDir, GetDirRes, MkdirRes,
    NodeKind, QueryChunkRes, ReadLinkRes, StatFsRes, StatRes, UploadFile, UploadFileRes, WireError,
};
use netdisk_e2e::proc_info;

/// Content of every file the fake serves: `x` repeated (its md5 is in the file's attributes, see `fake::attr`).
const FILE_LEN: u64 = 5;
/// What a lying answer tries to slip into a log line.
const FORGED: &str = "FORGED LOG LINE";

/// The fake's tree: every file, directory and symlink a lookup finds, honest or not (`None`: the `Stat` lies).
fn node(path: &str, canary: &str) -> Option<Result<Attr, Attr>> {
    let file = |ino| attr(ino, NodeKind::File, FILE_LEN);
    let dir = |ino| attr(ino, NodeKind::Dir, 0);
    Some(match path {
        "/" => Ok(dir(1)),
        "/good" => Ok(file(2)),
        // Content of their own (a block of "good" is cached by its md5: they would never be downloaded).
        "/dl-md5" => Ok(attr(8, NodeKind::File, FILE_LEN + 1)),
        "/dl-long" => Ok(attr(9, NodeKind::File, FILE_LEN + 2)),
        // Any second count is a time: SystemTime and FUSE carry it.
        "/future" => Ok(Attr { mtime: netdisk_e2e::netdisk_protocol::Timespec { sec: i64::MAX, nsec: 0 }, ..file(3) }),
        "/dots" | "/slash" | "/long" | "/endless" | "/unsorted" | "/forged" => Ok(dir(10)),
        "/link" => Ok(attr(4, NodeKind::Symlink, 3)),
        // The md5 names cached blocks: a path instead must never become one.
        "/md5-abs" => Err(Attr { md5: Some(canary.into()), ..file(5) }),
        "/md5-rel" => Err(Attr { md5: Some("../../escaped-by-md5".into()), ..file(5) }),
        "/nsec" => {
            Err(Attr { mtime: netdisk_e2e::netdisk_protocol::Timespec { sec: 0, nsec: 2_000_000_000 }, ..file(6) })
        }
        "/huge" => Err(Attr { size: u64::MAX, ..file(7) }),
        _ => return None,
    })
}

/// The root's honest listing: the names a lookup finds honestly.
fn root_listing(r: &GetDir) -> GetDirRes {
    let names =
        ["good", "dl-md5", "dl-long", "future", "dots", "slash", "long", "endless", "unsorted", "forged", "link"];
    let entries: BTreeMap<&str, Attr> =
        names.iter().map(|n| (*n, node(&format!("/{n}"), "").and_then(Result::ok).expect("honest"))).collect();
    let entries = entries
        .into_iter()
        .filter(|(name, _)| r.after.as_deref().is_none_or(|after| *name > after))
        .map(|(name, attr)| DirEntry { name: name.into(), attr })
        .collect();
    GetDirRes { dir: attr(1, NodeKind::Dir, 0), entries, more: false }
}

fn listing(r: &GetDir) -> Reply {
    let page = |names: &[&str], more| {
        let entries = names
            .iter()
            .enumerate()
            .map(|(i, n)| DirEntry { name: n.to_string(), attr: attr(20 + i as u64, NodeKind::File, FILE_LEN) });
        AnyResponse::GetDir(GetDirRes { dir: attr(10, NodeKind::Dir, 0), entries: entries.collect(), more })
    };
    let long = "x".repeat(300);
    match r.path.as_str() {
        "/" => Reply::honest(AnyResponse::GetDir(root_listing(r))),
        "/dots" => Reply::lie(page(&[".."], false)),
        "/slash" => Reply::lie(page(&["a/b"], false)),
        "/long" => Reply::lie(page(&[&long], false)),
        // A client that follows `more` without a name to go on from would ask forever.
        "/endless" => Reply::lie(page(&[], true)),
        "/unsorted" => Reply::lie(page(&["b", "a"], false)),
        "/forged" => {
            let mut entry = DirEntry { name: "f".into(), attr: attr(30, NodeKind::File, FILE_LEN) };
            entry.attr.md5 = Some(format!("0\n{FORGED}"));
            let res = GetDirRes { dir: attr(10, NodeKind::Dir, 0), entries: vec![entry], more: false };
            Reply::lie(AnyResponse::GetDir(res))
        }
        _ => Reply::honest(page(&[], false)),
    }
}

fn download(r: &Download, canary: &str) -> Reply {
    let size = node(&r.path, canary).and_then(Result::ok).map_or(FILE_LEN, |a| a.size);
    let md5 = md5_hex(&vec![b'x'; size as usize]);
    let len = size.saturating_sub(r.offset).min(u64::from(r.len)) as usize;
    let res = |md5: &str| AnyResponse::Download(DownloadRes { md5: md5.into(), size, offset: r.offset });
    match r.path.as_str() {
        "/good" | "/future" => Reply::honest(res(&md5)).with_payload(vec![b'x'; len]),
        // Bytes of some other content, named by a path.
        "/dl-md5" => Reply::lie(res(canary)).with_payload(vec![b'x'; len]),
        // A megabyte for a file of seven bytes.
        _ => Reply::lie(res(&md5)).with_payload(vec![b'y'; 1 << 20]),
    }
}

fn upload(r: &UploadFile, canary: &str) -> Reply {
    let chunks = |chunk_count| UploadFileRes::Upload { upload_id: 1, chunk_size: 65536, chunk_count };
    let answer = |res| AnyResponse::UploadFile(res);
    if r.size == 0 {
        // The empty file a shell's redirection creates, uploaded when it closes its first descriptor: placed.
        let placed = Attr { md5: Some(r.md5.clone()), ..attr(40, NodeKind::File, 0) };
        return Reply::honest(answer(UploadFileRes::Instant { attr: placed, dir: None }));
    }
    match r.path.as_str() {
        "/up-zero" => Reply::lie(answer(chunks(0))),
        "/up-max" => Reply::lie(answer(chunks(u32::MAX))),
        // Sound, but the QueryChunk answer that follows is not.
        "/up-query" => Reply::honest(answer(chunks(r.size.div_ceil(65536) as u32))),
        "/up-md5" => {
            let placed = Attr { md5: Some(canary.into()), ..attr(40, NodeKind::File, r.size) };
            Reply::lie(answer(UploadFileRes::Instant { attr: placed, dir: None }))
        }
        "/up-nonce" => Reply::lie(answer(UploadFileRes::Challenge { challenge_id: 1, nonce: "../../x".into() })),
        // A small file, sent whole: "placed" with another size.
        _ => {
            let placed = Attr { md5: Some(r.md5.clone()), ..attr(41, NodeKind::File, r.size + 1) };
            Reply::lie(answer(UploadFileRes::Instant { attr: placed, dir: None }))
        }
    }
}

fn script(canary: String) -> impl Fn(&AnyRequest) -> Reply + Send + Sync + 'static {
    move |req| match req {
        AnyRequest::Stat(r) => match node(&r.path, &canary) {
            Some(Ok(attr)) => Reply::honest(AnyResponse::Stat(StatRes { attr })),
            Some(Err(attr)) => Reply::lie(AnyResponse::Stat(StatRes { attr })),
            None => Reply::honest(AnyResponse::Error(WireError::new(ErrorCode::NotFound, "no such file"))),
        },
        AnyRequest::GetDir(r) => listing(r),
        AnyRequest::Download(r) => download(r, &canary),
        AnyRequest::UploadFile(r) => upload(r, &canary),
        // Asked about chunks 0 and 1 of "/up-query": "send chunk 7".
        AnyRequest::QueryChunk(_) => Reply::lie(AnyResponse::QueryChunk(QueryChunkRes { needed: vec![0, 7] })),
        AnyRequest::ReadLink(_) => Reply::lie(AnyResponse::ReadLink(ReadLinkRes { target: "a\0b".into() })),
        AnyRequest::Mkdir(_) => {
            Reply::lie(AnyResponse::Mkdir(MkdirRes { attr: attr(50, NodeKind::File, 0), dir: None }))
        }
        AnyRequest::StatFs(_) => Reply::lie(AnyResponse::StatFs(StatFsRes {
            block_size: 4096,
            blocks: 10,
            blocks_free: 20,
            blocks_available: 5,
            files: 1,
            files_free: 0,
            name_max: 255,
        })),
        _ => Reply::honest(AnyResponse::Error(WireError::new(ErrorCode::Unsupported, "not in this fake"))),
    }
}

/// Runs `script` on the mount and asserts it fails with EIO.
fn eio(mount: &Mount, script: &str) {
    let out = mount.sh(script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Input/output error"),
        "`{script}` should fail with EIO ({}):\nstdout: {}\nstderr: {stderr}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        mount.log_tail()
    );
}

/// Names in `dir` (not followed into subdirectories).
fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn a_lying_server_gets_eio_never_a_panic_a_path_or_a_forged_log_line() {
    let outside = tempfile::Builder::new().prefix("netdisk-canary-").tempdir().expect("a temporary directory");
    let canary = outside.path().join("owned");
    let fake = FakeServer::start(script(canary.display().to_string()));
    let mount = Mount::start_at(fake.addr(), "ann", "pw", Mount::new_dir(), &[]);

    // Sane answers give sane results.
    let listed = mount.sh_ok("ls");
    assert_eq!(listed.lines().count(), 11, "{listed}");
    assert_eq!(mount.sh_ok("cat good"), "xxxxx");
    assert_eq!(mount.sh_ok("stat -c %Y future").trim(), i64::MAX.to_string());
    assert_eq!(mount.sh_ok("cat future"), "xxxxx");

    // Every lie is EIO for the call it answers.
    for script in [
        "stat md5-abs",
        "cat md5-abs",
        "cat md5-rel",
        "stat nsec",
        "stat huge",
        "cat dl-md5",
        "cat dl-long",
        "ls dots",
        "ls slash",
        "ls long",
        "ls endless",
        "ls unsorted",
        "ls forged",
        "readlink -v link",
        "stat -f .",
        "mkdir newdir",
        "head -c 3 /dev/zero > up-small",
    ] {
        eio(&mount, script);
    }
    // Files bigger than one sent whole: the upload is named first, and every answer to that lies somewhere.
    for name in ["up-zero", "up-max", "up-query", "up-md5", "up-nonce"] {
        eio(&mount, &format!("head -c 100000 /dev/zero > {name}"));
    }

    // The mount is alive and still answers, over new connections.
    let pid = mount.pid().expect("the mount process") as i32;
    assert!(proc_info(pid).is_some_and(|p| p.state != 'Z'), "the mount process died\n{}", mount.log_tail());
    assert_eq!(mount.sh_ok("cat good"), "xxxxx");
    mount.sh_ok("stat . && ls good");

    // No "md5" became a path: nothing next to the canary, in the mount's own directory or its cache but blocks
    // named by real md5s.
    assert!(names_in(outside.path()).is_empty(), "written outside the mount: {:?}", names_in(outside.path()));
    let work = mount.work_dir();
    let mut local = names_in(work);
    local.sort();
    assert_eq!(local, ["cache", "mnt", "mount.log"], "the mount's directory holds something new");
    for blocks in names_in(&work.join("cache")).into_iter().filter(|n| n.starts_with("blocks-")) {
        for block in names_in(&work.join("cache").join(&blocks)) {
            let md5 = block.rsplit_once('-').map_or("", |(md5, _)| md5);
            assert!(netdisk_e2e::netdisk_protocol::is_md5_hex(md5), "a cached block named {block:?}");
        }
    }

    // Every lie was logged, escaped: no panic, no line a server wrote.
    let log = mount.log();
    assert!(!log.contains("panicked"), "the mount panicked:\n{}", mount.log_tail());
    assert!(log.contains("bad answer to"), "bad answers are logged:\n{}", mount.log_tail());
    assert!(log.lines().all(|l| !l.starts_with(FORGED)), "a server string forged a log line:\n{log}");

    // A connection that carried a lie was never asked anything again.
    let record = fake.record();
    assert!(record.lies() >= 22, "the fake lied only {} times: {record:?}", record.lies());
    assert!(record.after_a_lie.is_empty(), "requests on connections that had lied: {:?}", record.after_a_lie);
    drop(mount);
    drop(fake);
}

#[test]
fn a_server_that_cannot_prove_it_holds_the_users_keys_is_refused() {
    // An impostor takes any login proof, but cannot sign its answer without the keys the real server keeps.
    let fake = FakeServer::impostor(|_| {
        Reply::honest(AnyResponse::Error(netdisk_e2e::netdisk_protocol::WireError::new(ErrorCode::Invalid, "no")))
    });
    let addr = fake.addr().to_string();
    let (status, stderr, mounted) =
        netdisk_e2e::mount::mount_must_fail(&["--server", &addr, "--user", "ann"], netdisk_e2e::fake::PASSWORD);
    assert!(!status.success() && !mounted, "mounted an impostor: {stderr}");
    assert!(stderr.contains("could not prove"), "{stderr}");
    assert!(fake.record().requests.is_empty(), "a request went to the impostor: {:?}", fake.record());
}
