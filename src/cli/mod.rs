//! Subcommands, one file each.

pub mod decode;
