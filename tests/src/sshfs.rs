//! sshfs over loopback, the peer the benchmark measures netdisk against: a private `sshd` bound to 127.0.0.1 on a
//! spare port, with its own host key, client key, config and pid file in a scratch directory (nothing in /etc/ssh is
//! read or written), and an `sshfs` mount through it, run in the foreground so that its pid is ours.
//! Both are guards: on drop the mount is unmounted and every process started here is stopped, with bounded waits.

use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::mount::is_mounted;
use crate::{descendants_of, proc_info, wait_until};

/// The OpenSSH server; sshd re-executes itself, so it must be started by its full path.
pub const SSHD: &str = "/usr/sbin/sshd";
/// Longest wait for sshd to answer or for sshfs to mount.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a process to exit after it was asked to.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `apt-get` run.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// `name` found in `PATH` (or in /usr/sbin and /sbin, which a non-login root shell may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The programs sshfs-over-loopback needs that are not installed.
pub fn missing_tools() -> Vec<&'static str> {
    let mut missing: Vec<&'static str> =
        ["sshfs", "ssh", "ssh-keygen", "fusermount3"].into_iter().filter(|p| find_program(p).is_none()).collect();
    if !Path::new(SSHD).is_file() {
        missing.push(SSHD);
    }
    missing
}

