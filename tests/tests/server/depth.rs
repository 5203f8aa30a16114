//! Directory depth: no request (a mkdir, a new file, symlink, special file or link, a rename of a whole subtree)
//! puts anything deeper than MAX_DEPTH, now that paths (MAX_PATH bytes) may be far longer than two bytes a level;
//! and fsck checks a tree however deep in memory linear in its size (a chain built directly in the database).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netdisk_e2e::netdisk_protocol::{
    ErrorCode, Link, Mknod, NodeKind, Owner, Symlink, MAX_DEPTH, MAX_INLINE_UPLOAD, MAX_NAME, MAX_PATH,
};
use netdisk_e2e::{code_of, random_bytes, server_bin, ServerOpts, STOP_TIMEOUT};
use rusqlite::{params, Connection};

use crate::{alice, server_with_alice};

#[test]
fn a_rename_that_would_nest_directories_too_deep_is_refused() {
    let server = server_with_alice(ServerOpts::default().durability("normal"));
    let mut c = alice(&server);
    // A chain exactly MAX_DEPTH deep, built the way the limit could once be passed: directories made at the top,
    // each moved into the one before (short paths all along; only the tree gets deep).
    for i in 0..=MAX_DEPTH {
        c.mkdir(&format!("/c{i}"), 0o755).expect("mkdir");
    }
    for i in (2..=MAX_DEPTH).rev() {
        c.rename(&format!("/c{i}"), &format!("/c{}/c{i}", i - 1), false).expect("a move that stays within the limit");
    }
    // /c1 holds a chain down to depth MAX_DEPTH: one level more anywhere is refused, and nothing changes.
    let before = c.names("/").expect("list /");
    assert_eq!(before, vec!["c0".to_string(), "c1".to_string()]);
    let refused = c.rename("/c1", "/c0/c1", false);
    assert_eq!(code_of(refused, "moving the chain one level down"), ErrorCode::NameTooLong);
    assert_eq!(c.names("/").expect("list /"), before, "the refused rename changed nothing");
    assert!(c.names("/c0").expect("list /c0").is_empty());
    assert_eq!(c.stat("/c1").expect("stat").nlink, 3);
    // Moves that make nothing deeper stay allowed: a rename in place, a subtree moved up or level.
    c.rename("/c1", "/top", false).expect("a rename in place");
    c.rename("/top/c2", "/c0/c2", false).expect("a subtree moved to the same depth");
    c.rename("/c0/c2/c3", "/c3", false).expect("a subtree moved up");
    server.assert_fsck_clean();
}

#[test]
fn nothing_goes_below_the_depth_limit_whatever_the_path_length() {
    let server = server_with_alice(ServerOpts::default().durability("normal"));
    let mut c = alice(&server);
    // A chain MAX_DEPTH deep made by mkdir alone, each naming the whole path: /d1/d2/.../d2048, names of two to
    // five bytes, so the deepest path is ~10 KiB, past the 4096 bytes paths used to be limited to.
    let mut above = String::new();
    for i in 1..MAX_DEPTH {
        above = format!("{above}/d{i}");
        c.mkdir(&above, 0o755).unwrap_or_else(|e| panic!("mkdir at depth {i}: {e}"));
    }
    let deepest = format!("{above}/d{MAX_DEPTH}");
    assert!(deepest.len() > 2 * 4096 && deepest.len() <= MAX_PATH, "{} bytes", deepest.len());
    c.mkdir(&deepest, 0o755).expect("a directory exactly MAX_DEPTH deep");
    assert_eq!(c.stat(&deepest).expect("stat the deepest").kind, NodeKind::Dir);

    // At MAX_DEPTH itself a file works, through a path of MAX_DEPTH names.
    let data = random_bytes(70, 3 * MAX_INLINE_UPLOAD as usize);
    c.upload_inline(&format!("{above}/small"), b"small", 0o644).expect("a small file at depth MAX_DEPTH");
    c.upload(&format!("{above}/big"), &data, 0o644).expect("a chunked file at depth MAX_DEPTH");
    assert_eq!(c.read_file(&format!("{above}/big")).expect("read it back"), data);

    // One level more, by any request, is refused with NameTooLong and nothing changes.
    let below = |name: &str| format!("{deepest}/{name}");
    let owner = Owner::default();
    let refusals = [
        ("mkdir", code_of(c.mkdir(&below("x"), 0o755), "mkdir")),
        ("small file", code_of(c.upload_inline(&below("f"), b"small", 0o644), "a small file")),
        ("chunked file", code_of(c.upload(&below("g"), &data, 0o644), "a chunked file")),
        ("symlink", code_of(c.call(&Symlink { path: below("l"), target: "t".into(), owner }), "symlink")),
        (
            "mknod",
            code_of(c.call(&Mknod { path: below("p"), kind: NodeKind::Fifo, mode: 0o644, rdev: 0, owner }), "mknod"),
        ),
        ("link", code_of(c.call(&Link { existing: format!("{above}/small"), new: below("h") }), "link")),
        ("rename of a file", code_of(c.rename(&format!("{above}/small"), &below("m"), false), "rename a file")),
    ];
    for (what, code) in refusals {
        assert_eq!(code, ErrorCode::NameTooLong, "{what} below depth MAX_DEPTH");
    }
    // Renames of directories: an empty one may land at MAX_DEPTH but not below it; one holding a directory may not
    // land where that directory would pass the limit.
    c.mkdir("/empty", 0o755).expect("mkdir /empty");
    c.mkdir("/full", 0o755).expect("mkdir /full");
    c.mkdir("/full/sub", 0o755).expect("mkdir /full/sub");
    let code = code_of(c.rename("/empty", &below("empty"), false), "an empty directory below the limit");
    assert_eq!(code, ErrorCode::NameTooLong);
    let code = code_of(c.rename("/full", &format!("{above}/full"), false), "a subtree past the limit");
    assert_eq!(code, ErrorCode::NameTooLong);
    c.rename("/empty", &format!("{above}/empty"), false).expect("an empty directory at depth MAX_DEPTH");
    assert!(c.names(&deepest).expect("list the deepest").is_empty(), "nothing landed below the limit");
    let mut names = c.names(&above).expect("list the level above");
    names.sort();
    assert_eq!(names, ["big", "d2048", "empty", "small"], "nothing else moved");
    assert_eq!(c.names("/full").expect("list /full"), ["sub"]);
    server.assert_fsck_clean();
}

