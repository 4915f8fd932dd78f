//! TLS (`ember.ssl.*`) on both planes of a cluster: the driver's control service and the
//! executors' data planes present the node's certificate, and every client checks it.

use std::io::{Read, Write};
use std::time::Duration;

use ember_core::{Context, EmberConf};

use crate::certs;
use crate::local_cluster::{all_executor_pids, context_with, executor_pids, free_port, run_executor_with};

/// Whether the listener on 127.0.0.1:`port` answers a plaintext HTTP/2 client as a TLS server
/// does (an alert, or closing the connection) rather than as a gRPC server in the clear (its
/// SETTINGS frame).
fn refuses_plaintext(port: u16) -> bool {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The client connection preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    let mut reply = [0u8; 9];
    match s.read(&mut reply) {
        // A TLS alert record (content type 21), or the connection closed or reset.
        Ok(0) | Err(_) => true,
        Ok(_) if reply[0] == 0x15 => true,
        Ok(n) => {
            assert!(n < 4 || reply[3] == 0x04, "neither TLS nor HTTP/2: {:?}", &reply[..n]);
            false
        }
    }
}

/// The TCP ports process `pid` listens on (its sockets, matched with the listening ones).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local address, state (0A: listening), inode.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

pub fn a_cluster_runs_over_tls_on_both_planes() {
    let certs = certs::make(&["127.0.0.1", "localhost"]);
    let (port, secret) = (free_port(), "0123456789abcdef".repeat(4));
    let ctx = context_with(
        "local-cluster[2,1,256]",
        &[
            ("ember.ssl.enabled", "true"),
            ("ember.ssl.certFile", certs.cert.to_str().unwrap()),
            ("ember.ssl.keyFile", certs.key.to_str().unwrap()),
            ("ember.ssl.trustFile", certs.ca.to_str().unwrap()),
            ("ember.driver.port", &port.to_string()),
            ("ember.authenticate.secret", &secret),
        ],
    );
    // A shuffle between the two executors: reducers fetch from the other one's data plane.
    let counts: std::collections::BTreeMap<u64, u64> = ctx
        .parallelize((0..20_000u64).collect(), 6)
        .map(|x| (x % 97, x))
        .reduce_by_key(|a, b| a + b, Some(4))
        .collect()
        .unwrap()
        .into_iter()
        .collect();
    let mut want = std::collections::BTreeMap::new();
    for x in 0..20_000u64 {
        *want.entry(x % 97).or_insert(0) += x;
    }
    assert_eq!(counts, want);
    assert!(ctx.last_job_summary().unwrap().metrics().shuffle_records_read > 0);

    // Every listener speaks TLS only: the driver's control service and each data plane.
    assert!(refuses_plaintext(port), "the driver's control service accepted plaintext");
    let pids = all_executor_pids(&ctx, 2);
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in &pids {
        let ports = listening_ports(*pid);
        assert_eq!(ports.len(), 1, "executor {pid} listens on its data plane only: {ports:?}");
        assert!(refuses_plaintext(ports[0]), "executor {pid}'s data plane accepted plaintext");
    }

    // An executor in the clear, or one that trusts another authority, cannot reach the driver,
    // even with the right secret.
    let exe = std::env::current_exe().unwrap();
    let (code, err) = run_executor_with(&exe, port, "executor-8", &secret, &[]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("if the peer requires TLS"), "the failure says why: {err}");
    let (code, err) = run_executor_with(
        &exe,
        port,
        "executor-9",
        &secret,
        &[
            ("EMBER_SSL_CERT_FILE", &certs.cert),
            ("EMBER_SSL_KEY_FILE", &certs.key),
            ("EMBER_SSL_TRUST_FILE", &certs.other_ca),
        ],
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("certificate"), "the failure names the certificate: {err}");
    // Neither joined, and the application goes on.
    let mut after = std::collections::HashSet::new();
    for _ in 0..5 {
        after.extend(executor_pids(&ctx, 8));
    }
    assert!(after.is_subset(&pids), "an executor joined: {after:?} besides {pids:?}");
    assert_eq!(all_executor_pids(&ctx, 2), pids);
}

