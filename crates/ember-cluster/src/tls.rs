//! TLS for both planes (`ember.ssl.*`): rustls through tonic.
//!
//! Every listener of a cluster (a driver's control service, a standalone master, an executor's
//! data plane) presents its node's certificate when TLS is on, and every client checks the
//! server's certificate against the trusted authorities and the expected name. The shared secret
//! still authenticates each call on top: TLS keeps the traffic private and the servers genuine,
//! the secret keeps strangers out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_core::conf::SslSettings;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

use crate::error::{chain, ClusterError, Result};
use crate::vars;

/// How long a server waits for a client's TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Variables of a process's environment naming TLS files: removed from the environment of an
/// executor started without TLS, which would otherwise turn it on against a driver without it.
const ENV_VARS: [&str; 4] = [vars::SSL_CERT_FILE, vars::SSL_KEY_FILE, vars::SSL_TRUST_FILE, vars::SSL_SERVER_NAME];

/// A node's TLS material, read once from its files.
#[derive(Clone)]
pub(crate) struct Tls {
    files: SslSettings,
    /// The certificate chain and key a listener presents (absent on a process that only connects).
    identity: Option<Identity>,
    /// The authorities a client trusts.
    trust: Certificate,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    /// At least one certificate, every one of which parses.
    Certificates,
    /// A private key.
    Key,
}

fn read_pem(path: &Path, setting: &str, what: Pem) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = std::fs::read(path).map_err(|e| ClusterError::Tls(format!("{setting} {}: {e}", path.display())))?;
    let bad = |why: String| ClusterError::Tls(format!("{setting} {}: {why}", path.display()));
    match what {
        Pem::Certificates => {
            // Parsed as trust anchors: a block that is not a certificate would otherwise be
            // skipped, and every handshake fail later.
            let mut store = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| bad(format!("not a PEM file of certificates ({e})")))?;
                store.add(cert).map_err(|e| bad(format!("a certificate that does not parse ({e})")))?;
            }
            if store.is_empty() {
                return Err(bad("not a PEM file holding a CERTIFICATE".into()));
            }
        }
        Pem::Key => {
            PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| bad(format!("not a PEM file holding a PRIVATE KEY ({e})")))?;
        }
    }
    Ok(bytes)
}

/// `path` made absolute against this process's working directory: processes started with
/// another one (a worker's executors) read the same file.
fn absolute(path: &Option<PathBuf>, setting: &str) -> Result<Option<PathBuf>> {
    path.as_ref()
        .map(|p| std::path::absolute(p).map_err(|e| ClusterError::Tls(format!("{setting} {}: {e}", p.display()))))
        .transpose()
}

