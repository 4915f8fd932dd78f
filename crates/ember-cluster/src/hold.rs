//! Pre-scheduled tasks on an executor: held until what they need is there, then run.
//!
//! A group's tasks reach their executors all at once (Drizzle). A reducer waits here until every
//! output of the shuffles it reads has been announced (map tasks announce their outputs to every
//! executor as they finish; the driver is asked too when an announcement is late), and a task
//! that reads a partition an earlier task of the group caches here waits for that partition, or
//! for no earlier task to be left here (it then computes what is missing itself). Tasks are
//! released in the order they arrived.
//!
//! Held tasks are checked by whatever thread changed what they wait for, at once: the thread
//! that took an announcement in, the slot thread whose task just ended (a task it releases then
//! runs on that very thread, without a wake-up), the session that held a new task. Those checks
//! never wait for anyone; the holder's own thread checks every [`TICK`] as well, and it alone
//! asks the driver about announcements that are late.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

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
    /// What checking needs, once the executor runs.
    parts: OnceLock<Parts>,
}

/// The executor's parts a check reads.
struct Parts {
    /// Weak: the executor's status sink holds the holder.
    executor: Weak<Executor>,
    mirror: Arc<Mirror>,
    /// Every task launched here and not yet reported (held ones included).
    pending: Arc<Mutex<HashSet<u64>>>,
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
            parts: OnceLock::new(),
        };
        (Arc::new(holder), rx)
    }

    /// Lets checks run on the threads that wake the holder, once the executor runs (before,
    /// they wake the holder's thread).
    pub(crate) fn start(&self, executor: &Arc<Executor>, mirror: Arc<Mirror>, pending: Arc<Mutex<HashSet<u64>>>) {
        let _ = self.parts.set(Parts { executor: Arc::downgrade(executor), mirror, pending });
    }

    /// Holds a pre-scheduled task.
    pub(crate) fn hold(&self, task: TaskLaunch, after: Arc<Prerequisites>) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).push_back(Held { task, after, since: Instant::now() });
        self.wake();
    }

    /// Something a held task may wait for happened: check them now, without asking the driver
    /// (when any are held: a task held later is checked as it arrives).
    pub(crate) fn wake(&self) {
        if self.held.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return;
        }
        match self.parts.get() {
            Some(parts) => self.release_ready(parts, false),
            None => self.signal(),
        }
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

    /// Runs the tasks ready to run, in the order they arrived; `ask_driver`: a task whose
    /// announcements are late asks the driver (a round trip: only the holder's thread does).
    fn release_ready(&self, parts: &Parts, ask_driver: bool) {
        let Some(executor) = parts.executor.upgrade() else { return };
        let env = executor.env();
        // Checked without the lock (asking the driver takes a round trip): tasks arriving or
        // killed meanwhile are checked by their own wake-up.
        let taken: Vec<(u64, Arc<Prerequisites>, Instant)> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|h| (h.task.task_id, h.after.clone(), h.since))
            .collect();
        if taken.is_empty() {
            return;
        }
        // Ids grow in launch order: a task with no earlier one left here is the first pending.
        let first_pending = parts.pending.lock().unwrap_or_else(|p| p.into_inner()).iter().min().copied();
        let mut ready = HashSet::new();
        for (id, after, since) in taken {
            let late = ask_driver && since.elapsed() >= ANNOUNCEMENT_GRACE;
            let shuffles = after.shuffles.iter().all(|&(s, maps)| parts.mirror.complete(s, maps, late));
            let blocks = shuffles
                && (after.blocks.iter().all(|&(rdd, split)| env.blocks.contains(rdd, split))
                    || first_pending.is_none_or(|first| first >= id));
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

/// Checks the held tasks whenever woken before the executor runs, and every [`TICK`] while
/// some are held (asking the driver about late announcements); returns when the holder stops.
pub(crate) fn run(holder: Arc<Holder>, wakes: std::sync::mpsc::Receiver<()>) {
    while !holder.stopped.load(std::sync::atomic::Ordering::Relaxed) {
        let idle = holder.held.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        match wakes.recv_timeout(if idle { Duration::from_secs(1) } else { TICK }) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while wakes.try_recv().is_ok() {}
        if let Some(parts) = holder.parts.get() {
            holder.release_ready(parts, true);
        }
    }
}

/// The status of a held task the driver killed.
pub(crate) fn killed(task: TaskLaunch) -> TaskStatus {
    task.failed(Error::Cancelled("the task was killed before it started".into()))
}
