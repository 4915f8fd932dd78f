//! Broadcast variables: a read-only value shipped once to every executor, referenced by id.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::data::Data;

type Registry = Mutex<HashMap<u64, Arc<dyn Any + Send + Sync>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Owner(u64);

impl Drop for Owner {
    fn drop(&mut self) {
        registry().lock().unwrap_or_else(|p| p.into_inner()).remove(&self.0);
    }
}

/// A read-only value available to every task. It serializes to its id; an executor resolves the
/// id to its local copy of the value. Create one with [`crate::Context::broadcast`].
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
    pub(crate) fn new(value: T) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let value = Arc::new(value);
        registry().lock().unwrap_or_else(|p| p.into_inner()).insert(id, value.clone());
        Broadcast { id, value, _owner: Some(Arc::new(Owner(id))) }
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
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.id)
    }
}

impl<'de, T: Data> Deserialize<'de> for Broadcast<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = u64::deserialize(d)?;
        let any = registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| serde::de::Error::custom(format!("broadcast {id} is not available on this executor")))?;
        let value =
            any.downcast::<T>().map_err(|_| serde::de::Error::custom(format!("broadcast {id} holds another type")))?;
        Ok(Broadcast { id, value, _owner: None })
    }
}
