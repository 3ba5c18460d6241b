//! Test certificates made at test time (no private key is committed): a CA, a server
//! certificate for `localhost` (a DNS name only, so connecting to 127.0.0.1 is a host-name
//! mismatch), client certificates for `alice` and `bob`, and a second, unrelated CA.

#![allow(dead_code)]

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

fn leaf(
    issuer: &Issuer<'_, &KeyPair>,
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes `ca.crt`, `server.crt`/`server.key`, `alice.crt`/`alice.key`, `bob.crt`/`bob.key`,
/// `other-ca.crt`, and `stranger.crt`/`stranger.key` (a client certificate the other CA
/// signed) into `dir`.
pub fn write_certs(dir: &Path) {
    let (ca_params, ca_key, ca_pem) = ca("simqtt test CA");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
    let (cert, key) = leaf(
        &issuer,
        &["localhost"],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(dir.join("server.crt"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    for user in ["alice", "bob"] {
        let (cert, key) = leaf(&issuer, &[], user, ExtendedKeyUsagePurpose::ClientAuth);
        std::fs::write(dir.join(format!("{user}.crt")), cert).unwrap();
        std::fs::write(dir.join(format!("{user}.key")), key).unwrap();
    }
    let (other_params, other_key, other_pem) = ca("another CA");
    std::fs::write(dir.join("other-ca.crt"), other_pem).unwrap();
    let other = Issuer::from_params(&other_params, &other_key);
    let (cert, key) = leaf(&other, &[], "alice", ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(dir.join("stranger.crt"), cert).unwrap();
    std::fs::write(dir.join("stranger.key"), key).unwrap();
}
