//! Crash and fault scenarios: a mount killed mid-upload, a connection process killed mid-splice, the whole
//! server killed during uploads, a data directory whose disk fills up, and a server that goes away under a mount.
//! Each test first proves that its fault really happened (from the server's database, its log, or the processes),
//! then that nothing was lost or corrupted, and ends with `netdisk-server fsck` on the data directory.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use netdisk_e2e::mount::{is_mounted, Mount};
use netdisk_e2e::netdisk_protocol::client::Client;
use netdisk_e2e::netdisk_protocol::frame::encode_message;
use netdisk_e2e::netdisk_protocol::{chunk_crc, md5_hex, Kind, NodeKind, QueryChunk, UploadChunk};
use netdisk_e2e::store::{self, PFile};
use netdisk_e2e::tmpfs::Tmpfs;
use netdisk_e2e::{begin_upload, random_bytes, send_chunk, wait_until, ConnectionEnd, Server, ServerOpts};

const USER: &str = "ann";
const PW: &str = "ann-pw";
const MIB: usize = 1 << 20;
/// Longest any awaited state change (a chunk stored, processes gone) may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

fn server(opts: ServerOpts) -> Server {
    let server = Server::start(opts);
    server.add_user(USER, PW);
    server
}

fn login(server: &Server) -> Client<TcpStream> {
    server.login(USER, PW)
}

/// A local file of `len` pseudo-random bytes; returns its content.
fn local_file(path: &Path, seed: u64, len: usize) -> Vec<u8> {
    let data = random_bytes(seed, len);
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    data
}

/// Starts `cp SRC DST` in the background, bounded by `timeout -s KILL`.
fn spawn_cp(src: &Path, dst: &Path) -> Child {
    Command::new("timeout")
        .args(["-s", "KILL", "120", "cp"])
        .arg(src)
        .arg(dst)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cp starts")
}

/// Waits (bounded) for a background command; returns its status and stderr.
fn wait_child(mut child: Child) -> (ExitStatus, String) {
    let mut status = None;
    let exited = wait_until(Duration::from_secs(130), || {
        status = child.try_wait().expect("wait for the command");
        status.is_some()
    });
    assert!(exited, "a background command did not end");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status.expect("exited"), err)
}

/// The physical file of content `md5`; panics unless there is exactly one.
fn pfile_of(data: &Path, md5: &str) -> PFile {
    let rows = store::pfiles_of(data, md5);
    assert_eq!(rows.len(), 1, "physical files of {md5}: {rows:?}");
    rows.into_iter().next().expect("one row")
}

/// Sum of `bytes_in` over the connections that ended after the first `skip` ones.
fn bytes_in_after(ends: &[ConnectionEnd], skip: usize) -> u64 {
    ends.iter().skip(skip).map(|e| e.bytes_in).sum()
}

