//! Test harness: finds the built binaries, starts servers, cleans up on drop.
//!
//! Every test owns its own [`Server`]: its own temporary directory (data directory and log), its own port
//! (`127.0.0.1:0`), its own process. Every wait is bounded: sockets get read and write timeouts, the server's
//! start and stop have deadlines, and [`wait_until`] polls external state (processes, sockets) with a deadline.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netdisk_protocol::client::{Client, ClientError};
use netdisk_protocol::io::{read_frame, write_frame, Direction, Frame};
use netdisk_protocol::{
    chunk_crc, md5_hex, ErrorCode, ProveOwnership, Request, UploadChunk, UploadChunkRes, UploadFile, UploadFileRes,
};

pub use netdisk_protocol;

pub mod fake;
pub mod mount;
pub mod sshfs;
pub mod store;
pub mod tmpfs;

/// Read and write timeout of every client socket: nothing in a test can hang longer than this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to print `listening on ...`.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server may take to exit after SIGTERM before the harness kills it.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory holding the workspace's built binaries (`target/debug`), found from this test executable
/// (`target/debug/deps/server-HASH`), the way ripgrep's `tests/util.rs` does it.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("the test executable has a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The `netdisk-server` binary (`NETDISK_SERVER_BIN` overrides where it is looked for).
pub fn server_bin() -> PathBuf {
    let path = match std::env::var_os("NETDISK_SERVER_BIN") {
        Some(p) => PathBuf::from(p),
        None => bin_dir().join(format!("netdisk-server{}", std::env::consts::EXE_SUFFIX)),
    };
    assert!(
        path.is_file(),
        "the server binary {} is missing: build it first with `cargo build --workspace --bins` \
         (the test command is `cargo build --workspace --bins && cargo test --workspace`)",
        path.display()
    );
    path
}

/// Command-line options of `netdisk-server serve`; `None` leaves the server's default.
#[derive(Clone, Debug, Default)]
pub struct ServerOpts {
    pub max_children: Option<usize>,
    pub idle_timeout: Option<u64>,
    pub stall_timeout: Option<u64>,
    pub login_timeout: Option<u64>,
    pub chunk_size: Option<u32>,
    /// `--durability full|normal`.
    pub durability: Option<&'static str>,
    /// Serve this data directory (e.g. one on a small tmpfs) instead of a fresh one in the server's temporary directory.
    pub data_dir: Option<PathBuf>,
    /// `--reserve-mib`: disk space uploads leave free.
    pub reserve_mib: Option<u64>,
    /// `--upload-expiry`: hours after its last progress that an unfinished upload is reclaimed.
    pub upload_expiry_hours: Option<f64>,
}

impl ServerOpts {
    pub fn durability(mut self, level: &'static str) -> Self {
        self.durability = Some(level);
        self
    }
    pub fn max_children(mut self, n: usize) -> Self {
        self.max_children = Some(n);
        self
    }
    pub fn idle_timeout(mut self, secs: u64) -> Self {
        self.idle_timeout = Some(secs);
        self
    }
    pub fn stall_timeout(mut self, secs: u64) -> Self {
        self.stall_timeout = Some(secs);
        self
    }
    pub fn login_timeout(mut self, secs: u64) -> Self {
        self.login_timeout = Some(secs);
        self
    }
    pub fn chunk_size(mut self, bytes: u32) -> Self {
        self.chunk_size = Some(bytes);
        self
    }
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
    pub fn reserve_mib(mut self, mib: u64) -> Self {
        self.reserve_mib = Some(mib);
        self
    }
    pub fn upload_expiry_hours(mut self, hours: f64) -> Self {
        self.upload_expiry_hours = Some(hours);
        self
    }
}

/// One `/proc/PID/stat` line, reduced to what the tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub comm: String,
    /// `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
    pub ppid: i32,
    /// When the process started (clock ticks after boot): with the pid, it names one process even when pids are
    /// reused.
    pub start_time: u64,
}

impl ProcInfo {
    /// True while this very process (same pid, same start time) exists, zombie or not.
    pub fn exists(&self) -> bool {
        proc_info(self.pid).is_some_and(|p| p.start_time == self.start_time)
    }
}

