//! Errors of the cluster runtime.

/// What went wrong in the cluster runtime.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A network transport failed (connect, bind, or a broken stream).
    #[error("transport error: {0}")]
    Transport(String),
    /// A peer answered with a gRPC error.
    #[error("rpc failed: {0}")]
    Rpc(String),
    /// A peer was refused, or refused us: wrong secret, different binary, unknown executor.
    #[error("refused: {0}")]
    Refused(String),
    /// A message that does not decode or makes no sense at this point of the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The executor's environment (set by the process that started it) is missing or malformed.
    #[error("bad executor environment: {0}")]
    Environment(String),
    /// Executors did not start or register in time, or exited while starting.
    #[error("executors failed to start: {0}")]
    Startup(String),
    /// A local I/O operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// What was being read, written or started.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// TLS is enabled but its files are missing, unreadable or not usable PEM.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// An error of the core engine.
    #[error(transparent)]
    Core(#[from] ember_core::Error),
}

/// The result type of the cluster runtime.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

impl From<ClusterError> for ember_core::Error {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Core(e) => e,
            ClusterError::Io { path, source } => ember_core::Error::io(path, source),
            ClusterError::Startup(m) => {
                ember_core::Error::ResourcesExhausted(format!("executors failed to start: {m}"))
            }
            ClusterError::Transport(m) | ClusterError::Rpc(m) => {
                ember_core::Error::io("network", std::io::Error::other(m))
            }
            ClusterError::Protocol(m) => ember_core::Error::Serialization(m),
            e @ (ClusterError::Refused(_) | ClusterError::Environment(_) | ClusterError::Tls(_)) => {
                ember_core::Error::InvalidArgument(e.to_string())
            }
        }
    }
}

impl From<tonic::transport::Error> for ClusterError {
    fn from(e: tonic::transport::Error) -> Self {
        // The transport's own text is terse ("transport error"); what failed is in its sources
        // (refused connection, an untrusted certificate, a handshake that is not TLS).
        ClusterError::Transport(chain(&e))
    }
}

/// A status's message followed by what caused it (a transport failure's own causes: a
/// refused connection, an untrusted certificate).
pub(crate) fn status_text(s: &tonic::Status) -> String {
    match std::error::Error::source(s) {
        Some(cause) => format!("{}: {}", s.message(), chain(cause)),
        None => s.message().to_string(),
    }
}

/// An error's text followed by those of its sources, `: `-separated.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Wrappers often repeat their cause's text.
        let more = s.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

impl From<tonic::Status> for ClusterError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                ClusterError::Refused(s.message().to_string())
            }
            _ => ClusterError::Rpc(format!("{:?}: {}", s.code(), status_text(&s))),
        }
    }
}
