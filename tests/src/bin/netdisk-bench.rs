//! `netdisk-bench`: netdisk measured against what a user would pick instead, in one run on one machine.
//!
//! It prepares three targets: a plain directory on the scratch disk (`local`), sshfs over loopback through a private
//! sshd (`sshfs`), and a netdisk mount of a fresh `netdisk-server` (`netdisk`); runs the same workloads on each; checks
//! every file written against its source; and prints one table with the figures and the ratios netdisk/sshfs and
//! netdisk/local, expressed so that a ratio above 1 means netdisk is better. `bench/README.md` describes each workload.
//!
//! Everything it starts is a guard ([`Server`], [`Mount`], [`Sshd`], [`Sshfs`], the scratch directory): dropped when
//! the run ends, fails, panics or is interrupted (SIGINT/SIGTERM/SIGHUP set a flag that every wait checks), so every
//! process is stopped and every mount unmounted. Every wait is bounded (`--timeout` per command).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use md5::{Digest, Md5};
use netdisk_e2e::mount::Mount;
use netdisk_e2e::sshfs::{self, Sshd, Sshfs};
use netdisk_e2e::{descendants_of, Rng, Server, ServerOpts};

const MIB: u64 = 1 << 20;
const USER: &str = "bench";
const PASSWORD: &str = "bench-password";
/// How often the memory sampler reads /proc/PID/status.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Parser, Debug)]
#[command(
    name = "netdisk-bench",
    about = "Benchmark a netdisk mount against local disk and sshfs over loopback (same workloads, one table)",
    long_about = "Benchmark a netdisk mount against local disk and sshfs over loopback: the same workloads on each, \
                  every written file checked against its source, one table of figures and ratios (> 1: netdisk is \
                  better). Needs root (FUSE mounts, dropping the page cache, a private sshd). \
                  The documented command is bench/run.sh, which builds the release binaries first."
)]
struct Cli {
    /// Small sizes, one repetition: a smoke run (8 MiB files, 50 small files, a ~200-file tree, 4 clients × 2 MiB).
    #[arg(long)]
    quick: bool,
    /// Repetitions of each timed workload; the table shows the median [default: 3, or 1 with --quick].
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Also write the results as Markdown (machine, command, date, table, raw figures) to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Size of the big file (sequential write and read, held-content copy, copy inside) [default: 1024, quick: 8].
    #[arg(long, value_name = "MIB")]
    big_mib: Option<u64>,
    /// Number of small files [default: 2000, quick: 50].
    #[arg(long, value_name = "N")]
    small_files: Option<usize>,
    /// Size of each small file.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    small_size: usize,
    /// The real tree to tar in, copy and remove [default: the Python standard library, without site-packages,
    /// dist-packages and __pycache__].
    #[arg(long, value_name = "DIR")]
    tree: Option<PathBuf>,
    /// Take a sample of at most N files of the tree, each at most 1 MiB [default: all files; quick: 200].
    #[arg(long, value_name = "N")]
    tree_files: Option<usize>,
    /// Concurrent uploaders (parallel `cp` of different files) [default: 16, quick: 4].
    #[arg(long, value_name = "N")]
    clients: Option<usize>,
    /// What each concurrent uploader copies in [default: 64, quick: 2].
    #[arg(long, value_name = "MIB")]
    client_mib: Option<u64>,
    /// Where the scratch directory is made: sources, the local target, sshfs's data, netdisk's data and cache.
    /// Keep it on a real disk (not tmpfs): the local target is the reference.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    scratch: PathBuf,
    /// Leave sshfs out (its column shows n/a).
    #[arg(long)]
    no_sshfs: bool,
    /// Never run apt-get: when sshfs or openssh-server is missing, the sshfs column shows n/a.
    #[arg(long)]
    no_install: bool,
    /// Longest any one command or file-system step may take before the run fails [default: 900, quick: 120].
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Per workload and target: no further repetition starts once the next one would end past this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 150)]
    budget: u64,
    /// The netdisk server's --durability: full (every answer synced to disk, the default) or normal (in the
    /// OS cache: what sshfs and a local disk without fsync promise).
    #[arg(long, value_name = "LEVEL", value_parser = ["full", "normal"], default_value = "full")]
    netdisk_durability: String,
    /// Run only these groups of workloads (comma-separated): big (write, reads, held-content copy, copy
    /// inside), small, tree, clients [default: all].
    #[arg(long, value_name = "GROUPS", value_delimiter = ',', value_parser = ["big", "small", "tree", "clients"])]
    only: Vec<String>,
}

/// The resolved sizes and switches of one run.
struct Config {
    quick: bool,
    reps: usize,
    big: u64,
    small_files: usize,
    small_size: usize,
    tree: Option<PathBuf>,
    tree_files: Option<usize>,
    clients: usize,
    client_bytes: u64,
    scratch_parent: PathBuf,
    sshfs: bool,
    install: bool,
    timeout: Duration,
    budget: Duration,
    out: Option<PathBuf>,
    durability: &'static str,
    only: Vec<String>,
}

impl Config {
    /// Whether the workloads of `group` run (`--only`).
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }

    fn from_cli(cli: Cli) -> Result<Config> {
        let q = cli.quick;
        let cfg = Config {
            quick: q,
            reps: cli.reps.unwrap_or(if q { 1 } else { 3 }),
            big: cli.big_mib.unwrap_or(if q { 8 } else { 1024 }) * MIB,
            small_files: cli.small_files.unwrap_or(if q { 50 } else { 2000 }),
            small_size: cli.small_size,
            tree: cli.tree,
            tree_files: cli.tree_files.or(if q { Some(200) } else { None }),
            clients: cli.clients.unwrap_or(if q { 4 } else { 16 }),
            client_bytes: cli.client_mib.unwrap_or(if q { 2 } else { 64 }) * MIB,
            scratch_parent: cli.scratch,
            sshfs: !cli.no_sshfs,
            install: !cli.no_install,
            timeout: Duration::from_secs(cli.timeout.unwrap_or(if q { 120 } else { 900 })),
            budget: Duration::from_secs(cli.budget),
            out: cli.out,
            durability: if cli.netdisk_durability == "normal" { "normal" } else { "full" },
            only: cli.only,
        };
        if cfg.reps == 0 || cfg.big == 0 || cfg.small_files == 0 || cfg.clients == 0 || cfg.client_bytes == 0 {
            bail!("--reps, --big-mib, --small-files, --clients and --client-mib must be at least 1");
        }
        if cfg.tree_files == Some(0) {
            bail!("--tree-files must be at least 1");
        }
        Ok(cfg)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Interruption: SIGINT/SIGTERM/SIGHUP set a flag; every wait checks it, fails the run, and the guards clean up.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); the sigaction struct is fully initialised.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The scratch directory: removed at the end, but never through a mount still alive under it.

struct Scratch(PathBuf);