/// Parses `/proc/PID/stat`; `None` when the process is gone (or the line is unreadable).
pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    // Fields 5 to 21 of the line come next; field 22 is the start time.
    let start_time = rest.nth(17)?.parse().ok()?;
    Some(ProcInfo { pid, comm, state, ppid, start_time })
}

/// Every process whose parent is `ppid`, zombies included, found by scanning `/proc/*/stat`.
pub fn children_of(ppid: i32) -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out: Vec<ProcInfo> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_info)
        .filter(|p| p.ppid == ppid)
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Every process descended from `pid` (children, their children ...), zombies included, from one scan of `/proc`.
pub fn descendants_of(pid: i32) -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let all: Vec<ProcInfo> =
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter_map(proc_info).collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            frontier.push(p.pid);
            out.push(p.clone());
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// The inode of the loopback TCP socket with local port `local_port` connected to remote port `remote_port`
/// (from `/proc/net/tcp`), `None` if there is none.
fn server_socket_inode(local_port: u16, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    table.lines().skip(1).find_map(|line| {
        // "sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ..."
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        if port_of(local)? == local_port && port_of(remote)? == remote_port {
            inode.parse().ok().filter(|i| *i != 0)
        } else {
            None
        }
    })
}

/// Polls `cond` every few milliseconds until it holds (true) or `timeout` passes (false).
/// Only for observing external state (processes, sockets, the clock), never instead of a synchronisation.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `netdisk-server serve`, with its own temporary directory; SIGTERMed (then killed) on drop.
pub struct Server {
    dir: tempfile::TempDir,
    data: PathBuf,
    log: PathBuf,
    opts: ServerOpts,
    child: Option<Child>,
    pid: i32,
    addr: SocketAddr,
    status: Option<ExitStatus>,
    /// Connection processes seen when the server was signalled: killed on drop if the server left them behind.
    seen_children: Vec<i32>,
}

impl Server {
    /// Starts a server on `127.0.0.1:0` with a fresh data directory and waits (at most 20 s) for `listening on`.
    pub fn start(opts: ServerOpts) -> Server {
        let dir = tempfile::Builder::new().prefix("netdisk-e2e-").tempdir().expect("a temporary directory");
        let data = opts.data_dir.clone().unwrap_or_else(|| dir.path().join("data"));
        let log = dir.path().join("server.log");
        let mut server = Server {
            dir,
            data,
            log,
            opts,
            child: None,
            pid: 0,
            addr: ([127, 0, 0, 1], 0).into(),
            status: None,
            seen_children: Vec::new(),
        };
        server.spawn("127.0.0.1:0");
        server
    }

