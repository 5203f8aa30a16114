//! `netdisk-server`: `serve` a data directory, or manage its users (`user add`).
//! Only argument handling lives here; `listener` (in the library, `lib.rs`) runs the server.

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use netdisk_server::conn::Timeouts;
use netdisk_server::{blobs, listener, meta, users};

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
    /// Serve the store in a data directory (created if missing).
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
        /// Seconds a connection may wait between requests before it is closed.
        #[arg(long, default_value_t = 600)]
        idle_timeout: u64,
        /// Seconds a transfer or a half-received request may make no progress before the connection is closed.
        #[arg(long, default_value_t = 30)]
        stall_timeout: u64,
        /// Chunk size in bytes for new uploads (4096 to 16777216).
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        chunk_size: u32,
        /// full: every answered change is synced to disk (survives a power loss). normal: it is in the OS cache
        /// (survives any crash of netdisk's processes; a power loss may undo the last changes, never half-apply them).
        #[arg(long, value_enum, default_value_t = blobs::Durability::Full)]
        durability: blobs::Durability,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. The password comes from NETDISK_PASSWORD, else from the first line of stdin.
    Add {
        name: String,
        /// The server's data directory.
        #[arg(long)]
        data: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve { data, listen, max_children, idle_timeout, stall_timeout, chunk_size, durability } => {
            if !(netdisk_protocol::MIN_CHUNK_SIZE..=netdisk_protocol::MAX_CHUNK_SIZE).contains(&chunk_size) {
                bail!(
                    "--chunk-size must be between {} and {}",
                    netdisk_protocol::MIN_CHUNK_SIZE,
                    netdisk_protocol::MAX_CHUNK_SIZE
                );
            }
            if max_children == 0 || idle_timeout == 0 || stall_timeout == 0 {
                bail!("--max-children, --idle-timeout and --stall-timeout must be positive");
            }
            prepare_data_dir(&data)?;
            let listener = TcpListener::bind(&listen).with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
            drop(out);
            tracing::info!(%addr, data = %data.display(), "serving");
            let timeouts =
                Timeouts { idle: Duration::from_secs(idle_timeout), stall: Duration::from_secs(stall_timeout) };
            listener::serve(
                listener::Config { data_dir: data, max_children, chunk_size, timeouts, durability },
                listener,
            )
        }
        Command::User { command: UserCommand::Add { name, data } } => {
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
            meta.add_user(&name, &hash)
                .map_err(|e| anyhow::anyhow!("cannot add user {name}: {}", e.to_wire().message))?;
            println!("added user {name}");
            Ok(())
        }
    }
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