/// Runs `cmd` (its output going where the caller set it), killing it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<ExitStatus> {
    let mut child = cmd.stdin(Stdio::null()).spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("did not finish within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `apt-get install -y sshfs openssh-server` (non-interactive), after an `apt-get update` if the first try fails.
/// Output goes to `log`.
pub fn install(log: &Path) -> Result<()> {
    let attempt = |args: &[&str]| -> Result<()> {
        let out = File::options().create(true).append(true).open(log).context("apt-get log")?;
        let err = out.try_clone()?;
        let status = run_with_timeout(
            Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(out).stderr(err),
            INSTALL_TIMEOUT,
        )
        .with_context(|| format!("apt-get {}", args.join(" ")))?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    let install = ["install", "-y", "sshfs", "openssh-server"];
    if attempt(&install).is_ok() {
        return Ok(());
    }
    attempt(&["update"])?;
    attempt(&install)
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "netdisk-bench", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("run ssh-keygen")?;
    if !out.status.success() {
        bail!("ssh-keygen -f {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A port on 127.0.0.1 that was free a moment ago.
fn spare_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// True once something on `port` answers with an SSH banner.
fn answers_ssh(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

fn tail(path: &Path) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Stops `child`: `sig`, a bounded wait, then SIGKILL. Returns whether it exited on the signal.
fn stop_child(child: &mut Child, sig: i32, timeout: Duration) -> bool {
    if let Ok(Some(_)) = child.try_wait() {
        return true;
    }
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    unsafe { libc::kill(child.id() as i32, sig) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A private `sshd -D -e -f CONFIG` on 127.0.0.1, accepting root with one throwaway key. Stopped on drop, with the
/// session processes it forked.
pub struct Sshd {
    child: Option<Child>,
    port: u16,
    key: PathBuf,
    log: PathBuf,
}

impl Sshd {
    /// Writes keys and config into `dir` (created) and starts sshd; waits (bounded) until it answers.
    pub fn start(dir: &Path) -> Result<Sshd> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let host_key = dir.join("host_ed25519_key");
        let key = dir.join("client_key");
        keygen(&host_key)?;
        keygen(&key)?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(dir.join("client_key.pub"), &authorized).context("authorized_keys")?;
        // sshd refuses to start without its privilege separation directory (normally made by the service).
        if !Path::new("/run/sshd").is_dir() {
            std::fs::create_dir_all("/run/sshd").context("create /run/sshd (sshd's privilege separation directory)")?;
        }
        let sftp = if Path::new("/usr/lib/openssh/sftp-server").is_file() {
            "/usr/lib/openssh/sftp-server"
        } else {
            "internal-sftp"
        };
        let log = dir.join("sshd.log");
        let mut last_error = String::new();
        // The port is free when picked but could be taken before sshd binds it: a few tries.
        for _ in 0..3 {
            let port = spare_port()?;
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "# netdisk-bench: a throwaway sshd on loopback\n\
                     ListenAddress 127.0.0.1\n\
                     Port {port}\n\
                     HostKey {host}\n\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {authorized}\n\
                     PermitRootLogin yes\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     UseDNS no\n\
                     PrintMotd no\n\
                     X11Forwarding no\n\
                     AllowTcpForwarding no\n\
                     Subsystem sftp {sftp}\n",
                    host = host_key.display(),
                    pid = dir.join("sshd.pid").display(),
                    authorized = authorized.display(),
                ),
            )
            .context("write sshd_config")?;
            let log_file = File::options().create(true).append(true).open(&log).context("sshd log")?;
            // Its own process group: a Ctrl-C at the terminal stops the benchmark, whose guards then stop this in order.
            let child = Command::new(SSHD)
                .process_group(0)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .with_context(|| format!("start {SSHD}"))?;
            let mut sshd = Sshd { child: Some(child), port, key: key.clone(), log: log.clone() };
            let ready = wait_until(READY_TIMEOUT, || {
                answers_ssh(port) || sshd.child.as_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
            });
            let alive = sshd.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if ready && alive {
                return Ok(sshd);
            }
            last_error = format!("sshd did not answer on 127.0.0.1:{port}: {}", tail(&log));
            drop(sshd);
        }
        bail!("{last_error}")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private key sshd accepts for root.
    pub fn key(&self) -> &Path {
        &self.key
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // Session processes (sshd per connection, sftp-server) end when their client goes (the sshfs guards drop
        // first). Give them a moment to end while the listener is there to reap them, then stop the listener, then
        // the sessions still running.
        let sessions = descendants_of(child.id() as i32);
        let leftover = |p: &crate::ProcInfo| proc_info(p.pid).is_some_and(|now| now.state != 'Z' && now.comm == p.comm);
        wait_until(Duration::from_secs(3), || !sessions.iter().any(leftover));
        if !stop_child(&mut child, libc::SIGTERM, EXIT_TIMEOUT) {
            eprintln!("sshd (pid {}) did not stop on SIGTERM: killed", child.id());
        }
        if !wait_until(Duration::from_secs(3), || !sessions.iter().any(leftover)) {
            for p in sessions.iter().filter(|p| leftover(p)) {
                if p.comm.starts_with("sshd") || p.comm.starts_with("sftp-server") {
                    // SAFETY: kill(2) on a session process of the sshd this guard started.
                    unsafe { libc::kill(p.pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// `sshfs -f` of a directory through an [`Sshd`], mounted on `mnt` until dropped.
pub struct Sshfs {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl Sshfs {
    /// Mounts `root@127.0.0.1:REMOTE` on `mnt` and waits (bounded) until the kernel lists the mount.
    pub fn mount(sshd: &Sshd, remote: &Path, mnt: &Path, log: &Path) -> Result<Sshfs> {
        std::fs::create_dir_all(mnt).with_context(|| format!("create {}", mnt.display()))?;
        let log_file = File::options().create(true).append(true).open(log).context("sshfs log")?;
        let options = format!(
            "IdentityFile={},IdentitiesOnly=yes,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,\
             BatchMode=yes,LogLevel=ERROR",
            sshd.key().display()
        );
        // Its own process group, like sshd: unmounted by this guard, not by a Ctrl-C meant for the benchmark.
        let child = Command::new("sshfs")
            .process_group(0)
            .arg("-f")
            .arg("-p")
            .arg(sshd.port().to_string())
            .arg("-o")
            .arg(options)
            .arg(format!("root@127.0.0.1:{}", remote.display()))
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("start sshfs")?;
        let mut sshfs = Sshfs { child: Some(child), mnt: mnt.to_path_buf(), log: log.to_path_buf() };
        let mounted = wait_until(READY_TIMEOUT, || {
            is_mounted(mnt) || sshfs.child.as_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
        });
        if !mounted || !is_mounted(mnt) {
            bail!("sshfs did not mount {} within {READY_TIMEOUT:?}: {}", mnt.display(), tail(log));
        }
        Ok(sshfs)
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// The sshfs process.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The client's processes: sshfs and the `ssh` doing its transport, which sshfs detaches (its parent is then
    /// init, or the nearest child subreaper) but which stays in sshfs's process group.
    pub fn processes(&self) -> Vec<i32> {
        self.pid().map(group_members).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Sshfs {
    fn drop(&mut self) {
        // sshfs's ssh, noted while it runs (it ends with the mount).
        let group = self.pid();
        let helpers: Vec<i32> =
            group.map(group_members).unwrap_or_default().into_iter().filter(|p| Some(*p) != group).collect();
        if is_mounted(&self.mnt) {
            let _ = run_with_timeout(
                Command::new("fusermount3").arg("-u").arg(&self.mnt).stdout(Stdio::null()).stderr(Stdio::null()),
                EXIT_TIMEOUT,
            );
        }
        if let Some(mut child) = self.child.take() {
            // Unmounted, sshfs -f exits by itself; otherwise SIGTERM makes it unmount and exit.
            let exited = wait_until(EXIT_TIMEOUT, || !matches!(child.try_wait(), Ok(None)));
            if !exited && !stop_child(&mut child, libc::SIGTERM, EXIT_TIMEOUT) {
                eprintln!("sshfs (pid {}) did not stop: killed", child.id());
            }
            let _ = child.wait();
            // Its ssh ends with it; stop it if not, and reap it if it became ours (see `become_subreaper`).
            let running = |pid: &i32| proc_info(*pid).is_some_and(|p| p.state != 'Z' && p.comm == "ssh");
            if !wait_until(EXIT_TIMEOUT, || !helpers.iter().any(running)) {
                for pid in helpers.iter().filter(|p| running(p)) {
                    // SAFETY: kill(2) on the ssh that the sshfs this guard started ran, still in its process group.
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                }
            }
            for pid in &helpers {
                let deadline = Instant::now() + Duration::from_secs(2);
                // SAFETY: waitpid(2) on one pid with WNOHANG: reaps it only if it is our child (else ECHILD).
                while unsafe { libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) } == 0
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if is_mounted(&self.mnt) {
            let _ = run_with_timeout(
                Command::new("umount").arg("-l").arg(&self.mnt).stdout(Stdio::null()).stderr(Stdio::null()),
                EXIT_TIMEOUT,
            );
        }
    }
}

/// The processes whose process group is `pgid` (field 5 of `/proc/PID/stat`), zombies left out.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let Some(close) = stat.rfind(')') else { return false };
            let mut rest = stat[close + 1..].split_whitespace();
            let (state, _ppid, pgrp) = (rest.next(), rest.next(), rest.next());
            state != Some("Z") && pgrp.and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
        })
        .collect();
    out.sort_unstable();
    out
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`), so that helpers that
/// detach themselves (sshfs's ssh) are reaped here rather than left to an init that may not reap them.
pub fn become_subreaper() {
    // SAFETY: prctl(2) with PR_SET_CHILD_SUBREAPER only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}
