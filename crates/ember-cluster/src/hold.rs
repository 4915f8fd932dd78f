//! Pre-scheduled tasks on an executor: held until what they need is there, then run.
//!
//! A group's tasks reach their executors all at once (Drizzle). A reducer waits here until every
//! output of the shuffles it reads has been announced (map tasks announce their outputs to every
//! executor as they finish; the driver is asked too when an announcement is late), and a task
//! that reads a partition an earlier task of the group caches here waits for that partition, or
//! for no earlier task to be left here (it then computes what is missing itself). Tasks are
//! released in the order they arrived.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_core::env::Env;
use ember_core::runtime::{Executor, Prerequisites, TaskLaunch, TaskStatus};
use ember_core::Error;

use crate::data::Mirror;

/// A held task waits this long for announcements before its executor also asks the driver.
const ANNOUNCEMENT_GRACE: Duration = Duration::from_millis(300);

/// How often held tasks are checked without a wake-up.
const TICK: Duration = Duration::from_millis(20);

struct Held {
    task: TaskLaunch,
    after: Arc<Prerequisites>,
    since: Instant,
}

/// The tasks an executor holds.
pub(crate) struct Holder {
    held: Mutex<VecDeque<Held>>,
    /// Held while ready tasks leave the hold and are launched, and while killed ones are taken
    /// out: a kill then either finds its task held, or comes after its launch (and the
    /// executor's own kill reaches it).
    release: Mutex<()>,
    wake: Mutex<std::sync::mpsc::Sender<()>>,
    stopped: std::sync::atomic::AtomicBool,
}

impl Holder {
    /// A holder and the receiver its checking thread waits on.
    pub(crate) fn new() -> (Arc<Holder>, std::sync::mpsc::Receiver<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let holder = Holder {
            held: Mutex::default(),
            release: Mutex::default(),
            wake: Mutex::new(tx),
            stopped: Default::default(),
        };
        (Arc::new(holder), rx)
    }

    /// Holds a pre-scheduled task.
    pub(crate) fn hold(&self, task: TaskLaunch, after: Arc<Prerequisites>) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).push_back(Held { task, after, since: Instant::now() });
        self.signal();
    }

    /// Something a held task may wait for happened: check them (when any are held: a task
    /// held later is checked as it arrives).
    pub(crate) fn wake(&self) {
        if self.held.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return;
        }
        self.signal();
    }

    fn signal(&self) {
        let _ = self.wake.lock().unwrap_or_else(|p| p.into_inner()).send(());
    }

    /// Ends the checking thread (the executor stops; held tasks are dropped with it).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::Relaxed);
        self.signal();
    }

    /// Drops held tasks the driver killed; returns them, to report cancelled.
    pub(crate) fn kill(&self, task_ids: &[u64]) -> Vec<TaskLaunch> {
        let _release = self.release.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: HashSet<u64> = task_ids.iter().copied().collect();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (killed, kept): (VecDeque<Held>, VecDeque<Held>) =
            std::mem::take(&mut *held).into_iter().partition(|h| wanted.contains(&h.task.task_id));
        *held = kept;
        killed.into_iter().map(|h| h.task).collect()
    }

    /// Runs the tasks ready to run, in the order they arrived. `pending` is every task launched
    /// here and not yet reported (held ones included).
    fn release_ready(&self, env: &Env, mirror: &Mirror, pending: &HashSet<u64>, executor: &Executor) {
        // Checked without the lock (asking the driver takes a round trip): tasks arriving or
        // killed meanwhile wait for the next check.
        let taken: Vec<(u64, Arc<Prerequisites>, Instant)> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|h| (h.task.task_id, h.after.clone(), h.since))
            .collect();
        let mut ready = HashSet::new();
        for (id, after, since) in taken {
            let late = since.elapsed() >= ANNOUNCEMENT_GRACE;
            let shuffles = after.shuffles.iter().all(|&(s, maps)| mirror.complete(s, maps, late));
            let blocks = shuffles
                && (after.blocks.iter().all(|&(rdd, split)| env.blocks.contains(rdd, split))
                    || !pending.iter().any(|&p| p < id));
            if shuffles && blocks {
                ready.insert(id);
            }
        }
        if ready.is_empty() {
            return;
        }
        let _release = self.release.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(held.len());
        for h in std::mem::take(&mut *held) {
            if ready.contains(&h.task.task_id) {
                out.push(h.task);
            } else {
                kept.push_back(h);
            }
        }
        *held = kept;
        drop(held);
        for task in out {
            executor.launch(task);
        }
    }
}

/// Checks the held tasks whenever woken (and every [`TICK`] while some are held) and runs those
/// that are ready; returns when the holder's wake-up channel closes.
pub(crate) fn run(
    holder: Arc<Holder>,
    wakes: std::sync::mpsc::Receiver<()>,
    executor: Arc<Executor>,
    mirror: Arc<Mirror>,
    pending: Arc<Mutex<HashSet<u64>>>,
) {
    while !holder.stopped.load(std::sync::atomic::Ordering::Relaxed) {
        let idle = holder.held.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        match wakes.recv_timeout(if idle { Duration::from_secs(1) } else { TICK }) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while wakes.try_recv().is_ok() {}
        let ids = pending.lock().unwrap_or_else(|p| p.into_inner()).clone();
        holder.release_ready(executor.env(), &mirror, &ids, &executor);
    }
}

/// The status of a held task the driver killed.
pub(crate) fn killed(task: TaskLaunch) -> TaskStatus {
    task.failed(Error::Cancelled("the task was killed before it started".into()))
}
