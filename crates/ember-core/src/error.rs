//! The error type of the core engine, classified by who is at fault and what a caller can do.

use std::path::PathBuf;

/// Errors raised by the core engine.
///
/// Variants are grouped by class (see [`ErrorClass`]): configuration and user-input errors,
/// execution failures of user code, I/O on named files, shuffle fetch failures (which drive a
/// stage retry), cancellation, exhausted resources and internal errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key is unknown or its value is malformed.
    #[error("invalid configuration `{key}` = `{value}`: {reason}")]
    Config {
        /// The configuration key.
        key: String,
        /// The offending value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A master URL could not be parsed.
    #[error("invalid master URL `{0}`: expected `local`, `local[N]`, `local[*]` or `local-cluster[W,C,M]` (W from 1 to 64, C from 1 to 4096, M from 1)")]
    InvalidMaster(String),
    /// An argument given to an API call is not valid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A query or other work a library ran inside a task failed in a way a retry cannot fix
    /// (a cast that does not hold, a malformed input file, an unsupported expression).
    #[error("{0}")]
    Query(String),
    /// An input path matched nothing.
    #[error("input path does not exist: {}", .0.display())]
    InputNotFound(PathBuf),
    /// An output path already exists.
    #[error("output path already exists: {}", .0.display())]
    OutputExists(PathBuf),
    /// Reading or writing a named file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A text file holds bytes that are not UTF-8.
    #[error("invalid UTF-8 in {} at byte offset {offset}", path.display())]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the line holding the invalid bytes.
        offset: u64,
    },
    /// A text file holds a line longer than `ember.input.maxLineLength`.
    #[error(
        "line longer than {limit} bytes in {} at byte offset {offset}; raise ember.input.maxLineLength \
         if such lines are expected",
        path.display()
    )]
    LineTooLong {
        /// The file.
        path: PathBuf,
        /// Byte offset of the line's first byte (in the decompressed stream for gzip files).
        offset: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A user function panicked while running a task attempt.
    #[error("user function panicked: {0}")]
    UserPanic(String),
    /// A job failed because one of its tasks failed too many times.
    #[error("job {job} aborted: task {partition} of stage {stage} ({stage_name}) failed {attempts} times; last failure: {message}")]
    JobAborted {
        /// The job id.
        job: u64,
        /// The stage id.
        stage: u64,
        /// A description of the stage (its last RDD).
        stage_name: String,
        /// The partition whose task failed.
        partition: usize,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure message.
        message: String,
    },
    /// Reading shuffle output of a map task failed; the map stage must be recomputed.
    #[error("fetch failed for shuffle {shuffle} map {map} reduce {reduce}: {message}")]
    FetchFailed {
        /// The shuffle id.
        shuffle: u64,
        /// The map partition whose output is missing or corrupt.
        map: usize,
        /// The reduce partition being read.
        reduce: usize,
        /// What went wrong.
        message: String,
    },
    /// The job or task was cancelled.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// Encoding or decoding a record, task or block failed.
    #[error("serialization error: {0}")]
    Serialization(String),
    /// A resource limit was reached and the operation cannot continue.
    #[error("resources exhausted: {0}")]
    ResourcesExhausted(String),
    /// The operation needs a driver-side [`crate::Context`], which this RDD handle lacks.
    #[error("this RDD was decoded inside a task and has no driver context; actions run only on the driver")]
    NoContext,
    /// The context has been stopped.
    #[error("the context has been stopped")]
    Stopped,
    /// A partition of a locally checkpointed RDD is no longer cached; its lineage was
    /// truncated, so it cannot be recomputed.
    #[error(
        "block rdd_{rdd}_{split} of a locally checkpointed RDD is lost (unpersisted or its executor \
         is gone); local checkpoints trade fault tolerance for speed"
    )]
    LocalCheckpointLost {
        /// The RDD.
        rdd: u64,
        /// The partition.
        split: usize,
    },
    /// A broken invariant: a bug in Ember, please report it.
    #[error("internal error (a bug, please report): {0}")]
    Internal(String),
    /// The executor running a task was lost (its process died, its connection dropped, or it
    /// stopped answering); the task runs again elsewhere.
    #[error("executor {executor} was lost: {reason}")]
    ExecutorLost {
        /// The executor.
        executor: String,
        /// What happened to it.
        reason: String,
    },
}