pub fn a_self_signed_certificate_is_trusted_by_default() {
    let certs = certs::make(&["127.0.0.1"]);
    // No trust file: each process trusts the node's own certificate.
    let ctx = context_with(
        "local-cluster[2,1,256]",
        &[
            ("ember.ssl.enabled", "true"),
            ("ember.ssl.certFile", certs.self_signed.to_str().unwrap()),
            ("ember.ssl.keyFile", certs.self_signed_key.to_str().unwrap()),
        ],
    );
    let sums: std::collections::BTreeMap<u64, u64> = ctx
        .parallelize((0..5_000u64).collect(), 4)
        .map(|x| (x % 7, 1u64))
        .reduce_by_key(|a, b| a + b, Some(3))
        .collect()
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(sums.values().sum::<u64>(), 5_000);
    assert_eq!(sums.len(), 7);
}

fn start_err(settings: &[(&str, &str)]) -> String {
    let mut conf = EmberConf::new().master("local-cluster[1,1,64]").unwrap();
    for (k, v) in settings {
        conf = conf.set(k, *v).unwrap();
    }
    match Context::new(conf) {
        Ok(_) => panic!("a context started with {settings:?}"),
        Err(e) => e.to_string(),
    }
}

pub fn bad_tls_files_are_reported_by_name() {
    let certs = certs::make(&["127.0.0.1"]);
    let missing = certs.dir.path().join("missing.pem");
    let err = start_err(&[
        ("ember.ssl.enabled", "true"),
        ("ember.ssl.certFile", missing.to_str().unwrap()),
        ("ember.ssl.keyFile", certs.key.to_str().unwrap()),
    ]);
    assert!(err.contains("ember.ssl.certFile") && err.contains("missing.pem"), "{err}");
    // A key where the certificate belongs, and a certificate where the key belongs.
    let err = start_err(&[
        ("ember.ssl.enabled", "true"),
        ("ember.ssl.certFile", certs.key.to_str().unwrap()),
        ("ember.ssl.keyFile", certs.cert.to_str().unwrap()),
    ]);
    assert!(err.contains("not a PEM file holding a CERTIFICATE") && err.contains("node.key"), "{err}");
    // A key file whose block does not decode.
    let garbled = certs.dir.path().join("garbled.key");
    let key = std::fs::read_to_string(&certs.key).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let flipped: String = body.chars().rev().collect();
    std::fs::write(&garbled, format!("-----BEGIN PRIVATE KEY-----\n{flipped}\n-----END PRIVATE KEY-----\n")).unwrap();
    let err = start_err(&[
        ("ember.ssl.enabled", "true"),
        ("ember.ssl.certFile", certs.cert.to_str().unwrap()),
        ("ember.ssl.keyFile", garbled.to_str().unwrap()),
    ]);
    assert!(err.contains("garbled.key") && (err.contains("not usable") || err.contains("PRIVATE KEY")), "{err}");
    // A key that is not the certificate's.
    let err = start_err(&[
        ("ember.ssl.enabled", "true"),
        ("ember.ssl.certFile", certs.cert.to_str().unwrap()),
        ("ember.ssl.keyFile", certs.self_signed_key.to_str().unwrap()),
    ]);
    assert!(err.contains("not usable") && err.contains("self-signed.key"), "{err}");
    // A trust file with a block that is no certificate.
    let junk = certs.dir.path().join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n").unwrap();
    let err = start_err(&[
        ("ember.ssl.enabled", "true"),
        ("ember.ssl.certFile", certs.cert.to_str().unwrap()),
        ("ember.ssl.keyFile", certs.key.to_str().unwrap()),
        ("ember.ssl.trustFile", junk.to_str().unwrap()),
    ]);
    assert!(err.contains("ember.ssl.trustFile") && err.contains("does not parse"), "{err}");
    // TLS with nothing to present or trust.
    let err = EmberConf::new().set("ember.ssl.enabled", "true").unwrap().settings().unwrap_err().to_string();
    assert!(err.contains("ember.ssl.certFile"), "{err}");
}