    /// Starts the server again after it exited (stopped or killed): same data directory, same address, same
    /// options, its log appended to the same file. Panics if it is still running or cannot listen there.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of server pid {}, which is still running", self.pid);
        self.status = None;
        let listen = self.addr.to_string();
        self.spawn(&listen);
    }

    /// Runs `netdisk-server serve` on `listen` and waits for its `listening on` line.
    fn spawn(&mut self, listen: &str) {
        let bin = server_bin();
        let log_file = File::options().create(true).append(true).open(&self.log).expect("the server log file");
        let opts = &self.opts;
        let mut cmd = Command::new(&bin);
        cmd.arg("serve").arg("--data").arg(&self.data).args(["--listen", listen]);
        if let Some(n) = opts.max_children {
            cmd.arg("--max-children").arg(n.to_string());
        }
        if let Some(s) = opts.idle_timeout {
            cmd.arg("--idle-timeout").arg(s.to_string());
        }
        if let Some(s) = opts.stall_timeout {
            cmd.arg("--stall-timeout").arg(s.to_string());
        }
        if let Some(s) = opts.login_timeout {
            cmd.arg("--login-timeout").arg(s.to_string());
        }
        if let Some(b) = opts.chunk_size {
            cmd.arg("--chunk-size").arg(b.to_string());
        }
        if let Some(level) = opts.durability {
            cmd.arg("--durability").arg(level);
        }
        if let Some(mib) = opts.reserve_mib {
            cmd.arg("--reserve-mib").arg(mib.to_string());
        }
        if let Some(hours) = opts.upload_expiry_hours {
            cmd.arg("--upload-expiry").arg(hours.to_string());
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.pid = child.id() as i32;

        // The first stdout line, read on a thread so that the wait has a deadline; the thread then drains stdout.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel::<io::Result<String>>();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send(first);
            let _ = io::copy(&mut reader, &mut io::sink());
        });
        self.child = Some(child);

        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => panic!("reading the server's stdout: {e}\n{}", self.log_tail()),
            Err(_) => {
                panic!("the server printed no `listening on` line within {START_TIMEOUT:?}\n{}", self.log_tail())
            }
        };
        let addr = line
            .trim_end()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| {
                panic!("the server's first stdout line is {line:?}, not `listening on IP:PORT`\n{}", self.log_tail())
            });
        self.addr = addr;
    }

    pub fn start_default() -> Server {
        Server::start(ServerOpts::default())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server (parent) process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The server's `--data` directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The temporary directory holding the data directory and the log.
    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `netdisk-server user add NAME --data DIR` with the password in `NETDISK_PASSWORD`; panics unless it succeeds.
    pub fn add_user(&self, name: &str, password: &str) {
        let (ok, out) = self.admin(&["user", "add", name], Some(password));
        assert!(ok, "`netdisk-server user add {name}` failed: {out}");
    }

    /// Runs `netdisk-server ARGS --data DIR` (an administration command) with NETDISK_PASSWORD set to
    /// `password`, if given; returns whether it succeeded and its stdout and stderr.
    pub fn admin(&self, args: &[&str], password: Option<&str>) -> (bool, String) {
        let mut cmd = Command::new(server_bin());
        cmd.args(args).arg("--data").arg(&self.data).stdin(Stdio::null()).env_remove("NETDISK_PASSWORD");
        if let Some(password) = password {
            cmd.env("NETDISK_PASSWORD", password);
        }
        let out = cmd.output().expect("run netdisk-server");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// A TCP connection with read and write timeouts of [`IO_TIMEOUT`].
    pub fn raw_connect(&self) -> TcpStream {
        let stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.addr, self.log_tail()));
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("set_read_timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("set_write_timeout");
        stream.set_nodelay(true).expect("set_nodelay");
        stream
    }

    /// A client on a new connection (not logged in).
    pub fn connect(&self) -> Client<TcpStream> {
        Client::new(self.raw_connect())
    }

    /// A client on a new connection, logged in; panics if the login fails.
    pub fn login(&self, user: &str, password: &str) -> Client<TcpStream> {
        let mut client = self.connect();
        client.login(user, password).unwrap_or_else(|e| panic!("login as {user}: {e}\n{}", self.log_tail()));
        client
    }

    /// The server's child processes (one per connection), zombies included.
    pub fn children(&self) -> Vec<ProcInfo> {
        children_of(self.pid)
    }

    /// The server's child serving the connection `stream` (a socket of this test, connected to this server),
    /// found through the kernel's socket table: the socket whose remote end is `stream`'s local end, and the child
    /// holding it. `None` when no child holds it (not accepted yet, refused, or closed).
    pub fn child_serving(&self, stream: &TcpStream) -> Option<ProcInfo> {
        let local = stream.local_addr().ok()?;
        let inode = server_socket_inode(self.addr.port(), local.port())?;
        let want = format!("socket:[{inode}]");
        self.children().into_iter().find(|child| {
            std::fs::read_dir(format!("/proc/{}/fd", child.pid)).is_ok_and(|fds| {
                fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
            })
        })
    }

    /// The server's children that are not zombies.
    pub fn live_children(&self) -> Vec<ProcInfo> {
        self.children().into_iter().filter(|p| p.state != 'Z').collect()
    }

    /// The server's children that exited and were not reaped.
    pub fn zombies(&self) -> Vec<ProcInfo> {
        self.children().into_iter().filter(|p| p.state == 'Z').collect()
    }

    /// Waits (bounded) until the server has exactly `n` children and none of them is a zombie.
    pub fn wait_for_children(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let c = self.children();
            c.len() == n && c.iter().all(|p| p.state != 'Z')
        })
    }

    /// Sends a signal to the server (parent) process.
    pub fn signal(&mut self, sig: i32) {
        if self.child.is_some() {
            self.seen_children.extend(children_of(self.pid).iter().map(|p| p.pid));
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
            let rc = unsafe { libc::kill(self.pid, sig) };
            assert_eq!(rc, 0, "kill({}, {sig}): {}", self.pid, io::Error::last_os_error());
        }
    }

    /// SIGTERM, then waits up to `timeout` for the server to exit. `None` if it is still running then.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.status {
            return Some(status);
        }
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the server process to exit, reaping it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.status {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => return None,
                Err(e) => panic!("waiting for the server: {e}"),
            }
        }
    }

    /// Stops (SIGSTOP) the whole server: the parent first, and once the kernel shows it stopped (so that it forks
    /// no more), every process descended from it. Returns once all of them are stopped; they continue (SIGCONT)
    /// when the guard is dropped, also when the test fails.
    pub fn pause(&self) -> Paused {
        let stopped = |pid: i32| proc_info(pid).is_none_or(|p| p.state == 'T' || p.state == 't' || p.state == 'Z');
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGSTOP) };
        assert!(wait_until(STOP_TIMEOUT, || stopped(self.pid)), "the server did not stop");
        let mut pids = vec![self.pid];
        for p in descendants_of(self.pid) {
            // SAFETY: kill(2) on a process descended from our stopped server (which cannot reap it meanwhile).
            unsafe { libc::kill(p.pid, libc::SIGSTOP) };
            pids.push(p.pid);
        }
        assert!(wait_until(STOP_TIMEOUT, || pids.iter().all(|&pid| stopped(pid))), "connection processes did not stop");
        Paused { pids }
    }

    /// `kill -9` of the whole server: the parent (stopped first, so that it forks no more) and every process
    /// descended from it (the connection processes). Returns once all of them are gone, with the pids of the
    /// connection processes it killed.
    pub fn kill_all(&mut self) -> Vec<i32> {
        let Some(mut child) = self.child.take() else { return Vec::new() };
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGSTOP) };
        let connections: Vec<i32> = descendants_of(self.pid).iter().map(|p| p.pid).collect();
        for pid in &connections {
            // SAFETY: kill(2) on a process descended from the server this test started (the parent is stopped,
            // so it cannot have reaped it and let the pid be reused).
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let _ = child.kill();
        let status = child.wait().expect("reap the killed server");
        self.status = Some(status);
        // Orphaned by the parent's death, the connection processes are reaped by init.
        let gone = wait_until(STOP_TIMEOUT, || connections.iter().all(|pid| proc_info(*pid).is_none()));
        assert!(gone, "connection processes {connections:?} of the killed server are still there");
        connections
    }

    /// What the server logged for every connection that ended (`connection closed` / `connection dropped`),
    /// in the order they ended.
    pub fn connection_ends(&self) -> Vec<ConnectionEnd> {
        self.log().lines().filter_map(ConnectionEnd::parse).collect()
    }

    /// `netdisk-server fsck` on this server's data directory (it may be running).
    pub fn fsck(&self) -> FsckRun {
        fsck(&self.data)
    }

    /// Panics, with fsck's report and the server's log, unless fsck finds the data directory clean.
    #[track_caller]
    pub fn assert_fsck_clean(&self) {
        let run = self.fsck();
        assert!(run.clean(), "fsck found problems in {}:\n{}\n{}", self.data.display(), run.output(), self.log_tail());
    }

    /// The server's log (its stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let start = log.len().saturating_sub(6000);
        let start = (start..log.len()).find(|i| log.is_char_boundary(*i)).unwrap_or(log.len());
        format!("--- server log (tail) ---\n{}\n--- end of server log ---", &log[start..])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("server {} (pid {}):\n{}", self.addr, self.pid, self.log_tail());
        }
        if let Some(mut child) = self.child.take() {
            self.seen_children.extend(children_of(self.pid).iter().map(|p| p.pid));
            // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if !exited {
                eprintln!("server pid {} did not stop within {STOP_TIMEOUT:?} of SIGTERM: killing it", self.pid);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Connection processes the server left behind (it should leave none): they were its children, started by
        // this test; kill those still running under its name.
        for pid in std::mem::take(&mut self.seen_children) {
            if let Some(p) = proc_info(pid) {
                if p.comm.starts_with("netdisk-server") && p.ppid != self.pid && p.state != 'Z' {
                    eprintln!("server pid {} left connection process {pid} behind: killing it", self.pid);
                    // SAFETY: kill(2) on a leftover process of the server this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// One `connection closed` / `connection dropped` line of the server's log: what a connection process moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionEnd {
    /// `connection closed` (the peer went away) or not (`connection dropped`: timeout, hostile frame, i/o error).
    pub closed: bool,
    pub user: String,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl ConnectionEnd {
    /// Parses `... connection closed user=ann requests=3 bytes_in=123 bytes_out=456 secs=0.1`.
    pub fn parse(line: &str) -> Option<ConnectionEnd> {
        let closed = line.contains("connection closed");
        if !closed && !line.contains("connection dropped") {
            return None;
        }
        let field = |name: &str| {
            let key = format!(" {name}=");
            let rest = &line[line.find(&key)? + key.len()..];
            Some(rest.split_whitespace().next()?.to_string())
        };
        let number = |name: &str| field(name)?.parse::<u64>().ok();
        Some(ConnectionEnd {
            closed,
            user: field("user")?,
            requests: number("requests")?,
            bytes_in: number("bytes_in")?,
            bytes_out: number("bytes_out")?,
        })
    }
}

/// How long `netdisk-server fsck` may take on a test's data directory.
pub const FSCK_TIMEOUT: Duration = Duration::from_secs(60);

/// What `netdisk-server fsck --data DIR` said.
#[derive(Debug)]
pub struct FsckRun {
    /// The exit code: 0 no problems, 1 problems found, 2 could not check.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl FsckRun {
    /// Exit status 0 and the `no problems` summary.
    pub fn clean(&self) -> bool {
        self.code == Some(0) && self.summary().ends_with(", no problems")
    }

    /// The last line of stdout: `fsck: N users, N nodes, N physical files (X bytes) checked, ...`.
    pub fn summary(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }

    /// The lines before the summary: one per problem.
    pub fn problems(&self) -> Vec<&str> {
        let lines: Vec<&str> = self.stdout.lines().collect();
        lines[..lines.len().saturating_sub(1)].to_vec()
    }

    /// Everything it printed, for failure messages.
    pub fn output(&self) -> String {
        format!("exit code {:?}\n--- stdout ---\n{}--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `netdisk-server fsck --data DIR` (read-only: a server may be running on DIR) and waits at most
/// [`FSCK_TIMEOUT`]. Crash and fault tests call it at their end; see also [`Server::assert_fsck_clean`].
pub fn fsck(data_dir: &Path) -> FsckRun {
    let mut child = Command::new(server_bin())
        .arg("fsck")
        .arg("--data")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netdisk-server fsck");
    // Drained on threads, so that a long report cannot fill a pipe while the wait below polls.
    let out = read_on_thread(child.stdout.take().expect("stdout is piped"));
    let err = read_on_thread(child.stderr.take().expect("stderr is piped"));
    let mut status = None;
    let exited = wait_until(FSCK_TIMEOUT, || {
        status = child.try_wait().expect("wait for netdisk-server fsck");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("netdisk-server fsck --data {} did not finish within {FSCK_TIMEOUT:?}", data_dir.display());
    }
    FsckRun {
        code: status.and_then(|s| s.code()),
        stdout: out.join().expect("the stdout reader"),
        stderr: err.join().expect("the stderr reader"),
    }
}

/// Reads `r` to its end on a new thread.
fn read_on_thread<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = r.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Deterministic pseudo-random numbers (xorshift64*), seeded per test: no `rand` crate needed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Mix the seed so that small seeds (0, 1, 2 ...) give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

/// The server's error code of a failed call; panics (with `what`) on success or on a non-server error.
pub fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>, what: &str) -> ErrorCode {
    match result {
        Ok(v) => panic!("{what}: expected an error answer, got {v:?}"),
        Err(ClientError::Server(e)) => e.code,
        Err(e) => panic!("{what}: expected an error answer from the server, got {e}"),
    }
}

/// Asserts that a call failed with exactly `want`.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, ClientError>, want: ErrorCode, what: &str) {
    let got = code_of(result, what);
    assert_eq!(got, want, "{what}: wrong error code");
}

/// The `UploadFile` request for `data` at `path`.
pub fn upload_request(path: &str, data: &[u8]) -> UploadFile {
    UploadFile {
        path: path.into(),
        size: data.len() as u64,
        md5: md5_hex(data),
        sha256: Some(sha256_hex(data)),
        mode: 0o644,
        mtime: None,
        owner: Default::default(),
    }
}

/// Lowercase hex SHA-256 of `data`: the identity of content.
pub fn sha256_hex(data: &[u8]) -> String {
    netdisk_protocol::content::content_hashes(b"", data).sha256
}

/// The layout of an upload the server asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadSlot {
    pub upload_id: u64,
    pub chunk_size: u32,
    pub chunk_count: u32,
}

impl UploadSlot {
    /// The bytes of chunk `index` of `data`.
    pub fn chunk<'a>(&self, data: &'a [u8], index: u32) -> &'a [u8] {
        let start = index as usize * self.chunk_size as usize;
        let end = (start + self.chunk_size as usize).min(data.len());
        &data[start..end]
    }
}

/// Starts an upload the low-level way: `UploadFile`, and when challenged, `ProveOwnership` with a wrong proof
/// (so that it never turns instant). Panics unless the server ends up asking for chunks.
pub fn begin_upload(client: &mut Client<TcpStream>, path: &str, data: &[u8]) -> UploadSlot {
    let req = upload_request(path, data);
    let mut answer = client.call(&req).unwrap_or_else(|e| panic!("UploadFile {path}: {e}"));
    if let UploadFileRes::Challenge { challenge_id, .. } = &answer {
        let proof = "0".repeat(64);
        answer = client
            .call(&ProveOwnership { challenge_id: *challenge_id, proof })
            .unwrap_or_else(|e| panic!("ProveOwnership {path}: {e}"));
    }
    match answer {
        UploadFileRes::Upload { upload_id, chunk_size, chunk_count } => {
            UploadSlot { upload_id, chunk_size, chunk_count }
        }
        other => panic!("UploadFile {path}: expected an upload, got {other:?}"),
    }
}

/// Sends chunk `index` of `data` with its correct md5.
pub fn send_chunk(
    client: &mut Client<TcpStream>,
    slot: &UploadSlot,
    data: &[u8],
    index: u32,
) -> Result<UploadChunkRes, ClientError> {
    let bytes = slot.chunk(data, index);
    let req = UploadChunk { upload_id: slot.upload_id, index, crc32c: chunk_crc(bytes) };
    client.call_with_payload(&req, bytes).map(|(res, _)| res)
}

/// The read side of a connection as a `Read + Write` whose writes go nowhere: a [`Client`] over it parses the
/// answers to requests that were written elsewhere (see [`Pipeline`]).
pub struct ReadHalf(pub TcpStream);

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for ReadHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Pipelined requests on one connection: [`Pipeline::send`] writes requests without waiting, and
/// [`Pipeline::recv`] reads their answers in the same order (the server answers in order).
/// Request ids are 1, 2, 3 ... on both sides, so the client's id check still matches every answer.
pub struct Pipeline {
    writer: TcpStream,
    next_id: u64,
    reader: Client<ReadHalf>,
}

impl Pipeline {
    /// A pipeline over a connection on which no request was sent yet.
    pub fn new(stream: TcpStream) -> Pipeline {
        let writer = stream.try_clone().expect("clone the socket");
        Pipeline { writer, next_id: 1, reader: Client::new(ReadHalf(stream)) }
    }

    /// Logs in through the pipeline (as its first request); panics if the login fails.
    pub fn login(&mut self, user: &str, password: &str) {
        use netdisk_protocol::login;
        let hello = login::hello(user);
        self.send(&hello, &[]).expect("send Hello");
        let challenge = self.recv(&hello).unwrap_or_else(|e| panic!("hello as {user}: {e}"));
        let salt = login::salt_of(&challenge).expect("the salt");
        let salted = login::salted_password(password, &salt, &challenge.kdf).expect("SaltedPassword");
        let (proof, message) = login::answer(&hello, &challenge, &salted);
        self.send(&proof, &[]).expect("send Login");
        let res = self.recv(&proof).unwrap_or_else(|e| panic!("login as {user}: {e}"));
        assert!(login::server_signature_is_right(&salted, &message, &res.server_signature), "the server's signature");
    }

    /// A second handle on the socket, to write from another thread (then write only through it).
    pub fn writer(&self) -> PipelineWriter {
        PipelineWriter { stream: self.writer.try_clone().expect("clone the socket"), next_id: self.next_id }
    }

    /// Writes a request without waiting for its answer.
    pub fn send<R: Request>(&mut self, req: &R, payload: &[u8]) -> io::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.writer, R::KIND, id, req, payload)
    }

    /// Reads the answer to the oldest request not answered yet; `req` must be (a request of the type of) that one.
    pub fn recv<R: Request>(&mut self, req: &R) -> Result<R::Response, ClientError> {
        self.reader.call(req)
    }

    /// Like [`Pipeline::recv`], with the answer's payload.
    pub fn recv_with_payload<R: Request>(&mut self, req: &R) -> Result<(R::Response, Vec<u8>), ClientError> {
        self.reader.call_with_payload(req, &[])
    }
}

/// Writes a pipeline's requests from another thread (ids continue from where the pipeline was).
pub struct PipelineWriter {
    stream: TcpStream,
    next_id: u64,
}

impl PipelineWriter {
    pub fn send<R: Request>(&mut self, req: &R, payload: &[u8]) -> io::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, R::KIND, id, req, payload)
    }
}

