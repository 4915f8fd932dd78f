//! Accumulators: variables that tasks add to and the driver reads. Updates made by a task are
//! buffered with the task and merged on the driver only when the task succeeds, once per task.
//!
//! What that guarantees is Spark's rule: each successful task attempt's updates are merged
//! exactly once; failed attempts, killed attempts and attempts whose result the scheduler
//! discards (a losing duplicate) merge nothing. A partition computed again is a new task: when a
//! map output is lost and its map task reruns for a later job, or an evicted cached block is
//! recomputed, the updates made inside those transformations are merged again. Only updates made
//! inside an action's own function (`foreach`) are counted once per record per action.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::data::Data;
use crate::error::{Error, Result};

/// How an accumulator's values combine. Merging must be associative and commutative.
pub trait AccumulatorParam: Send + Sync + Serialize + DeserializeOwned + 'static {
    /// The accumulated value.
    type Value: Data;
    /// The neutral value.
    fn zero(&self) -> Self::Value;
    /// Adds `update` into `acc`.
    fn merge(&self, acc: &mut Self::Value, update: Self::Value);
}

/// Sums `i64` values (Spark's `longAccumulator`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LongSum;

impl AccumulatorParam for LongSum {
    type Value = i64;
    fn zero(&self) -> i64 {
        0
    }
    fn merge(&self, acc: &mut i64, update: i64) {
        *acc += update;
    }
}

/// A driver-side slot that merges task updates into the accumulated value.
trait Slot: Send + Sync {
    fn merge_any(&self, update: Box<dyn Any + Send>) -> Result<()>;
    fn merge_encoded(&self, bytes: &[u8]) -> Result<()>;
}

struct TypedSlot<P: AccumulatorParam> {
    param: Arc<P>,
    value: Mutex<P::Value>,
}

impl<P: AccumulatorParam> Slot for TypedSlot<P> {
    fn merge_any(&self, update: Box<dyn Any + Send>) -> Result<()> {
        let u =
            update.downcast::<P::Value>().map_err(|_| Error::Internal("accumulator update of another type".into()))?;
        self.param.merge(&mut self.value.lock().unwrap_or_else(|p| p.into_inner()), *u);
        Ok(())
    }
    fn merge_encoded(&self, bytes: &[u8]) -> Result<()> {
        let u: P::Value = postcard::from_bytes(bytes)?;
        self.param.merge(&mut self.value.lock().unwrap_or_else(|p| p.into_inner()), u);
        Ok(())
    }
}

fn registry() -> &'static Mutex<HashMap<u64, Arc<dyn Slot>>> {
    static R: OnceLock<Mutex<HashMap<u64, Arc<dyn Slot>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One task's buffered update of one accumulator.
trait Pending: Send {
    fn add_any(&mut self, update: Box<dyn Any>);
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    fn encode(&self) -> Result<Vec<u8>>;
}

struct TypedPending<P: AccumulatorParam> {
    param: Arc<P>,
    value: P::Value,
}

impl<P: AccumulatorParam> Pending for TypedPending<P> {
    fn add_any(&mut self, update: Box<dyn Any>) {
        if let Ok(u) = update.downcast::<P::Value>() {
            self.param.merge(&mut self.value, *u);
        }
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        Box::new(self.value)
    }
    fn encode(&self) -> Result<Vec<u8>> {
        Ok(postcard::to_allocvec(&self.value)?)
    }
}

thread_local! {
    static TASK_UPDATES: RefCell<Option<HashMap<u64, Box<dyn Pending>>>> = const { RefCell::new(None) };
}

/// Updates a finished task made, to merge on the driver if the task succeeded.
pub enum AccumUpdates {
    /// In memory, by accumulator id (local mode).
    Local(Vec<(u64, Box<dyn Any + Send>)>),
    /// Encoded, by accumulator id (as they cross a process boundary).
    Encoded(Vec<(u64, Vec<u8>)>),
}

/// Starts buffering accumulator updates on this thread (a task begins).
pub(crate) fn begin_task() {
    TASK_UPDATES.with(|t| *t.borrow_mut() = Some(HashMap::new()));
}

