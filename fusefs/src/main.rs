//! `netdisk-mount`: mounts a netdisk store (remote, or a local server it starts with `--local`) as a directory.
//! It stays in the foreground and unmounts cleanly on SIGINT/SIGTERM or on `fusermount3 -u`/`umount`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use netdisk_fusefs::client::{Credentials, Remote};
use netdisk_fusefs::{cache, fs, fuse, kept, kernel_mount, local, settings, status};

#[derive(Parser)]
#[command(
    name = "netdisk-mount",
    version,
    about = "Mount a netdisk store as a directory",
    after_help = "Settings come from the command line, then the config file, then the defaults. The password comes \
from NETDISK_PASSWORD, else the password file (never the command line).\n\n\
As a mount helper (installed as /sbin/mount.fuse.netdisk): mount -t fuse.netdisk USER@HOST:PORT MOUNTPOINT \
-o password_file=FILE,... ; in /etc/fstab: USER@HOST:PORT MOUNTPOINT fuse.netdisk password_file=FILE,_netdev 0 0\n\n\
See what a mount is doing: netdisk-mount status [MOUNTPOINT...] [--watch SECS]\n\
Upload again, or drop, what a failed upload left: netdisk-mount retry|discard MOUNTPOINT [PATH...]"
)]
struct Cli {
    /// Server address, e.g. 192.0.2.10:7420 (or `server =` in the config file).
    #[arg(long, conflicts_with = "local")]
    server: Option<String>,
    /// User name on the server (or `user =` in the config file).
    #[arg(long, conflicts_with = "local")]
    user: Option<String>,
    /// Zero set-up: run a netdisk-server on loopback with its data in this directory, and mount it.
    #[arg(long, value_name = "DIR")]
    local: Option<PathBuf>,
    /// Where the directory appears (created if missing).
    mountpoint: PathBuf,
    /// TOML file with any of: server, user, password_file, cache_dir, cache_size_mib, timeout, attr_timeout,
    /// connections, log_file [default: $XDG_CONFIG_HOME/netdisk/mount.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// File whose first line is the password; it must not be readable by group or others (chmod 600).
    /// NETDISK_PASSWORD, when set, is used instead.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Local directory for staged writes and cached blocks [default: $XDG_CACHE_HOME/netdisk or ~/.cache/netdisk].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Most bytes of downloaded blocks kept in the cache directory, in MiB [default: 1024].
    #[arg(long)]
    cache_size_mib: Option<u64>,
    /// Seconds a server call may take before it fails with EIO [default: 30].
    #[arg(long)]
    timeout: Option<u64>,
    /// Seconds attributes and names are trusted before asking the server again (the bound on seeing other
    /// clients' changes) [default: 1].
    #[arg(long)]
    attr_timeout: Option<f64>,
    /// Connections to the server (parallel requests and chunk uploads) [default: 8].
    #[arg(long)]
    connections: Option<usize>,
    /// Append the log here instead of writing it to stderr (RUST_LOG sets the detail, e.g. debug).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Go to the background once the mount is live; exit non-zero, with the reason, if it cannot mount.
    #[arg(long)]
    daemon: bool,
    /// Mount options, comma-separated as in fstab: ro, rw, allow_other, uid=N, gid=N (the owner shown for every
    /// file), suid and dev (honour setuid bits and device files from the store: off unless given, see SECURITY.md),
    /// any setting above as name=value (password_file=FILE, ...); default_permissions, _netdev, noauto,
    /// nofail, x-systemd.* and the like are accepted and ignored.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
}

impl Cli {
    fn given(self) -> anyhow::Result<settings::Given> {
        let mut given = settings::Given {
            server: self.server,
            user: self.user,
            local: self.local,
            mountpoint: self.mountpoint,
            config: self.config,
            password_file: self.password_file,
            cache_dir: self.cache_dir,
            cache_size_mib: self.cache_size_mib,
            timeout: self.timeout,
            attr_timeout: self.attr_timeout,
            connections: self.connections,
            log_file: self.log_file,
            daemon: self.daemon,
            ..settings::Given::default()
        };
        for list in &self.options {
            given.apply_options(list)?;
        }
        Ok(given)
    }
}

/// `netdisk-mount status`: what mounts are doing, read from their root's `user.netdisk.status` attribute.
#[derive(Parser)]
#[command(
    name = "netdisk-mount status",
    version,
    about = "Show what netdisk mounts are doing: the connection, \
uploads in progress with their progress, files waiting to upload, the cache"
)]
struct StatusCli {
    /// Mount points to show [default: every netdisk mount of this machine].
    mountpoints: Vec<PathBuf>,
    /// Show it again every SECS seconds (follow a long upload) until interrupted.
    #[arg(long, value_name = "SECS")]
    watch: Option<f64>,
}

