#![no_main]
//! Raw bytes decoded as MQTT 5.0 packets.

use libfuzzer_sys::fuzz_target;
use simqtt::codec::ProtocolVersion;

mod common;

fuzz_target!(|data: &[u8]| common::check(data, ProtocolVersion::V5));
