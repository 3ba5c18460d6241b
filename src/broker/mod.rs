//! See the module map in `lib.rs`.

pub mod auth;