impl Tls {
    /// Reads the files `ssl` names; `None` when TLS is off.
    pub(crate) fn load(ssl: Option<&SslSettings>) -> Result<Option<Arc<Tls>>> {
        let Some(ssl) = ssl else { return Ok(None) };
        let ssl = &SslSettings {
            cert_file: absolute(&ssl.cert_file, "ember.ssl.certFile")?,
            key_file: absolute(&ssl.key_file, "ember.ssl.keyFile")?,
            trust_file: absolute(&ssl.trust_file, "ember.ssl.trustFile")?,
            server_name: ssl.server_name.clone(),
        };
        let identity = match (&ssl.cert_file, &ssl.key_file) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read_pem(cert, "ember.ssl.certFile", Pem::Certificates)?,
                read_pem(key, "ember.ssl.keyFile", Pem::Key)?,
            )),
            (None, None) => None,
            _ => return Err(ClusterError::Tls("ember.ssl.certFile and ember.ssl.keyFile go together".into())),
        };
        let trust = match (&ssl.trust_file, &ssl.cert_file) {
            (Some(path), _) => read_pem(path, "ember.ssl.trustFile", Pem::Certificates)?,
            (None, Some(path)) => read_pem(path, "ember.ssl.certFile", Pem::Certificates)?,
            (None, None) => return Err(ClusterError::Tls("nothing to trust: set ember.ssl.trustFile".into())),
        };
        let tls = Tls { files: ssl.clone(), identity, trust: Certificate::from_pem(trust) };
        // Build both sides once now, so that a key that does not parse is reported at start-up
        // and names its file, not at the first connection.
        if tls.identity.is_some() {
            Server::builder().tls_config(tls.server_config()?).map_err(|e| {
                ClusterError::Tls(format!(
                    "the certificate {} or key {} is not usable: {}",
                    show(ssl.cert_file.as_deref()),
                    show(ssl.key_file.as_deref()),
                    chain(&e)
                ))
            })?;
        }
        Endpoint::from_static("https://127.0.0.1:1").tls_config(tls.client_config()).map_err(|e| {
            ClusterError::Tls(format!(
                "the trusted certificates {} are not usable: {}",
                show(ssl.trust_file.as_deref().or(ssl.cert_file.as_deref())),
                chain(&e)
            ))
        })?;
        Ok(Some(Arc::new(tls)))
    }

    /// Sets the TLS environment of an executor this process starts: the same files as this
    /// process's, or none (stray variables removed) when `tls` is off. Read back by
    /// [`Tls::settings_from_env`].
    pub(crate) fn hand_to(tls: Option<&Tls>, command: &mut std::process::Command) {
        for var in ENV_VARS {
            command.env_remove(var);
        }
        let Some(tls) = tls else { return };
        let files = &tls.files;
        for (var, path) in [
            (vars::SSL_CERT_FILE, &files.cert_file),
            (vars::SSL_KEY_FILE, &files.key_file),
            (vars::SSL_TRUST_FILE, &files.trust_file),
        ] {
            if let Some(p) = path {
                command.env(var, p);
            }
        }
        if let Some(name) = &files.server_name {
            command.env(vars::SSL_SERVER_NAME, name);
        }
    }

    /// The settings [`Tls::hand_to`] handed to this executor, if any.
    pub(crate) fn settings_from_env() -> Option<SslSettings> {
        let get = |var| std::env::var_os(var).filter(|v| !v.is_empty());
        let ssl = SslSettings {
            cert_file: get(vars::SSL_CERT_FILE).map(PathBuf::from),
            key_file: get(vars::SSL_KEY_FILE).map(PathBuf::from),
            trust_file: get(vars::SSL_TRUST_FILE).map(PathBuf::from),
            server_name: get(vars::SSL_SERVER_NAME).and_then(|v| v.into_string().ok()),
        };
        (ssl.cert_file.is_some() || ssl.trust_file.is_some()).then_some(ssl)
    }

    /// Whether this node can present a certificate (it, or processes it starts, listen).
    pub(crate) fn can_listen(&self) -> Result<()> {
        self.server_config().map(drop)
    }

    fn server_config(&self) -> Result<ServerTlsConfig> {
        let identity = self.identity.clone().ok_or_else(|| {
            ClusterError::Tls("this process listens, so it needs ember.ssl.certFile and ember.ssl.keyFile".into())
        })?;
        // A client that never finishes its handshake is not kept waiting for.
        Ok(ServerTlsConfig::new().identity(identity).timeout(HANDSHAKE_TIMEOUT))
    }

    fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(self.trust.clone());
        match &self.files.server_name {
            Some(name) => config.domain_name(name.clone()),
            None => config,
        }
    }
}

fn show(path: Option<&Path>) -> String {
    path.map_or_else(|| "(unset)".to_string(), |p| p.display().to_string())
}

/// A client endpoint for `address` (`host:port`): `https` with this node's trust when TLS is on.
pub(crate) fn endpoint(address: &str, tls: Option<&Tls>) -> Result<Endpoint> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| ClusterError::Environment(format!("address `{address}`: {e}")))?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.client_config()).map_err(|e| ClusterError::Tls(chain(&e))),
        None => Ok(endpoint),
    }
}

/// A server builder: presenting this node's certificate when TLS is on.
pub(crate) fn server(tls: Option<&Tls>) -> Result<Server> {
    match tls {
        Some(tls) => Server::builder().tls_config(tls.server_config()?).map_err(|e| ClusterError::Tls(chain(&e))),
        None => Ok(Server::builder()),
    }
}

/// `e`, with a hint when it looks like one side of a connection speaking TLS and the other not
/// (a plaintext HTTP/2 client reading a TLS record, or a TLS client reading plaintext).
pub(crate) fn hint_mismatch(e: ClusterError, tls_on: bool) -> ClusterError {
    const GARBLED: [&str; 7] = [
        "h2 protocol error",
        "frame with invalid size",
        "InvalidContentType",
        "corrupt message",
        "broken pipe",
        "connection reset",
        "connection closed",
    ];
    let hinted = |text: String| {
        if !GARBLED.iter().any(|g| text.contains(g)) {
            return text;
        }
        let hint = if tls_on {
            " (if the peer runs without TLS: this process has ember.ssl.enabled, and both sides must agree)"
        } else {
            " (if the peer requires TLS: set ember.ssl.enabled, and ember.ssl.trustFile or ember.ssl.certFile)"
        };
        text + hint
    };
    match e {
        ClusterError::Transport(m) => ClusterError::Transport(hinted(m)),
        ClusterError::Rpc(m) => ClusterError::Rpc(hinted(m)),
        e => e,
    }
}
