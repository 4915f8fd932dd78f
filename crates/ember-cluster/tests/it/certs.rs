//! Test certificates for TLS: an authority, a server certificate it signs for the names given,
//! and a second, unrelated authority, written as PEM files. (Shared with the command-line
//! tests, which include this file.)

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// PEM files in a temporary directory that lives as long as this value. (Each test binary that
/// includes this file reads some of them.)
#[allow(dead_code)]
pub struct Certs {
    /// Holds the files.
    pub dir: tempfile::TempDir,
    /// The authority that signed `cert`.
    pub ca: PathBuf,
    /// A certificate for the names given, signed by `ca`.
    pub cert: PathBuf,
    /// `cert`'s private key.
    pub key: PathBuf,
    /// An authority that signed nothing here.
    pub other_ca: PathBuf,
    /// A self-signed certificate for the same names (not an authority), and its key.
    pub self_signed: PathBuf,
    /// `self_signed`'s private key.
    pub self_signed_key: PathBuf,
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Makes the files: `names` are host names or IP addresses the server certificate is for.
pub fn make(names: &[&str]) -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority("Ember test authority");
    let other = authority("Another authority");
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "ember node");
    let cert = params.signed_by(&key, &ca).unwrap();
    let own_key = KeyPair::generate().unwrap();
    let own = params.self_signed(&own_key).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Certs {
        ca: write("ca.pem", ca.pem()),
        cert: write("node.pem", cert.pem()),
        key: write("node.key", key.serialize_pem()),
        other_ca: write("other-ca.pem", other.pem()),
        self_signed: write("self-signed.pem", own.pem()),
        self_signed_key: write("self-signed.key", own_key.serialize_pem()),
        dir,
    }
}
