//! Subcommands, one file each.

pub mod broker;
pub mod decode;
pub mod pub_cmd;
pub mod replay;
pub mod run;
pub mod sub_cmd;
