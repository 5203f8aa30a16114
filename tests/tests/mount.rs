//! End-to-end tests of `netdisk-mount`: a real server process, a real FUSE mount, real shell tools.
//! Every test owns its server and mounts; the guards unmount and stop them also when a test fails.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use netdisk_e2e::mount::{is_mounted, mount_must_fail, Mount};
use netdisk_e2e::netdisk_protocol::{MAX_NAME, MAX_PATH};
use netdisk_e2e::{random_bytes, wait_until, Server};

#[path = "mount/hostile.rs"]
mod hostile;

/// The bound on seeing another mount's changes (the mount's default `--attr-timeout` is 1 s), with room for a slow CI machine.
const VISIBILITY: Duration = Duration::from_secs(4);

/// A server with user `ann` and one mount of her tree. Fields drop in order: the mount before the server.
struct Fixture {
    mount: Mount,
    server: Server,
}

fn fixture() -> Fixture {
    let server = Server::start_default();
    server.add_user("ann", "pw");
    let mount = Mount::start(&server, "ann", "pw");
    Fixture { mount, server }
}

fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[test]
fn big_file_in_and_out_byte_exact() {
    let f = fixture();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("big.bin");
    write_file(&src, &random_bytes(1, 100 << 20));
    let src = src.display();
    f.mount.sh_ok(&format!("cp {src} big.bin && cmp {src} big.bin"));
    let out = local.path().join("back.bin");
    f.mount.sh_ok(&format!("cp big.bin {} && cmp {src} {}", out.display(), out.display()));
    // A fresh mount has no cache: the bytes come from the server.
    let second = Mount::start(&f.server, "ann", "pw");
    second.sh_ok(&format!("cmp {src} big.bin"));
}

#[test]
fn copy_a_tree_of_a_thousand_files_and_diff_it() {
    let f = fixture();
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    for d in 0..20 {
        let dir = tree.join(format!("dir{d:02}")).join("sub");
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..50 {
            let seed = d * 100 + i;
            write_file(&dir.join(format!("file{i:02}.txt")), &random_bytes(seed, (seed as usize * 37) % 8192));
        }
    }
    f.mount.sh_ok(&format!("cp -r {} tree && diff -r {} tree", tree.display(), tree.display()));
    let count = f.mount.sh_ok("find tree -type f | wc -l");
    assert_eq!(count.trim(), "1000");
}

#[test]
fn shell_tools_behave_as_on_a_local_disk() {
    let f = fixture();
    let m = &f.mount;
    m.sh_ok("mkdir -p a/b/c && echo one > a/b/c/f && test -d a/b/c");
    m.sh_ok("mv a/b/c/f a/g && test ! -e a/b/c/f && test \"$(cat a/g)\" = one");
    m.sh_ok("mv a/b z && test -d z/c && test ! -e a/b");
    m.sh_ok("echo two >> a/g && test \"$(cat a/g)\" = \"$(printf 'one\\ntwo')\"");
    m.sh_ok("truncate -s 2 a/g && test \"$(cat a/g)\" = on && truncate -s 5 a/g && test $(stat -c %s a/g) = 5");
    m.sh_ok("touch -d '2001-02-03 04:05:06.123456789' a/g && test \"$(stat -c %y a/g)\" = '2001-02-03 04:05:06.123456789 +0000'");
    m.sh_ok("chmod 4751 a/g && test $(stat -c %a a/g) = 4751");
    m.sh_ok(
        "printf 'hello world\\n' > s.txt && sed -i 's/world/there/' s.txt && test \"$(cat s.txt)\" = 'hello there'",
    );
    m.sh_ok("rm -rf z a && test ! -e z && test ! -e a && test \"$(ls)\" = s.txt");
    m.sh_ok("mkdir d && touch d/x && ! rmdir d 2>/dev/null && rm d/x && rmdir d");
    // Every change reached the server: a second mount sees the same tree.
    let second = Mount::start(&f.server, "ann", "pw");
    assert_eq!(second.sh_ok("ls"), "s.txt\n");
    assert_eq!(second.sh_ok("cat s.txt"), "hello there\n");
}

/// pjdfstest truncate/12 and ftruncate/12 (the C suite): a size past the largest file is EFBIG, on a closed file
/// (the server decides) and on an open one (the mount's staged copy decides), and the file keeps its size.
#[test]
fn a_truncate_past_the_largest_file_is_efbig() {
    let f = fixture();
    let m = &f.mount;
    m.sh_ok("printf abcd > f");
    for size in ["999999999999999999", "17592186044417"] {
        let closed = m.sh(&format!("perl -e 'truncate(\"f\", {size}) or die \"$!\\n\"'"));
        let open = m.sh(&format!("perl -e 'open(my $h, \"+<\", \"f\") or die; truncate($h, {size}) or die \"$!\\n\"'"));
        for (what, out) in [("truncate", closed), ("ftruncate", open)] {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("File too large"),
                "{what} to {size}: {err}\n{}",
                m.log_tail()
            );
        }
        assert_eq!(m.sh_ok("stat -c %s f && cat f"), "4\nabcd", "the file changed");
    }
}

#[test]
fn deleted_files_never_come_back() {
    let f = fixture();
    let other = Mount::start(&f.server, "ann", "pw");
    f.mount.sh_ok("mkdir doomed && cd doomed && for i in $(seq 1 1000); do : > f$i; done");
    assert_eq!(f.mount.sh_ok("ls doomed | wc -l").trim(), "1000");
    assert!(
        wait_until(VISIBILITY, || other.sh("ls doomed | wc -l").stdout == b"1000\n"),
        "the other mount sees the files"
    );
    f.mount.sh_ok("rm -rf doomed");
    let started = Instant::now();
    let mut other_clear = None;
    while started.elapsed() < Duration::from_secs(3) {
        let here = f.mount.sh_ok("ls -a");
        assert!(!here.contains("doomed"), "the deleted directory is back: {here}");
        let there = other.sh("ls doomed 2>/dev/null | wc -l");
        let there = String::from_utf8_lossy(&there.stdout).trim().to_string();
        match other_clear {
            None if there == "0" => other_clear = Some(started.elapsed()),
            Some(at) => {
                assert_eq!(there, "0", "deleted files reappeared on the other mount {at:?} after they were gone")
            }
            None => {}
        }
    }
    let at = other_clear.expect("the other mount stopped showing the deleted files");
    assert!(at <= VISIBILITY, "the other mount saw the deletion after {at:?}");
}

