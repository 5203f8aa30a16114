//! The netdisk server as a library. The binary (`main.rs`) only parses the command line and calls
//! [`listener::serve`]; the `session` fuzz target and its corpus replay drive one connection through
//! [`listener::serve_connection`] with [`fuzz::session`], the same code a forked child runs.

pub mod blobs;
pub mod conn;
pub mod error;
pub mod fsck;
pub mod fuzz;
pub mod handler;
pub mod listener;
pub mod meta;
pub mod recovery;
pub mod resize;
pub mod splice;
pub mod users;
