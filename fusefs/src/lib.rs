//! netdisk-mount as a library: the filesystem logic (`fs`) over a connection pool (`client`), testable without a
//! mount; `fuse` is the only module that speaks to the kernel, and the `netdisk-mount` binary (`main.rs`) only
//! reads its settings, logs in and mounts.

pub mod cache;
pub mod changes;
pub mod client;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod handles;
pub mod inode;
pub mod kept;
pub mod kernel_mount;
pub mod local;
#[cfg(test)]
pub mod memory;
pub mod reader;
pub mod running_hash;
pub mod settings;
pub mod status;
pub mod upload;
