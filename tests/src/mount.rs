//! A real FUSE mount for tests: `netdisk-mount` started against a test [`Server`](crate::Server) (or with `--local`),
//! waited for until the kernel lists the mount, and on drop stopped with SIGTERM and, if anything is left, detached.
//! Shell commands on the mount run under `timeout`, so a hung FUSE call fails the test instead of hanging it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{bin_dir, Server, START_TIMEOUT, STOP_TIMEOUT};

/// Longest a shell command on a mount may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

pub fn mount_bin() -> PathBuf {
    let path = bin_dir().join("netdisk-mount");
    assert!(path.is_file(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path
}

/// True while `path` is a mount point in /proc/self/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(target.as_str())))
        .unwrap_or(false)
}

pub struct Mount {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Mount {
    /// Mounts `user`'s tree of `server`.
    pub fn start(server: &Server, user: &str, password: &str) -> Mount {
        Mount::start_in(server, user, password, Mount::new_dir())
    }

    /// Mounts on `DIR/mnt` of a directory this guard takes over (e.g. one a killed mount left behind).
    pub fn start_in(server: &Server, user: &str, password: &str, dir: tempfile::TempDir) -> Mount {
        Mount::start_with(server, user, password, dir, &[])
    }

    /// Like [`Mount::start_in`], with more `netdisk-mount` options (`--timeout 1`, `--connections 2` ...).
    pub fn start_with(server: &Server, user: &str, password: &str, dir: tempfile::TempDir, args: &[&str]) -> Mount {
        Mount::start_at(server.addr(), user, password, dir, args)
    }

    /// Mounts whatever listens at `addr` (a fake server, say), with more `netdisk-mount` options.
    pub fn start_at(addr: SocketAddr, user: &str, password: &str, dir: tempfile::TempDir, args: &[&str]) -> Mount {
        let mut cmd = Command::new(mount_bin());
        cmd.arg("--server").arg(addr.to_string()).arg("--user").arg(user).env("NETDISK_PASSWORD", password);
        cmd.args(args);
        Mount::spawn(cmd, dir)
    }

    /// A fresh temporary directory with an empty `mnt` in it, for [`Mount::start_in`] and [`Mount::start_with`].
    pub fn new_dir() -> tempfile::TempDir {
        let dir = tempfile::Builder::new().prefix("netdisk-mount-").tempdir().expect("a temporary directory");
        std::fs::create_dir(dir.path().join("mnt")).expect("the mount point");
        dir
    }

    /// `netdisk-mount --local DIR`.
    pub fn start_local(data: &Path) -> Mount {
        let mut cmd = Command::new(mount_bin());
        cmd.arg("--local").arg(data);
        Mount::spawn(cmd, Mount::new_dir())
    }

    fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Mount {
        let path = dir.path().join("mnt");
        let log = dir.path().join("mount.log");
        cmd.arg("--cache-dir").arg(dir.path().join("cache")).arg(&path);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(File::create(&log).expect("log file"));
        let mut child = cmd.spawn().expect("netdisk-mount starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mount = Mount { dir: Some(dir), path, log, child: Some(child) };
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        assert!(line.starts_with("mounted "), "netdisk-mount did not mount (stdout {line:?})\n{}", mount.log_tail());
        assert!(is_mounted(&mount.path), "the kernel does not list {}", mount.path.display());
        mount
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the mount.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Runs `sh -c script` in the mount directory, bounded by [`COMMAND_TIMEOUT`].
    pub fn sh(&self, script: &str) -> Output {
        Command::new("timeout")
            .args(["-s", "KILL", &COMMAND_TIMEOUT.as_secs().to_string(), "sh", "-c", script])
            .current_dir(&self.path)
            .output()
            .expect("sh runs")
    }

    /// Like [`Mount::sh`], and fails the test (with the output and the mount's log) unless it succeeds.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "`{script}` failed ({}):\nstdout: {}\nstderr: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!("--- mount log (tail) ---\n{}\n--- end ---", lines[lines.len().saturating_sub(40)..].join("\n"))
    }

    /// Sends a signal to the mount process.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the pid of the mount process this guard started and has not reaped.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// Waits (bounded) for the mount process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The temporary directory holding the mount point, cache and log.
    pub fn work_dir(&self) -> &Path {
        self.dir.as_ref().expect("the guard owns its directory").path()
    }

    /// `kill -9` of the mount process, leaving its (now dead) mount behind; returns the directory holding it.
    pub fn kill_and_leave_mount(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.dir.take().expect("the guard owns its directory")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(STOP_TIMEOUT).is_none() {
                if let Some(mut child) = self.child.take() {
                    eprintln!("netdisk-mount did not stop within {STOP_TIMEOUT:?}: killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        if self.dir.is_some() && is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Runs a command that must fail to mount; returns its exit status and stderr. Bounded by [`COMMAND_TIMEOUT`].
pub fn mount_must_fail(args: &[&str], password: &str) -> (ExitStatus, String, bool) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(mount_bin())
        .args(args)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg(&mnt)
        .env("NETDISK_PASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .expect("netdisk-mount runs");
    let mounted = is_mounted(&mnt);
    if mounted {
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    }
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned(), mounted)
}