#[test]
fn two_mounts_see_each_others_files() {
    let f = fixture();
    let other = Mount::start(&f.server, "ann", "pw");
    let data = random_bytes(7, 3 << 20);
    // Being written: invisible on the other mount until closed (L8).
    let mut open = std::fs::File::create(f.mount.join("growing.bin")).unwrap();
    open.write_all(&data).unwrap();
    open.flush().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(!other.join("growing.bin").exists(), "a file still being written is visible on the other mount");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(open);
    assert!(
        wait_until(VISIBILITY, || std::fs::read(other.join("growing.bin")).is_ok_and(|d| d == data)),
        "the closed file is not readable, byte-exact, on the other mount"
    );
    // And the other way round, replacing content.
    let newer = random_bytes(8, 100_000);
    write_file(&other.join("growing.bin"), &newer);
    assert!(
        wait_until(VISIBILITY, || std::fs::read(f.mount.join("growing.bin")).is_ok_and(|d| d == newer)),
        "the new content is not visible on the first mount"
    );
}

#[test]
fn the_root_directory_shows_changes_made_elsewhere() {
    let f = fixture();
    let before = std::fs::metadata(f.mount.path()).unwrap();
    let other = Mount::start(&f.server, "ann", "pw");
    other.sh_ok("mkdir sub");
    let changed = || {
        std::fs::metadata(f.mount.path()).is_ok_and(|m| m.nlink() == before.nlink() + 1 && m.mtime() >= before.mtime())
    };
    assert!(
        wait_until(VISIBILITY, changed),
        "the root's link count and mtime are the server's, not the mount-time ones"
    );
}

#[test]
fn copying_in_content_the_server_holds_sends_no_chunk() {
    let f = fixture();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src.bin");
    write_file(&src, &random_bytes(3, 5 << 20));
    f.mount.sh_ok(&format!("cp {} first.bin", src.display()));
    f.mount.sh_ok(&format!("cp {} second.bin && cmp {} second.bin", src.display(), src.display()));
    let log = f.server.log();
    assert!(log.contains("upload complete path=/first.bin"), "the first copy was uploaded\n{}", f.server.log_tail());
    assert!(
        log.lines().any(|l| l.contains("instant upload") && l.contains("path=/second.bin")),
        "the second copy was not instant\n{}",
        f.server.log_tail()
    );
    assert!(!log.contains("upload complete path=/second.bin"), "the second copy sent chunks");
}

/// The type and options the kernel shows for the mount on `path` (its line in /proc/mounts).
fn kernel_mount(path: &Path) -> (String, Vec<String>) {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    let target = path.to_str().expect("a UTF-8 path");
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(target)).expect("the mount in /proc/mounts");
    let fields: Vec<&str> = line.split(' ').collect();
    (fields[2].to_string(), fields[3].split(',').map(str::to_string).collect())
}

fn kernel_mount_options(path: &Path) -> Vec<String> {
    kernel_mount(path).1
}

#[test]
fn a_root_mount_is_nosuid_and_nodev_unless_asked() {
    // Whoever can write to the store chooses the modes and device numbers it serves: a setuid-root program or a
    // device node from it must not work on the machine that mounts it, unless its admin says so.
    let f = fixture();
    f.mount.sh_ok("cp /bin/true planted && chmod 4755 planted && mknod dev c 1 1");
    let options = kernel_mount_options(f.mount.path());
    assert!(options.iter().any(|o| o == "nosuid") && options.iter().any(|o| o == "nodev"), "{options:?}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(f.mount.join("planted")).unwrap().permissions());
    assert_eq!(mode & 0o4000, 0o4000, "the bit is stored and shown, only not honoured");
    // The admin's explicit choice.
    let opted = Mount::start_with(&f.server, "ann", "pw", Mount::new_dir(), &["-o", "suid,dev"]);
    let options = kernel_mount_options(opted.path());
    assert!(!options.iter().any(|o| o == "nosuid" || o == "nodev"), "{options:?}");
}

#[test]
fn proc_mounts_names_the_type_and_the_options_asked() {
    let f = fixture();
    let (kind, options) = kernel_mount(f.mount.path());
    assert_eq!(kind, "fuse.netdisk", "the subtype is kept: {options:?}");
    assert!(!options.iter().any(|o| o == "noexec" || o == "ro"), "{options:?}");
    assert_eq!(f.mount.sh_ok("cp /bin/true t && ./t && echo ran").trim(), "ran");
    let asked = Mount::start_with(&f.server, "ann", "pw", Mount::new_dir(), &["-o", "noexec,ro"]);
    let (kind, options) = kernel_mount(asked.path());
    assert_eq!(kind, "fuse.netdisk");
    assert!(options.iter().any(|o| o == "noexec") && options.iter().any(|o| o == "ro"), "{options:?}");
    let out = asked.sh("./t; echo \"ran $?\"; touch new 2>&1");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("ran 126"), "a program on a noexec mount does not run: {out}");
    assert!(!asked.join("new").exists(), "nothing is created on a read-only mount: {out}");
}

