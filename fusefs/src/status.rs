//! What a mount is doing, for people: uploads in progress (with progress), files waiting to upload, the
//! connection, the cache. A mount answers it as extended attributes, so no other channel is needed:
//! `user.netdisk.status` on the mount's root (JSON, read by `netdisk-mount status`), and on each regular file
//! `user.netdisk.state` (uploading / waiting / local / complete) and `user.netdisk.md5`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use netdisk_protocol::human_bytes;
use serde::{Deserialize, Serialize};

pub const XATTR_STATUS: &str = "user.netdisk.status";
pub const XATTR_STATE: &str = "user.netdisk.state";
pub const XATTR_MD5: &str = "user.netdisk.md5";

/// Uploads in progress, by inode.
#[derive(Default)]
pub struct UploadBoard {
    uploads: Mutex<BTreeMap<u64, Upload>>,
}

struct Upload {
    path: String,
    size: u64,
    sent: Arc<AtomicU64>,
    started: Instant,
}

/// An upload on the board; it leaves the board when dropped.
pub struct UploadTicket<'a> {
    board: &'a UploadBoard,
    ino: u64,
    pub sent: Arc<AtomicU64>,
}

impl Drop for UploadTicket<'_> {
    fn drop(&mut self) {
        self.board.uploads.lock().expect("upload board lock").remove(&self.ino);
    }
}

impl UploadBoard {
    pub fn start(&self, ino: u64, path: &str, size: u64) -> UploadTicket<'_> {
        let sent = Arc::new(AtomicU64::new(0));
        let upload = Upload { path: path.to_string(), size, sent: sent.clone(), started: Instant::now() };
        self.uploads.lock().expect("upload board lock").insert(ino, upload);
        UploadTicket { board: self, ino, sent }
    }

    /// The upload of `ino`, if one runs: bytes sent and size.
    pub fn progress(&self, ino: u64) -> Option<(u64, u64)> {
        let uploads = self.uploads.lock().expect("upload board lock");
        uploads.get(&ino).map(|u| (u.sent.load(Ordering::Relaxed), u.size))
    }

    pub fn list(&self) -> Vec<UploadStatus> {
        let uploads = self.uploads.lock().expect("upload board lock");
        uploads
            .values()
            .map(|u| UploadStatus {
                path: u.path.clone(),
                size: u.size,
                sent: u.sent.load(Ordering::Relaxed),
                seconds: u.started.elapsed().as_secs_f64(),
            })
            .collect()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadStatus {
    pub path: String,
    pub size: u64,
    /// Bytes of chunks the server has confirmed.
    pub sent: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub server: String,
    pub user: String,
    /// Whether the server answered just now, and how fast.
    pub connected: bool,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    pub uploads: Vec<UploadStatus>,
    /// Files changed here and not uploaded yet (still open for writing).
    pub waiting: Vec<String>,
    /// Bytes kept after an upload failed at close: for `netdisk-mount retry` or `discard`.
    #[serde(default)]
    pub kept: Vec<crate::kept::Kept>,
    pub cache_used: u64,
    pub cache_limit: u64,
    pub cache_dir: String,
}

/// The state of a regular file, as `user.netdisk.state` says it.
pub fn state_text(progress: Option<(u64, u64)>, waiting: bool, local: bool) -> String {
    match progress {
        Some((sent, size)) => format!("uploading {sent} of {size} bytes ({}%)", percent(sent, size)),
        None if local => "local (not uploaded yet)".to_string(),
        None if waiting => "waiting (changed here, uploads at close)".to_string(),
        None => "complete".to_string(),
    }
}

fn percent(part: u64, whole: u64) -> u64 {
    (part.saturating_mul(100)).checked_div(whole).unwrap_or(100)
}

/// The status of the mount at `mountpoint`, read from its root's extended attribute.
pub fn read(mountpoint: &Path) -> anyhow::Result<Status> {
    let value = xattr_of(mountpoint, XATTR_STATUS)
        .map_err(|e| anyhow::anyhow!("{} is not a netdisk mount (or is not answering): {e}", mountpoint.display()))?;
    Ok(serde_json::from_slice(&value)?)
}

fn xattr_of(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let c_name = CString::new(name).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: both strings are NUL-terminated and live across the call; `buf` is writable for its length.
    let n = unsafe { libc::getxattr(c_path.as_ptr(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The status as lines for people.
pub fn render(mountpoint: &Path, s: &Status) -> String {
    let mut out = format!("{}: {}@{}", mountpoint.display(), s.user, s.server);
    match (s.connected, s.latency_ms, &s.error) {
        (true, Some(ms), _) => out += &format!(", connected ({ms:.1} ms)\n"),
        (_, _, Some(e)) => out += &format!(", NOT CONNECTED: {e}\n"),
        _ => out += ", NOT CONNECTED\n",
    }
    if s.uploads.is_empty() {
        out += "uploads: none in progress\n";
    }
    for u in &s.uploads {
        let rate = if u.seconds > 0.0 { u.sent as f64 / u.seconds } else { 0.0 };
        out += &format!(
            "uploading {}: {} of {} ({}%), {}/s\n",
            u.path,
            human_bytes(u.sent),
            human_bytes(u.size),
            percent(u.sent, u.size),
            human_bytes(rate as u64)
        );
    }
    if s.waiting.is_empty() {
        out += "waiting to upload: none\n";
    } else {
        out += &format!("waiting to upload: {}\n", s.waiting.join(", "));
    }
    if !s.kept.is_empty() {
        out += &format!("kept after a failed upload (netdisk-mount retry|discard {} PATH):\n", mountpoint.display());
    }
    for k in &s.kept {
        out += &format!("  {} ({}): {} [{}]\n", k.path, human_bytes(k.size), k.error, k.data.display());
    }
    out += &format!("cache: {} of {} in {}\n", human_bytes(s.cache_used), human_bytes(s.cache_limit), s.cache_dir);
    out
}

/// Netdisk mounts listed in /proc/self/mounts: type `fuse.netdisk`, or `fuse` with a `netdisk:` source (when
/// mounted by mount(2) directly, as root, the kernel does not show the subtype).
pub fn mounts() -> Vec<std::path::PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (source, point, kind) = (f.next()?, f.next()?, f.next()?);
            let ours = kind == "fuse.netdisk" || (kind == "fuse" && source.starts_with("netdisk:"));
            ours.then(|| std::path::PathBuf::from(unescape(point)))
        })
        .collect()
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push(u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_mount_table_fields() {
        assert_eq!(state_text(Some((50, 200)), true, false), "uploading 50 of 200 bytes (25%)");
        assert_eq!(state_text(None, true, true), "local (not uploaded yet)");
        assert_eq!(state_text(None, true, false), "waiting (changed here, uploads at close)");
        assert_eq!(state_text(None, false, false), "complete");
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape("/plain"), "/plain");
        let board = UploadBoard::default();
        {
            let ticket = board.start(7, "/f", 1000);
            ticket.sent.fetch_add(400, Ordering::Relaxed);
            assert_eq!(board.progress(7), Some((400, 1000)));
            assert_eq!(board.list()[0].path, "/f");
        }
        assert_eq!(board.progress(7), None, "a finished upload leaves the board");
    }
}
