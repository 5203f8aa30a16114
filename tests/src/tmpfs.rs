//! A small tmpfs of a test's own (`mount -t tmpfs -o size=...`, needs root) on a fresh temporary directory,
//! unmounted on drop: a disk that fills up.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mount::is_mounted;

pub struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `20m`) and panics unless it is mounted.
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new().prefix("netdisk-tmpfs-").tempdir().expect("a temporary directory");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("the tmpfs mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "netdisk-test"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success() && is_mounted(&path),
            "mount -t tmpfs on {} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { _dir: dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes still free on it.
    pub fn available(&self) -> u64 {
        let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).expect("a path without NUL");
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: statvfs(3) with a valid C string and a pointer to a struct it fills.
        let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        assert_eq!(rc, 0, "statvfs {}: {}", self.path.display(), std::io::Error::last_os_error());
        // SAFETY: statvfs succeeded, so it filled the struct (which started zeroed, valid for a C struct anyway).
        let st = unsafe { st.assume_init() };
        st.f_frsize * st.f_bavail
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !is_mounted(&self.path) {
            return;
        }
        let ok = Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a process the test failed to stop): detach it so nothing is left mounted.
            eprintln!("umount {} failed: detaching it", self.path.display());
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