#[test]
fn a_directory_holding_a_file_being_written_is_not_empty() {
    // The file exists only in this mount until its close uploads it: the server sees the directory empty. Removing
    // (or replacing) the directory then would lose the file while its writer's close still said 0.
    let f = fixture();
    let out = f.mount.sh_ok(
        "mkdir c e && exec 3>c/f && echo data >&3 && \
         { rmdir c 2>&1 || true; } && { mv -T e c 2>&1 || true; } && exec 3>&- && cat c/f",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("Directory not empty"), "rmdir of a directory with a file being written: {out}");
    assert!(lines[1].contains("Directory not empty"), "a rename over it: {out}");
    assert_eq!(lines[2], "data", "the file arrived whole: {out}");
    assert_eq!(f.mount.sh_ok("rm c/f && rmdir c && ls").trim(), "e", "once closed and removed, rmdir works");
}

/// A program sees a local file system's limits (issue 11): a relative path of 4,095 bytes (PATH_MAX less its NUL)
/// works from a directory deep in the mount, although the mount sends the server the directory's own path too.
#[test]
fn a_relative_path_of_4095_bytes_works_deep_in_the_mount() {
    let Fixture { mount, server } = fixture();
    // A directory 1,999 bytes below the mount root, and below it 15 directories and a file of 255-byte names.
    let prefix: Vec<String> = (0..8).map(|i| format!("{i}{}", "p".repeat(248))).collect();
    let prefix = prefix.join("/");
    let dirs: Vec<String> = (0..15).map(|i| format!("{i:02}{}", "d".repeat(MAX_NAME - 2))).collect();
    let dirs = dirs.join("/");
    let (file, moved) = (format!("{dirs}/{}", "f".repeat(MAX_NAME)), format!("{dirs}/{}", "g".repeat(MAX_NAME)));
    assert_eq!((prefix.len(), file.len(), moved.len()), (1999, 4095, 4095));
    let out = mount.sh_ok(&format!(
        "mkdir -p {prefix} && cd {prefix} && mkdir -p {dirs} && echo hello > {file} && cat {file} && \
         stat -c '%s %F' {file} && mv {file} {moved} && test ! -e {file} && cat {moved} && ls {dirs}"
    ));
    let g = "g".repeat(MAX_NAME);
    assert_eq!(out, format!("hello\n6 regular file\nhello\n{g}\n"));
    // The server holds it under its whole path, 6,096 bytes from the root.
    let whole = format!("/{prefix}/{moved}");
    assert_eq!(whole.len(), 6096);
    let mut c = server.login("ann", "pw");
    assert_eq!(c.read_file(&whole).expect("the file, by its whole path"), b"hello\n");
    mount.sh_ok(&format!("cd {prefix} && rm {moved} && test ! -e {moved} && rm -r 00dd* && test -z \"$(ls -A)\""));
    assert!(c.names(&format!("/{prefix}")).expect("list the prefix").is_empty());
    mount.sh_ok("rm -r 0ppp* && test -z \"$(ls -A)\"");
    drop(mount);
    server.assert_fsck_clean();
}

/// Past the longest path the server takes (MAX_PATH bytes from the mount root), every call gets ENAMETOOLONG, never
/// EIO; up to it, everything works. Built by perl one directory at a time (each call a short relative path), far
/// deeper than any absolute path (4,095 bytes) could name.
#[test]
fn a_path_past_the_servers_limit_is_enametoolong() {
    let Fixture { mount, server } = fixture();
    assert_eq!(MAX_PATH % (MAX_NAME + 1), 0, "the levels below fill MAX_PATH exactly");
    // Levels of 255-byte names reach MAX_PATH - 256; a last name of 255 bytes reaches MAX_PATH exactly, and inside a
    // directory of 254 bytes any name is one byte too many.
    let levels = MAX_PATH / (MAX_NAME + 1) - 1;
    let script = r#"
        use strict;
        use Errno;
        use POSIX ();
        my ($levels) = @ARGV;
        for my $i (1 .. $levels) {
            my $d = sprintf("%03d", $i) . ("x" x 252);
            mkdir($d) or die "mkdir at level $i: $!
";
            chdir($d) or die "chdir at level $i: $!
";
        }
        my $max = "f" x 255;
        open(my $h, ">", $max) or die "create at MAX_PATH: $!
";
        print $h "at the limit
";
        close($h) or die "close at MAX_PATH: $!
";
        open($h, "<", $max) or die "open at MAX_PATH: $!
";
        print scalar(<$h>);
        close($h);
        my $dir = "e" x 254;
        mkdir($dir) or die "mkdir at MAX_PATH - 1: $!
";
        chdir($dir) or die "chdir at MAX_PATH - 1: $!
";
        my $x;
        for my $call (
            ["stat", sub { stat("a") }],
            ["mkdir", sub { mkdir("a") }],
            ["create", sub { open($x, ">", "a") }],
            ["mkfifo", sub { POSIX::mkfifo("a", 0644) }],
            ["symlink", sub { symlink("t", "a") }],
            ["link", sub { link("../$max", "a") }],
            ["rename", sub { rename("../$max", "a") }],
        ) {
            my ($what, $f) = @$call;
            $! = 0;
            my $ok = $f->();
            print "$what: ", ($ok ? "succeeded" : $!{ENAMETOOLONG} ? "ENAMETOOLONG" : "$!"), "
";
        }
        -e "../$max" or die "the file at MAX_PATH is gone
";
    "#;
    let out = mount.sh_ok(&format!("perl -e '{}' {levels}", script.replace('\'', "'\\''")));
    let want = "at the limit\nstat: ENAMETOOLONG\nmkdir: ENAMETOOLONG\ncreate: ENAMETOOLONG\nmkfifo: ENAMETOOLONG\n\
                symlink: ENAMETOOLONG\nlink: ENAMETOOLONG\nrename: ENAMETOOLONG\n";
    assert_eq!(out, want, "{}", mount.log_tail());
    // The file at the limit is on the server, at a path of exactly MAX_PATH bytes.
    let level = |i: usize| format!("/{i:03}{}", "x".repeat(252));
    let at_limit: String = (1..=levels).map(level).collect::<String>() + "/" + &"f".repeat(MAX_NAME);
    assert_eq!(at_limit.len(), MAX_PATH);
    let mut c = server.login("ann", "pw");
    assert_eq!(c.read_file(&at_limit).expect("the file at MAX_PATH"), b"at the limit\n");
    // rm walks it down and removes it all (openat relative to each directory).
    mount.sh_ok("rm -r 001x* && test -z \"$(ls -A)\"");
    assert!(c.names("/").expect("list the root").is_empty());
    drop(mount);
    server.assert_fsck_clean();
}

