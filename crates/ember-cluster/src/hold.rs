//! Pre-scheduled tasks on an executor: held until what they need is there, then run.
//!
//! A group's tasks reach their executors all at once (Drizzle). A reducer waits here until every
//! output of the shuffles it reads has been announced (map tasks announce their outputs to every
//! executor as they finish; the driver is asked too when an announcement is late), and a task
//! that reads a partition an earlier task of the group caches here waits for that partition, or
//! for no earlier task to be left here (it then computes what is missing itself). The tasks one
//! check finds ready are launched in the order they arrived (two checks running at once may
//! launch theirs in either order).
//!
//! Held tasks are checked by whatever thread changed what they wait for, at once, and only the
//! tasks that change concerns: the thread that took an announcement in, the slot thread whose
//! task just ended (a task it releases is queued before that slot looks for its next one, so it
//! starts without a wake-up), the session that held a new task. Those checks never wait for a
//! lock held through something slow: one that would (the shuffle's table is being refreshed
//! from the driver, the block store is writing evicted blocks) is left to the holder's own
//! thread, which also checks every [`TICK`] while tasks are held (what it alone learns of, such
//! as a table a reducer refreshed from the driver, is found then) and alone asks the driver
//! about announcements that are late.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use ember_core::runtime::{Executor, Prerequisites, TaskLaunch, TaskStatus};
use ember_core::shuffle::ShuffleId;
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

/// How a check may learn whether a shuffle's outputs are all known.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// From what is known here, without waiting for a lock held through a round trip: any
    /// thread (the runtime's included).
    Now,
    /// Waiting if need be, and asking the driver about late announcements: the holder's
    /// thread.
    Wait,
}

/// What changed for held tasks: which of them a check looks at (the others' prerequisites are
/// as they were).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Changed {
    /// A map output of this shuffle became known: tasks reading it.
    Shuffle(ShuffleId),
    /// A task here ended (a map task of the shuffle given): tasks waiting for cached
    /// partitions (made, or no earlier task left to make them), and tasks reading the shuffle.
    TaskEnded(Option<ShuffleId>),
    /// Task `id` was just held: that task.
    Held(u64),
    /// Anything: every task.
    Any,
}

impl Changed {
    fn concerns(self, held: &Held) -> bool {
        let reads = |s: ShuffleId| held.after.shuffles.iter().any(|&(x, _)| x == s);
        match self {
            Changed::Shuffle(s) => reads(s),
            Changed::TaskEnded(s) => !held.after.blocks.is_empty() || s.is_some_and(reads),
            Changed::Held(id) => held.task.task_id == id,
            Changed::Any => true,
        }
    }
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
        let id = task.task_id;
        let first = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.push_back(Held { task, after, since: Instant::now() });
            held.len() == 1
        };
        // The holder's thread ticks while tasks are held (it asks the driver about late
        // announcements): wake it from its idle wait.
        if first {
            self.signal();
        }
        self.changed(Changed::Held(id));
    }

    /// Something a held task may wait for happened: the tasks it concerns are checked now,
    /// on the calling thread, which never waits (a check that would is left to the holder's
    /// thread).
    pub(crate) fn changed(&self, what: Changed) {
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed)
            || self.held.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
        {
            return;
        }
        match self.parts.get() {
            Some(parts) => self.release_ready(parts, Check::Now, what),
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

    /// Runs the tasks `what` concerns that are ready to run, in the order they arrived.
    fn release_ready(&self, parts: &Parts, check: Check, what: Changed) {
        let Some(executor) = parts.executor.upgrade() else { return };
        let env = executor.env();
        // Checked without the lock (asking the driver takes a round trip): tasks arriving or
        // killed meanwhile are checked by their own wake-up.
        let taken: Vec<(u64, Arc<Prerequisites>, Instant)> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|h| what.concerns(h))
            .map(|h| (h.task.task_id, h.after.clone(), h.since))
            .collect();
        if taken.is_empty() {
            return;
        }
        // Ids grow in launch order: a task with no earlier one left here is the first pending.
        let first_pending = parts.pending.lock().unwrap_or_else(|p| p.into_inner()).iter().min().copied();
        let mut ready = HashSet::new();
        let mut undecided = false;
        // Each shuffle's and partition's answer once per check: many held tasks read the same.
        let mut shuffles_known: HashMap<ShuffleId, bool> = HashMap::new();
        for (id, after, since) in taken {
            // The cached partitions first: cheaper to check, and what most held tasks of a long
            // group still wait for.
            let cached = after.blocks.iter().all(|&(rdd, split)| match check {
                Check::Wait => env.blocks.contains(rdd, split),
                Check::Now => decided(env.blocks.try_contains(rdd, split), &mut undecided),
            });
            if !(cached || first_pending.is_none_or(|first| first >= id)) {
                continue;
            }
            let shuffles = after.shuffles.iter().all(|&(s, maps)| {
                if let Some(&known) = shuffles_known.get(&s) {
                    return known;
                }
                let known = match check {
                    Check::Wait => parts.mirror.complete(s, maps, since.elapsed() >= ANNOUNCEMENT_GRACE),
                    Check::Now => decided(parts.mirror.complete_now(s, maps), &mut undecided),
                };
                // A late shuffle may be asked about again for a task held longer.
                if known || check == Check::Now {
                    shuffles_known.insert(s, known);
                }
                known
            });
            if shuffles {
                ready.insert(id);
            }
        }
        if undecided {
            // Left to the holder's thread, which may wait.
            self.signal();
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

/// A check's answer that may not be known without waiting: no, and `undecided`, when not.
fn decided(answer: Option<bool>, undecided: &mut bool) -> bool {
    answer.unwrap_or_else(|| {
        *undecided = true;
        false
    })
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
            holder.release_ready(parts, Check::Wait, Changed::Any);
        }
    }
}

/// The status of a held task the driver killed.
pub(crate) fn killed(task: TaskLaunch) -> TaskStatus {
    task.failed(Error::Cancelled("the task was killed before it started".into()))
}
