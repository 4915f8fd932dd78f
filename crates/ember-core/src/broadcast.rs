//! Broadcast variables: a read-only value shipped once to every executor, referenced by id.
//!
//! The driver publishes the value in its executor services' [`BroadcastStore`]; a task's
//! encoding carries only the id, and decoding resolves it through the store of the executor that
//! runs the task. When the local backend rehearses a remote executor
//! (`ember.local.serializeTasks=true`), the executor decodes its own copy from the published
//! bytes, once, as a remote executor will after fetching them.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::data::Data;
use crate::env::Env;
use crate::error::{Error, Result};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

type Shared = Arc<dyn Any + Send + Sync>;

struct Published {
    value: Shared,
    /// The encoded value (when executors decode their own copies), or why it could not be
    /// encoded.
    bytes: Option<std::result::Result<Arc<Vec<u8>>, String>>,
}

/// Where an executor in another process than its driver fetches broadcast values (a cluster
/// runtime's).
pub trait RemoteBroadcasts: Send + Sync {
    /// The encoded value of broadcast `id`, from the driver.
    fn fetch(&self, id: u64) -> Result<Vec<u8>>;
}

/// Called with the id of each broadcast the driver releases.
pub type OnRelease = Arc<dyn Fn(u64) + Send + Sync>;

/// The broadcast values one executor can reach: those the driver published (in local mode, the
/// same process), the copies this executor decoded, and on a cluster executor, those it fetches
/// from its driver (once each).
#[derive(Default)]
pub struct BroadcastStore {
    published: Mutex<HashMap<u64, Published>>,
    decoded: Mutex<HashMap<u64, Shared>>,
    remote: std::sync::RwLock<Option<Arc<dyn RemoteBroadcasts>>>,
    on_release: std::sync::RwLock<Option<OnRelease>>,
    /// Values being fetched from the driver: tasks that need one wait for the first fetch of it
    /// rather than fetching it again (other values are fetched meanwhile).
    fetching: Mutex<HashMap<u64, Arc<std::sync::OnceLock<std::result::Result<Shared, String>>>>>,
}

fn lock<K, V>(m: &Mutex<HashMap<K, V>>) -> MutexGuard<'_, HashMap<K, V>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BroadcastStore {
    fn publish(&self, id: u64, p: Published) {
        lock(&self.published).insert(id, p);
    }

    fn remove(&self, id: u64) {
        lock(&self.published).remove(&id);
        lock(&self.decoded).remove(&id);
        let hook = self.on_release.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(hook) = hook {
            hook(id);
        }
    }

    /// Makes this store fetch values it was not given from `remote` (an executor in another
    /// process than its driver).
    pub fn set_remote(&self, remote: Arc<dyn RemoteBroadcasts>) {
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = Some(remote);
    }

    /// Calls `hook` with the id of each broadcast the driver releases (so that a cluster runtime
    /// tells its executors to drop their copies).
    pub fn on_release(&self, hook: OnRelease) {
        *self.on_release.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// The encoded value of a published broadcast (what the driver serves to executors).
    pub fn published_bytes(&self, id: u64) -> Result<Arc<Vec<u8>>> {
        match lock(&self.published).get(&id).map(|p| p.bytes.clone()) {
            Some(Some(Ok(b))) => Ok(b),
            Some(Some(Err(e))) => Err(Error::Serialization(format!("broadcast {id} could not be encoded: {e}"))),
            Some(None) => Err(Error::Internal(format!("broadcast {id} was published without its encoding"))),
            None => Err(Error::InvalidArgument(format!("broadcast {id} is not available (released?)"))),
        }
    }

    /// Drops this executor's copy of broadcast `id` (its driver released it).
    pub fn forget(&self, id: u64) {
        // A fetch in progress then keeps its value for its own tasks only.
        lock(&self.fetching).remove(&id);
        lock(&self.decoded).remove(&id);
    }

    /// Fetches broadcast `id` from the driver once, however many tasks ask at the same time.
    fn fetch_remote<T: Data>(&self, id: u64, remote: &dyn RemoteBroadcasts) -> Result<Shared> {
        let cell = {
            let mut fetching = lock(&self.fetching);
            // A fetch that finished since this task looked keeps its value under this lock.
            if let Some(v) = lock(&self.decoded).get(&id).cloned() {
                return Ok(v);
            }
            fetching.entry(id).or_default().clone()
        };
        let got = cell.get_or_init(|| {
            let bytes = remote.fetch(id).map_err(|e| e.to_string())?;
            let value: T = postcard::from_bytes(&bytes).map_err(|e| format!("broadcast {id} does not decode: {e}"))?;
            Ok(Arc::new(value) as Shared)
        });
        let mut fetching = lock(&self.fetching);
        // This fetch's entry goes either way: a failed fetch is tried again by the next task,
        // a value is kept unless the driver released it meanwhile.
        let current = fetching.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell));
        if current {
            fetching.remove(&id);
        }
        let value = got.clone().map_err(Error::Serialization)?;
        if current {
            lock(&self.decoded).insert(id, value.clone());
        }
        Ok(value)
    }

    /// The value of broadcast `id`: the published object, or (when `own_copy`) this executor's
    /// copy decoded from the published bytes.
    fn fetch<T: Data>(&self, id: u64, own_copy: bool) -> Result<Arc<T>> {
        let wrong = || Error::Internal(format!("broadcast {id} holds another type"));
        if !own_copy {
            let value = lock(&self.published).get(&id).map(|p| p.value.clone());
            let value = value.ok_or_else(|| Error::Internal(format!("broadcast {id} is not available")))?;
            return value.downcast::<T>().map_err(|_| wrong());
        }
        if let Some(v) = lock(&self.decoded).get(&id).cloned() {
            return v.downcast::<T>().map_err(|_| wrong());
        }
        let remote = self.remote.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Not inside the `match`: its scrutinee's lock would be held through a remote fetch.
        let published = lock(&self.published).get(&id).map(|p| p.bytes.clone());
        let bytes = match (published, remote) {
            (Some(Some(Ok(b))), _) => b,
            (Some(Some(Err(e))), _) => {
                return Err(Error::Serialization(format!("broadcast {id} could not be encoded: {e}")))
            }
            (_, Some(remote)) => return self.fetch_remote::<T>(id, &*remote)?.downcast::<T>().map_err(|_| wrong()),
            _ => return Err(Error::Internal(format!("broadcast {id} is not available"))),
        };
        let value: Arc<T> = Arc::new(postcard::from_bytes(&bytes)?);
        lock(&self.decoded).insert(id, value.clone());
        Ok(value)
    }

    /// Broadcast values published and not yet released.
    pub fn len(&self) -> usize {
        lock(&self.published).len()
    }

    /// Whether no broadcast value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Releases a broadcast when the driver's last handle goes.
