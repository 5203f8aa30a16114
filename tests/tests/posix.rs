//! POSIX conformance and data integrity on a real mount, with the public suites: pjdfstest (a selection of its
//! groups, run in a directory 28 KiB below the mount's root) and fsx (20,000 random operations, and 5,000 with mapped reads; fixed seed). `tests/posix/pjdfstest.sh` and `tests/posix/fsx.sh`
//! run the complete suite beside local ext4 and the long fsx run; tests/posix/RESULTS.md records both.
//! Each test skips, saying so, when its tool is not installed (.ci/run installs both); each run has a deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use netdisk_e2e::mount::{is_mounted, Mount};
use netdisk_e2e::netdisk_protocol::{MAX_NAME, MAX_PATH};
use netdisk_e2e::{Server, ServerOpts};

/// pjdfstest cases to run: every group (a case runs when its name contains one of these) except
/// `open::interact_2gb`, whose 2 GiB file takes a minute to upload at close. The script runs that one too.
const PJDFSTEST_SELECTION: &[&str] = &[
    "chmod::",
    "chown::",
    "link::", // also unlink:: and symlink::
    "mkdir::",
    "mkfifo::",
    "mknod::",
    "open::e", // eexist, eisdir, eloop, enoent, exists_no_update, ...
    "open::open_",
    "open::fifo",
    "open::socket",
    "open::uid_gid",
    "open::permission",
    "open::changed",
    "posix_fallocate::",
    "rename::",
    "rmdir::",
    "truncate::", // also ftruncate::
    "utimensat::",
];
/// Longest the pjdfstest selection may take (25 s on a quiet machine, every path 28 KiB deep on the server).
const PJDFSTEST_DEADLINE_SECS: u64 = 300;
/// How far below the mount's root pjdfstest runs: the deepest directory from which a relative path of 4,095 bytes
/// must still work (SEMANTICS.md): the path-length cases of pjdfstest come within a few dozen bytes of MAX_PATH.
const PJDFSTEST_DEPTH_BYTES: usize = MAX_PATH - 4096;

/// Operations of the main run (`fsx.toml`: every operation but mapped reads, the file going through the server at
/// each close and open), and of the run with mapped reads (`fsx-mapread.toml`; see there why apart).
const FSX_OPERATIONS: u32 = 20_000;
const FSX_MAPREAD_OPERATIONS: u32 = 5_000;
const FSX_SEED: u32 = 1;
/// Longest one fsx run may take (about 40 s on a quiet machine; several minutes means something hangs).
const FSX_DEADLINE_SECS: u64 = 300;

fn posix_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("posix")
}

/// An installed tool, on PATH or in ~/.cargo/bin (where `cargo install` puts it).
fn tool(name: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

/// A server with one user and a mount of her tree that other users can reach (pjdfstest switches users).
fn mounted(opts: ServerOpts) -> (Mount, Server) {
    let server = Server::start(opts);
    server.add_user("ann", "pw");
    let mount = Mount::start(&server, "ann", "pw");
    // The guard's directory is 0700; the mount point inside it must be reachable by the users tests switch to.
    std::fs::set_permissions(mount.work_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (mount, server)
}

/// Runs `program` under `timeout -s KILL secs`; returns its output and how long it took.
fn run_bounded(secs: u64, program: &Path, args: &[&str]) -> (Output, f64) {
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["-s", "KILL", &secs.to_string()])
        .arg(program)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("timeout(1) runs");
    (out, started.elapsed().as_secs_f64())
}

/// The cases listed in tests/posix/expected-failures.txt, as a TOML array.
fn expected_failures() -> String {
    let list = std::fs::read_to_string(posix_dir().join("expected-failures.txt")).expect("expected-failures.txt");
    let names: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| format!("{l:?}"))
        .collect();
    format!("[{}]", names.join(", "))
}