#[test]
fn a_file_whose_directory_another_client_removed_fails_fsync_and_close() {
    // Another client sees the directory empty (the file is still being written here) and removes it: the upload
    // then has no place to go, and the writer must hear it, at fsync and at close, never get 0.
    let f = fixture();
    f.mount.sh_ok("mkdir c");
    let mut file = std::fs::File::create(f.mount.join("c/f")).unwrap();
    file.write_all(b"written while the directory went away\n").unwrap();
    f.server.login("ann", "pw").rmdir("/c").expect("the server sees /c empty");
    // Once this mount has seen /c go too, the file has no path at all here: still an error, not a silent success.
    assert!(wait_until(VISIBILITY, || !f.mount.join("c").exists()), "the removal of /c reaches this mount");
    let synced = file.sync_all();
    assert!(synced.is_err(), "fsync reported success for an upload with no place to go");
    let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    // SAFETY: closing a descriptor this test owns (taken out of the File), once.
    let rc = unsafe { libc::close(fd) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, -1, "close reported success for an upload with no place to go");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "close: {err}");
}

#[test]
fn setgid_directories_pass_on_their_group_as_on_ext4() {
    let f = fixture();
    f.mount
        .sh_ok("mkdir sg && chgrp 4242 sg && chmod 2775 sg && touch sg/f && mkdir sg/d && ln -s f sg/l && mkfifo sg/p");
    let out = f.mount.sh_ok("stat -c '%n %g %a' sg/f sg/d sg/p && stat -c '%n %g' sg/l");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "sg/f 4242 644", "a new file takes the directory's group: {out}");
    assert_eq!(lines[1], "sg/d 4242 2755", "a new subdirectory takes the group and keeps the setgid bit: {out}");
    assert_eq!(lines[2], "sg/p 4242 644", "a new fifo takes the group: {out}");
    assert_eq!(lines[3], "sg/l 4242", "a new symlink takes the group: {out}");
    // Outside a setgid directory nothing changes.
    let out = f.mount.sh_ok("mkdir plain && touch plain/g && stat -c '%g %a' plain/g");
    assert_eq!(out.trim(), "0 644", "{out}");
}

#[test]
fn content_another_user_holds_is_proven_not_sent() {
    // The mount hashes what is written with the server's proof salt, so its proof of content another user holds is
    // right: nothing travels.
    let f = fixture();
    f.server.add_user("bea", "bea-pw");
    let bea = Mount::start(&f.server, "bea", "bea-pw");
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src.bin");
    write_file(&src, &random_bytes(4, 3 << 20));
    f.mount.sh_ok(&format!("cp {} ann.bin", src.display()));
    bea.sh_ok(&format!("cp {} bea.bin && cmp {} bea.bin", src.display(), src.display()));
    let log = f.server.log();
    assert!(
        log.lines().any(|l| l.contains("instant upload (ownership proven)") && l.contains("path=/bea.bin")),
        "bea's copy was not proven instant\n{}",
        f.server.log_tail()
    );
    assert!(!log.contains("upload complete path=/bea.bin"), "bea's copy sent chunks");
}

#[test]
fn mounting_fails_clearly_without_a_server_or_with_a_wrong_password() {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (status, stderr, mounted) = mount_must_fail(&["--server", &addr, "--user", "ann"], "pw");
    assert!(!status.success() && !mounted, "mounting without a server: {status}");
    assert!(stderr.contains("cannot reach the server"), "unclear message: {stderr}");

    let server = Server::start_default();
    server.add_user("ann", "pw");
    let (status, stderr, mounted) =
        mount_must_fail(&["--server", &server.addr().to_string(), "--user", "ann"], "wrong");
    assert!(!status.success() && !mounted, "mounting with a wrong password: {status}");
    assert!(stderr.contains("refused the login"), "unclear message: {stderr}");
}

fn assert_clean_exit(mut mount: Mount, how: &str) {
    let status =
        mount.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("netdisk-mount still runs after {how}"));
    assert!(status.success(), "netdisk-mount exited with {status} after {how}\n{}", mount.log_tail());
    assert!(!is_mounted(mount.path()), "still mounted after {how}");
}

#[test]
fn sigterm_and_fusermount_unmount_cleanly() {
    let f = fixture();
    f.mount.sh_ok("echo kept > note.txt");
    let Fixture { mount, server } = f;
    mount.signal(libc::SIGTERM);
    assert_clean_exit(mount, "SIGTERM");

    let mount = Mount::start(&server, "ann", "pw");
    assert_eq!(mount.sh_ok("cat note.txt"), "kept\n");
    let status = Command::new("fusermount3").arg("-u").arg(mount.path()).status().expect("fusermount3 (package fuse3)");
    assert!(status.success(), "fusermount3 -u failed");
    assert_clean_exit(mount, "fusermount3 -u");

    let mount = Mount::start(&server, "ann", "pw");
    let status = Command::new("umount").arg(mount.path()).status().expect("umount");
    assert!(status.success(), "umount failed");
    assert_clean_exit(mount, "umount");
}

