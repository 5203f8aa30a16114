//! `--local DIR`: runs `netdisk-server` (a separate process: never forked from this multi-threaded one)
//! on loopback with its data in DIR, with one user whose password is kept in DIR/local-password (mode 0600).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::client::Credentials;

const LOCAL_USER: &str = "local";

pub struct LocalServer {
    child: Child,
    pub credentials: Credentials,
}

/// `netdisk-server` next to this executable, else on PATH.
fn server_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("netdisk-server")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("netdisk-server"))
}

impl LocalServer {
    pub fn start(dir: &Path) -> anyhow::Result<LocalServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let binary = server_binary();
        let password_file = dir.join("local-password");
        if !password_file.exists() {
            let mut raw = [0u8; 24];
            getrandom::getrandom(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let password = hex::encode(raw);
            let status = Command::new(&binary)
                .args(["user", "add", LOCAL_USER, "--data"])
                .arg(dir)
                .env("NETDISK_PASSWORD", &password)
                .stdout(Stdio::null())
                .status()
                .with_context(|| format!("cannot run {}", binary.display()))?;
            if !status.success() {
                bail!("{} user add failed", binary.display());
            }
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&password_file)?;
            std::io::Write::write_all(&mut f, password.as_bytes())?;
        }
        let password = std::fs::read_to_string(&password_file)?.trim().to_string();
        let mut child = Command::new(&binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_default();
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the local server did not start (data in {})", dir.display());
        };
        let credentials = Credentials { addr: addr.to_string(), user: LOCAL_USER.into(), password };
        Ok(LocalServer { child, credentials })
    }

    /// SIGTERM, then wait (the server stops its children and exits).
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}
