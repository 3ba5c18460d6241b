//! Subcommands, one file each.

pub mod decode;
pub mod passwd;
