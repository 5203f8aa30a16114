//! `netdisk-server`: `serve` a data directory, manage its users (`user add|list|passwd|quota|remove`), report
//! what it holds (`stats`), or check it (`fsck`).
//! Only argument handling lives here; `listener` (in the library, `lib.rs`) runs the server.

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use netdisk_protocol::human_bytes;
use netdisk_server::conn::Timeouts;
use netdisk_server::{blobs, error, fsck, listener, meta, recovery, users};

#[derive(Parser)]
#[command(
    name = "netdisk-server",
    version,
    about = "netdisk server: a per-user file store with deduplicated, resumable uploads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the store in a data directory (created if missing). One server per data directory (DATA/serve.lock);
    /// at start it reclaims what a crash left (unfinished physical files no upload binds, blobs without a row).
    Serve {
        /// Directory holding the database (meta.db) and the file contents (blobs/).
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on; port 0 picks a free port. Prints `listening on IP:PORT` once ready.
        #[arg(long, default_value = "127.0.0.1:7420")]
        listen: String,
        /// Most connections served at once; one more gets a "busy" error.
        #[arg(long, default_value_t = 256)]
        max_children: usize,
        /// Seconds a connection may take to send its next request (its head and header) before it is closed.
        #[arg(long, default_value_t = 600)]
        idle_timeout: u64,
        /// Seconds a transfer or a half-received request may make no progress before the connection is closed.
        #[arg(long, default_value_t = 30)]
        stall_timeout: u64,
        /// Seconds a new connection has to log in, whatever it sends meanwhile, before it is closed.
        #[arg(long, default_value_t = 30)]
        login_timeout: u64,
        /// Chunk size in bytes for new uploads (4096 to 16777216).
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        chunk_size: u32,
        /// full: every answered change is synced to disk (survives a power loss). normal: it is in the OS cache
        /// (survives any crash of netdisk's processes; a power loss may undo the last changes, and a file completed just before may read back wrong: fsck finds it).
        #[arg(long, value_enum, default_value_t = blobs::Durability::Full)]
        durability: blobs::Durability,
        /// Append the log here instead of writing it to stderr (RUST_LOG sets the detail, e.g. debug). One line per
        /// connection when it ends: peer, user, requests, bytes in and out, duration.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        /// MiB of the data directory's disk that uploads leave free, kept for the metadata so that a full store can
        /// still delete files [default: 5% of the disk, at most 64].
        #[arg(long, value_name = "MIB")]
        reserve_mib: Option<u64>,
        /// Hours an unfinished upload may make no progress (no chunk, no resume) before it is reclaimed: its
        /// stored chunks deleted, its reservation of quota and disk given back; its client then starts anew.
        /// Fractions allowed (0.5 is 30 minutes).
        #[arg(long, value_name = "HOURS", default_value_t = 72.0)]
        upload_expiry: f64,
    },
    /// Check a data directory for damage and report every problem found (read-only; safe while a server runs).
    ///
    /// Checks: the database (PRAGMA integrity_check, foreign_key_check, a user id sequence past every id used);
    /// every user's tree (roots, no entry crossing users, a tree without cycles whose parents are directories, no
    /// directory deeper than 2048, nlink of every node, valid names, nothing lost or unreachable); every physical
    /// file (refs equal to the nodes referring to it, listed files point only at complete ones, chunk progress consistent, complete ones present with the recorded size, md5 and SHA-256,
    /// recorded chunks of unfinished uploads really written, no duplicate content); uploads; and that blobs/ holds
    /// no file the database does not know.
    ///
    /// Prints one line per problem, then a summary line. Exit status: 0 no problems, 1 problems found,
    /// 2 the directory could not be checked. Nothing is changed: the database is opened read-only and read in one
    /// read transaction, blobs are only read. A problem a running server may be passing through for an instant
    /// (a blob being removed after a commit) is reported only if a second look at the end still finds it.
    /// After a crash it also reports the residue a server start reclaims (unfinished physical files no upload binds,
    /// blobs without a row): wasted space, not damage.
    /// Limits: the chunks of an unfinished upload that its running hash covers are checked against it; the bytes of
    /// a chunk that came early can only be checked for having been written (not a hole of the sparse blob); on a
    /// file system that stores runs of zeros as holes (ZFS with compression) an all-zero chunk would be reported.
    Fsck {
        /// The server's data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Manage users (safe while a server runs).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// What the store holds: users, files, physical files, bytes stored, and bytes saved by deduplication.
    Stats {
        /// The server's data directory.
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. The password comes from NETDISK_PASSWORD, else from the first line of stdin.
    Add {
        /// 1 to 64 letters, digits, '.', '_' or '-'.
        name: String,
        /// The server's data directory.
        #[arg(long)]
        data: PathBuf,
        /// Most bytes of regular files the user may hold, e.g. 500M or 20G (K, M, G, T: powers of 1024)
        /// [default: no quota].
        #[arg(long, value_parser = parse_size)]
        quota: Option<u64>,
    },
    /// List the users: files, bytes used, quota, creation date.
    List {
        /// The server's data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Set a user's password (from NETDISK_PASSWORD, else the first line of stdin). Connections logged in
    /// with the old one are ended at their next request.
    Passwd {
        name: String,
        /// The server's data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Set a user's quota (e.g. 20G), or lift it with `none`. Changes beyond it fail with EDQUOT on the mount;
    /// what is held already stays.
    Quota {
        name: String,
        /// Bytes (K, M, G, T suffixes: powers of 1024), or `none`.
        #[arg(value_parser = parse_quota)]
        quota: Quota,
        /// The server's data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Remove a user and everything they hold (content other users also hold stays for them). Their open connections
    /// are ended at their next request; their id is never given to another user.
    Remove {
        name: String,
        /// The server's data directory.
        #[arg(long)]
        data: PathBuf,
    },
}

/// A quota given on the command line.
#[derive(Clone, Copy, Debug)]
struct Quota(Option<u64>);

/// `1234`, `500K`, `20M`, `1.5G`, `2T` (powers of 1024) as bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let scale: u64 = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{text:?}: the unit must be K, M, G or T")),
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("{text:?} is not a size such as 500M or 20G"))?;
    if !value.is_finite() || value < 0.0 || value * scale as f64 > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok((value * scale as f64) as u64)
}

fn parse_quota(text: &str) -> Result<Quota, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(Quota(None));
    }
    parse_size(text).map(|q| Quota(Some(q)))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut to_file = false;
    if let Command::Serve { log_file: Some(path), .. } = &cli.command {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the log file {}", path.display()))?;
        // SAFETY: `file` is open during the call; dup2 only replaces descriptor 2 (stderr), before any thread.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&file), 2) } < 0 {
            bail!("cannot log to {}: {}", path.display(), std::io::Error::last_os_error());
        }
        to_file = true;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(!to_file && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve {
            data,
            listen,
            max_children,
            idle_timeout,
            stall_timeout,
            login_timeout,
            chunk_size,
            durability,
            reserve_mib,
            upload_expiry,
            ..
        } => {
            if !(upload_expiry.is_finite() && upload_expiry > 0.0 && upload_expiry < 1e7) {
                bail!("--upload-expiry must be a positive number of hours");
            }
            let upload_expiry = Duration::from_secs_f64(upload_expiry * 3600.0);
            if !(netdisk_protocol::MIN_CHUNK_SIZE..=netdisk_protocol::MAX_CHUNK_SIZE).contains(&chunk_size) {
                bail!(
                    "--chunk-size must be between {} and {}",
                    netdisk_protocol::MIN_CHUNK_SIZE,
                    netdisk_protocol::MAX_CHUNK_SIZE
                );
            }
            if max_children == 0 || idle_timeout == 0 || stall_timeout == 0 || login_timeout == 0 {
                bail!("--max-children, --idle-timeout, --stall-timeout and --login-timeout must be positive");
            }
            prepare_data_dir(&data)?;
            // One server per data directory; then what a crash left can be cleared before anyone connects.
            let lock = recovery::lock(&data)?;
            recovery::reclaim(&data, durability, upload_expiry)?;
            let reserve = match reserve_mib {
                Some(mib) => mib << 20,
                None => blobs::default_reserve(&data)
                    .with_context(|| format!("cannot measure the disk of {}", data.display()))?,
            };
            let listener = TcpListener::bind(&listen).with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
            drop(out);
            tracing::info!(%addr, data = %data.display(), reserve, "serving");
            let timeouts = Timeouts {
                idle: Duration::from_secs(idle_timeout),
                stall: Duration::from_secs(stall_timeout),
                login: Duration::from_secs(login_timeout),
            };
            let lock_fd = std::os::fd::AsRawFd::as_raw_fd(&*lock);
            listener::serve(
                listener::Config {
                    data_dir: data,
                    max_children,
                    chunk_size,
                    timeouts,
                    durability,
                    reserve,
                    upload_expiry,
                    lock_fd,
                },
                listener,
            )
        }
        Command::Fsck { data } => {
            let report = match fsck::check(&data) {
                Ok(report) => report,
                Err(e) => {
                    eprintln!("fsck: cannot check {}: {e}", data.display());
                    std::process::exit(2);
                }
            };
            let mut out = std::io::stdout().lock();
            for problem in &report.problems {
                writeln!(out, "{problem}")?;
            }
            writeln!(out, "{}", report.summary())?;
            out.flush()?;
            if !report.problems.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::User { command } => user_command(command),
        Command::Stats { data } => {
            let s = open_existing(&data)?.stats().map_err(|e| anyhow::anyhow!("{}", e.to_wire().message))?;
            println!("users           {}", s.users);
            println!(
                "files           {} ({}), {} directories, {} others",
                s.files,
                human_bytes(s.file_bytes),
                s.directories,
                s.others
            );
            println!("physical files  {} ({} stored)", s.physical_files, human_bytes(s.stored_bytes));
            println!("dedup saves     {}", human_bytes(s.file_bytes.saturating_sub(s.stored_bytes)));
            println!("uploads         {} unfinished ({})", s.uploads, human_bytes(s.unfinished_bytes));
            Ok(())
        }
    }
}

fn user_command(command: UserCommand) -> anyhow::Result<()> {
    let failed = |what: String| move |e: error::Error| anyhow::anyhow!("{what}: {}", e.to_wire().message);
    match command {
        UserCommand::Add { name, data, quota } => {
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                bail!("a user name is 1 to 64 characters of letters, digits, '.', '_' and '-'");
            }
            let password = read_password()?;
            prepare_data_dir(&data)?;
            let mut meta = meta::Meta::open(&data.join("meta.db"))?;
            let hash = users::hash_password(&password)?;
            meta.add_user(&name, &hash).map_err(failed(format!("cannot add user {name}")))?;
            if quota.is_some() {
                meta.set_quota(&name, quota).map_err(failed(format!("cannot set the quota of {name}")))?;
            }
            println!("added user {name}");
        }
        UserCommand::List { data } => {
            let users = open_existing(&data)?.list_users().map_err(failed("cannot list users".into()))?;
            println!("{:<24} {:>10} {:>12} {:>12}  created", "user", "files", "used", "quota");
            for u in users {
                let quota = u.quota.map_or("none".to_string(), human_bytes);
                println!(
                    "{:<24} {:>10} {:>12} {:>12}  {}",
                    u.name,
                    u.files,
                    human_bytes(u.bytes),
                    quota,
                    date(u.created)
                );
            }
        }
        UserCommand::Passwd { name, data } => {
            let mut meta = open_existing(&data)?;
            let password = read_password()?;
            let hash = users::hash_password(&password)?;
            meta.set_password(&name, &hash).map_err(failed(format!("cannot set the password of {name}")))?;
            println!("password of {name} changed");
        }
        UserCommand::Quota { name, quota: Quota(quota), data } => {
            open_existing(&data)?.set_quota(&name, quota).map_err(failed(format!("cannot set the quota of {name}")))?;
            println!("quota of {name}: {}", quota.map_or("none".to_string(), human_bytes));
        }
        UserCommand::Remove { name, data } => {
            let mut meta = open_existing(&data)?;
            let (nodes, released) = meta.remove_user(&name).map_err(failed(format!("cannot remove user {name}")))?;
            let blobs = blobs::Blobs::new(&data, blobs::Durability::Full);
            blobs.remove_all(&released);
            println!("removed user {name}: {nodes} files and directories, {} physical files freed", released.len());
        }
    }
    Ok(())
}

