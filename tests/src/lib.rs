//! Test harness: finds the built binaries, starts servers, cleans up on drop.
