//! Subcommands, one file each.

pub mod bench;
pub mod decode;
