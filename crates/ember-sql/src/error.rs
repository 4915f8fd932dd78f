//! The error type of Ember SQL, and the mapping of query failures to the core's error classes.

use datafusion::error::DataFusionError;

/// Errors raised by Ember SQL.
///
/// Planning errors (bad SQL, unknown tables or columns, type mismatches) come from DataFusion and
/// keep its message, which names what was wrong; execution errors come back from the scheduler
/// as the core's errors, with their class (a failed task, a lost executor, a cancelled job).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Parsing, planning or running a query in DataFusion failed.
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    /// The engine failed to run a job (task failures, cancellation, lost executors).
    #[error(transparent)]
    Ember(#[from] ember_core::Error),
    /// A plan Ember cannot run, or a call that makes no sense for this plan.
    #[error("{0}")]
    Plan(String),
    /// Reading or writing a named file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file involved.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A broken invariant: a bug in Ember, please report it.
    #[error("internal error (a bug, please report): {0}")]
    Internal(String),
}

/// The result type of Ember SQL.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// A DataFusion error raised inside a task, as the core error that fails the attempt.
///
/// Errors that name a shuffle fetch or another core failure keep it (a fetch failure must reach
/// the scheduler as one, so the lost map output is recomputed); exhausted memory stays
/// retryable; everything else a query raises while running (casts, arithmetic, malformed files)
/// is deterministic and fails the job at once.
pub(crate) fn to_task_error(e: DataFusionError) -> ember_core::Error {
    match e {
        DataFusionError::External(inner) => match inner.downcast::<ember_core::Error>() {
            Ok(core) => *core,
            Err(other) => ember_core::Error::Query(other.to_string()),
        },
        DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
            Ok(inner) => to_task_error(inner),
            Err(shared) => ember_core::Error::Query(shared.to_string()),
        },
        DataFusionError::Context(what, inner) => match to_task_error(*inner) {
            ember_core::Error::Query(m) => ember_core::Error::Query(format!("{what}: {m}")),
            other => other,
        },
        DataFusionError::ResourcesExhausted(m) => ember_core::Error::ResourcesExhausted(m),
        // Reading input can fail for a while (a file system or object store hiccup): retried.
        DataFusionError::IoError(io) => ember_core::Error::io("query input", io),
        DataFusionError::ObjectStore(e) => ember_core::Error::io("query input", std::io::Error::other(e.to_string())),
        DataFusionError::ArrowError(e, context) if matches!(*e, datafusion::arrow::error::ArrowError::IoError(..)) => {
            ember_core::Error::io("query input", std::io::Error::other(format!("{e}{}", context.unwrap_or_default())))
        }
        other => ember_core::Error::Query(other.to_string()),
    }
}

/// A core error as a DataFusion error, kept whole so [`to_task_error`] can take it back out.
pub(crate) fn from_core(e: ember_core::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}