/// Who is at fault for an error, and whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad configuration, arguments or input: fix the program or data.
    User,
    /// A failure during execution that a retry may fix (I/O, panics in user code).
    Execution,
    /// Shuffle data is missing: recompute the parent stage.
    FetchFailed,
    /// The job was cancelled.
    Cancelled,
    /// Out of memory, disk or similar.
    ResourcesExhausted,
    /// A bug in Ember.
    Internal,
}

impl Error {
    /// The class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Config { .. }
            | Error::InvalidMaster(_)
            | Error::InvalidArgument(_)
            | Error::Query(_)
            | Error::InputNotFound(_)
            | Error::OutputExists(_)
            | Error::InvalidUtf8 { .. }
            | Error::LineTooLong { .. }
            | Error::NoContext
            | Error::Stopped
            | Error::LocalCheckpointLost { .. } => ErrorClass::User,
            Error::Io { .. }
            | Error::UserPanic(_)
            | Error::Serialization(_)
            | Error::JobAborted { .. }
            | Error::ExecutorLost { .. } => ErrorClass::Execution,
            Error::FetchFailed { .. } => ErrorClass::FetchFailed,
            Error::Cancelled(_) => ErrorClass::Cancelled,
            Error::ResourcesExhausted(_) => ErrorClass::ResourcesExhausted,
            Error::Internal(_) => ErrorClass::Internal,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Whether retrying the same task attempt can help. Deterministic input errors
    /// (missing files, invalid UTF-8) fail the job at once instead of being retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self.class(), ErrorClass::Execution | ErrorClass::ResourcesExhausted)
    }

    /// A copy of this error good enough to report twice (I/O sources are flattened to text).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { path, source } => {
                Error::Io { path: path.clone(), source: std::io::Error::new(source.kind(), source.to_string()) }
            }
            Error::Config { key, value, reason } => {
                Error::Config { key: key.clone(), value: value.clone(), reason: reason.clone() }
            }
            Error::InvalidMaster(m) => Error::InvalidMaster(m.clone()),
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::Query(m) => Error::Query(m.clone()),
            Error::InputNotFound(p) => Error::InputNotFound(p.clone()),
            Error::OutputExists(p) => Error::OutputExists(p.clone()),
            Error::InvalidUtf8 { path, offset } => Error::InvalidUtf8 { path: path.clone(), offset: *offset },
            Error::LineTooLong { path, offset, limit } => {
                Error::LineTooLong { path: path.clone(), offset: *offset, limit: *limit }
            }
            Error::UserPanic(m) => Error::UserPanic(m.clone()),
            Error::JobAborted { job, stage, stage_name, partition, attempts, message } => Error::JobAborted {
                job: *job,
                stage: *stage,
                stage_name: stage_name.clone(),
                partition: *partition,
                attempts: *attempts,
                message: message.clone(),
            },
            Error::FetchFailed { shuffle, map, reduce, message } => {
                Error::FetchFailed { shuffle: *shuffle, map: *map, reduce: *reduce, message: message.clone() }
            }
            Error::Cancelled(m) => Error::Cancelled(m.clone()),
            Error::Serialization(m) => Error::Serialization(m.clone()),
            Error::ResourcesExhausted(m) => Error::ResourcesExhausted(m.clone()),
            Error::NoContext => Error::NoContext,
            Error::Stopped => Error::Stopped,
            Error::LocalCheckpointLost { rdd, split } => Error::LocalCheckpointLost { rdd: *rdd, split: *split },
            Error::Internal(m) => Error::Internal(m.clone()),
            Error::ExecutorLost { executor, reason } => {
                Error::ExecutorLost { executor: executor.clone(), reason: reason.clone() }
            }
        }
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        match crate::ship::take_decode_error() {
            Some(m) => Error::Serialization(m),
            None => Error::Serialization(e.to_string()),
        }
    }
}

