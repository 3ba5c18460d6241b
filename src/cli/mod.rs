//! Subcommands, one file each.

pub mod bench;
pub mod broker;
pub mod decode;