/// (a) `kill -9` of the mount in the middle of uploading a big file; a new mount's `cp` of the same file sends
/// only the chunks the server does not have.
#[test]
fn mount_killed_mid_upload_resumes_with_only_the_missing_chunks() {
    const SIZE: usize = 48 * MIB;
    let server = server(ServerOpts::default().chunk_size(MIB as u32));
    let data = server.data_dir().to_path_buf();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("big.bin");
    let content = local_file(&src, 1, SIZE);
    let md5 = md5_hex(&content);

    // Two connections (not eight) send the chunks: the upload takes long enough that a busy machine's scheduling
    // cannot let it finish between two looks at the database.
    let mount = Mount::start_with(&server, USER, PW, Mount::new_dir(), &["--connections", "2"]);
    let cp = spawn_cp(&src, &mount.join("big.bin"));
    // The kill lands once the server has stored a sixth of the chunks (the upload starts when cp closes the file).
    let db = store::open(&data);
    let mut seen = 0;
    let started = wait_until(Duration::from_secs(60), || {
        seen = store::pfiles_in(&db).iter().find(|p| p.md5 == md5).map_or(0, |p| p.chunks_uploaded);
        seen >= 8
    });
    assert!(started, "the server stored no sixth of the upload (last seen: {seen} chunks)\n{}", mount.log_tail());
    let dir = mount.kill_and_leave_mount();
    let dead = std::fs::metadata(dir.path().join("mnt")).expect_err("a dead mount answers nothing");
    assert_eq!(dead.raw_os_error(), Some(libc::ENOTCONN), "not a dead mount: {dead}");
    let (status, err) = wait_child(cp);
    assert!(!status.success(), "cp succeeded although its mount was killed: {err}");
    // The killed mount's connections end; then the stored chunks are what the server really kept.
    assert!(server.wait_for_children(0, DEADLINE), "connections of the killed mount stay open\n{}", server.log_tail());
    let interrupted = pfile_of(&data, &md5);
    let total = interrupted.total_chunks;
    let stored = interrupted.chunks_uploaded;
    assert_eq!(total as usize, SIZE / MIB);
    assert!(!interrupted.complete && stored > 0 && stored < total, "the kill did not land mid-upload: {interrupted:?}");
    eprintln!("(a) kill -9 seen at {seen} chunks stored; after the kill {stored} of {total} chunks stored");
    let before = server.connection_ends().len();

    // A new mount on the same directory (it clears the dead mount) copies the file again.
    let mount = Mount::start_in(&server, USER, PW, dir);
    mount.sh_ok(&format!("cp {} big.bin && cmp {} big.bin", src.display(), src.display()));
    drop(mount);
    assert!(server.wait_for_children(0, DEADLINE), "connections of the second mount stay open");
    let ends = server.connection_ends();
    let resent = bytes_in_after(&ends, before);
    let missing = (total - stored) as u64 * MIB as u64;
    eprintln!(
        "(a) second cp: {resent} bytes in over {} connections; missing {missing}, file {SIZE}",
        ends.len() - before
    );
    // Every missing chunk travelled once, and nothing else of size: requests and answers are a few KiB.
    assert!(resent >= missing, "the second cp sent {resent} bytes, less than the {missing} missing");
    assert!(
        resent < missing + MIB as u64 / 4,
        "the second cp sent {resent} bytes: more than the {missing} missing ({stored} of {total} chunks were stored)"
    );
    let done = pfile_of(&data, &md5);
    assert!(done.complete, "the file is not complete: {done:?}");
    assert_eq!(login(&server).read_file("/big.bin").expect("download"), content, "the stored bytes differ");
    server.assert_fsck_clean();
}

/// Bytes `offset..offset + len` of a file (short if the file is).
fn read_at(path: &Path, offset: usize, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    let mut buf = vec![0u8; len];
    let n = file.read_at(&mut buf, offset as u64).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// Sends chunk `index` of an upload by hand on `stream`: its request and only the first `sent` bytes of its
/// payload, then waits until those bytes are in the physical file's blob, which proves that the connection
/// process is inside that chunk's transfer (moving the payload to the file, waiting for the rest).
fn send_part_of_chunk(
    stream: &mut TcpStream,
    data_dir: &Path,
    slot: &netdisk_e2e::UploadSlot,
    content: &[u8],
    index: u32,
    sent: usize,
) {
    let chunk = slot.chunk(content, index);
    let req = UploadChunk { upload_id: slot.upload_id, index, crc32c: chunk_crc(chunk) };
    stream.write_all(&encode_message(Kind::UploadChunk, 1_000 + index as u64, &req, chunk.len() as u32)).unwrap();
    stream.write_all(&chunk[..sent]).unwrap();
    let blob = store::blob_path(data_dir, pfile_of(data_dir, &md5_hex(content)).id);
    let offset = index as usize * slot.chunk_size as usize;
    let landed = wait_until(DEADLINE, || read_at(&blob, offset, sent) == chunk[..sent]);
    assert!(landed, "the first {sent} bytes of chunk {index} never reached {}", blob.display());
}

/// (b) `kill -9` of the connection process while it splices a chunk into its file: the client sees the
/// connection fail, the server (parent) stays up, and a new connection resumes from the chunks stored.
#[test]
fn connection_process_killed_mid_splice_the_upload_resumes_on_a_new_connection() {
    let server = server(ServerOpts::default().chunk_size(MIB as u32));
    let data = server.data_dir().to_path_buf();
    let content = random_bytes(2, 4 * MIB + 123);
    let md5 = md5_hex(&content);

    let mut client = login(&server);
    let slot = begin_upload(&mut client, "/b.bin", &content);
    assert_eq!(slot.chunk_count, 5);
    send_chunk(&mut client, &slot, &content, 0).expect("chunk 0 is stored");
    let mut stream = client.into_stream();
    send_part_of_chunk(&mut stream, &data, &slot, &content, 1, MIB / 2);
    let children = server.live_children();
    assert_eq!(children.len(), 1, "one connection, one connection process: {children:?}");
    let victim = children[0].pid;
    // SAFETY: kill(2) on a connection process of the server this test started (alive, checked just above).
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);

    // The client's connection fails: the rest of the chunk may still fit the socket's buffers, the answer never comes.
    let _ = stream.write_all(&content[MIB + MIB / 2..2 * MIB]);
    let answer = netdisk_e2e::read_response_frame(&mut stream);
    assert!(answer.is_err(), "an answer came from a killed connection process: {answer:?}");
    // The parent reaped it, logged it, and stays up.
    assert!(server.wait_for_children(0, DEADLINE), "the killed connection process was not reaped");
    assert!(
        wait_until(DEADLINE, || server.log().contains("connection process killed")),
        "the server did not log the killed connection process\n{}",
        server.log_tail()
    );
    assert!(server.log().contains("SIGKILL"), "the log does not name SIGKILL\n{}", server.log_tail());
    let parent = netdisk_e2e::proc_info(server.pid());
    assert!(parent.is_some_and(|p| p.state != 'Z'), "the server died with its connection process");
    let interrupted = pfile_of(&data, &md5);
    assert_eq!((interrupted.chunks_uploaded, interrupted.complete), (1, false), "{interrupted:?}");

    // A new connection: the same upload resumes, and the server asks only for the chunks it lacks.
    let mut client = login(&server);
    let resumed = begin_upload(&mut client, "/b.bin", &content);
    assert_eq!((resumed.chunk_size, resumed.chunk_count), (slot.chunk_size, slot.chunk_count));
    let needed = client.call(&QueryChunk { upload_id: resumed.upload_id, indexes: (0..5).collect() }).unwrap().needed;
    assert_eq!(needed, vec![1, 2, 3, 4], "chunk 0 was stored before the kill, chunk 1 was not");
    let mut complete = None;
    for index in needed {
        complete = send_chunk(&mut client, &resumed, &content, index).expect("chunk").complete;
    }
    let attr = complete.expect("the last chunk completes the file");
    assert_eq!((attr.size, attr.md5.as_deref()), (content.len() as u64, Some(md5.as_str())));
    assert_eq!(client.read_file("/b.bin").expect("download"), content, "the stored bytes differ");
    server.assert_fsck_clean();
}