/// Stops buffering and returns the task's updates.
pub(crate) fn end_task(encode: bool) -> AccumUpdates {
    let map = TASK_UPDATES.with(|t| t.borrow_mut().take()).unwrap_or_default();
    if encode {
        AccumUpdates::Encoded(map.into_iter().filter_map(|(id, p)| p.encode().ok().map(|b| (id, b))).collect())
    } else {
        AccumUpdates::Local(map.into_iter().map(|(id, p)| (id, p.into_any())).collect())
    }
}

/// Merges a successful task's updates into the driver's values.
pub(crate) fn merge_updates(updates: AccumUpdates) {
    let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    let res = match updates {
        AccumUpdates::Local(v) => v.into_iter().try_for_each(|(id, u)| reg.get(&id).map_or(Ok(()), |s| s.merge_any(u))),
        AccumUpdates::Encoded(v) => {
            v.into_iter().try_for_each(|(id, b)| reg.get(&id).map_or(Ok(()), |s| s.merge_encoded(&b)))
        }
    };
    if let Err(e) = res {
        tracing::warn!("dropping an accumulator update: {e}");
    }
}

/// Unregisters the driver slot when the driver's last handle goes.
struct Owner(u64);

impl Drop for Owner {
    fn drop(&mut self) {
        registry().lock().unwrap_or_else(|p| p.into_inner()).remove(&self.0);
    }
}

/// A shared variable that tasks add to and the driver reads. Pass it to tasks as the
/// environment of a `*_with` operation (it serializes to its id and parameters).
pub struct Accumulator<P: AccumulatorParam> {
    id: u64,
    param: Arc<P>,
    slot: Option<Arc<TypedSlot<P>>>,
    _owner: Option<Arc<Owner>>,
    _p: PhantomData<P>,
}

impl<P: AccumulatorParam> Clone for Accumulator<P> {
    fn clone(&self) -> Self {
        Accumulator {
            id: self.id,
            param: self.param.clone(),
            slot: self.slot.clone(),
            _owner: self._owner.clone(),
            _p: PhantomData,
        }
    }
}

impl<P: AccumulatorParam> fmt::Debug for Accumulator<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Accumulator({})", self.id)
    }
}

impl<P: AccumulatorParam> Accumulator<P> {
    pub(crate) fn new(param: P) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let param = Arc::new(param);
        let slot = Arc::new(TypedSlot { value: Mutex::new(param.zero()), param: param.clone() });
        registry().lock().unwrap_or_else(|p| p.into_inner()).insert(id, slot.clone());
        Accumulator { id, param, slot: Some(slot), _owner: Some(Arc::new(Owner(id))), _p: PhantomData }
    }

    /// Adds `v`. Inside a task the update is buffered with the task; on the driver it applies
    /// at once.
    pub fn add(&self, v: P::Value) {
        let buffered = TASK_UPDATES.with(|t| {
            let mut t = t.borrow_mut();
            match t.as_mut() {
                Some(map) => {
                    map.entry(self.id)
                        .or_insert_with(|| {
                            Box::new(TypedPending { param: self.param.clone(), value: self.param.zero() })
                        })
                        .add_any(Box::new(v.clone()));
                    true
                }
                None => false,
            }
        });
        if !buffered {
            match &self.slot {
                Some(s) => self.param.merge(&mut s.value.lock().unwrap_or_else(|p| p.into_inner()), v),
                None => {
                    let slot = registry().lock().unwrap_or_else(|p| p.into_inner()).get(&self.id).cloned();
                    if let Some(slot) = slot {
                        let _ = slot.merge_any(Box::new(v));
                    }
                }
            }
        }
    }

    /// The accumulated value (driver only).
    pub fn value(&self) -> Result<P::Value> {
        match &self.slot {
            Some(s) => Ok(s.value.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            None => Err(Error::NoContext),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct AccWire<P> {
    id: u64,
    param: P,
}

impl<P: AccumulatorParam> Serialize for Accumulator<P> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        AccWire { id: self.id, param: &*self.param }.serialize(s)
    }
}

impl<'de, P: AccumulatorParam> Deserialize<'de> for Accumulator<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = AccWire::<P>::deserialize(d)?;
        Ok(Accumulator { id: w.id, param: Arc::new(w.param), slot: None, _owner: None, _p: PhantomData })
    }
}