/// The result type of the core engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An [`Error`] as plain data, to cross a process boundary with its class intact: I/O errors
/// keep their path, kind and message; every other variant is carried as it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WireError {
    /// [`Error::Config`].
    Config(String, String, String),
    /// [`Error::InvalidMaster`].
    InvalidMaster(String),
    /// [`Error::InvalidArgument`].
    InvalidArgument(String),
    /// [`Error::InputNotFound`].
    InputNotFound(PathBuf),
    /// [`Error::OutputExists`].
    OutputExists(PathBuf),
    /// [`Error::Io`]: the path, the raw OS error code if any, and the message.
    Io(PathBuf, Option<i32>, String),
    /// [`Error::InvalidUtf8`].
    InvalidUtf8(PathBuf, u64),
    /// [`Error::UserPanic`].
    UserPanic(String),
    /// [`Error::JobAborted`]: job, stage, stage name, partition, attempts, message.
    JobAborted(u64, u64, String, usize, u32, String),
    /// [`Error::FetchFailed`]: shuffle, map, reduce, message.
    FetchFailed(u64, usize, usize, String),
    /// [`Error::Cancelled`].
    Cancelled(String),
    /// [`Error::Serialization`].
    Serialization(String),
    /// [`Error::ResourcesExhausted`].
    ResourcesExhausted(String),
    /// [`Error::NoContext`].
    NoContext,
    /// [`Error::Stopped`].
    Stopped,
    /// [`Error::LineTooLong`]: path, offset, limit.
    LineTooLong(PathBuf, u64, u64),
    /// [`Error::LocalCheckpointLost`]: rdd, split.
    LocalCheckpointLost(u64, usize),
    /// [`Error::Internal`].
    Internal(String),
    /// [`Error::ExecutorLost`]: executor, reason.
    ExecutorLost(String, String),
    /// [`Error::Query`].
    Query(String),
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        match e.duplicate() {
            Error::Config { key, value, reason } => WireError::Config(key, value, reason),
            Error::InvalidMaster(m) => WireError::InvalidMaster(m),
            Error::InvalidArgument(m) => WireError::InvalidArgument(m),
            Error::Query(m) => WireError::Query(m),
            Error::InputNotFound(p) => WireError::InputNotFound(p),
            Error::OutputExists(p) => WireError::OutputExists(p),
            Error::Io { path, source } => WireError::Io(path, source.raw_os_error(), source.to_string()),
            Error::InvalidUtf8 { path, offset } => WireError::InvalidUtf8(path, offset),
            Error::UserPanic(m) => WireError::UserPanic(m),
            Error::JobAborted { job, stage, stage_name, partition, attempts, message } => {
                WireError::JobAborted(job, stage, stage_name, partition, attempts, message)
            }
            Error::FetchFailed { shuffle, map, reduce, message } => {
                WireError::FetchFailed(shuffle, map, reduce, message)
            }
            Error::Cancelled(m) => WireError::Cancelled(m),
            Error::Serialization(m) => WireError::Serialization(m),
            Error::ResourcesExhausted(m) => WireError::ResourcesExhausted(m),
            Error::NoContext => WireError::NoContext,
            Error::Stopped => WireError::Stopped,
            Error::LocalCheckpointLost { rdd, split } => WireError::LocalCheckpointLost(rdd, split),
            Error::LineTooLong { path, offset, limit } => WireError::LineTooLong(path, offset, limit),
            Error::Internal(m) => WireError::Internal(m),
            Error::ExecutorLost { executor, reason } => WireError::ExecutorLost(executor, reason),
        }
    }
}

impl From<WireError> for Error {
    fn from(w: WireError) -> Self {
        match w {
            WireError::Config(key, value, reason) => Error::Config { key, value, reason },
            WireError::InvalidMaster(m) => Error::InvalidMaster(m),
            WireError::InvalidArgument(m) => Error::InvalidArgument(m),
            WireError::Query(m) => Error::Query(m),
            WireError::InputNotFound(p) => Error::InputNotFound(p),
            WireError::OutputExists(p) => Error::OutputExists(p),
            WireError::Io(path, code, message) => {
                let source = match code {
                    Some(c) => std::io::Error::from_raw_os_error(c),
                    None => std::io::Error::other(message),
                };
                Error::Io { path, source }
            }
            WireError::InvalidUtf8(path, offset) => Error::InvalidUtf8 { path, offset },
            WireError::UserPanic(m) => Error::UserPanic(m),
            WireError::JobAborted(job, stage, stage_name, partition, attempts, message) => {
                Error::JobAborted { job, stage, stage_name, partition, attempts, message }
            }
            WireError::FetchFailed(shuffle, map, reduce, message) => {
                Error::FetchFailed { shuffle, map, reduce, message }
            }
            WireError::Cancelled(m) => Error::Cancelled(m),
            WireError::Serialization(m) => Error::Serialization(m),
            WireError::ResourcesExhausted(m) => Error::ResourcesExhausted(m),
            WireError::NoContext => Error::NoContext,
            WireError::Stopped => Error::Stopped,
            WireError::LocalCheckpointLost(rdd, split) => Error::LocalCheckpointLost { rdd, split },
            WireError::LineTooLong(path, offset, limit) => Error::LineTooLong { path, offset, limit },
            WireError::Internal(m) => Error::Internal(m),
            WireError::ExecutorLost(executor, reason) => Error::ExecutorLost { executor, reason },
        }
    }
}
