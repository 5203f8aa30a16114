//! `netdisk-mount`: mounts a netdisk store (remote, or a local server it starts with `--local`) as a directory.
//! It stays in the foreground and unmounts cleanly on SIGINT/SIGTERM or on `fusermount3 -u`/`umount`.

mod cache;
mod client;
mod error;
mod fs;
mod fuse;
mod handles;
mod inode;
mod local;
mod running_md5;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use crate::client::{Credentials, Remote};

#[derive(Parser)]
#[command(name = "netdisk-mount", version, about = "Mount a netdisk store as a directory")]
struct Cli {
    /// Server address, e.g. 127.0.0.1:7420.
    #[arg(long, required_unless_present = "local", conflicts_with = "local")]
    server: Option<String>,
    /// User name on the server (the password comes from NETDISK_PASSWORD).
    #[arg(long, required_unless_present = "local", conflicts_with = "local")]
    user: Option<String>,
    /// Zero set-up: run a netdisk-server on loopback with its data in this directory, and mount it.
    #[arg(long, value_name = "DIR")]
    local: Option<PathBuf>,
    /// Where the directory appears (created if missing).
    mountpoint: PathBuf,
    /// Local directory for staged writes and cached blocks [default: $XDG_CACHE_HOME/netdisk or ~/.cache/netdisk].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Most bytes of downloaded blocks kept in the cache directory, in MiB.
    #[arg(long, default_value_t = 1024)]
    cache_size_mib: u64,
    /// Seconds a server call may take before it fails with EIO.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Seconds attributes and names are trusted before asking the server again (the bound on seeing other clients' changes).
    #[arg(long, default_value_t = 1.0)]
    attr_timeout: f64,
    /// Connections to the server (parallel requests and chunk uploads).
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

fn main() {
    // Upload chunks are 4 MiB buffers made on many threads. glibc would raise its mmap threshold after the first
    // one is freed and then keep such buffers in per-thread arenas; a fixed threshold of 2 MiB hands them back to
    // the system (so memory stays flat during long copies) while 1 MiB read blocks still come from the heap.
    // SAFETY: mallopt only tunes the allocator; called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 * 1024 * 1024);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,fuser=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("netdisk-mount: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Block the stop signals before any thread starts, so that only the waiting thread below receives them.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGINT);
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGHUP);
    stop_signals.thread_block()?;

    let mountpoint = cli.mountpoint.clone();
    clear_stale_mount(&mountpoint);
    if !mountpoint.exists() {
        std::fs::create_dir_all(&mountpoint).with_context(|| format!("cannot create {}", mountpoint.display()))?;
    }
    if !mountpoint.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }

    let mut local_server = None;
    let credentials = match &cli.local {
        Some(dir) => {
            let server = local::LocalServer::start(dir)?;
            let credentials = server.credentials.clone();
            local_server = Some(server);
            credentials
        }
        None => Credentials {
            addr: cli.server.clone().expect("clap requires --server"),
            user: cli.user.clone().expect("clap requires --user"),
            password: std::env::var("NETDISK_PASSWORD").context("set NETDISK_PASSWORD to the user's password")?,
        },
    };

    let cache_root = cli.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let staging_dir = cache_root.join("staging");
    std::fs::create_dir_all(&staging_dir).with_context(|| format!("cannot create {}", staging_dir.display()))?;
    let blocks_dir = cache_root.join(format!("blocks-{}", std::process::id()));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let (remote, login) =
        runtime.block_on(Remote::connect(credentials.clone(), cli.connections, timeout)).map_err(|e| {
            match e.code() {
                Some(netdisk_protocol::ErrorCode::AuthFailed) => {
                    anyhow::anyhow!("the server at {} refused the login of user {}", credentials.addr, credentials.user)
                }
                _ => anyhow::anyhow!("cannot reach the server at {}: {e}", credentials.addr),
            }
        })?;
    tracing::info!(server = %credentials.addr, user = %credentials.user, "logged in");

    let ttl = Duration::from_secs_f64(cli.attr_timeout.max(0.0));
    let cache = cache::Cache::new(blocks_dir.clone(), cli.cache_size_mib << 20)?;
    let config = fs::Config { ttl, staging_dir, upload_parallelism: cli.connections.max(1) };
    let netfs = Arc::new(fs::NetFs::new(remote, login.root, cache, config, runtime.handle().clone()));
    let filesystem = fuse::FuseFs::new(netfs.clone(), runtime.handle().clone(), ttl);

    let mut options = fuser::Config::default();
    options.mount_options = vec![
        fuser::MountOption::FSName(format!("netdisk:{}@{}", credentials.user, credentials.addr)),
        fuser::MountOption::Subtype("netdisk".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    options.n_threads = Some(4);
    if nix::unistd::geteuid().is_root() {
        options.acl = fuser::SessionACL::All;
        options.mount_options.push(fuser::MountOption::Dev);
        options.mount_options.push(fuser::MountOption::Suid);
    }
    let session = fuser::Session::new(filesystem, &mountpoint, &options)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    netfs.on_kernel_attrs_stale(fuse::attr_invalidator(session.notifier()));
    let background = session.spawn()?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    println!("mounted {} on {}", credentials.addr, mountpoint.display());

    // A stop signal unmounts; the session then ends as it does after an external `fusermount3 -u`.
    let signal_mountpoint = mountpoint.clone();
    std::thread::spawn(move || {
        if let Ok(signal) = stop_signals.wait() {
            tracing::info!(?signal, "unmounting");
            unmount(&signal_mountpoint);
        }
    });
    let ended = background.join();
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