#[test]
fn local_mode_keeps_its_data_between_mounts() {
    let data = tempfile::tempdir().unwrap();
    {
        let mount = Mount::start_local(data.path());
        mount.sh_ok("mkdir docs && echo hi > docs/readme");
    }
    let mount = Mount::start_local(data.path());
    assert_eq!(mount.sh_ok("cat docs/readme"), "hi\n");
}

#[test]
fn a_mount_left_by_a_killed_client_is_cleared_at_the_next_start() {
    let f = fixture();
    f.mount.sh_ok("echo survives > f.txt");
    let Fixture { mount, server } = f;
    let dir = mount.kill_and_leave_mount();
    let dead = std::fs::metadata(dir.path().join("mnt")).expect_err("a dead mount answers nothing");
    assert_eq!(dead.raw_os_error(), Some(libc::ENOTCONN), "not a dead mount: {dead}");
    let mount = Mount::start_in(&server, "ann", "pw", dir);
    assert_eq!(mount.sh_ok("cat f.txt"), "survives\n");
}

#[test]
fn links_special_files_owners_and_random_writes() {
    let f = fixture();
    let m = &f.mount;
    m.sh_ok("echo data > f && ln -s f sym && test \"$(readlink sym)\" = f && test \"$(cat sym)\" = data");
    m.sh_ok("ln f hard && test $(stat -c %h f) = 2 && test $(stat -c %i f) = $(stat -c %i hard) && rm f && cat hard | grep -qx data");
    m.sh_ok("mkfifo pipe && test -p pipe && mknod dev c 1 7 && test -c dev && test \"$(stat -c %t,%T dev)\" = 1,7");
    m.sh_ok("chown 1234:5678 hard && test \"$(stat -c %u:%g hard)\" = 1234:5678");
    m.sh_ok("chmod 1777 . 2>/dev/null; mkdir sticky && chmod 1777 sticky && test $(stat -c %a sticky) = 1777");
    // Random writes and appends inside one open file.
    m.sh_ok("printf 0123456789 > r && printf AB | dd of=r bs=1 seek=3 conv=notrunc status=none && test \"$(cat r)\" = 012AB56789");
    m.sh_ok("printf XY | dd of=r bs=1 seek=12 conv=notrunc status=none && test $(stat -c %s r) = 14");
    m.sh_ok("exec 3<>r && printf Z >&3 && exec 3>&- && test \"$(head -c 3 r)\" = Z12");
    // mv -n must not replace (coreutils uses RENAME_NOREPLACE where it can).
    m.sh_ok("echo keep > t && mv -n r t; test \"$(cat t)\" = keep");
    m.sh_ok("df -P . | tail -1 | awk '{ exit !($2 > 0) }'");
    let second = Mount::start(&f.server, "ann", "pw");
    second.sh_ok(
        "test -p pipe && test -c dev && test -L sym && test $(stat -c %a sticky) = 1777 && test $(stat -c %s r) = 14",
    );
}

#[test]
fn a_failed_upload_fails_close_and_keeps_the_data() {
    let f = fixture();
    f.mount.sh_ok("echo before > before.txt");
    let Fixture { mount, mut server } = f;
    let mut file = std::fs::File::create(mount.join("lost.txt")).unwrap();
    server.terminate(Duration::from_secs(10)).expect("the server stops");
    file.write_all(b"precious bytes\n").expect("writes go to the local staging file");
    let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    // SAFETY: closing a descriptor this test owns (taken out of the File), once.
    let rc = unsafe { libc::close(fd) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, -1, "close must report the failed upload");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "close should fail with EIO: {err}");
    let staging = mount.work_dir().join("cache").join("staging");
    let kept: Vec<_> = std::fs::read_dir(&staging).unwrap().filter_map(|e| e.ok()).collect();
    assert!(
        kept.iter().any(|e| std::fs::read(e.path()).is_ok_and(|d| d == b"precious bytes\n")),
        "the staged data is not kept in {}: {:?}\n{}",
        staging.display(),
        kept.iter()
            .map(|e| (e.path(), std::fs::read(e.path()).map(|d| String::from_utf8_lossy(&d).into_owned())))
            .collect::<Vec<_>>(),
        mount.log_tail()
    );
    // Calls that need the server fail quickly instead of hanging.
    let started = Instant::now();
    let out = mount.sh("cat before.txt; ls -la > /dev/null");
    assert!(started.elapsed() < Duration::from_secs(60), "calls hung while the server was down");
    drop(out);
}

#[test]
fn cp_inside_the_mount_copies_on_the_server() {
    let f = fixture();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src.bin");
    write_file(&src, &random_bytes(9, 6 << 20));
    let src = src.display();
    f.mount.sh_ok(&format!("cp {src} a.bin"));
    f.mount.sh_ok(&format!("cp a.bin b.bin && cmp {src} b.bin"));
    assert!(
        f.mount.log().contains("copy_file_range done on the server"),
        "cp inside the mount moved bytes instead of copying on the server\n{}",
        f.mount.log_tail()
    );
    // The copy is a file of its own: changing it leaves the original alone, and a fresh mount agrees.
    f.mount.sh_ok("echo tail >> b.bin && test $(stat -c %s b.bin) = $((6 * 1024 * 1024 + 5))");
    f.mount.sh_ok(&format!("cmp {src} a.bin && head -c 6291456 b.bin | cmp - a.bin"));
    let second = Mount::start(&f.server, "ann", "pw");
    assert_eq!(second.sh_ok("tail -c 5 b.bin"), "tail\n");
    second.sh_ok(&format!("cmp {src} a.bin"));
}