#[test]
fn pjdfstest_selection_passes_on_the_mount() {
    let Some(pjdfstest) = tool("pjdfstest") else {
        return skip("pjdfstest is not installed (cargo install --locked pjdfstest@0.2.2; Debian needs libacl1-dev)");
    };
    if !nix_is_root() {
        return skip("pjdfstest needs root here (it switches users, and the mount is shared with allow_other as root)");
    }
    let (mount, server) = mounted(ServerOpts::default());
    let config = mount.work_dir().join("pjdfstest.toml");
    let base = std::fs::read_to_string(posix_dir().join("pjdfstest.toml")).expect("tests/posix/pjdfstest.toml");
    std::fs::write(&config, format!("{base}expected_failures = {}\n", expected_failures())).unwrap();
    let bound = mount.work_dir().join("deep");
    std::fs::create_dir(&bound).unwrap();

    // pjdfstest makes its paths absolute (4,095 bytes at most), so a plain subdirectory would not do: deep-run.pl
    // binds the deep directory onto `bound`, in a private mount namespace that ends with the run.
    let (len, deep_run) = (PJDFSTEST_DEPTH_BYTES.to_string(), posix_dir().join("deep-run.pl"));
    let mut args = vec!["--mount", "--propagation", "private", "perl", deep_run.to_str().unwrap()];
    args.extend([mount.path().to_str().unwrap(), &len, bound.to_str().unwrap()]);
    args.extend([pjdfstest.to_str().unwrap(), "-c", config.to_str().unwrap(), "-p", bound.to_str().unwrap()]);
    args.extend_from_slice(PJDFSTEST_SELECTION);
    let (out, secs) = run_bounded(PJDFSTEST_DEADLINE_SECS, Path::new("unshare"), &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().find(|l| l.starts_with("Summary")).unwrap_or("no summary");
    eprintln!("pjdfstest in a directory {PJDFSTEST_DEPTH_BYTES} bytes below the mount's root, {secs:.0} s: {summary}");
    assert!(!is_mounted(&bound), "the bind mount ended with its namespace");
    let failures: Vec<&str> =
        stdout.lines().filter(|l| l.ends_with(" FAILED") || l.ends_with(" PASSED UNEXPECTEDLY")).collect();
    assert!(
        out.status.success() && failures.is_empty() && summary.starts_with("Summary"),
        "pjdfstest ({}, {secs:.0} s; deadline {PJDFSTEST_DEADLINE_SECS} s): {summary}\nunexpected: {failures:#?}\n\
         {stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        mount.log_tail()
    );
    // It ran there: the directory is on the server, that deep, and pjdfstest left it empty.
    let mut deep = "/deep/er/sub".to_string();
    while deep.len() < PJDFSTEST_DEPTH_BYTES {
        deep = format!("{deep}/{}", "n".repeat((PJDFSTEST_DEPTH_BYTES - deep.len() - 1).min(MAX_NAME)));
    }
    assert!(server.login("ann", "pw").names(&deep).expect("list the directory pjdfstest ran in").is_empty());
    drop(mount);
    server.assert_fsck_clean();
}

#[test]
fn fsx_random_operations_never_miscompare() {
    let Some(fsx) = tool("fsx") else {
        return skip("fsx is not installed (cargo install --locked fsx@0.3.2)");
    };
    // Every close and fsync is an upload: --durability normal spares the shared CI disk a few thousand syncs
    // (what fsx checks is the bytes, not their crash safety).
    let (mount, server) = mounted(ServerOpts::default().durability("normal"));
    run_fsx(&fsx, &mount, "fsx.toml", FSX_OPERATIONS);
    run_fsx(&fsx, &mount, "fsx-mapread.toml", FSX_MAPREAD_OPERATIONS);
    drop(mount);
    server.assert_fsck_clean();
}

/// Runs fsx with `tests/posix/CONFIG` on a file of its own in the mount; fails the test unless it completes A-OK.
fn run_fsx(fsx: &Path, mount: &Mount, config: &str, operations: u32) {
    let artifacts = mount.work_dir().join(format!("artifacts-{config}"));
    std::fs::create_dir(&artifacts).unwrap();
    let config_path = posix_dir().join(config);
    let file = mount.join(&format!("{config}.data"));
    let (ops, seed) = (operations.to_string(), FSX_SEED.to_string());
    let args = [
        "-f",
        config_path.to_str().unwrap(),
        "-N",
        &ops,
        "-S",
        &seed,
        "-P",
        artifacts.to_str().unwrap(),
        file.to_str().unwrap(),
    ];
    let (out, secs) = run_bounded(FSX_DEADLINE_SECS, fsx, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("fsx ({config}), {ops} operations, seed {seed}: {secs:.0} s, {:.0} ops/s", operations as f64 / secs);
    assert!(
        out.status.success() && stdout.contains("All operations completed A-OK!"),
        "fsx ({config}: {}, {secs:.0} s; deadline {FSX_DEADLINE_SECS} s) did not complete A-OK:\n{stdout}\n{}\n{}",
        out.status,
        stderr.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"),
        mount.log_tail()
    );
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
