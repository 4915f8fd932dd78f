//! Task encoding: user functions and RDD nodes as (entry offset, type fingerprint, payload).
//!
//! Executors run the same binary as the driver. A value that must cross a process boundary —
//! an RDD node, an aggregator, an action's per-partition function, a whole task — is wrapped in a
//! [`Ship`](crate::ship::Ship). Encoding a `Ship` writes three things:
//!
//! 1. the offset of a monomorphized *entry function* (`decode_entry::<R, D>`) from an anchor
//!    function, so the receiving process adds its own anchor address to find the same code;
//! 2. a fingerprint of the concrete type `R`, checked by the entry function before it decodes;
//! 3. the serde payload of the value itself (postcard).
//!
//! User closures are non-capturing and so zero-sized ([`Fun`](crate::ship::Fun)): they serialize to nothing and
//! the receiving side rebuilds them from nothing. Captured state travels explicitly as serde
//! values (`map_with`) or as broadcast handles. Offsets are only meaningful between processes
//! running the very same binary and are never persisted.

use std::any::{Any, TypeId};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A non-capturing user function. Its type is zero-sized, so it carries no data: it serializes
/// to nothing and a receiving process rebuilds it from its type alone.
///
/// Constructing a `Fun` from a closure that captures anything fails to compile.
pub struct Fun<F>(F);

impl<F> Fun<F> {
    /// Wraps a non-capturing closure or function item.
    ///
    /// A closure that captures state is rejected at compile time; pass captured state with the
    /// `*_with` variants of the RDD operations, or through a broadcast variable.
    pub const fn new(f: F) -> Self {
        const {
            assert!(
                std::mem::size_of::<F>() == 0,
                "Ember user functions must not capture variables: pass state with `map_with`-style \
                 operations or a broadcast variable"
            )
        };
        Fun(f)
    }

    /// The wrapped function.
    #[inline]
    pub fn get(&self) -> &F {
        &self.0
    }

    fn conjure() -> Self {
        const { assert!(std::mem::size_of::<F>() == 0) };
        // SAFETY: `F` is zero-sized (checked at compile time above) and is a closure or function
        // item type (the only types implementing `Fn` on stable Rust); such types have no
        // invariants and exactly one value, so any (empty) bit pattern is that value.
        Fun(unsafe { std::mem::zeroed::<F>() })
    }
}

impl<F> Clone for Fun<F> {
    fn clone(&self) -> Self {
        Fun::conjure()
    }
}

impl<F> Copy for Fun<F> where F: Copy {}

impl<F> fmt::Debug for Fun<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fun<{}>", std::any::type_name::<F>())
    }
}

impl<F> Serialize for Fun<F> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de, F> Deserialize<'de> for Fun<F> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        <()>::deserialize(d)?;
        Ok(Fun::conjure())
    }
}

/// The anchor against which entry-function addresses are taken. It is never called.
#[inline(never)]
fn anchor() -> u64 {
    std::hint::black_box(0x454d_4245_5200)
}

/// The erased signature every entry function shares.
type EntryFn = fn(u64, &[u8]) -> Result<Box<dyn Any + Send>>;

fn entry_offset(entry: EntryFn) -> i64 {
    (entry as usize as i64).wrapping_sub(anchor as *const () as usize as i64)
}

/// The fingerprint of a concrete type: a hash of its `TypeId`, stable within one binary.
pub fn fingerprint<R: 'static>() -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    TypeId::of::<R>().hash(&mut h);
    h.finish()
}

/// Converts a shared concrete value into a shared trait object of the family `D`.
///
/// Implemented once per shippable trait family (RDD nodes, aggregators, task bodies, ...).
pub trait Upcast<D: ?Sized> {
    /// Upcasts `this`.
    fn upcast(this: Arc<Self>) -> Arc<D>;
}

/// A shared trait object `D` that can be encoded and rebuilt in another process running the same
/// binary. See the module documentation for the wire form.
pub struct Ship<D: ?Sized> {
    obj: Arc<D>,
    any: Arc<dyn Any + Send + Sync>,
    encode: fn(&(dyn Any + Send + Sync)) -> Result<Vec<u8>>,
    entry: EntryFn,
    fingerprint: u64,
}

impl<D: ?Sized + Send + Sync + 'static> Ship<D> {
    /// Wraps a concrete value.
    pub fn new<R>(value: R) -> Self
    where
        R: Upcast<D> + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        Self::from_arc(Arc::new(value))
    }

    fn from_arc<R>(arc: Arc<R>) -> Self
    where
        R: Upcast<D> + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        Ship {
            obj: R::upcast(arc.clone()),
            any: arc,
            encode: encode_erased::<R>,
            entry: decode_entry::<R, D>,
            fingerprint: fingerprint::<R>(),
        }
    }

    /// The trait object.
    #[inline]
    pub fn get(&self) -> &Arc<D> {
        &self.obj
    }

    /// The concrete value, if it has type `R`.
    pub fn downcast_ref<R: 'static>(&self) -> Option<&R> {
        self.any.downcast_ref::<R>()
    }

    /// Encodes this value: entry offset, fingerprint, payload.
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_allocvec(self).map_err(Error::from)
    }

    /// Decodes a value encoded by [`Ship::encode`] in a process running the same binary.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        postcard::from_bytes(bytes).map_err(Error::from)
    }
}

impl<D: ?Sized> Clone for Ship<D> {
    fn clone(&self) -> Self {
        Ship {
            obj: self.obj.clone(),
            any: self.any.clone(),
            encode: self.encode,
            entry: self.entry,
            fingerprint: self.fingerprint,
        }
    }
}