#[test]
fn many_files_copied_in_at_once_all_arrive() {
    let f = fixture();
    let local = tempfile::tempdir().unwrap();
    let mut script = String::from("mkdir -p par && (");
    // Sixteen uploads at once share the mount's connections: each upload's challenge must be answered on the
    // connection that asked it, while the others' chunks keep the pool busy.
    for i in 0..16 {
        let src = local.path().join(format!("f{i}"));
        write_file(&src, &random_bytes(100 + i, (4 << 20) + (i as usize % 4) * (2 << 20) + 7 * i as usize));
        script.push_str(&format!("cp {} par/f{i} & ", src.display()));
    }
    script.push_str("wait) && for i in $(seq 0 15); do test -f par/f$i || exit 1; done");
    // Each cp's exit status is checked: `wait` alone returns 0, so compare every file too.
    f.mount.sh_ok(&script);
    for i in 0..16 {
        let src = local.path().join(format!("f{i}"));
        f.mount.sh_ok(&format!("cmp {} par/f{i}", src.display()));
    }
    let second = Mount::start(&f.server, "ann", "pw");
    for i in 0..16 {
        let src = local.path().join(format!("f{i}"));
        second.sh_ok(&format!("cmp {} par/f{i}", src.display()));
    }
}

#[test]
fn writes_beyond_the_quota_fail_with_edquot() {
    let f = fixture();
    let (ok, out) = f.server.admin(&["user", "quota", "ann", "1M"], None);
    assert!(ok, "{out}");
    f.mount.sh_ok("head -c 700000 /dev/zero > a && head -c 200000 /dev/urandom > b");
    // df shows the quota's size and what is left of it, not the server's disk.
    let df = f.mount.sh_ok("df -B1 --output=size,avail . | tail -1");
    let sizes: Vec<u64> = df.split_whitespace().map(|n| n.parse().expect("df prints numbers")).collect();
    assert_eq!(sizes[0], 1 << 20, "df's size is the quota: {df}");
    assert!(sizes[1] <= (1 << 20) - 900_000 && sizes[1] + 4096 > (1 << 20) - 900_000, "df's room: {df}");
    let out = f.mount.sh("head -c 500000 /dev/urandom > c");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Disk quota exceeded"), "the write over the quota: {err}");
    // The shell created c (empty) before head wrote to it, as on a local disk; the refused bytes are not stored.
    let size_on_server = |name: &str| f.server.login("ann", "pw").stat(name).map(|a| a.size).ok();
    assert_eq!(size_on_server("/c"), Some(0), "only the empty file the shell created is on the server");
    // Freeing space makes room again.
    f.mount.sh_ok("rm a && head -c 500000 /dev/urandom > c");
    assert_eq!((size_on_server("/a"), size_on_server("/c")), (None, Some(500_000)));
}

