//! The per-process SQL runtime: the tokio runtime DataFusion streams run on, and the DataFusion
//! session tasks decode and execute their stage plans with.

use std::sync::{Arc, OnceLock};

use datafusion::execution::TaskContext;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::{Error, Result};

/// What every process that runs SQL tasks shares: a multi-threaded tokio runtime (one worker
/// per core: DataFusion operators are CPU-bound, and Ember's slot threads only wait on them) and
/// a DataFusion session whose function registry decodes shipped plans.
pub(crate) struct SqlRuntime {
    pub(crate) tokio: tokio::runtime::Runtime,
    /// The task context of a default session: the template of every task's, and the function
    /// registry shipped plans are decoded with.
    pub(crate) base: Arc<TaskContext>,
}

static RUNTIME: OnceLock<std::result::Result<SqlRuntime, String>> = OnceLock::new();

/// The process's SQL runtime, built on first use.
pub(crate) fn sql_runtime() -> Result<&'static SqlRuntime> {
    RUNTIME
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
            let tokio = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("ember-sql")
                .enable_time()
                .build()
                .map_err(|e| format!("cannot start the SQL runtime: {e}"))?;
            let session = SessionContext::new_with_config(task_config());
            let base = session.task_ctx();
            Ok(SqlRuntime { tokio, base })
        })
        .as_ref()
        .map_err(|e| Error::Internal(e.clone()))
}

/// The configuration of the session tasks run under. Stage plans arrive optimized: the settings
/// that matter here are the ones operators read while running.
fn task_config() -> SessionConfig {
    let mut config = SessionConfig::new().with_batch_size(8192);
    // A task runs one partition of a scan in isolation: with work stealing, the lone partition
    // would read its siblings' files too.
    config.options_mut().execution.enable_file_stream_work_stealing = false;
    config
}

impl SqlRuntime {
    /// A DataFusion task context for one Ember task, carrying `extension` (the task's bridge to
    /// its shuffle inputs) in its session configuration.
    pub(crate) fn task_context<T: Send + Sync + 'static>(
        &self,
        extension: Arc<T>,
        settings: &[(String, String)],
    ) -> Arc<TaskContext> {
        let base = &self.base;
        let mut config = base.session_config().clone();
        for (key, value) in settings {
            // They come from a session's valid configuration; one this build does not know is
            // left at its default.
            if let Err(e) = config.options_mut().set(key, value) {
                tracing::warn!("SQL task setting {key} = {value} ignored: {e}");
            }
        }
        config.options_mut().execution.enable_file_stream_work_stealing = false;
        let config = config.with_extension(extension);
        Arc::new(TaskContext::new(
            None,
            base.session_id(),
            config,
            base.scalar_functions().clone(),
            base.higher_order_functions().clone(),
            base.aggregate_functions().clone(),
            base.window_functions().clone(),
            base.runtime_env(),
        ))
    }

    /// Runs `f` to completion on the SQL runtime from a thread that is not one of its workers
    /// (the driver's thread, or an Ember slot thread).
    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Plan(
                "Ember SQL's blocking API was called from inside an async runtime; call it from a plain thread \
                 (for example through tokio::task::spawn_blocking)"
                    .into(),
            ));
        }
        Ok(self.tokio.block_on(f))
    }
}