/// A chain of `depth` directories with names of MAX_NAME bytes under alice's root, written into a stopped server's
/// database: the shape deep renames used to build, which no request can make any more.
fn plant_chain(db: &Connection, depth: usize) {
    let tx = db.unchecked_transaction().expect("begin");
    let root: i64 = tx.query_row("SELECT root FROM users WHERE name = 'alice'", [], |r| r.get(0)).expect("root");
    let user: i64 = tx.query_row("SELECT id FROM users WHERE name = 'alice'", [], |r| r.get(0)).expect("id");
    tx.execute("UPDATE nodes SET nlink = nlink + 1 WHERE id = ?", [root]).expect("root nlink");
    let mut parent = root;
    for i in 0..depth {
        let nlink = if i + 1 < depth { 3 } else { 2 };
        tx.execute(
            "INSERT INTO nodes (user_id, kind, mode, uid, gid, nlink, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s,
                                ctime_ns)
             VALUES (?, 2, 493, 0, 0, ?, 0, 0, 0, 0, 0, 0)",
            params![user, nlink],
        )
        .expect("insert a directory");
        let node = tx.last_insert_rowid();
        let name = format!("{i:06}{}", "d".repeat(MAX_NAME - 6));
        tx.execute("INSERT INTO entries (parent, name, node) VALUES (?, ?, ?)", params![parent, name, node])
            .expect("insert its entry");
        parent = node;
    }
    tx.commit().expect("commit");
}

/// `netdisk-server fsck --data DIR`: its exit code, stdout, and the child's peak resident memory in KiB: the last
/// `VmHWM` (the kernel's high-water mark of the process's own memory since its exec) read while it ran. Not wait4's
/// `ru_maxrss`: a child spawned from this test process inherits, at its exec, the high-water mark of the test
/// process's memory (every other test's logins and buffers), which says nothing about fsck.
fn fsck_with_max_rss(data: &std::path::Path) -> (Option<i32>, String, u64) {
    // Reaped by wait4 below (to get its rusage), which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(server_bin())
        .arg("fsck")
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run netdisk-server fsck");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + netdisk_e2e::FSCK_TIMEOUT;
    let mut peak_kib = 0;
    let status = loop {
        peak_kib = vm_hwm_kib(pid).unwrap_or(peak_kib).max(peak_kib);
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child, reaped here.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on the pid of our own child, with valid pointers to locals.
        let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(got >= 0, "wait4: {}", std::io::Error::last_os_error());
        if got == pid {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fsck did not finish within {:?}", netdisk_e2e::FSCK_TIMEOUT);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, reader.join().expect("the stdout reader"), peak_kib)
}

/// A process's `VmHWM` in KiB, while it exists.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn fsck_checks_a_very_deep_tree_in_bounded_memory() {
    const DEPTH: usize = 3000;
    let mut server = server_with_alice(ServerOpts::default());
    alice(&server).mkdir("/shallow", 0o755).expect("mkdir");
    server.terminate(STOP_TIMEOUT).expect("the server stops on SIGTERM");
    plant_chain(&Connection::open(server.data_dir().join("meta.db")).expect("open the database"), DEPTH);

    let (code, out, max_rss_kib) = fsck_with_max_rss(server.data_dir());
    eprintln!("fsck of a chain {DEPTH} directories deep: max RSS {} MiB\n{out}", max_rss_kib / 1024);
    // Paths of every depth would be ~1.1 GiB of strings at this depth (names of 255 bytes); the nodes are 3,000.
    assert!(max_rss_kib > 0, "fsck's memory was never read while it ran");
    assert!(max_rss_kib < 64 * 1024, "fsck took {max_rss_kib} KiB for {DEPTH} directories");
    // The only problem: the chain is deeper than requests may build; every line stays short.
    assert_eq!(code, Some(1), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "one problem and the summary:\n{out}");
    assert!(
        lines[0].contains(&format!("directories nested {DEPTH} deep, deeper than the limit of {MAX_DEPTH}")),
        "{out}"
    );
    assert!(lines[0].len() < 2 * netdisk_e2e::netdisk_protocol::MAX_PATH, "a bounded line: {} bytes", lines[0].len());
    assert!(lines[1].ends_with("checked, 1 problem"), "{out}");
}
