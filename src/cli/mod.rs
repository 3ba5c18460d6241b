//! Subcommands, one file each.

pub mod bench;
pub mod broker;
pub mod certify;
pub mod decode;
pub mod passwd;
pub mod proxy;
pub mod pub_cmd;
pub mod replay;
pub mod run;
pub mod sub_cmd;