/// Every regular file under `dir` on the server, with its size (a recursive listing).
fn files_on_server(client: &mut Client<TcpStream>, dir: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in client.list_dir(dir).unwrap_or_else(|e| panic!("list {dir}: {e}")) {
        let path = if dir == "/" { format!("/{}", e.name) } else { format!("{dir}/{}", e.name) };
        match e.attr.kind {
            NodeKind::Dir => out.extend(files_on_server(client, &path)),
            NodeKind::File => out.push((path, e.attr.size)),
            _ => {}
        }
    }
    out
}

/// Downloads every file the server lists and compares it with what was uploaded there; returns the paths.
#[track_caller]
fn check_every_listed_file(server: &Server, expected: &HashMap<String, Vec<u8>>) -> BTreeSet<String> {
    let mut client = login(server);
    let mut listed = BTreeSet::new();
    for (path, size) in files_on_server(&mut client, "/") {
        let want = expected.get(&path).unwrap_or_else(|| panic!("the server lists {path}, which nobody uploaded"));
        assert_eq!(size, want.len() as u64, "{path}: listed with the wrong size");
        let got = client.read_file(&path).unwrap_or_else(|e| panic!("download {path}: {e}"));
        assert!(got == *want, "{path}: a complete file with wrong bytes");
        listed.insert(path);
    }
    listed
}

