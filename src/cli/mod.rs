//! Subcommands, one file each.

pub mod broker;
pub mod decode;
pub mod passwd;