#[test]
fn a_failed_upload_is_kept_listed_and_retried_or_discarded() {
    let f = fixture();
    let point = f.mount.path().to_str().expect("utf-8 path").to_string();
    let staging = f.mount.work_dir().join("cache/staging");
    let staged_files = || std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    let quota = |q: &str| assert!(f.server.admin(&["user", "quota", "ann", q], None).0);
    let local = tempfile::tempdir().unwrap();
    let big = local.path().join("big.bin");
    let data = random_bytes(41, 1_500_000);
    write_file(&big, &data);
    f.mount.sh_ok("echo small > a");
    quota("1M");

    // A new file: cp fails at close, the name is not shown (the server has none), the bytes are kept and listed.
    let out = f.mount.sh(&format!("cp {} new.bin", big.display()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Disk quota exceeded"), "{out:?}");
    assert_eq!(f.mount.sh_ok("ls"), "a\n", "names match the server after a failed upload");
    let (ok, status) = mount_cli(&["status", &point]);
    assert!(ok && status.contains("kept after a failed upload") && status.contains("/new.bin (1.4 MiB)"), "{status}");
    // Retried once there is room: uploaded through the mount, then no longer kept.
    quota("10M");
    let (ok, out) = mount_cli(&["retry", &point, "/new.bin"]);
    assert!(ok, "{out}");
    assert_eq!(f.server.login("ann", "pw").read_file("/new.bin").unwrap(), data, "retried bytes on the server");
    assert!(!mount_cli(&["status", &point]).1.contains("kept after"));
    assert_eq!(staged_files(), 0, "nothing left in {}", staging.display());

    // An existing file: its name shows the server's content; removing the name removes what was kept for it.
    quota("1M");
    assert!(!f.mount.sh(&format!("cp {} a", big.display())).status.success());
    assert_eq!(f.mount.sh_ok("cat a"), "small\n");
    assert!(mount_cli(&["status", &point]).1.contains("/a (1.4 MiB)"));
    f.mount.sh_ok("rm a");
    assert!(!mount_cli(&["status", &point]).1.contains("kept after"), "kept bytes went with their name");
    assert_eq!(staged_files(), 0);

    // Discarded on request.
    assert!(!f.mount.sh(&format!("cp {} b", big.display())).status.success());
    let (ok, out) = mount_cli(&["discard", &point, "/b"]);
    assert!(ok && out.contains("discarded /b"), "{out}");
    assert_eq!(staged_files(), 0);
    assert!(!mount_cli(&["discard", &point, "/b"]).0, "nothing is kept for /b any more");
}

/// Runs `netdisk-mount ARGS`, bounded; returns success and stdout + stderr.
fn mount_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "20"])
        .arg(netdisk_e2e::mount::mount_bin())
        .args(args)
        .output()
        .expect("netdisk-mount runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Extended attribute `name` of an open file, as text.
fn fd_xattr(file: &std::fs::File, name: &str) -> Option<String> {
    use std::os::fd::AsRawFd;
    let c_name = std::ffi::CString::new(name).expect("no NUL");
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid descriptor, a NUL-terminated name, and a buffer writable for its length.
    let n = unsafe { libc::fgetxattr(file.as_raw_fd(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

/// Whether the local file `path` has the extended attribute `name`.
fn xattr_on(path: &Path, name: &str) -> bool {
    let out = Command::new("getfattr").args(["--only-values", "-n", name]).arg(path).output().expect("getfattr runs");
    out.status.success()
}

/// `getfattr --only-values -n NAME PATH` in the mount, or None when the file has no such attribute.
fn xattr(f: &Fixture, name: &str, path: &str) -> Option<String> {
    let out = f.mount.sh(&format!("getfattr --only-values -n {name} {path}"));
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn status_and_extended_attributes_show_uploads() {
    let server = Server::start_default();
    server.add_user("ann", "pw");
    // Attributes trusted for a minute: while the server is paused below, reading an attribute of an open file
    // needs no fresh attributes (the kernel's permission check would ask the paused server for them).
    let dir = tempfile::Builder::new().prefix("netdisk-mount-").tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mnt")).unwrap();
    let mount = Mount::start_with(&server, "ann", "pw", dir, &["--attr-timeout", "60"]);
    let f = Fixture { mount, server };
    let point = f.mount.path().to_str().expect("utf-8 path").to_string();
    let (ok, idle) = mount_cli(&["status", &point]);
    assert!(ok && idle.contains("connected") && idle.contains("uploads: none in progress"), "{idle}");

    // A file written while the server is paused: its upload at close waits, and shows.
    let size = 24 << 20;
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src.bin");
    let data = random_bytes(40, size);
    write_file(&src, &data);
    f.mount.sh_ok("touch big.bin");
    let staging = f.mount.work_dir().join("cache/staging");
    let mut writer = Command::new("timeout")
        .args(["-s", "KILL", "120", "dd", "conv=notrunc", "bs=1M", "status=none"])
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", f.mount.join("big.bin").display()))
        .spawn()
        .expect("dd runs");
    // Paused (SIGSTOP) once all the bytes are in the staging file, before dd's close uploads them.
    let staged = || {
        std::fs::read_dir(&staging)
            .map(|d| d.flatten().any(|e| e.metadata().map(|m| m.len()).unwrap_or(0) == size as u64))
            .unwrap_or(false)
    };
    assert!(wait_until(Duration::from_secs(60), staged), "the bytes reach the staging file");
    // Opened now: while the server is paused, a path lookup would wait for it; the descriptor does not.
    let opened = std::fs::File::open(f.mount.join("big.bin")).expect("open big.bin");
    let paused = f.server.pause();
    let uploading =
        wait_until(Duration::from_secs(30), || mount_cli(&["status", &point]).1.contains("uploading /big.bin"));
    let (_, during) = mount_cli(&["status", &point]);
    let state = fd_xattr(&opened, "user.netdisk.state");
    drop(paused);
    assert!(uploading, "status lists the upload: {during}");
    assert!(during.contains(&format!("of {}.0 MiB (", size >> 20)) && during.contains("NOT CONNECTED"), "{during}");
    let state = state.unwrap_or_default();
    assert!(state.starts_with("uploading ") && state.contains(&format!("of {size} bytes")), "state: {state}");

    assert!(writer.wait().expect("dd ends").success(), "dd completes once the server is back");
    let (_, after) = mount_cli(&["status"]);
    assert!(after.contains(&point) && after.contains("uploads: none in progress"), "{after}");
    assert_eq!(xattr(&f, "user.netdisk.state", "big.bin").as_deref(), Some("complete"));
    assert_eq!(xattr(&f, "user.netdisk.md5", "big.bin"), Some(netdisk_e2e::netdisk_protocol::md5_hex(&data)));
    // Read by name only: a copy that preserves every listed attribute (cp -a, rsync -X) would carry a stale md5.
    let listed = f.mount.sh_ok("getfattr -d -m - big.bin; getfattr -d -m - .");
    assert!(!listed.contains("user.netdisk"), "netdisk's own attributes are not listed: {listed}");
    let local = tempfile::tempdir().unwrap();
    f.mount.sh_ok(&format!("cp -a big.bin {0}/copy && getfattr -d -m - {0}/copy", local.path().display()));
    assert!(!xattr_on(&local.path().join("copy"), "user.netdisk.md5"), "cp -a copied user.netdisk.md5");
    assert_eq!(xattr(&f, "user.other", "big.bin"), None);
    assert!(!mount_cli(&["status", "/tmp"]).0, "status of a directory that is not a netdisk mount fails");
}

/// Unmounts (lazily) a mount made by a daemon or by mount(8) when the test ends, also when it fails; the
/// daemon then exits by itself.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A directory with a mount point, a cache directory and a private password file holding `password`.
struct Place {
    dir: tempfile::TempDir,
}

impl Place {
    fn new(password: &str) -> Place {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        Place { dir }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().expect("utf-8").to_string()
    }
}

/// `netdisk-mount ARGS` without NETDISK_PASSWORD in its environment, bounded.
fn netdisk_mount(args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "30"])
        .arg(netdisk_e2e::mount::mount_bin())
        .args(args)
        .env_remove("NETDISK_PASSWORD")
        .output()
        .expect("netdisk-mount runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn daemon_returns_once_the_mount_is_live_and_reports_failures() {
    let server = Server::start_default();
    server.add_user("ann", "pw");
    let addr = server.addr().to_string();
    let place = Place::new("pw");
    let mnt = place.path("mnt");
    let _unmount = Unmount(mnt.clone().into());
    let base = ["--daemon", "--server", &addr, "--user", "ann", "--cache-dir"];
    let (ok, out) =
        netdisk_mount(&[&base[..], &[&place.path("cache"), "--password-file", &place.path("pw"), &mnt]].concat());
    assert!(ok && out.starts_with("mounted "), "{out}");
    assert!(is_mounted(Path::new(&mnt)), "live when --daemon returns");
    std::fs::write(place.dir.path().join("mnt/f"), b"hello").expect("write through the daemon's mount");
    assert_eq!(server.login("ann", "pw").read_file("/f").expect("on the server"), b"hello");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());

    // A wrong password, a password file others can read, no password: a non-zero exit that says why.
    let wrong = Place::new("not-the-password");
    let (ok, out) = netdisk_mount(
        &[&base[..], &[&wrong.path("cache"), "--password-file", &wrong.path("pw"), &wrong.path("mnt")]].concat(),
    );
    assert!(!ok && out.contains("refused the login of user ann"), "{out}");
    assert!(!is_mounted(&wrong.dir.path().join("mnt")));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(wrong.path("pw"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, out) = netdisk_mount(
        &[&base[..], &[&wrong.path("cache"), "--password-file", &wrong.path("pw"), &wrong.path("mnt")]].concat(),
    );
    assert!(!ok && out.contains("chmod 600"), "{out}");
    let (ok, out) = netdisk_mount(&[&base[..], &[&wrong.path("cache"), &wrong.path("mnt")]].concat());
    assert!(!ok && out.contains("no password"), "{out}");
}

#[test]
fn the_command_line_overrides_the_config_file_and_mount_options_apply() {
    let server = Server::start_default();
    server.add_user("ann", "pw");
    server.login("ann", "pw").upload("/f", b"data", 0o644).expect("upload");
    let place = Place::new("pw");
    let mnt = place.path("mnt");
    let _unmount = Unmount(mnt.clone().into());
    // The file names a server nobody listens on; the command line's wins. User and password come from the file.
    let config = place.path("mount.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"127.0.0.1:1\"\nuser = \"ann\"\npassword_file = \"{}\"\ncache_dir = \"{}\"\n",
            place.path("pw"),
            place.path("cache")
        ),
    )
    .unwrap();
    let addr = server.addr().to_string();
    let (ok, out) = netdisk_mount(&[
        "--daemon",
        "--config",
        &config,
        "--server",
        &addr,
        "-o",
        "ro,uid=1234,gid=5678,_netdev",
        &mnt,
    ]);
    assert!(ok, "{out}");
    let (_, status) = mount_cli(&["status", &mnt]);
    assert!(status.contains(&format!("ann@{addr}")), "{status}");
    let shown = Command::new("stat").args(["-c", "%u:%g"]).arg(format!("{mnt}/f")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), "1234:5678", "uid= and gid= set the owner shown");
    let touch = Command::new("touch").arg(format!("{mnt}/new")).output().unwrap();
    assert!(String::from_utf8_lossy(&touch.stderr).contains("Read-only file system"), "ro refuses changes");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());

    // Without the override the file's server is used, and fails clearly.
    let (ok, out) = netdisk_mount(&["--daemon", "--config", &config, &mnt]);
    assert!(!ok && out.contains("cannot reach the server at 127.0.0.1:1"), "{out}");
}

/// `mount -t fuse.netdisk` runs /sbin/mount.fuse.netdisk: a link to netdisk-mount, which then follows mount(8)'s
/// helper convention and returns once the mount is live. The link is made for the test (and removed) unless one
/// exists already.
#[test]
fn mount_t_fuse_netdisk_uses_the_helper() {
    let helper = Path::new("/sbin/mount.fuse.netdisk");
    struct Link(Option<&'static Path>);
    impl Drop for Link {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _link = if helper.symlink_metadata().is_ok() {
        Link(None)
    } else {
        std::os::unix::fs::symlink(netdisk_e2e::mount::mount_bin(), helper).expect("link the helper into /sbin");
        Link(Some(Path::new("/sbin/mount.fuse.netdisk")))
    };
    let server = Server::start_default();
    server.add_user("ann", "pw");
    let place = Place::new("pw");
    let mnt = place.path("mnt");
    let _unmount = Unmount(mnt.clone().into());
    let options = format!(
        "password_file={},cache_dir={},allow_other,_netdev,attr_timeout=1",
        place.path("pw"),
        place.path("cache")
    );
    let source = format!("ann@{}", server.addr());
    let out = Command::new("timeout")
        .args(["-s", "KILL", "30", "mount", "-t", "fuse.netdisk", "-o", &options, &source, &mnt])
        .env_remove("NETDISK_PASSWORD")
        .output()
        .unwrap();
    assert!(out.status.success(), "mount -t fuse.netdisk: {}", String::from_utf8_lossy(&out.stderr));
    assert!(is_mounted(Path::new(&mnt)));
    std::fs::write(format!("{mnt}/via-mount"), b"x").unwrap();
    assert_eq!(server.login("ann", "pw").read_file("/via-mount").expect("on the server"), b"x");
    let (_, status) = mount_cli(&["status"]);
    assert!(status.contains(&mnt), "status finds a mount made by mount(8): {status}");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
}

/// With systemd's `Type=notify`, `READY=1` arrives once the mount is live.
#[test]
fn systemd_is_told_when_the_mount_is_ready() {
    let server = Server::start_default();
    server.add_user("ann", "pw");
    let place = Place::new("pw");
    let mnt = place.path("mnt");
    let socket_path = place.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: SIGTERM to the mount process this test started; it unmounts and exits.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let _unmount = Unmount(mnt.clone().into());
    let child = Command::new(netdisk_e2e::mount::mount_bin())
        .args(["--server", &server.addr().to_string(), "--user", "ann", "--password-file", &place.path("pw")])
        .args(["--cache-dir", &place.path("cache"), "--log-file", &place.path("mount.log"), &mnt])
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("NETDISK_PASSWORD")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _stop = Stop(child);
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("a notification within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(is_mounted(Path::new(&mnt)), "mounted when READY=1 arrives");
    let log = std::fs::read_to_string(place.path("mount.log")).unwrap();
    assert!(log.contains("mounted"), "--log-file holds the log: {log}");
}