struct Owner {
    id: u64,
    env: Weak<Env>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(env) = self.env.upgrade() {
            env.broadcasts.remove(self.id);
        }
    }
}

/// A read-only value available to every task. It serializes to its id; an executor resolves the
/// id through its [`BroadcastStore`]. Create one with [`crate::Context::broadcast`].
pub struct Broadcast<T> {
    id: u64,
    value: Arc<T>,
    _owner: Option<Arc<Owner>>,
}

impl<T> Clone for Broadcast<T> {
    fn clone(&self) -> Self {
        Broadcast { id: self.id, value: self.value.clone(), _owner: self._owner.clone() }
    }
}

impl<T> fmt::Debug for Broadcast<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Broadcast({})", self.id)
    }
}

impl<T: Data> Broadcast<T> {
    pub(crate) fn new(value: T, env: &Arc<Env>) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let bytes = env.rehearse_remote.then(|| postcard::to_allocvec(&value).map(Arc::new).map_err(|e| e.to_string()));
        let value = Arc::new(value);
        env.broadcasts.publish(id, Published { value: value.clone(), bytes });
        Broadcast { id, value, _owner: Some(Arc::new(Owner { id, env: Arc::downgrade(env) })) }
    }

    /// The value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The broadcast's id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<T> std::ops::Deref for Broadcast<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Data> Serialize for Broadcast<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u64(self.id)
    }
}

thread_local! {
    static DECODED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many broadcast handles this thread has decoded: a lineage node whose decode changed it
/// holds a broadcast value.
pub(crate) fn decoded_on_this_thread() -> u64 {
    DECODED.with(std::cell::Cell::get)
}

impl<'de, T: Data> Deserialize<'de> for Broadcast<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        DECODED.with(|n| n.set(n.get().wrapping_add(1)));
        let id = u64::deserialize(d)?;
        let env = crate::env::current().ok_or_else(|| {
            crate::ship::decode_failed(format!("broadcast {id} decoded outside a task: no executor to resolve it"))
        })?;
        let value = env
            .broadcasts
            .fetch::<T>(id, env.rehearse_remote)
            .map_err(|e| crate::ship::decode_failed(e.to_string()))?;
        Ok(Broadcast { id, value, _owner: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver that counts fetches, fails the first `failures` of them, and is slow.
    struct Driver {
        fetches: AtomicU64,
        failures: u64,
    }

    impl RemoteBroadcasts for Driver {
        fn fetch(&self, id: u64) -> Result<Vec<u8>> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            if n < self.failures {
                return Err(Error::io("driver", std::io::Error::other("unreachable")));
            }
            Ok(postcard::to_allocvec(&vec![id; 1000]).unwrap())
        }
    }

    #[test]
    fn an_executor_fetches_a_value_once_however_many_tasks_ask_and_again_after_a_failure() {
        let store = Arc::new(BroadcastStore::default());
        let driver = Arc::new(Driver { fetches: AtomicU64::new(0), failures: 1 });
        store.set_remote(driver.clone());
        assert!(store.fetch::<Vec<u64>>(7, true).is_err(), "the first fetch fails");
        let values: Vec<Arc<Vec<u64>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| store.fetch::<Vec<u64>>(7, true).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(values.iter().all(|v| v.len() == 1000 && v[0] == 7));
        assert_eq!(driver.fetches.load(Ordering::SeqCst), 2, "one failed fetch, then one for eight tasks");
        assert!(values.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])), "one copy shared by the tasks");
        store.fetch::<Vec<u64>>(7, true).unwrap();
        assert_eq!(driver.fetches.load(Ordering::SeqCst), 2, "kept after the fetch");
        store.forget(7);
        store.fetch::<Vec<u64>>(7, true).unwrap();
        assert_eq!(driver.fetches.load(Ordering::SeqCst), 3, "fetched again once released");
    }
}
