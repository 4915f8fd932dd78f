//! Task sets: the tasks of one stage attempt, which of them are still to succeed, and the
//! attempts in flight. Locality preferences and speculative copies will live here.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::backend::{ExecutorBackend, TaskLaunch, TaskPayload};
use crate::ship::Ship;
use crate::task::{StageId, TaskBody};

/// Task attempt ids, unique in the process (they name shuffle files and memory grants).
static TASK_IDS: AtomicU64 = AtomicU64::new(0);

/// A stage's task code, as it is shipped.
#[derive(Clone)]
pub(super) enum Code {
    Local(Ship<dyn TaskBody>),
    Encoded(Arc<Vec<u8>>),
}

/// The tasks of one stage attempt.
pub(super) struct TaskSet {
    pub(super) stage: StageId,
    pub(super) stage_attempt: u32,
    /// Task indexes not yet succeeded.
    pub(super) pending: BTreeSet<usize>,
    /// Attempts in flight: task id to task index.
    pub(super) running: HashMap<u64, usize>,
    pub(super) started: Instant,
    pub(super) total: usize,
    /// Attempts launched, retries included.
    pub(super) launched: usize,
}

impl TaskSet {
    pub(super) fn new(stage: StageId, stage_attempt: u32, indexes: impl IntoIterator<Item = usize>) -> Self {
        let pending: BTreeSet<usize> = indexes.into_iter().collect();
        TaskSet {
            stage,
            stage_attempt,
            total: pending.len(),
            pending,
            running: HashMap::new(),
            started: Instant::now(),
            launched: 0,
        }
    }

    /// Launches attempt `attempt` of task `index` (computing `partition`).
    pub(super) fn launch(
        &mut self,
        backend: &dyn ExecutorBackend,
        code: &Code,
        (index, partition, attempt): (usize, usize, u32),
        epoch: u64,
        (preferred, after): (Vec<std::sync::Arc<str>>, Option<std::sync::Arc<super::backend::Prerequisites>>),
    ) {
        let task_id = TASK_IDS.fetch_add(1, Ordering::Relaxed);
        self.running.insert(task_id, index);
        self.launched += 1;
        backend.launch(TaskLaunch {
            task_id,
            stage: self.stage,
            stage_attempt: self.stage_attempt,
            index,
            partition,
            attempt,
            epoch,
            preferred,
            after,
            body: match code {
                Code::Local(s) => TaskPayload::Local(s.clone()),
                Code::Encoded(b) => TaskPayload::Encoded(b.clone()),
            },
        });
    }

    /// Records that an attempt ended; whether it was in flight in this task set.
    pub(super) fn ended(&mut self, task_id: u64) -> bool {
        self.running.remove(&task_id).is_some()
    }

    /// Asks the backend to stop every attempt in flight.
    pub(super) fn kill_all(&self, backend: &dyn ExecutorBackend) {
        let ids: Vec<u64> = self.running.keys().copied().collect();
        if !ids.is_empty() {
            backend.kill(&ids);
        }
    }
}