/// (c) `kill -9` of the whole server (parent and connection processes) while several uploads run; a server
/// started again on the same data directory lists no file with wrong bytes, and the uploads resume.
#[test]
fn whole_server_killed_during_uploads_restarts_without_damage() {
    let mut server = server(ServerOpts::default().chunk_size(MIB as u32));
    let data = server.data_dir().to_path_buf();
    let mut expected: HashMap<String, Vec<u8>> = HashMap::new();

    // Complete before the crash.
    let mut client = login(&server);
    client.mkdir("/done", 0o755).unwrap();
    for (i, len) in [(0u64, 10_000usize), (1, 3 * MIB + 5), (2, 1)].into_iter() {
        let path = format!("/done/f{i}");
        let content = random_bytes(100 + i, len);
        client.upload(&path, &content, 0o644).expect("upload before the crash");
        expected.insert(path, content);
    }
    drop(client);

    // Uploads in flight at the crash, held at known points:
    // `/held/split`: 2 of 6 chunks stored, the connection process inside chunk 2;
    let split = random_bytes(200, 6 * MIB - 7);
    let mut c = login(&server);
    c.mkdir("/held", 0o755).unwrap();
    let slot = begin_upload(&mut c, "/held/split", &split);
    for index in 0..2 {
        send_chunk(&mut c, &slot, &split, index).expect("chunk stored");
    }
    let mut split_stream = c.into_stream();
    send_part_of_chunk(&mut split_stream, &data, &slot, &split, 2, MIB / 3);
    // `/held/idle`: 4 of 5 chunks stored, its connection waiting for the next request;
    let idle = random_bytes(201, 5 * MIB);
    let mut idle_client = login(&server);
    let slot = begin_upload(&mut idle_client, "/held/idle", &idle);
    for index in [0, 2, 3, 4] {
        send_chunk(&mut idle_client, &slot, &idle, index).expect("chunk stored");
    }
    // `/held/small`: a small file sent whole, half of it on the wire (its physical file exists, unsealed).
    let small = random_bytes(202, 40_000);
    let mut small_stream = login(&server).into_stream();
    let req = netdisk_e2e::upload_request("/held/small", &small);
    small_stream.write_all(&encode_message(Kind::UploadFile, 7, &req, small.len() as u32)).unwrap();
    small_stream.write_all(&small[..20_000]).unwrap();
    let small_id = {
        let mut id = None;
        let created = wait_until(DEADLINE, || {
            id = store::pfiles_of(&data, &md5_hex(&small)).first().map(|p| p.id);
            id.is_some_and(|id| read_at(&store::blob_path(&data, id), 0, 20_000) == small[..20_000])
        });
        assert!(created, "the small file's bytes never reached its blob");
        id.expect("found")
    };
    expected.insert("/held/split".into(), split.clone());
    expected.insert("/held/idle".into(), idle.clone());
    expected.insert("/held/small".into(), small.clone());

    // And uploads running freely on threads of their own (each its own client, as fast as it goes).
    let running: Vec<(String, Vec<u8>)> =
        (0..3).map(|i| (format!("/run/f{i}"), random_bytes(300 + i, 8 * MIB + i as usize * 1000))).collect();
    login(&server).mkdir("/run", 0o755).unwrap();
    let threads: Vec<_> = running
        .iter()
        .cloned()
        .map(|(path, content)| {
            let mut client = login(&server);
            std::thread::spawn(move || client.upload(&path, &content, 0o644).map(|o| o.chunks_sent))
        })
        .collect();
    for (path, content) in &running {
        expected.insert(path.clone(), content.clone());
    }
    // The crash comes once each of them has stored a chunk (or finished).
    let db = store::open(&data);
    let md5s: Vec<String> = running.iter().map(|(_, c)| md5_hex(c)).collect();
    let underway = wait_until(DEADLINE, || {
        let rows = store::pfiles_in(&db);
        md5s.iter().all(|m| rows.iter().any(|p| p.md5 == *m && (p.chunks_uploaded > 0 || p.complete)))
    });
    assert!(underway, "the running uploads did not start\n{}", server.log_tail());
    drop(db);
    let killed = server.kill_all();
    // At least the three held connections were open (each running upload's too, unless it had finished).
    assert!(killed.len() >= 3, "connection processes killed: {killed:?}");
    let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().expect("upload thread")).collect();
    eprintln!("(c) killed {} connection processes; running uploads ended: {outcomes:?}", killed.len());
    drop((split_stream, idle_client, small_stream));

    // What the crash left: unfinished uploads with their stored chunks, and the small file's physical file that
    // no upload binds (its request never completed).
    let after: HashMap<String, PFile> = expected
        .values()
        .filter_map(|c| store::pfiles_of(&data, &md5_hex(c)).into_iter().next().map(|p| (p.md5.clone(), p)))
        .collect();
    let stored = |c: &[u8]| after.get(&md5_hex(c)).map(|p| (p.chunks_uploaded, p.complete));
    assert_eq!(stored(&split), Some((2, false)));
    assert_eq!(stored(&idle), Some((4, false)));
    // fsck names that residue (and nothing else); a server starting on the directory reclaims it.
    let residue = server.fsck();
    assert_eq!(
        residue.problems(),
        [format!(
            "physical file {small_id} (blobs/{:02x}/{small_id}): incomplete, but no upload is bound to it (orphan: a crash's residue, which a server start reclaims)",
            small_id & 0xff
        )],
        "fsck after the crash:\n{}",
        residue.output()
    );

    server.restart();
    assert!(
        server.log().contains("reclaimed what a crash left") && server.log().contains("orphans=1"),
        "the restarted server did not reclaim the orphan\n{}",
        server.log_tail()
    );
    assert!(store::pfiles(&data).iter().all(|p| p.id != small_id), "the orphan physical file is still there");
    assert!(!store::blob_path(&data, small_id).exists(), "the orphan's blob is still there");
    // No complete file with wrong bytes: everything listed is downloaded and compared.
    let listed = check_every_listed_file(&server, &expected);
    for i in 0..3 {
        assert!(listed.contains(&format!("/done/f{i}")), "a file complete before the crash is gone: {listed:?}");
    }
    for path in ["/held/split", "/held/idle", "/held/small"] {
        assert!(!listed.contains(path), "{path} is listed although its upload never finished");
    }

    // The interrupted uploads resume: only the missing chunks are sent.
    let mut client = login(&server);
    let outcome = client.upload("/held/split", &split, 0o644).expect("resume split");
    assert_eq!(outcome.chunks_sent, 4, "split: 2 of 6 chunks were stored");
    let outcome = client.upload("/held/idle", &idle, 0o644).expect("resume idle");
    assert_eq!(outcome.chunks_sent, 1, "idle: 4 of 5 chunks were stored");
    client.upload_inline("/held/small", &small, 0o644).expect("small file sent again");
    for (path, content) in &running {
        let before = stored(content);
        let outcome = client.upload(path, content, 0o644).unwrap_or_else(|e| panic!("resume {path}: {e}"));
        let total = content.len().div_ceil(MIB) as u32;
        match before {
            Some((_, true)) => assert!(outcome.instant, "{path} was complete, yet chunks were sent: {outcome:?}"),
            Some((n, false)) => assert_eq!(outcome.chunks_sent, total - n, "{path}: {n} chunks were stored"),
            None => panic!("{path}: no physical file after the crash"),
        }
    }
    let listed = check_every_listed_file(&server, &expected);
    assert_eq!(listed.len(), expected.len(), "files missing after the uploads resumed: {listed:?}");
    server.assert_fsck_clean();
}