fn status_command(cli: StatusCli) -> anyhow::Result<()> {
    let points = if cli.mountpoints.is_empty() { status::mounts() } else { cli.mountpoints };
    if points.is_empty() {
        bail!("no netdisk mount on this machine");
    }
    loop {
        let mut failed = Vec::new();
        for point in &points {
            match status::read(point) {
                Ok(s) => print!("{}", status::render(point, &s)),
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        match cli.watch {
            Some(secs) if secs > 0.0 => {
                for e in failed {
                    eprintln!("netdisk-mount status: {e}");
                }
                std::thread::sleep(Duration::from_secs_f64(secs));
                println!();
            }
            _ if failed.is_empty() => return Ok(()),
            _ => bail!("{}", failed.join("\n")),
        }
    }
}

/// `netdisk-mount retry` and `netdisk-mount discard`: what to do with bytes kept after a failed upload.
#[derive(Parser)]
#[command(
    version,
    about = "Upload again (retry) or remove (discard) the bytes a mount kept after an upload failed at close \
(netdisk-mount status lists them)"
)]
struct KeptCli {
    /// The mount they belong to.
    mountpoint: PathBuf,
    /// Paths within the mount, as status shows them (`/dir/file`) [default: everything kept].
    paths: Vec<String>,
}

fn kept_command(retry: bool, cli: KeptCli) -> anyhow::Result<()> {
    let status = status::read(&cli.mountpoint)?;
    let chosen: Vec<&kept::Kept> =
        status.kept.iter().filter(|k| cli.paths.is_empty() || cli.paths.contains(&k.path)).collect();
    if let Some(missing) = cli.paths.iter().find(|p| !status.kept.iter().any(|k| &k.path == *p)) {
        bail!("nothing is kept for {missing} on {}", cli.mountpoint.display());
    }
    let mut failed = Vec::new();
    for k in chosen {
        let done = if retry { kept::retry(&cli.mountpoint, k) } else { k.discard().map_err(Into::into) };
        match done {
            Ok(()) => println!("{} {}", if retry { "uploaded" } else { "discarded" }, k.path),
            Err(e) => failed.push(format!("{}: {e:#}", k.path)),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

fn main() {
    // Upload chunks are 4 MiB buffers made on many threads. glibc would raise its mmap threshold after the first
    // one is freed and then keep such buffers in per-thread arenas; a fixed threshold of 2 MiB hands them back to
    // the system (so memory stays flat during long copies) while 1 MiB read blocks still come from the heap.
    // SAFETY: mallopt only tunes the allocator; called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 * 1024 * 1024);
    }
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    if args.get(1).is_some_and(|a| a == "status") {
        init_logging(false);
        exit_on_error(status_command(StatusCli::parse_from(&args[1..])), None);
        return;
    }
    if let Some(command) = args.get(1).filter(|a| *a == "retry" || *a == "discard") {
        init_logging(false);
        let cli =
            KeptCli::parse_from(std::iter::once(format!("netdisk-mount {command}")).chain(args[2..].iter().cloned()));
        exit_on_error(kept_command(command == "retry", cli), None);
        return;
    }
    let program = args.first().and_then(|a| Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());
    let given = if program.is_some_and(|p| p.starts_with("mount.")) {
        settings::Given::from_helper_args(&args[1..])
    } else {
        Cli::parse().given()
    };
    let settings = match given.and_then(settings::Given::resolve) {
        Ok(s) => s,
        Err(e) => return exit_on_error(Err(e), None),
    };
    if let Some(path) = &settings.log_file {
        if let Err(e) = log_to(path) {
            return exit_on_error(Err(e), None);
        }
    }
    // Before any thread exists: the daemon is a fork of this process.
    let mut ready = None;
    if settings.daemon {
        match daemonize(settings.log_file.is_some()) {
            Ok(pipe) => ready = Some(pipe),
            Err(e) => return exit_on_error(Err(e), None),
        }
    }
    init_logging(settings.log_file.is_some() || settings.daemon);
    let result = run(settings, &mut ready);
    exit_on_error(result, ready);
}

fn init_logging(to_file: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,fuser=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(!to_file && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Reports a failure (to the waiting parent of a daemon, else on stderr) and exits 1.
fn exit_on_error(result: anyhow::Result<()>, ready: Option<std::fs::File>) {
    let Err(e) = result else { return };
    tracing::error!("{e:#}");
    match ready {
        Some(mut pipe) => {
            let _ = writeln!(pipe, "error {e:#}");
        }
        None => eprintln!("netdisk-mount: {e:#}"),
    }
    std::process::exit(1);
}

/// Sends the log (stderr) to `path`, appended.
fn log_to(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    redirect(&file, 2)?;
    Ok(())
}

/// dup2(2): descriptor `target` (0, 1 or 2) now refers to what `file` refers to.
fn redirect(file: &std::fs::File, target: i32) -> std::io::Result<()> {
    // SAFETY: `file` is open for the duration of the call; dup2 only replaces descriptor `target`.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(file), target) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Forks. The parent waits until the child reports the mount live (then prints the child's line and exits 0)
/// or failed (prints the reason, exits 1). The child goes on in a new session, stdin and stdout (and stderr
/// unless a log file took it) on /dev/null, and gets the pipe to report on. Runs before any thread exists.
fn daemonize(logging_to_file: bool) -> anyhow::Result<std::fs::File> {
    use std::io::Read;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: no other thread exists yet (main calls this before starting any), so the child may go on.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            let mut report = String::new();
            std::fs::File::from(read).read_to_string(&mut report)?;
            if let Some(line) = report.strip_prefix("ok ") {
                print!("{line}");
                std::process::exit(0);
            }
            let _ = nix::sys::wait::waitpid(child, None);
            let reason = report.strip_prefix("error ").unwrap_or("the mount process ended before mounting");
            eprintln!("netdisk-mount: {}", reason.trim_end());
            std::process::exit(1);
        }
        nix::unistd::ForkResult::Child => {
            drop(read);
            nix::unistd::setsid()?;
            let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
            redirect(&null, 0)?;
            redirect(&null, 1)?;
            if !logging_to_file {
                redirect(&null, 2)?;
            }
            Ok(std::fs::File::from(write))
        }
    }
}

/// The mount is live: tell whoever waits (the parent of a daemon, systemd with Type=notify, or stdout).
fn report_ready(ready: &mut Option<std::fs::File>, line: &str) {
    match ready.take() {
        Some(mut pipe) => {
            let _ = writeln!(pipe, "ok {line}");
        }
        None => println!("{line}"),
    }
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        notify_systemd(&socket, "READY=1");
    }
}

/// sd_notify(3): one datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
fn notify_systemd(socket: &std::ffi::OsStr, message: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(Path::new(socket)),
    };
    let sent = UnixDatagram::unbound().and_then(|s| addr.and_then(|a| s.send_to_addr(message.as_bytes(), &a)));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

fn run(settings: settings::Settings, ready: &mut Option<std::fs::File>) -> anyhow::Result<()> {
    // Block the stop signals before any thread starts, so that only the waiting thread below receives them.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGINT);
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGHUP);
    stop_signals.thread_block()?;

    let mountpoint = settings.mountpoint.clone();
    clear_stale_mount(&mountpoint);
    if !mountpoint.exists() {
        std::fs::create_dir_all(&mountpoint).with_context(|| format!("cannot create {}", mountpoint.display()))?;
    }
    if !mountpoint.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }

    let mut local_server = None;
    let credentials = match &settings.local {
        Some(dir) => {
            let server = local::LocalServer::start(dir)?;
            let credentials = server.credentials.clone();
            local_server = Some(server);
            credentials
        }
        None => {
            Credentials { addr: settings.server.clone(), user: settings.user.clone(), password: settings.password()? }
        }
    };

    let cache_root = settings.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let staging_dir = cache_root.join("staging");
    std::fs::create_dir_all(&staging_dir).with_context(|| format!("cannot create {}", staging_dir.display()))?;
    let blocks_dir = cache_root.join(format!("blocks-{}", std::process::id()));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
    let timeout = Duration::from_secs(settings.timeout.max(1));
    let (remote, login) = runtime
        .block_on(Remote::connect(credentials.clone(), settings.connections, timeout))
        .map_err(|e| match e.code() {
            Some(netdisk_protocol::ErrorCode::AuthFailed) => {
                anyhow::anyhow!("the server at {} refused the login of user {}", credentials.addr, credentials.user)
            }
            _ => anyhow::anyhow!("cannot reach the server at {}: {e}", credentials.addr),
        })?;
    tracing::info!(server = %credentials.addr, user = %credentials.user, "logged in");
    let proof_salt = netdisk_protocol::content::decode_salt(&login.proof_salt)
        .ok_or_else(|| anyhow::anyhow!("the server at {} sent a malformed proof salt", credentials.addr))?;

    let ttl = Duration::from_secs_f64(settings.attr_timeout.max(0.0));
    let cache = cache::Cache::new(blocks_dir.clone(), settings.cache_size_mib << 20)?;
    let config = fs::Config {
        ttl,
        user: credentials.user.clone(),
        server: credentials.addr.clone(),
        cache_dir: cache_root.clone(),
        cache_limit: settings.cache_size_mib << 20,
        staging_dir,
        upload_parallelism: settings.connections.max(1),
        proof_salt: Arc::from(proof_salt),
    };
    let netfs = Arc::new(fs::NetFs::new(remote, login.root, cache, config, runtime.handle().clone()));
    let filesystem = fuse::FuseFs::new(netfs.clone(), runtime.handle().clone(), ttl, (settings.uid, settings.gid));

    let fsname = format!("netdisk:{}@{}", credentials.user, credentials.addr);
    let root = nix::unistd::geteuid().is_root();
    // nosuid,nodev unless asked for (as the kernel forces for every mount by an unprivileged user): otherwise anyone
    // who can write to the store could plant a setuid-root program or a device node on every machine mounting it.
    if !root && (settings.suid || settings.dev) {
        tracing::warn!("-o suid and -o dev need a mount by root: ignored");
    }
    let flags = kernel_mount::KernelFlags {
        read_only: settings.read_only,
        suid: root && settings.suid,
        dev: root && settings.dev,
        exec: !settings.noexec,
    };
    let mut options = fuser::Config::default();
    options.n_threads = Some(4);
    let session = if root {
        // Root mounts itself, with the full type name; every user may enter, the kernel checks permissions.
        options.acl = fuser::SessionACL::All;
        let fd = kernel_mount::mount(&mountpoint, &fsname, flags)
            .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
        fuser::Session::from_fd(filesystem, fd, options.acl, options.clone()).inspect_err(|_| unmount(&mountpoint))
    } else {
        // Through fusermount3, which keeps the subtype and forces nosuid,nodev itself.
        options.mount_options = vec![
            fuser::MountOption::FSName(fsname),
            fuser::MountOption::Subtype("netdisk".into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::NoAtime,
            fuser::MountOption::NoSuid,
            fuser::MountOption::NoDev,
            if flags.read_only { fuser::MountOption::RO } else { fuser::MountOption::RW },
            if flags.exec { fuser::MountOption::Exec } else { fuser::MountOption::NoExec },
        ];
        if settings.allow_other {
            options.acl = fuser::SessionACL::All;
        }
        fuser::Session::new(filesystem, &mountpoint, &options)
    }
    .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    netfs.on_kernel_cache(fuse::KernelNotifier(session.notifier()));
    let background = session.spawn()?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    report_ready(ready, &format!("mounted {} on {}", credentials.addr, mountpoint.display()));

    // A stop signal unmounts; the session then ends as it does after an external `fusermount3 -u`.
    let signal_mountpoint = mountpoint.clone();
    std::thread::spawn(move || {
        if let Ok(signal) = stop_signals.wait() {
            tracing::info!(?signal, "unmounting");
            unmount(&signal_mountpoint);
        }
    });
    let ended = background.join();
    if ended.is_err() && root {
        // The session broke without an unmount: a root mount is this process's own to take down.
        unmount(&mountpoint);
    }
    drop(runtime);
    let _ = std::fs::remove_dir_all(&blocks_dir);
    if let Some(server) = local_server {
        server.stop();
    }
    tracing::info!("unmounted");
    ended.context("the FUSE session failed")
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    base.join("netdisk")
}

/// A client killed with -9 leaves a dead mount ("Transport endpoint is not connected"): detach it.
fn clear_stale_mount(mountpoint: &Path) {
    if let Err(e) = std::fs::metadata(mountpoint) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            tracing::warn!(mountpoint = %mountpoint.display(), "clearing a stale mount left by a killed client");
            unmount(mountpoint);
        }
    }
}

/// Lazy unmount: as root with umount2(MNT_DETACH), else through fusermount3.
fn unmount(mountpoint: &Path) {
    if nix::unistd::geteuid().is_root() {
        if let Err(e) = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(error = %e, "umount2 failed");
        }
        return;
    }
    let status = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(mountpoint).status();
    if !status.is_ok_and(|s| s.success()) {
        tracing::warn!("fusermount3 -u -z failed");
    }
}
