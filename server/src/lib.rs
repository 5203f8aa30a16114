//! The netdisk server as a library: the binary (`main.rs`) only parses the command line and calls
//! [`listener::serve`].

pub mod blobs;
pub mod conn;
pub mod error;
pub mod handler;
pub mod integrity;
pub mod listener;
pub mod meta;
pub mod splice;
pub mod users;
