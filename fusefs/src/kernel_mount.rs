//! The mount itself when running as root: `mount(2)` of `/dev/fuse` with the full type `fuse.netdisk`, so that
//! `/proc/mounts`, `df -t` and `findmnt -t` see what is mounted. (fuser's own direct mount always passes the bare
//! type `fuse`, losing the subtype; without root it goes through fusermount3, which keeps it.)

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::Mode;

/// The kernel flags of a mount: everything that is not a FUSE option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFlags {
    pub read_only: bool,
    pub suid: bool,
    pub dev: bool,
    pub exec: bool,
}

impl KernelFlags {
    fn ms_flags(self) -> MsFlags {
        // noatime always: see SEMANTICS.md ("Times").
        let mut flags = MsFlags::MS_NOATIME;
        flags.set(MsFlags::MS_RDONLY, self.read_only);
        flags.set(MsFlags::MS_NOSUID, !self.suid);
        flags.set(MsFlags::MS_NODEV, !self.dev);
        flags.set(MsFlags::MS_NOEXEC, !self.exec);
        flags
    }
}

/// Mounts a new FUSE connection on `mountpoint` (root only) and returns its `/dev/fuse` descriptor, for
/// `fuser::Session::from_fd`. The kernel checks permissions (`default_permissions`) and lets every user in
/// (`allow_other`): as for any root mount shared on a machine.
pub fn mount(mountpoint: &Path, fsname: &str, flags: KernelFlags) -> std::io::Result<OwnedFd> {
    let fd = nix::fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let data =
        format!("fd={},rootmode={root_mode:o},user_id=0,group_id=0,default_permissions,allow_other", fd.as_raw_fd());
    nix::mount::mount(Some(fsname), mountpoint, Some("fuse.netdisk"), flags.ms_flags(), Some(data.as_str()))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_default_to_the_safe_side() {
        let safe = KernelFlags { exec: true, ..KernelFlags::default() }.ms_flags();
        assert!(safe.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME));
        assert!(!safe.intersects(MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC));
        let asked = KernelFlags { read_only: true, suid: true, dev: true, exec: false }.ms_flags();
        assert!(asked.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC));
        assert!(!asked.intersects(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
    }
}