impl Scratch {
    fn create(parent: &Path) -> Result<Scratch> {
        let parent = parent.canonicalize().with_context(|| format!("scratch parent {}", parent.display()))?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let dir = parent.join(format!("netdisk-bench.{}.{}", std::process::id(), stamp.subsec_nanos()));
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut out: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for m in mounts_under(&self.0) {
            eprintln!("netdisk-bench: {} is still mounted: detaching it", m.display());
            let _ = sshfs::run_with_timeout(
                Command::new("umount").arg("-l").arg(&m).stdout(Stdio::null()).stderr(Stdio::null()),
                Duration::from_secs(10),
            );
        }
        if !mounts_under(&self.0).is_empty() {
            eprintln!("netdisk-bench: left {} in place: something is still mounted under it", self.0.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("netdisk-bench: could not remove {}: {e}", self.0.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Running things, bounded.

struct Ctx {
    cfg: Config,
    scratch: PathBuf,
    logs: PathBuf,
    seq: Cell<u64>,
    verified_files: Cell<u64>,
    verified_bytes: Cell<u64>,
    drop_caches_failed: RefCell<Option<String>>,
}

impl Ctx {
    /// A fresh file for one command's stderr.
    fn log_file(&self, what: &str) -> PathBuf {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        let slug: String = what.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(40).collect();
        self.logs.join(format!("{n:04}-{slug}.err"))
    }
}

fn file_tail(path: &Path, max: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
    text[start..].trim().to_string()
}

/// Starts every command at once and waits for all of them (each waited for on its own thread, so an exit is seen
/// the moment it happens). Returns the time from the first start to the last exit. Any failure, the per-command
/// timeout, or an interruption fails the call; commands still running then are killed.
fn run_all(ctx: &Ctx, what: &str, cmds: Vec<Command>) -> Result<Duration> {
    check_interrupt()?;
    let (tx, rx) = mpsc::channel::<(usize, io::Result<ExitStatus>, Instant)>();
    let mut running: Vec<Option<i32>> = Vec::new();
    let mut described = Vec::new();
    let mut logs = Vec::new();
    let start = Instant::now();
    let mut spawn_error = None;
    for (i, mut cmd) in cmds.into_iter().enumerate() {
        let log = ctx.log_file(what);
        described.push(format!("{cmd:?}"));
        let spawned = File::create(&log)
            .map_err(anyhow::Error::from)
            .and_then(|f| cmd.stdin(Stdio::null()).stderr(f).spawn().map_err(anyhow::Error::from));
        logs.push(log);
        match spawned {
            Ok(mut child) => {
                running.push(Some(child.id() as i32));
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let status = child.wait();
                    let _ = tx.send((i, status, Instant::now()));
                });
            }
            Err(e) => {
                running.push(None);
                spawn_error = Some(anyhow!("{what}: cannot start {}: {e}", described[i]));
                break;
            }
        }
    }
    drop(tx);
    let deadline = start + ctx.cfg.timeout;
    let mut last_end = start;
    let mut failures = Vec::new();
    let mut pending = running.iter().filter(|p| p.is_some()).count();
    let mut abort = spawn_error;
    while pending > 0 {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((i, status, end)) => {
                pending -= 1;
                running[i] = None;
                last_end = last_end.max(end);
                match status {
                    Ok(s) if s.success() => {}
                    Ok(s) => failures.push(format!("{} exited with {s}: {}", described[i], file_tail(&logs[i], 2000))),
                    Err(e) => failures.push(format!("{}: {e}", described[i])),
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if abort.is_none() && interrupted() {
                    abort = Some(anyhow!("{what}: interrupted"));
                } else if abort.is_none() && Instant::now() >= deadline {
                    abort = Some(anyhow!("{what}: not finished within {:?} (--timeout)", ctx.cfg.timeout));
                }
                if abort.is_some() {
                    for pid in running.iter().flatten() {
                        // SAFETY: kill(2) on a child we spawned; its waiter thread has not reaped it (it would have
                        // reported, and the entry would be None).
                        unsafe { libc::kill(*pid, libc::SIGKILL) };
                    }
                    // Reap them (bounded): a process in a hung FUSE call dies once the mount goes.
                    let reap_deadline = Instant::now() + Duration::from_secs(10);
                    while pending > 0 && Instant::now() < reap_deadline {
                        if let Ok((i, _, _)) = rx.recv_timeout(Duration::from_millis(100)) {
                            pending -= 1;
                            running[i] = None;
                        }
                    }
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Some(e) = abort {
        return Err(e);
    }
    // A Ctrl-C reaches the commands too: their failure is the interruption.
    check_interrupt().with_context(|| what.to_string())?;
    if !failures.is_empty() {
        bail!("{what} failed:\n{}", failures.join("\n"));
    }
    Ok(last_end - start)
}

fn run(ctx: &Ctx, what: &str, cmd: Command) -> Result<Duration> {
    run_all(ctx, what, vec![cmd])
}

fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.stdout(Stdio::null());
    c
}

/// Runs `f` on its own thread and waits for it, bounded by the per-command timeout and interruptible; returns its
/// result and how long it took. A file-system call hung in a mount fails the run instead of hanging it (the thread
/// is left behind; it unblocks when the guards unmount).
fn bounded<T: Send + 'static>(
    ctx: &Ctx,
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<(T, Duration)> {
    check_interrupt()?;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = f();
        let _ = tx.send((r, Instant::now()));
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((r, end)) => return r.map(|v| (v, end - start)).with_context(|| what.to_string()),
            Err(RecvTimeoutError::Timeout) => {
                check_interrupt().with_context(|| what.to_string())?;
                if start.elapsed() > ctx.cfg.timeout {
                    bail!("{what}: not finished within {:?} (--timeout)", ctx.cfg.timeout);
                }
            }
            Err(RecvTimeoutError::Disconnected) => bail!("{what}: the worker thread panicked"),
        }
    }
}

/// `sync`, bounded.
fn sync_all(ctx: &Ctx) -> Result<()> {
    run(ctx, "sync", cmd("sync")).map(|_| ())
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`. Failing to drop (not root, a container) is noted once, not fatal.
fn drop_caches(ctx: &Ctx) -> Result<()> {
    sync_all(ctx)?;
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        let mut failed = ctx.drop_caches_failed.borrow_mut();
        if failed.is_none() {
            eprintln!("netdisk-bench: cannot drop the page cache ({e}): cold reads may be partly warm");
            *failed = Some(e.to_string());
        }
    }
    Ok(())
}

fn rm_rf(ctx: &Ctx, path: &Path) -> Result<()> {
    let mut c = cmd("rm");
    c.arg("-rf").arg(path);
    run(ctx, "rm -rf", c).map(|_| ())
}

fn mkdir(ctx: &Ctx, path: &Path) -> Result<()> {
    let mut c = cmd("mkdir");
    c.arg("-p").arg(path);
    run(ctx, "mkdir", c).map(|_| ())
}

/// Reads a file to /dev/null (untimed: to have a local source in the page cache before a timed copy).
fn warm(ctx: &Ctx, path: &Path) -> Result<()> {
    let mut c = cmd("cat");
    c.arg(path);
    run(ctx, "warm a source", c).map(|_| ())
}

// ---------------------------------------------------------------------------------------------------------------
// Sources and integrity.

/// A local file of pseudo-random bytes, made once, with its md5.
#[derive(Clone)]
struct Source {
    path: PathBuf,
    len: u64,
    md5: [u8; 16],
}

fn write_random(path: &Path, seed: u64, len: u64) -> Result<Source> {
    let mut rng = Rng::new(seed);
    let mut hasher = Md5::new();
    let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        check_interrupt()?;
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    Ok(Source { path: path.to_path_buf(), len, md5: hasher.finalize().into() })
}

/// Makes the sources on two threads.
fn make_sources(specs: &[(PathBuf, u64, u64)]) -> Result<Vec<Source>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Source>>>> =
        specs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((path, seed, len)) = specs.get(i) else { break };
                let r = write_random(path, *seed, *len);
                *results[i].lock().expect("results lock") = Some(r);
            });
        }
    });
    results.into_iter().map(|m| m.into_inner().expect("results lock").expect("every source was made")).collect()
}

fn md5_file(path: &Path) -> Result<([u8; 16], u64)> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hasher.finalize().into(), len))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `path` (on a target) holds exactly the bytes of `src`; a mismatch fails the run.
fn verify(ctx: &Ctx, path: &Path, src: &Source) -> Result<()> {
    let p = path.to_path_buf();
    let ((md5, len), _) = bounded(ctx, &format!("md5 of {}", path.display()), move || md5_file(&p))?;
    if len != src.len || md5 != src.md5 {
        bail!(
            "INTEGRITY FAILURE: {} ({len} bytes, md5 {}) is not a copy of {} ({} bytes, md5 {})",
            path.display(),
            hex(&md5),
            src.path.display(),
            src.len,
            hex(&src.md5)
        );
    }
    ctx.verified_files.set(ctx.verified_files.get() + 1);
    ctx.verified_bytes.set(ctx.verified_bytes.get() + len);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The real tree.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File { len: u64, md5: [u8; 16] },
    Link(PathBuf),
}

type Manifest = BTreeMap<String, Entry>;

/// What is under `root`, relative to it: every directory, file (size and md5) and symbolic link.
fn manifest_of(root: &Path) -> Result<Manifest> {
    fn walk(root: &Path, dir: &Path, out: &mut Manifest) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("list {}", dir.display()))?
            .collect::<io::Result<_>>()
            .with_context(|| format!("list {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            let ft = e.file_type().with_context(|| format!("stat {}", path.display()))?;
            if ft.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(root, &path, out)?;
            } else if ft.is_symlink() {
                out.insert(rel, Entry::Link(std::fs::read_link(&path)?));
            } else if ft.is_file() {
                let (md5, len) = md5_file(&path)?;
                out.insert(rel, Entry::File { len, md5 });
            }
        }
        Ok(())
    }
    let mut out = Manifest::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn compare_manifests(what: &Path, want: &Manifest, got: &Manifest) -> Result<()> {
    if want == got {
        return Ok(());
    }
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => diffs.push(format!("missing {k}")),
            Some(g) if g != v => diffs.push(format!("differs: {k} ({g:?} instead of {v:?})")),
            _ => {}
        }
    }
    diffs.extend(got.keys().filter(|k| !want.contains_key(*k)).map(|k| format!("unexpected {k}")));
    let n = diffs.len();
    diffs.truncate(8);
    bail!(
        "INTEGRITY FAILURE: the tree {} differs from its source ({n} differences): {}",
        what.display(),
        diffs.join("; ")
    )
}

struct Tree {
    tar: PathBuf,
    top: String,
    source: PathBuf,
    manifest: Manifest,
    files: usize,
    bytes: u64,
}

/// The default tree: the Python standard library.
fn python_stdlib() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        .stdin(Stdio::null())
        .output()
        .context("run python3 to find the standard library (or pass --tree DIR)")?;
    if !out.status.success() {
        bail!("python3 could not tell where its standard library is: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !dir.is_dir() {
        bail!("the Python standard library {} is not a directory (pass --tree DIR)", dir.display());
    }
    Ok(dir)
}

/// Picks the tree's entries (sorted, at most `limit` non-directories), tars them once into the scratch directory,
/// and takes their manifest.
fn prepare_tree(ctx: &Ctx) -> Result<Tree> {
    let (source, skip): (PathBuf, &[&str]) = match &ctx.cfg.tree {
        Some(dir) => (dir.canonicalize().with_context(|| format!("--tree {}", dir.display()))?, &[]),
        None => (python_stdlib()?, &["site-packages", "dist-packages", "__pycache__"]),
    };
    let top = source.file_name().ok_or_else(|| anyhow!("the tree {} has no name", source.display()))?;
    let top = top.to_string_lossy().into_owned();
    let parent = source.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut picked: Vec<(String, bool)> = Vec::new(); // (relative path, is directory), in walk order
    let mut leaves = 0usize;
    fn walk(
        root: &Path,
        dir: &Path,
        skip: &[&str],
        limit: Option<usize>,
        leaves: &mut usize,
        out: &mut Vec<(String, bool)>,
    ) -> Result<()> {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if limit.is_some_and(|l| *leaves >= l) {
                return Ok(());
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if skip.contains(&name.as_str()) {
                continue;
            }
            let path = e.path();
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                out.push((rel, true));
                walk(root, &path, skip, limit, leaves, out)?;
            } else if ft.is_file() || ft.is_symlink() {
                if ft.is_file() && File::open(&path).is_err() {
                    continue; // unreadable: tar would fail on it
                }
                // A sample (--tree-files) leaves out big files (the stdlib's config dir holds a 40 MiB libpython.a),
                // so that it stays a tree of small files.
                if limit.is_some() && ft.is_file() && e.metadata().map_or(true, |m| m.len() > MIB) {
                    continue;
                }
                out.push((rel, false));
                *leaves += 1;
            }
        }
        Ok(())
    }
    walk(&source, &source, skip, ctx.cfg.tree_files, &mut leaves, &mut picked)?;
    // Keep only directories that hold something picked (a limit may cut the walk short).
    let leaf_paths: Vec<PathBuf> = picked.iter().filter(|(_, d)| !d).map(|(p, _)| PathBuf::from(p)).collect();
    picked.retain(|(p, is_dir)| !is_dir || leaf_paths.iter().any(|l| l.starts_with(p)));
    if leaves == 0 {
        bail!("the tree {} holds no file", source.display());
    }
    let list = ctx.scratch.join("tree.list");
    let mut names = Vec::new();
    names.extend_from_slice(top.as_bytes());
    names.push(0);
    for (rel, _) in &picked {
        names.extend_from_slice(format!("{top}/{rel}").as_bytes());
        names.push(0);
    }
    std::fs::write(&list, names).context("write the tree's file list")?;
    let tar = ctx.scratch.join("tree.tar");
    let mut c = cmd("tar");
    c.arg("--null").arg("--no-recursion").arg("-cf").arg(&tar).arg("-C").arg(&parent).arg("-T").arg(&list);
    run(ctx, "tar -c of the tree", c)?;
    // The reference: the tree as tar extracts it locally.
    let reference = ctx.scratch.join("tree-reference");
    std::fs::create_dir(&reference)?;
    let mut c = cmd("tar");
    c.arg("-xf").arg(&tar).arg("-C").arg(&reference);
    run(ctx, "tar -x of the reference tree", c)?;
    let manifest = manifest_of(&reference.join(&top))?;
    let bytes = manifest.values().map(|e| if let Entry::File { len, .. } = e { *len } else { 0 }).sum();
    let files = manifest.values().filter(|e| !matches!(e, Entry::Dir)).count();
    rm_rf(ctx, &reference)?;
    Ok(Tree { tar, top, source, manifest, files, bytes })
}

// ---------------------------------------------------------------------------------------------------------------
// Targets.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Local,
    Sshfs,
    Netdisk,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Local, Kind::Sshfs, Kind::Netdisk];

    fn name(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::Sshfs => "sshfs",
            Kind::Netdisk => "netdisk",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

/// Fields drop in order: the mount before the sshd it goes through.
struct SshfsTarget {
    mount: Option<Sshfs>,
    sshd: Sshd,
    remote: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
}

/// Fields drop in order: the mount before the server.
struct NetdiskTarget {
    mount: Option<Mount>,
    server: Server,
}

enum Backend {
    Local(PathBuf),
    Sshfs(SshfsTarget),
    Netdisk(NetdiskTarget),
}

struct Target {
    kind: Kind,
    backend: Backend,
}

impl Target {
    fn local(ctx: &Ctx) -> Result<Target> {
        let dir = ctx.scratch.join("local");
        std::fs::create_dir(&dir)?;
        Ok(Target { kind: Kind::Local, backend: Backend::Local(dir) })
    }

    fn sshfs(ctx: &Ctx) -> Result<Target> {
        let missing = sshfs::missing_tools();
        if !missing.is_empty() {
            if !ctx.cfg.install {
                bail!("not installed: {} (and --no-install)", missing.join(", "));
            }
            let log = ctx.scratch.join("apt-get.log");
            eprintln!("netdisk-bench: installing sshfs and openssh-server (missing: {})", missing.join(", "));
            sshfs::install(&log).map_err(|e| anyhow!("{e:#}: {}", file_tail(&log, 1500)))?;
            let still = sshfs::missing_tools();
            if !still.is_empty() {
                bail!("still missing after apt-get: {}", still.join(", "));
            }
        }
        let sshd = Sshd::start(&ctx.scratch.join("ssh"))?;
        let remote = ctx.scratch.join("sshfs-data");
        let mnt = ctx.scratch.join("sshfs-mnt");
        std::fs::create_dir(&remote)?;
        let log = ctx.scratch.join("sshfs.log");
        let mount = Sshfs::mount(&sshd, &remote, &mnt, &log)?;
        Ok(Target {
            kind: Kind::Sshfs,
            backend: Backend::Sshfs(SshfsTarget { mount: Some(mount), sshd, remote, mnt, log }),
        })
    }

    fn netdisk(durability: &'static str) -> Target {
        let server = Server::start(ServerOpts::default().durability(durability));
        server.add_user(USER, PASSWORD);
        let mount = Mount::start(&server, USER, PASSWORD);
        Target { kind: Kind::Netdisk, backend: Backend::Netdisk(NetdiskTarget { mount: Some(mount), server }) }
    }

    /// The directory the workloads run in. A netdisk remount gets a new directory: ask again after [`Target::remount`].
    fn root(&self) -> PathBuf {
        match &self.backend {
            Backend::Local(dir) => dir.clone(),
            Backend::Sshfs(s) => s.mnt.clone(),
            Backend::Netdisk(n) => n.mount.as_ref().expect("netdisk is mounted").path().to_path_buf(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Unmounts and mounts again, so that nothing the client cached survives (netdisk: a fresh cache directory).
    fn remount(&mut self) -> Result<()> {
        match &mut self.backend {
            Backend::Local(_) => {}
            Backend::Sshfs(s) => {
                s.mount = None;
                s.mount = Some(Sshfs::mount(&s.sshd, &s.remote, &s.mnt, &s.log)?);
            }
            Backend::Netdisk(n) => {
                n.mount = None;
                n.mount = Some(Mount::start(&n.server, USER, PASSWORD));
            }
        }
        Ok(())
    }

    /// Mounts again if a failed remount left the target unmounted.
    fn ensure_mounted(&mut self) -> Result<()> {
        let unmounted = match &self.backend {
            Backend::Local(_) => false,
            Backend::Sshfs(s) => s.mount.is_none(),
            Backend::Netdisk(n) => n.mount.is_none(),
        };
        if unmounted {
            self.remount()?;
        }
        Ok(())
    }

    /// Part of every timed write: local disk syncs its file system, so that its data is on disk as netdisk's is on
    /// the server's (netdisk's close waits for the verified upload). sshfs is timed until its close returns.
    fn after_write(&self) -> Result<()> {
        if let Backend::Local(dir) = &self.backend {
            let f = File::open(dir)?;
            // SAFETY: syncfs(2) on a descriptor we own.
            if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                return Err(io::Error::last_os_error()).context("syncfs");
            }
        }
        Ok(())
    }

    /// The client processes (with their descendants) and the server processes (with theirs).
    fn process_roots(&self) -> (Vec<i32>, Vec<i32>) {
        match &self.backend {
            Backend::Local(_) => (vec![], vec![]),
            Backend::Sshfs(s) => {
                (s.mount.as_ref().map(|m| m.processes()).unwrap_or_default(), s.sshd.pid().into_iter().collect())
            }
            Backend::Netdisk(n) => {
                (n.mount.as_ref().and_then(|m| m.pid()).map(|p| p as i32).into_iter().collect(), vec![n.server.pid()])
            }
        }
    }

    /// How many times the server logged an instant upload (netdisk only).
    fn instant_uploads(&self) -> Option<usize> {
        match &self.backend {
            Backend::Netdisk(n) => Some(n.server.log().matches("instant upload").count()),
            _ => None,
        }
    }

    fn log_tail(&self) -> String {
        match &self.backend {
            Backend::Local(_) => String::new(),
            Backend::Sshfs(s) => format!(
                "--- sshfs log ---\n{}\n--- sshd log ---\n{}",
                s.mount.as_ref().map(|m| m.log_tail()).unwrap_or_default(),
                s.sshd.log_tail()
            ),
            Backend::Netdisk(n) => {
                format!("{}\n{}", n.mount.as_ref().map(|m| m.log_tail()).unwrap_or_default(), n.server.log_tail())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Peak memory: a thread reads VmRSS/VmHWM of the client's and the server's processes every 100 ms.

type Peaks = BTreeMap<i32, (String, u64)>; // pid -> (name, peak KiB)

fn rss_kib(pid: i32) -> Option<(String, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut name = String::new();
    let mut peak = None;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Name:") {
            name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("VmRSS:").or_else(|| line.strip_prefix("VmHWM:")) {
            let kib = v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()?;
            peak = Some(peak.unwrap_or(0).max(kib));
        }
    }
    Some((name, peak?))
}

struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Peaks>>>,
}

impl Sampler {
    /// Samples each group of process trees (roots and all their descendants) until [`Sampler::finish`].
    fn start(groups: Vec<Vec<i32>>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peaks = vec![Peaks::new(); groups.len()];
            loop {
                let last = flag.load(Ordering::SeqCst);
                for (g, roots) in groups.iter().enumerate() {
                    for &root in roots {
                        let pids = std::iter::once(root).chain(descendants_of(root).into_iter().map(|p| p.pid));
                        for pid in pids {
                            if let Some((name, kib)) = rss_kib(pid) {
                                let e = peaks[g].entry(pid).or_insert((name, 0));
                                e.1 = e.1.max(kib);
                            }
                        }
                    }
                }
                if last {
                    return peaks;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Sampler { stop, handle: Some(handle) }
    }

    /// Takes a last sample and returns the peaks per group.
    fn finish(mut self) -> Vec<Peaks> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Results.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Row {
    Write,
    ReadCold,
    ReadWarm,
    SmallCreate,
    SmallStat,
    SmallRead,
    SmallRm,
    TreeTar,
    TreeCp,
    TreeRm,
    Dup,
    DupSpeedup,
    CpInside,
    Clients,
    RssClient,
    RssServer,
}

const ROWS: [Row; 16] = [
    Row::Write,
    Row::ReadCold,
    Row::ReadWarm,
    Row::SmallCreate,
    Row::SmallStat,
    Row::SmallRead,
    Row::SmallRm,
    Row::TreeTar,
    Row::TreeCp,
    Row::TreeRm,
    Row::Dup,
    Row::DupSpeedup,
    Row::CpInside,
    Row::Clients,
    Row::RssClient,
    Row::RssServer,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    MiBps,
    FilesPerSec,
    Secs,
    MiB,
    Times,
}

impl Unit {
    fn higher_is_better(self) -> bool {
        matches!(self, Unit::MiBps | Unit::FilesPerSec | Unit::Times)
    }

    fn name(self) -> &'static str {
        match self {
            Unit::MiBps => "MiB/s",
            Unit::FilesPerSec => "files/s",
            Unit::Secs => "s",
            Unit::MiB => "MiB",
            Unit::Times => "×",
        }
    }

    fn format(self, v: f64) -> String {
        match self {
            Unit::Times => format!("{v:.2}×"),
            Unit::Secs if v < 10.0 => format!("{v:.2}"),
            _ if v >= 100.0 => format!("{v:.0}"),
            _ if v >= 10.0 => format!("{v:.1}"),
            _ => format!("{v:.2}"),
        }
    }
}

fn size_name(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes & ((1 << 30) - 1) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= MIB && bytes & (MIB - 1) == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes & 1023 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

impl Row {
    fn unit(self) -> Unit {
        match self {
            Row::Write | Row::ReadCold | Row::ReadWarm | Row::Dup | Row::Clients => Unit::MiBps,
            Row::SmallCreate | Row::SmallStat | Row::SmallRead | Row::SmallRm => Unit::FilesPerSec,
            Row::TreeTar | Row::TreeCp | Row::TreeRm | Row::CpInside => Unit::Secs,
            Row::RssClient | Row::RssServer => Unit::MiB,
            Row::DupSpeedup => Unit::Times,
        }
    }

    fn label(self, cfg: &Config, tree: &Tree) -> String {
        let big = size_name(cfg.big);
        let small = format!("{} files of {}", cfg.small_files, size_name(cfg.small_size as u64));
        match self {
            Row::Write => format!("{big} sequential write (cp in)"),
            Row::ReadCold => format!("{big} sequential read, cold"),
            Row::ReadWarm => format!("{big} sequential read, warm"),
            Row::SmallCreate => format!("{small}: create"),
            Row::SmallStat => format!("{small}: stat (ls -lR)"),
            Row::SmallRead => format!("{small}: read"),
            Row::SmallRm => format!("{small}: rm -rf"),
            Row::TreeTar => format!("tree of {} files, {}: tar -x", tree.files, size_name_approx(tree.bytes)),
            Row::TreeCp => "tree: cp -r inside the target".to_string(),
            Row::TreeRm => "tree: rm -rf of both copies".to_string(),
            Row::Dup => format!("{big} cp in, content already held"),
            Row::DupSpeedup => "held-content cp in vs first cp in".to_string(),
            Row::CpInside => format!("{big} cp inside the target"),
            Row::Clients => {
                let who = if cfg.clients == 1 { "1 client".to_string() } else { format!("{} clients", cfg.clients) };
                format!("{who} × {} cp in at once (aggregate)", size_name(cfg.client_bytes))
            }
            Row::RssClient => format!("client peak RSS during the {big} cp in"),
            Row::RssServer => "largest server process peak RSS, same time".to_string(),
        }
    }

    /// Repetitions a figure should have (derived and memory figures have one).
    fn wanted(self, cfg: &Config) -> usize {
        match self {
            Row::DupSpeedup | Row::RssClient | Row::RssServer => 1,
            _ => cfg.reps,
        }
    }
}

fn size_name_approx(bytes: u64) -> String {
    if bytes >= 10 * MIB {
        format!("{} MiB", (bytes as f64 / MIB as f64).round())
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

#[derive(Default)]
struct Results {
    samples: BTreeMap<(Row, usize), Vec<f64>>,
    notes: Vec<String>,
    memory: Vec<String>,
    /// Workloads that failed, one line each; their cells show FAILED.
    failures: Vec<String>,
    failed: std::collections::BTreeSet<(Row, usize)>,
}

impl Results {
    fn push(&mut self, row: Row, kind: Kind, v: f64) {
        self.samples.entry((row, kind.idx())).or_default().push(v);
    }

    fn median(&self, row: Row, kind: Kind) -> Option<f64> {
        let mut v = self.samples.get(&(row, kind.idx()))?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let m = v.len() / 2;
        Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 })
    }
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9)
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Runs `f` for each repetition, stopping early (with a note) once the next repetition would end past the budget.
fn repeat(
    ctx: &Ctx,
    res: &mut Results,
    kind: Kind,
    what: &str,
    mut f: impl FnMut(usize, &mut Results) -> Result<()>,
) -> Result<()> {
    let start = Instant::now();
    let reps = ctx.cfg.reps;
    for rep in 0..reps {
        check_interrupt()?;
        if rep > 0 {
            let spent = start.elapsed();
            let per = spent / rep as u32;
            if spent + per > ctx.cfg.budget {
                res.notes.push(format!(
                    "{}: {what}: {rep} of {reps} repetitions (one took {:.0} s; the budget is {} s per workload and \
                     target, --budget)",
                    kind.name(),
                    per.as_secs_f64(),
                    ctx.cfg.budget.as_secs()
                ));
                return Ok(());
            }
        }
        let t0 = Instant::now();
        f(rep, res)?;
        eprintln!(
            "[{}] {what}: repetition {}/{reps} done in {:.1} s",
            kind.name(),
            rep + 1,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Workloads. Each runs on one target, leaves nothing behind but what the next one needs, and checks what it wrote.

struct Inputs {
    /// One big source per repetition, so that no repetition copies in content netdisk already holds.
    big: Vec<Source>,
    /// `clients` sources per repetition.
    clients: Vec<Vec<Source>>,
    tree: Tree,
}

/// 1 GiB sequential write: `cp SRC target/big.bin`, with the peak memory of the client and server processes.
/// Returns the source whose copy is left at big.bin.
fn big_write(ctx: &Ctx, t: &mut Target, res: &mut Results, inputs: &Inputs) -> Result<usize> {
    let kind = t.kind;
    let mut last = 0;
    let mut client_peaks = Peaks::new();
    let mut server_peaks = Peaks::new();
    repeat(ctx, res, kind, &format!("{} write", size_name(ctx.cfg.big)), |rep, res| {
        let src = &inputs.big[rep];
        let dst = t.path("big.bin");
        rm_rf(ctx, &dst)?;
        warm(ctx, &src.path)?;
        sync_all(ctx)?;
        let (client, server) = t.process_roots();
        let sampler = Sampler::start(vec![client, server]);
        let start = Instant::now();
        let mut c = cmd("cp");
        c.arg(&src.path).arg(&dst);
        run(ctx, "cp in", c)?;
        t.after_write()?;
        let took = start.elapsed();
        let mut peaks = sampler.finish().into_iter();
        for (all, now) in [(&mut client_peaks, peaks.next()), (&mut server_peaks, peaks.next())] {
            for (pid, (name, kib)) in now.unwrap_or_default() {
                let e = all.entry(pid).or_insert((name, 0));
                e.1 = e.1.max(kib);
            }
        }
        verify(ctx, &dst, src)?;
        res.push(Row::Write, kind, mibps(src.len, took));
        last = rep;
        Ok(())
    })?;
    if kind != Kind::Local {
        let describe = |p: &Peaks| {
            p.iter()
                .map(|(pid, (name, kib))| format!("{name} {pid}: {:.1} MiB", *kib as f64 / 1024.0))
                .collect::<Vec<_>>()
        };
        // The client: the sum over its processes (sshfs has its ssh child). The server: its largest process.
        let client: u64 = client_peaks.values().map(|(_, k)| k).sum();
        let server = server_peaks.values().map(|(_, k)| *k).max();
        if !client_peaks.is_empty() {
            res.push(Row::RssClient, kind, client as f64 / 1024.0);
        }
        if let Some(server) = server {
            res.push(Row::RssServer, kind, server as f64 / 1024.0);
        }
        res.memory.push(format!(
            "{}: client {}; server {}",
            kind.name(),
            describe(&client_peaks).join(", "),
            describe(&server_peaks).join(", ")
        ));
    }
    Ok(last)
}

/// Sequential read of big.bin: cold (remounted, page cache dropped) then warm (again right away).
fn big_read(ctx: &Ctx, t: &mut Target, res: &mut Results, src: &Source) -> Result<()> {
    let kind = t.kind;
    repeat(ctx, res, kind, &format!("{} read", size_name(ctx.cfg.big)), |_, res| {
        t.remount()?;
        drop_caches(ctx)?;
        for row in [Row::ReadCold, Row::ReadWarm] {
            let mut c = cmd("cat");
            c.arg(t.path("big.bin"));
            let took = run(ctx, "cat > /dev/null", c)?;
            res.push(row, kind, mibps(src.len, took));
        }
        Ok(())
    })?;
    // What a fresh client reads back is what was written.
    verify(ctx, &t.path("big.bin"), src)
}

/// Copying in content the target already holds (at big.bin), compared with the first copy.
fn big_dup(ctx: &Ctx, t: &mut Target, res: &mut Results, src: &Source) -> Result<()> {
    let kind = t.kind;
    let mut not_instant = 0;
    repeat(ctx, res, kind, &format!("{} held-content cp in", size_name(ctx.cfg.big)), |_, res| {
        let dst = t.path("dup.bin");
        rm_rf(ctx, &dst)?;
        warm(ctx, &src.path)?;
        sync_all(ctx)?;
        let before = t.instant_uploads();
        let start = Instant::now();
        let mut c = cmd("cp");
        c.arg(&src.path).arg(&dst);
        run(ctx, "cp in (held content)", c)?;
        t.after_write()?;
        let took = start.elapsed();
        if before.is_some() && t.instant_uploads() <= before {
            not_instant += 1;
        }
        verify(ctx, &dst, src)?;
        res.push(Row::Dup, kind, mibps(src.len, took));
        rm_rf(ctx, &dst)
    })?;
    if not_instant > 0 {
        res.notes.push(format!(
            "{}: the server log shows no `instant upload` for {not_instant} held-content copies",
            kind.name()
        ));
    }
    Ok(())
}

/// `cp target/big.bin target/copy.bin`, cold (remounted, page cache dropped); then removes the big files.
fn big_cp_inside(ctx: &Ctx, t: &mut Target, res: &mut Results, src: &Source) -> Result<()> {
    let kind = t.kind;
    repeat(ctx, res, kind, &format!("{} cp inside", size_name(ctx.cfg.big)), |_, res| {
        rm_rf(ctx, &t.path("copy.bin"))?;
        t.remount()?;
        drop_caches(ctx)?;
        let start = Instant::now();
        let mut c = cmd("cp");
        c.arg(t.path("big.bin")).arg(t.path("copy.bin"));
        run(ctx, "cp inside", c)?;
        t.after_write()?;
        let took = start.elapsed();
        verify(ctx, &t.path("copy.bin"), src)?;
        res.push(Row::CpInside, kind, took.as_secs_f64());
        Ok(())
    })?;
    rm_rf(ctx, &t.path("copy.bin"))?;
    rm_rf(ctx, &t.path("big.bin"))
}

fn small_content(rep: usize, i: usize, size: usize) -> Vec<u8> {
    netdisk_e2e::random_bytes(1_000_000 + rep as u64 * 100_000 + i as u64, size)
}

/// Small files: create (one process writing them all), stat (`ls -lR`, after a remount and dropping caches),
/// read (checking every byte), `rm -rf`.
fn small_files(ctx: &Ctx, t: &mut Target, res: &mut Results) -> Result<()> {
    let kind = t.kind;
    let n = ctx.cfg.small_files;
    let size = ctx.cfg.small_size;
    repeat(ctx, res, kind, &format!("{n} small files"), |rep, res| {
        let contents: Arc<Vec<Vec<u8>>> = Arc::new((0..n).map(|i| small_content(rep, i, size)).collect());
        let dir = t.path("small");
        rm_rf(ctx, &dir)?;
        mkdir(ctx, &dir)?;
        sync_all(ctx)?;

        let (d, c) = (dir.clone(), contents.clone());
        let start = Instant::now();
        bounded(ctx, "create the small files", move || {
            for (i, data) in c.iter().enumerate() {
                let p = d.join(format!("f{i:05}"));
                std::fs::write(&p, data).with_context(|| format!("write {}", p.display()))?;
            }
            Ok(())
        })?;
        t.after_write()?;
        res.push(Row::SmallCreate, kind, per_sec(n, start.elapsed()));

        t.remount()?;
        drop_caches(ctx)?;
        let dir = t.path("small");
        let listing = ctx.scratch.join("ls-lR.out");
        let mut c = cmd("ls");
        c.arg("-lR").arg(&dir).stdout(File::create(&listing)?);
        let took = run(ctx, "ls -lR", c)?;
        res.push(Row::SmallStat, kind, per_sec(n, took));
        let listed = std::fs::read_to_string(&listing)?.lines().filter(|l| l.starts_with('-')).count();
        if listed != n {
            bail!("INTEGRITY FAILURE: ls -lR {} lists {listed} files, not {n}", dir.display());
        }

        let (d, c) = (dir.clone(), contents.clone());
        let ((), took) = bounded(ctx, "read the small files", move || {
            for (i, want) in c.iter().enumerate() {
                let p = d.join(format!("f{i:05}"));
                let got = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
                if &got != want {
                    bail!("INTEGRITY FAILURE: {} ({} bytes) differs from what was written", p.display(), got.len());
                }
            }
            Ok(())
        })?;
        ctx.verified_files.set(ctx.verified_files.get() + n as u64);
        ctx.verified_bytes.set(ctx.verified_bytes.get() + (n * size) as u64);
        res.push(Row::SmallRead, kind, per_sec(n, took));

        let mut c = cmd("rm");
        c.arg("-rf").arg(&dir);
        let took = run(ctx, "rm -rf of the small files", c)?;
        if dir.exists() {
            bail!("{} still exists after rm -rf", dir.display());
        }
        res.push(Row::SmallRm, kind, per_sec(n, took));
        Ok(())
    })
}

/// The real tree: `tar -x` into the target, `cp -r` of it inside the target, both checked, then `rm -rf` of both.
fn real_tree(ctx: &Ctx, t: &mut Target, res: &mut Results, tree: &Tree) -> Result<()> {
    let kind = t.kind;
    repeat(ctx, res, kind, &format!("tree of {} files", tree.files), |_, res| {
        let dir = t.path("tree");
        rm_rf(ctx, &dir)?;
        mkdir(ctx, &dir)?;
        sync_all(ctx)?;

        let start = Instant::now();
        let mut c = cmd("tar");
        c.arg("-xf").arg(&tree.tar).arg("-C").arg(&dir);
        run(ctx, "tar -x", c)?;
        t.after_write()?;
        res.push(Row::TreeTar, kind, start.elapsed().as_secs_f64());

        let (extracted, copy) = (dir.join(&tree.top), dir.join("copy"));
        let start = Instant::now();
        let mut c = cmd("cp");
        c.arg("-r").arg(&extracted).arg(&copy);
        run(ctx, "cp -r", c)?;
        t.after_write()?;
        res.push(Row::TreeCp, kind, start.elapsed().as_secs_f64());

        for root in [extracted, copy] {
            let r = root.clone();
            let (got, _) = bounded(ctx, &format!("check {}", root.display()), move || manifest_of(&r))?;
            compare_manifests(&root, &tree.manifest, &got)?;
            ctx.verified_files.set(ctx.verified_files.get() + tree.files as u64);
            ctx.verified_bytes.set(ctx.verified_bytes.get() + tree.bytes);
        }

        let mut c = cmd("rm");
        c.arg("-rf").arg(&dir);
        let took = run(ctx, "rm -rf of the tree", c)?;
        if dir.exists() {
            bail!("{} still exists after rm -rf", dir.display());
        }
        res.push(Row::TreeRm, kind, took.as_secs_f64());
        Ok(())
    })
}

/// N clients uploading at once: N parallel `cp` of N different sources; aggregate throughput, all checked.
fn clients(ctx: &Ctx, t: &mut Target, res: &mut Results, inputs: &Inputs) -> Result<()> {
    let kind = t.kind;
    let n = ctx.cfg.clients;
    repeat(ctx, res, kind, &format!("{n} concurrent uploaders"), |rep, res| {
        let dir = t.path("clients");
        rm_rf(ctx, &dir)?;
        mkdir(ctx, &dir)?;
        for src in &inputs.clients[rep] {
            warm(ctx, &src.path)?;
        }
        sync_all(ctx)?;
        let cmds: Vec<Command> = inputs.clients[rep]
            .iter()
            .enumerate()
            .map(|(i, src)| {
                let mut c = cmd("cp");
                c.arg(&src.path).arg(dir.join(format!("c{i:02}.bin")));
                c
            })
            .collect();
        let start = Instant::now();
        run_all(ctx, "parallel cp in", cmds)?;
        t.after_write()?;
        let took = start.elapsed();
        for (i, src) in inputs.clients[rep].iter().enumerate() {
            verify(ctx, &dir.join(format!("c{i:02}.bin")), src)?;
        }
        let total: u64 = inputs.clients[rep].iter().map(|s| s.len).sum();
        res.push(Row::Clients, kind, mibps(total, took));
        rm_rf(ctx, &dir)
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Output.

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "n/a".to_string())
}

/// `/proc/loadavg`'s first three fields: other work on the machine makes the figures noisy.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    if fields.len() == 3 {
        fields.join(", ")
    } else {
        "unknown".to_string()
    }
}

/// The first line of a program's output (stdout, then stderr) that contains `needle`.
fn line_with(program: &str, args: &[&str], needle: &str) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            text.lines().find(|l| l.contains(needle)).map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "n/a".to_string())
}

/// The file system holding `dir`: type and device of the longest mount point above it.
fn filesystem_of(dir: &Path) -> String {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() >= 3 && dir.starts_with(f[1])).then(|| (f[1].len(), format!("{} ({} on {})", f[2], f[0], f[1])))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".to_string())
}

fn machine(ctx: &Ctx) -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| "unknown".to_string());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf();
    let repo_s = repo.to_string_lossy().into_owned();
    let commit = first_line("git", &["-C", &repo_s, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", &repo_s, "status", "--porcelain", "--untracked-files=no"])
        .stdin(Stdio::null())
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    vec![
        ("CPU", format!("{cpu}, {cores} cores (nproc)")),
        ("memory", mem),
        ("kernel", kernel),
        ("OS", os),
        ("scratch directory", format!("{} on {}", ctx.scratch.display(), filesystem_of(&ctx.scratch))),
        ("netdisk", format!("commit {commit}{}, release build", if dirty { " with uncommitted changes" } else { "" })),
        ("load average (1, 5, 15 min) at the end", loadavg()),
        ("peers", format!("{}; {}", line_with("sshfs", &["--version"], "SSHFS version"), first_line("ssh", &["-V"]))),
    ]
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn command_line() -> String {
    std::env::var("NETDISK_BENCH_COMMAND")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| std::env::args().map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" "))
}

/// The table, as aligned Markdown.
fn table(cfg: &Config, tree: &Tree, res: &Results, present: [bool; 3]) -> String {
    let mut rows: Vec<Vec<String>> = vec![vec![
        "workload".into(),
        "unit".into(),
        "local".into(),
        "sshfs".into(),
        "netdisk".into(),
        "netdisk vs sshfs".into(),
        "netdisk vs local".into(),
    ]];
    for row in ROWS {
        let unit = row.unit();
        let mut cells = vec![row.label(cfg, tree), unit.name().to_string()];
        for kind in Kind::ALL {
            let cell = match res.median(row, kind) {
                _ if res.failed.contains(&(row, kind.idx())) => "FAILED".to_string(),
                Some(v) if present[kind.idx()] => {
                    let n = res.samples.get(&(row, kind.idx())).map_or(0, |s| s.len());
                    let mark = if n < row.wanted(cfg) { "†" } else { "" };
                    format!("{}{mark}", unit.format(v))
                }
                _ => "n/a".to_string(),
            };
            cells.push(cell);
        }
        let usable = |kind: Kind| present[kind.idx()] && !res.failed.contains(&(row, kind.idx()));
        let nd = res.median(row, Kind::Netdisk).filter(|_| usable(Kind::Netdisk));
        for peer in [Kind::Sshfs, Kind::Local] {
            let p = res.median(row, peer).filter(|_| usable(peer));
            let ratio = match (nd, p) {
                (Some(nd), Some(p)) if nd > 0.0 && p > 0.0 => {
                    let r = if unit.higher_is_better() { nd / p } else { p / nd };
                    format!("{r:.2}×")
                }
                _ => "n/a".to_string(),
            };
            cells.push(ratio);
        }
        rows.push(cells);
    }
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..rows[0].len()).map(width).collect();
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i] - c.chars().count();
                if i < 2 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, w)| if i < 2 { "-".repeat(*w) } else { format!("{}:", "-".repeat(w - 1)) })
                .collect();
            let _ = writeln!(out, "| {} |", rule.join(" | "));
        }
    }
    out
}

fn legend(ctx: &Ctx, inputs: &Inputs) -> Vec<String> {
    let cfg = &ctx.cfg;
    let mut lines = Vec::new();
    if cfg.quick {
        lines.push("Quick mode: tiny sizes to prove the harness works; the figures mean little.".to_string());
    }
    lines.extend([
        "Ratios above 1 mean netdisk is better: for throughput (MiB/s, files/s, ×) the ratio is netdisk/peer, \
         for time (s) and memory (MiB) it is peer/netdisk."
            .to_string(),
        format!(
            "Figures are medians of {} repetition(s){}; n/a: target or figure not available.",
            cfg.reps,
            if cfg.reps > 1 { " († fewer, see the notes)" } else { "" }
        ),
        format!(
            "Tree: {} ({} files and links, {}).",
            inputs.tree.source.display(),
            inputs.tree.files,
            size_name_approx(inputs.tree.bytes)
        ),
        "Writes to local disk include a syncfs; netdisk's close returns once the server has verified and stored \
         the file; sshfs is timed until its close returns."
            .to_string(),
        format!(
            "netdisk server durability: {} ({}).",
            cfg.durability,
            if cfg.durability == "full" {
                "every answer is synced to disk first: a file or an unlink survives a power loss once acknowledged; \
                 sshfs and the local target sync nothing per file"
            } else {
                "answers once in the OS cache, as sshfs does"
            }
        ),
    ]);
    lines
}

fn report(ctx: &Ctx, inputs: &Inputs, res: &Results, present: [bool; 3], started: Instant) -> Result<()> {
    let cfg = &ctx.cfg;
    let table = table(cfg, &inputs.tree, res, present);
    let mut notes = res.notes.clone();
    if let Some(e) = ctx.drop_caches_failed.borrow().as_ref() {
        notes.push(format!("the page cache could not be dropped ({e}): cold figures may be partly warm"));
    }
    let integrity = if res.failures.is_empty() {
        format!(
            "Integrity: {} files ({}) written to the targets were checked against their sources: all equal.",
            ctx.verified_files.get(),
            size_name_approx(ctx.verified_bytes.get())
        )
    } else {
        format!(
            "Integrity: {} files ({}) were checked and found equal to their sources before the failures below.",
            ctx.verified_files.get(),
            size_name_approx(ctx.verified_bytes.get())
        )
    };
    let elapsed = format!("Run time: {:.0} s.", started.elapsed().as_secs_f64());

    let mut out = String::new();
    for l in legend(ctx, inputs) {
        let _ = writeln!(out, "{l}");
    }
    out.push('\n');
    out.push_str(&table);
    out.push('\n');
    for n in &notes {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(out, "{integrity}");
    for f in &res.failures {
        let _ = writeln!(out, "FAILED: {f}");
    }
    let _ = writeln!(out, "{elapsed}");
    print!("{out}");
    io::stdout().flush()?;

    if let Some(path) = &cfg.out {
        let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
        let mut md = String::new();
        let _ = writeln!(md, "# netdisk benchmarks\n");
        let _ = writeln!(
            md,
            "netdisk against local disk and sshfs over loopback, measured in one run on one machine by \
             `netdisk-bench` ([bench/README.md](bench/README.md) says what each row measures).\n"
        );
        let _ = writeln!(md, "- date: {date}");
        let _ = writeln!(md, "- command: `{}`", command_line());
        for (k, v) in machine(ctx) {
            let _ = writeln!(md, "- {k}: {v}");
        }
        let _ = writeln!(md, "\n## Results\n");
        for l in legend(ctx, inputs) {
            let _ = writeln!(md, "{l}\n");
        }
        md.push_str(&table);
        let _ = writeln!(md);
        for n in &notes {
            let _ = writeln!(md, "- note: {n}");
        }
        let _ = writeln!(md, "- {integrity}");
        for f in &res.failures {
            let _ = writeln!(md, "- **FAILED**: {f}");
        }
        let _ = writeln!(md, "- {elapsed}");
        let _ = writeln!(md, "\n## Every repetition\n");
        for row in ROWS {
            let unit = row.unit();
            let per: Vec<String> = Kind::ALL
                .iter()
                .filter_map(|k| {
                    let v = res.samples.get(&(row, k.idx()))?;
                    Some(format!("{} {}", k.name(), v.iter().map(|x| unit.format(*x)).collect::<Vec<_>>().join(", ")))
                })
                .collect();
            let _ = writeln!(md, "- {} ({}): {}", row.label(cfg, &inputs.tree), unit.name(), per.join("; "));
        }
        if !res.memory.is_empty() {
            let _ = writeln!(md, "\nPeak RSS per process during the copy in:\n");
            for m in &res.memory {
                let _ = writeln!(md, "- {m}");
            }
        }
        std::fs::write(path, md).with_context(|| format!("write {}", path.display()))?;
        eprintln!("netdisk-bench: wrote {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------

fn bench(cfg: Config) -> Result<()> {
    let started = Instant::now();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("netdisk-bench: not root: FUSE mounts, dropping the page cache and sshd may fail");
    }
    let scratch = Scratch::create(&cfg.scratch_parent)?;
    // netdisk's server data directory and the mount's cache go under the scratch directory too (same disk).
    std::env::set_var("TMPDIR", &scratch.0);
    let logs = scratch.0.join("logs");
    std::fs::create_dir(&logs)?;
    let ctx = Ctx {
        cfg,
        scratch: scratch.0.clone(),
        logs,
        seq: Cell::new(0),
        verified_files: Cell::new(0),
        verified_bytes: Cell::new(0),
        drop_caches_failed: RefCell::new(None),
    };
    eprintln!("netdisk-bench: scratch directory {}; load average {}", ctx.scratch.display(), loadavg());

    let tree = prepare_tree(&ctx)?;
    let src_dir = ctx.scratch.join("sources");
    std::fs::create_dir(&src_dir)?;
    let reps = ctx.cfg.reps;
    let mut specs: Vec<(PathBuf, u64, u64)> =
        (0..reps).map(|r| (src_dir.join(format!("big-{r}.bin")), 10 + r as u64, ctx.cfg.big)).collect();
    for r in 0..reps {
        for i in 0..ctx.cfg.clients {
            specs.push((
                src_dir.join(format!("client-{r}-{i:02}.bin")),
                1000 + (r * 100 + i) as u64,
                ctx.cfg.client_bytes,
            ));
        }
    }
    let total: u64 = specs.iter().map(|s| s.2).sum();
    eprintln!("netdisk-bench: making {} source files ({}) ...", specs.len(), size_name_approx(total));
    let mut made = make_sources(&specs)?.into_iter();
    let big: Vec<Source> = made.by_ref().take(reps).collect();
    let clients_src: Vec<Vec<Source>> = (0..reps).map(|_| made.by_ref().take(ctx.cfg.clients).collect()).collect();
    let inputs = Inputs { big, clients: clients_src, tree };

    let mut res = Results::default();
    let mut targets: Vec<Target> = vec![Target::local(&ctx)?];
    if ctx.cfg.sshfs {
        match Target::sshfs(&ctx) {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("netdisk-bench: sshfs is left out: {e:#}");
                res.notes.push(format!("sshfs not measured: {}", format!("{e:#}").lines().next().unwrap_or("")));
            }
        }
    } else {
        res.notes.push("sshfs not measured (--no-sshfs)".to_string());
    }
    targets.push(Target::netdisk(ctx.cfg.durability));
    let mut present = [false; 3];
    for t in &targets {
        present[t.kind.idx()] = true;
        eprintln!("netdisk-bench: {} target at {}", t.kind.name(), t.root().display());
    }

    // Each workload runs on each target in turn; a failure (an error, a mismatch, a panic) marks that workload's
    // cells FAILED, is printed with the target's logs, and fails the run at the end, after the table.
    let mut held = [0usize; 3];
    for t in targets.iter_mut().filter(|_| ctx.cfg.wants("big")) {
        let rows = [Row::Write, Row::RssClient, Row::RssServer];
        let slot = &mut held[t.kind.idx()];
        workload(&mut res, t, "big file write", &rows, |t, res| {
            *slot = big_write(&ctx, t, res, &inputs)?;
            Ok(())
        })?;
    }
    for t in targets.iter_mut().filter(|_| ctx.cfg.wants("big")) {
        let src = &inputs.big[held[t.kind.idx()]];
        workload(&mut res, t, "big file read", &[Row::ReadCold, Row::ReadWarm], |t, res| big_read(&ctx, t, res, src))?;
    }
    for t in targets.iter_mut().filter(|_| ctx.cfg.wants("big")) {
        let src = &inputs.big[held[t.kind.idx()]];
        workload(&mut res, t, "held-content copy", &[Row::Dup, Row::DupSpeedup], |t, res| big_dup(&ctx, t, res, src))?;
        if let (Some(first), Some(again)) = (res.median(Row::Write, t.kind), res.median(Row::Dup, t.kind)) {
            res.push(Row::DupSpeedup, t.kind, again / first);
        }
    }
    for t in targets.iter_mut().filter(|_| ctx.cfg.wants("big")) {
        let src = &inputs.big[held[t.kind.idx()]];
        workload(&mut res, t, "copy inside", &[Row::CpInside], |t, res| big_cp_inside(&ctx, t, res, src))?;
    }
    for t in targets.iter_mut().filter(|_| ctx.cfg.wants("small")) {
        let rows = [Row::SmallCreate, Row::SmallStat, Row::SmallRead, Row::SmallRm];
        workload(&mut res, t, "small files", &rows, |t, res| small_files(&ctx, t, res))?;
    }
    for t in targets.iter_mut().filter(|_| ctx.cfg.wants("tree")) {
        let rows = [Row::TreeTar, Row::TreeCp, Row::TreeRm];
        workload(&mut res, t, "tree", &rows, |t, res| real_tree(&ctx, t, res, &inputs.tree))?;
    }
    for t in targets.iter_mut().filter(|_| ctx.cfg.wants("clients")) {
        workload(&mut res, t, "concurrent uploaders", &[Row::Clients], |t, res| clients(&ctx, t, res, &inputs))?;
    }

    report(&ctx, &inputs, &res, present, started)?;
    // Guards drop here: the targets (mounts, then servers and sshd), then the scratch directory.
    drop(targets);
    if !res.failures.is_empty() {
        bail!("{} workload(s) failed:\n{}", res.failures.len(), res.failures.join("\n"));
    }
    Ok(())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".to_string())
}

/// Runs one workload on one target. An interruption ends the run (Err); any other failure, panics included, is
/// recorded (its rows show FAILED for this target), printed with the target's logs, and the run goes on.
fn workload(
    res: &mut Results,
    t: &mut Target,
    name: &str,
    rows: &[Row],
    f: impl FnOnce(&mut Target, &mut Results) -> Result<()>,
) -> Result<()> {
    check_interrupt()?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        t.ensure_mounted()?;
        f(t, res)
    }));
    let err = match outcome {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e,
        Err(p) => anyhow!("panicked: {}", panic_message(p.as_ref())),
    };
    if interrupted() {
        return Err(err);
    }
    let kind = t.kind.name();
    eprintln!("netdisk-bench: FAILED on {kind}: {name}: {err:#}\n\nlogs of {kind}:\n{}\n", t.log_tail());
    let mut short = format!("{err:#}").replace('\n', " ");
    if short.chars().count() > 400 {
        short = short.chars().take(400).collect::<String>() + " ...";
    }
    res.failures.push(format!("{kind}: {name}: {short}"));
    for row in rows {
        res.failed.insert((*row, t.kind.idx()));
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let cfg = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netdisk-bench: {e:#}");
            std::process::exit(2);
        }
    };
    install_signal_handlers();
    sshfs::become_subreaper();
    // A panic (a guard that could not start, an assertion) unwinds through the guards, which clean up; then fail.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bench(cfg)));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("netdisk-bench: FAILED: {e:#}");
            std::process::exit(if interrupted() { 130 } else { 1 });
        }
        Err(_) => {
            eprintln!("netdisk-bench: FAILED (panic, see above)");
            std::process::exit(if interrupted() { 130 } else { 1 });
        }
    }
}