/// Reads one frame the server sends (a response, or an error frame it sends unasked).
pub fn read_response_frame(stream: &mut TcpStream) -> Result<Frame, netdisk_protocol::io::FrameError> {
    read_frame(stream, Direction::Response)
}

/// The value of a string field of a flat JSON object (such as an error frame's `{"code":"busy","message":"..."}`),
/// without a JSON library: enough for the error frames the server sends unasked.
pub fn json_string_field(json: &[u8], field: &str) -> Option<String> {
    let text = std::str::from_utf8(json).ok()?;
    let key = format!("\"{field}\"");
    let after_key = &text[text.find(&key)? + key.len()..];
    let after_colon = after_key.trim_start().strip_prefix(':')?.trim_start();
    let body = after_colon.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// How a peer's connection ended, as seen by [`read_until_closed`].
#[derive(Debug)]
pub struct Closed {
    /// Bytes that arrived before the end.
    pub received: Vec<u8>,
    /// Time from the call until the end.
    pub after: Duration,
}

/// Reads until the server closes the connection (EOF or reset), at most `timeout`.
/// `Err` (with what arrived) if the connection is still open then.
pub fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Result<Closed, Vec<u8>> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(received);
        }
        stream.set_read_timeout(Some(left)).expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Ok(Closed { received, after: start.elapsed() }),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // ECONNRESET and friends: the server closed it (with our unread bytes still in its buffer).
            Err(_) => return Ok(Closed { received, after: start.elapsed() }),
        }
    }
}

/// Writes `bytes`; a write error means the peer closed the connection already (returns false).
pub fn write_or_closed(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    stream.write_all(bytes).and_then(|()| stream.flush()).is_ok()
}

/// Every path under `root`, relative to it (directories end with `/`).
pub fn tree_of(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.insert(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// A server stopped by [`Server::pause`]: continued when dropped.
pub struct Paused {
    pids: Vec<i32>,
}

impl Paused {
    /// Leaves the processes stopped (to kill them next).
    pub fn keep_stopped(mut self) {
        self.pids.clear();
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in self.pids.iter().rev() {
            // SAFETY: kill(2) on processes of our server, stopped by us (so still there: nobody reaped them).
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
    }
}