/// (d) The data directory on a small tmpfs that fills up: `cp` into the mount fails with ENOSPC, nothing is
/// marked complete, the server keeps serving, and once files are deleted the same copy succeeds.
#[test]
fn a_full_disk_fails_the_copy_and_the_server_keeps_serving() {
    let tmpfs = Tmpfs::mount("20m");
    let server = server(ServerOpts::default().chunk_size(MIB as u32).data_dir(tmpfs.path().join("data")));
    let data = server.data_dir().to_path_buf();
    let local = tempfile::tempdir().unwrap();
    let fill: Vec<_> = (0..2).map(|i| local.path().join(format!("fill{i}"))).collect();
    for (i, path) in fill.iter().enumerate() {
        local_file(path, 40 + i as u64, 7 * MIB);
    }
    let big = local.path().join("big");
    let big_content = local_file(&big, 42, 12 * MIB);
    let big_md5 = md5_hex(&big_content);

    let mount = Mount::start(&server, USER, PW);
    mount.sh_ok(&format!("echo kept > kept.txt && cp {} fill0 && cp {} fill1", fill[0].display(), fill[1].display()));
    let free = tmpfs.available();
    assert!(free < big_content.len() as u64, "{free} bytes free: the big file would fit");

    let out = mount.sh(&format!("cp {} big", big.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cp of {} bytes onto {free} free bytes succeeded", big_content.len());
    assert!(err.contains("No space left on device"), "cp failed, but not with ENOSPC: {err}\n{}", mount.log_tail());
    eprintln!("(d) cp onto {free} free bytes: {}", err.trim());
    // The server found its disk too small (uploads leave a reserve free: 5% of this disk, 1 MiB) for the size
    // the upload declared, and refused it at once (issue 10, hole 4): no byte of it was stored, nothing recorded,
    // and nothing is listed.
    assert!(
        server.log().contains("disk full: refusing"),
        "the server never found its disk full\n{}",
        server.log_tail()
    );
    assert!(store::pfiles_of(&data, &big_md5).is_empty(), "the refused upload left a physical file");
    assert!(tmpfs.available() >= free.saturating_sub(MIB as u64), "the refused upload took space");
    let mut client = login(&server);
    assert_eq!(client.names("/").unwrap(), ["fill0", "fill1", "kept.txt"], "the server lists a failed upload");

    // It keeps serving: logins, listings, downloads, on the mount and on a new connection, even when something
    // else takes the last byte of the disk.
    let ballast = tmpfs.path().join("ballast");
    fill_up(&ballast);
    assert_eq!(tmpfs.available(), 0, "the ballast left room");
    assert_eq!(client.read_file("/kept.txt").unwrap(), b"kept\n");
    assert_eq!(login(&server).read_file("/fill0").unwrap(), std::fs::read(&fill[0]).unwrap());
    mount.sh_ok(&format!("cat kept.txt >/dev/null && cmp {} fill1 && ls -l >/dev/null", fill[1].display()));
    std::fs::remove_file(&ballast).unwrap();

    // Deleting files frees the space; then the same copy succeeds.
    mount.sh_ok("rm fill0 fill1");
    mount.sh_ok(&format!("cp {} big && cmp {} big", big.display(), big.display()));
    assert_eq!(login(&server).read_file("/big").unwrap(), big_content, "the stored bytes differ");
    assert!(pfile_of(&data, &big_md5).complete);
    server.assert_fsck_clean();
    drop(mount);
    drop(server);
    drop(tmpfs);
}

/// Writes `path` until the disk is full.
fn fill_up(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(n) if n > 0 => {}
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// Runs `script` on the mount; asserts it fails with EIO within `bound`. Returns how long it took.
#[track_caller]
fn fails_with_eio(mount: &Mount, script: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    let out = mount.sh(script);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "`{script}` succeeded without a server");
    assert!(err.contains("Input/output error"), "`{script}` failed, but not with EIO: {err}\n{}", mount.log_tail());
    assert!(took <= bound, "`{script}` took {took:?} to fail, more than {bound:?}");
    took
}

/// (e) The server goes away under a mount in use: calls fail with EIO within the mount's `--timeout` (whether
/// the server hangs or is gone), never hang; when it is back on the same address, the mount works again.
#[test]
fn a_server_that_goes_away_gives_eio_and_the_mount_recovers() {
    let mut server = server(ServerOpts::default());
    let timeout = Duration::from_secs(1);
    let mount = Mount::start_with(&server, USER, PW, Mount::new_dir(), &["--timeout", "1"]);
    mount.sh_ok("echo hello > a.txt && mkdir d && echo inside > d/b.txt");
    let mount_pid = mount.pid();
    // Each command below makes at most two requests to the server (a lookup, then the operation), and each
    // request gives up after --timeout: with room for scheduling, a command fails within five timeouts.
    let bound = timeout * 5;
    let calls = ["cat a.txt", "ls d", "mkdir e", "echo new > n.txt", "rm d/b.txt"];

    // It hangs: every process stopped, connections open, nothing answers.
    server.pause().keep_stopped();
    let hung: Vec<Duration> = calls.iter().map(|c| fails_with_eio(&mount, c, bound)).collect();
    eprintln!("(e) server stopped (SIGSTOP): {:?}", calls.iter().zip(&hung).collect::<Vec<_>>());

    // It is gone: killed, nothing listens on its port.
    let killed = server.kill_all();
    assert!(!killed.is_empty(), "the mount had no connection to the server");
    let gone: Vec<Duration> = calls.iter().map(|c| fails_with_eio(&mount, c, bound)).collect();
    eprintln!("(e) server killed: {:?}", calls.iter().zip(&gone).collect::<Vec<_>>());

    // It is back on the same address and data directory: the same mount works again.
    server.restart();
    assert_eq!(mount.sh_ok("cat a.txt"), "hello\n");
    assert_eq!(mount.sh_ok("ls d"), "b.txt\n");
    mount.sh_ok("mkdir e && echo new > n.txt && rm d/b.txt && test \"$(cat n.txt)\" = new");
    assert_eq!(mount.pid(), mount_pid, "the mount was restarted");
    assert!(is_mounted(mount.path()));
    let mut client = login(&server);
    assert_eq!(client.names("/").unwrap(), ["a.txt", "d", "e", "n.txt"]);
    assert_eq!(client.names("/d").unwrap(), Vec::<String>::new());
    assert_eq!(client.read_file("/n.txt").unwrap(), b"new\n");
    server.assert_fsck_clean();
}