/// A data directory's database, which must exist already (administration never creates one by mistake).
fn open_existing(data: &Path) -> anyhow::Result<meta::Meta> {
    let db = data.join("meta.db");
    if !db.exists() {
        bail!("{} holds no netdisk database (meta.db)", data.display());
    }
    meta::Meta::open(&db).with_context(|| format!("cannot open the database in {}", data.display()))
}

/// `2026-11-25` from seconds since the epoch (UTC).
fn date(sec: i64) -> String {
    let days = sec.div_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Creates the data directory and migrates the database, in the parent, before any child exists.
/// The connection is closed again before forking (SQLite connections never cross a fork).
fn prepare_data_dir(data: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data.join("blobs"))
        .with_context(|| format!("cannot create data directory {}", data.display()))?;
    meta::Meta::open(&data.join("meta.db"))
        .with_context(|| format!("cannot open the database in {}", data.display()))?;
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("NETDISK_PASSWORD") {
        if p.is_empty() {
            bail!("NETDISK_PASSWORD is empty");
        }
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("no password: set NETDISK_PASSWORD or give it on stdin");
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_dates_read_and_print() {
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("500K"), Ok(500 << 10));
        assert_eq!(parse_size("20M"), Ok(20 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("3gb"), Ok(3 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("M").is_err());
        assert!(matches!(parse_quota("none"), Ok(Quota(None))));
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_795_564_800), "2026-11-25");
        assert_eq!(date(951_782_400), "2000-02-29");
    }
}