impl<D: ?Sized> std::ops::Deref for Ship<D> {
    type Target = D;
    fn deref(&self) -> &D {
        &self.obj
    }
}

impl<D: ?Sized> fmt::Debug for Ship<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ship({:016x})", self.fingerprint)
    }
}

fn encode_erased<R: Serialize + 'static>(value: &(dyn Any + Send + Sync)) -> Result<Vec<u8>> {
    let r = value.downcast_ref::<R>().ok_or_else(|| Error::Internal("ship payload has an unexpected type".into()))?;
    postcard::to_allocvec(r).map_err(Error::from)
}

fn decode_entry<R, D>(fingerprint_seen: u64, payload: &[u8]) -> Result<Box<dyn Any + Send>>
where
    R: Upcast<D> + Serialize + DeserializeOwned + Send + Sync + 'static,
    D: ?Sized + Send + Sync + 'static,
{
    if fingerprint_seen != fingerprint::<R>() {
        return Err(Error::Serialization(format!(
            "type fingerprint mismatch decoding {}: the peer runs a different binary",
            std::any::type_name::<R>()
        )));
    }
    let value: R = postcard::from_bytes(payload)?;
    Ok(Box::new(Ship::<D>::from_arc(Arc::new(value))))
}

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    offset: i64,
    fingerprint: u64,
    #[serde(borrow)]
    payload: &'a [u8],
}

impl<D: ?Sized> Serialize for Ship<D> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let payload = (self.encode)(&*self.any).map_err(serde::ser::Error::custom)?;
        Wire { offset: entry_offset(self.entry), fingerprint: self.fingerprint, payload: &payload }.serialize(s)
    }
}

thread_local! {
    static DECODE_ERROR: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Takes the message of the last failed [`Ship`] decode on this thread. Formats such as postcard
/// drop custom error messages, so the message is kept here for [`Error`]'s conversion.
pub(crate) fn take_decode_error() -> Option<String> {
    DECODE_ERROR.with(|e| e.borrow_mut().take())
}

pub(crate) fn decode_failed<E: serde::de::Error>(msg: String) -> E {
    DECODE_ERROR.with(|e| *e.borrow_mut() = Some(msg.clone()));
    E::custom(msg)
}

impl<'de, D: ?Sized + Send + Sync + 'static> Deserialize<'de> for Ship<D> {
    fn deserialize<De: Deserializer<'de>>(d: De) -> std::result::Result<Self, De::Error> {
        let wire = Wire::deserialize(d)?;
        let addr = (anchor as *const () as usize as i64).wrapping_add(wire.offset) as usize;
        // SAFETY: executors refuse to register with a driver whose binary differs from theirs,
        // so `offset` was taken in this very binary from a function of type `EntryFn`, and
        // `anchor + offset` is that function's address here. The entry checks the fingerprint
        // before it decodes anything.
        let entry: EntryFn = unsafe { std::mem::transmute::<usize, EntryFn>(addr) };
        let boxed = entry(wire.fingerprint, wire.payload).map_err(|e| decode_failed(e.to_string()))?;
        boxed
            .downcast::<Ship<D>>()
            .map(|b| *b)
            .map_err(|_| decode_failed("decoded value belongs to another trait family".into()))
    }
}

/// A marker so that `PhantomData` of function types stays `Send + Sync` regardless of `T`.
pub(crate) type Marker<T> = PhantomData<fn() -> T>;

#[cfg(test)]
mod tests {
    use super::*;

    trait Greeter: Send + Sync {
        fn greet(&self, x: i32) -> String;
    }

    #[derive(Serialize, Deserialize)]
    #[serde(bound = "")]
    struct Hello<F> {
        prefix: String,
        f: Fun<F>,
    }

    impl<F: Fn(i32) -> i32 + Send + Sync + 'static> Greeter for Hello<F> {
        fn greet(&self, x: i32) -> String {
            format!("{}{}", self.prefix, (self.f.get())(x))
        }
    }

    impl<F: Fn(i32) -> i32 + Send + Sync + 'static> Upcast<dyn Greeter> for Hello<F> {
        fn upcast(this: Arc<Self>) -> Arc<dyn Greeter> {
            this
        }
    }

    fn ship<F: Fn(i32) -> i32 + Send + Sync + 'static>(prefix: &str, f: F) -> Ship<dyn Greeter> {
        Ship::new(Hello { prefix: prefix.into(), f: Fun::new(f) })
    }

    #[test]
    fn round_trip_rebuilds_closure_and_state() {
        let a = ship("a=", |x| x * 2);
        let b = ship("b=", |x| x + 100);
        let a2 = Ship::<dyn Greeter>::decode(&a.encode().unwrap()).unwrap();
        let b2 = Ship::<dyn Greeter>::decode(&b.encode().unwrap()).unwrap();
        assert_eq!(a2.greet(21), "a=42");
        assert_eq!(b2.greet(1), "b=101");
    }

    #[test]
    fn fingerprint_mismatch_is_an_error() {
        let a = ship("a=", |x| x * 2);
        let bytes = a.encode().unwrap();
        let mut wire: Wire<'_> = postcard::from_bytes(&bytes).unwrap();
        wire.fingerprint ^= 1;
        let tampered = postcard::to_allocvec(&wire).unwrap();
        let err = Ship::<dyn Greeter>::decode(&tampered).expect_err("must fail");
        assert!(err.to_string().contains("fingerprint"), "{err}");
    }

    #[test]
    fn fun_is_zero_sized() {
        let f = Fun::new(|x: u8| x + 1);
        assert_eq!(std::mem::size_of_val(&f), 0);
        assert_eq!((f.clone().get())(1), 2);
    }
}
