//! `simqtt decode`: print the packets in a byte string.

use std::process::ExitCode;

use anyhow::{bail, Context};
use bytes::Bytes;
use simqtt::codec::{self, ProtocolVersion};

#[derive(clap::Args)]
pub struct Args {
    /// Hex bytes ("10 0c 00 04 ..." or "100c0004..."), or @FILE to read raw bytes from FILE.
    input: String,
    /// Protocol version of packets after CONNECT.
    #[arg(short = 'V', long, default_value = "5", value_parser = ["311", "5"])]
    protocol_version: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bytes = match args.input.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
        None => parse_hex(&args.input)?,
    };
    let version = if args.protocol_version == "311" {
        ProtocolVersion::V311
    } else {
        ProtocolVersion::V5
    };
    let mut rest = Bytes::from(bytes);
    while !rest.is_empty() {
        match codec::decode_slice(&rest, version, codec::DEFAULT_MAX_PACKET_SIZE) {
            Ok(Some((packet, used))) => {
                println!("{packet:#?}");
                rest = rest.slice(used..);
            }
            Ok(None) => bail!("{} trailing bytes do not make a whole packet", rest.len()),
            Err(error) => {
                println!("error: {error}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    let digits: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ',')
        .collect();
    let digits = digits.replace("0x", "");
    if digits.len() % 2 != 0 {
        bail!("odd number of hex digits");
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).context("not a hex byte"))
        .collect()
}
