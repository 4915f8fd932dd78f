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
    /// When each attempt in flight was launched.
    pub(super) launched_at: HashMap<u64, Instant>,
    /// How long each succeeded task took (its successful attempt).
    pub(super) durations: Vec<std::time::Duration>,
    /// Task indexes that got a speculative copy.
    pub(super) speculated: BTreeSet<usize>,
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
            launched_at: HashMap::new(),
            durations: Vec::new(),
            speculated: BTreeSet::new(),
        }
    }

    /// Launches attempt `attempt` of task `index` (computing `partition`).
    pub(super) fn launch(
        &mut self,
        backend: &dyn ExecutorBackend,
        code: &Code,
        task: (usize, usize, u32),
        epoch: u64,
        placement: super::backend::Placement,
    ) {
        self.send(backend, code, task, epoch, placement, false);
    }

    /// Launches a speculative copy of task `index`, running beside its slow attempt (away from
    /// that attempt's executor where there are several).
    pub(super) fn launch_copy(
        &mut self,
        backend: &dyn ExecutorBackend,
        code: &Code,
        task: (usize, usize, u32),
        epoch: u64,
        placement: super::backend::Placement,
    ) {
        self.send(backend, code, task, epoch, placement, true);
    }

    fn send(
        &mut self,
        backend: &dyn ExecutorBackend,
        code: &Code,
        (index, partition, attempt): (usize, usize, u32),
        epoch: u64,
        super::backend::Placement { preferred, cached_input, after }: super::backend::Placement,
        speculative: bool,
    ) {
        let task_id = TASK_IDS.fetch_add(1, Ordering::Relaxed);
        self.running.insert(task_id, index);
        self.launched_at.insert(task_id, Instant::now());
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
            cached_input,
            after,
            speculative,
            body: match code {
                Code::Local(s) => TaskPayload::Local(s.clone()),
                Code::Encoded(b) => TaskPayload::Encoded(b.clone()),
            },
        });
    }

    /// Records that an attempt ended; whether it was in flight in this task set.
    pub(super) fn ended(&mut self, task_id: u64) -> bool {
        self.launched_at.remove(&task_id);
        self.running.remove(&task_id).is_some()
    }

    /// Forgets the other attempts in flight of task `index` (a copy won: their statuses are
    /// ignored from now on) and returns them, for the caller to kill.
    pub(super) fn others_of(&mut self, index: usize) -> Vec<u64> {
        let ids: Vec<u64> = self.running.iter().filter(|&(_, &i)| i == index).map(|(&id, _)| id).collect();
        for id in &ids {
            self.running.remove(id);
            self.launched_at.remove(id);
        }
        ids
    }

    /// Tasks that deserve a speculative copy: once `quantile` of the tasks succeeded, those
    /// whose only attempt has run longer than `multiplier` times the median success (and at
    /// least `floor`).
    pub(super) fn stragglers(&self, quantile: f64, multiplier: f64, floor: std::time::Duration) -> Vec<usize> {
        let needed = ((quantile * self.total as f64).ceil() as usize).max(1);
        if self.durations.len() < needed || self.pending.is_empty() {
            return Vec::new();
        }
        let mut sorted = self.durations.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        let scaled = std::time::Duration::try_from_secs_f64(median.as_secs_f64() * multiplier)
            .unwrap_or(std::time::Duration::MAX);
        let threshold = scaled.max(floor);
        let mut attempts: HashMap<usize, usize> = HashMap::new();
        for &index in self.running.values() {
            *attempts.entry(index).or_default() += 1;
        }
        let mut out: Vec<usize> = self
            .running
            .iter()
            .filter(|&(id, index)| {
                attempts.get(index) == Some(&1)
                    && self.pending.contains(index)
                    && !self.speculated.contains(index)
                    && self.launched_at.get(id).is_some_and(|t| t.elapsed() > threshold)
            })
            .map(|(_, &index)| index)
            .collect();
        out.sort_unstable();
        out
    }

    /// Asks the backend to stop every attempt in flight.
    pub(super) fn kill_all(&self, backend: &dyn ExecutorBackend) {
        let ids: Vec<u64> = self.running.keys().copied().collect();
        if !ids.is_empty() {
            backend.kill(&ids);
        }
    }
}
