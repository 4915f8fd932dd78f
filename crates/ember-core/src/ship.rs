//! Task encoding: user functions and RDD nodes as (entry offset, type fingerprint, payload).
//!
//! Executors run the same binary as the driver. A value that must cross a process boundary —
//! an RDD node, an aggregator, an action's per-partition function, a whole task — is wrapped in a
//! [`Ship`](crate::ship::Ship). Encoding a `Ship` writes four things:
//!
//! 1. the offset of a monomorphized *entry function* (`decode_entry::<R, D>`) from an anchor
//!    function, so the receiving process adds its own anchor address to find the same code;
//! 2. a fingerprint of the concrete type `R`, checked by the entry function before it decodes;
//! 3. a seal: a MAC of the offset and fingerprint under the [`ShipKey`](crate::ship::ShipKey) of
//!    the trust domain;
//! 4. the serde payload of the value itself (postcard).
//!
//! A whole encoding ([`ShipKey::encode`](crate::ship::ShipKey::encode)) ends with a MAC of all
//! its bytes under the same key. Decoding is possible only through a `ShipKey`: it checks the
//! MAC, then each seal, then that the address lies in this binary's code, and only then calls
//! the entry function. Bytes no holder of the key produced are an error, never a jump.
//!
//! User closures are non-capturing and so zero-sized ([`Fun`](crate::ship::Fun)): they serialize
//! to nothing and the receiving side rebuilds them from their type. Captured state travels
//! explicitly as serde values (`map_with`) or as broadcast handles. Offsets are only meaningful
//! between processes running the very same binary and are never persisted.

use std::any::{Any, TypeId};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A non-capturing user function. It holds no data: it serializes to nothing and a receiving
/// process rebuilds it from its type alone.
///
/// Constructing a `Fun` from a closure that captures anything but zero-sized values fails to
/// compile. A `Fun` never stores a value of `F`; the function is materialized, as a shared
/// reference, only by [`Fun::get1`], [`Fun::get2`] and [`Fun::get3`], whose bounds require `F` to
/// be a `Send + Sync` function type.
///
/// Every `Fun<F>` traces back to a [`Fun::new`] with a real value of `F` in this binary: the wire
/// form carries a seal of `F`'s fingerprint under the [`ShipKey`] of the encode, and decoding
/// refuses a `Fun` whose seal does not check (so no `Fun` of an uninhabited type can be forged by
/// deserializing). A value of `F` existed, `F` is zero-sized, and `new` leaks it (never drops
/// it), so a shared reference to it is valid for as long as the program runs.
pub struct Fun<F>(PhantomData<fn() -> F>);

impl<F> Fun<F> {
    /// Wraps a non-capturing closure or function item.
    ///
    /// A closure that captures state is rejected at compile time; pass captured state with the
    /// `*_with` variants of the RDD operations, or through a broadcast variable.
    pub const fn new(f: F) -> Self
    where
        F: Send + Sync,
    {
        const {
            assert!(
                std::mem::size_of::<F>() == 0,
                "Ember user functions must not capture variables: pass state with `map_with`-style \
                 operations or a broadcast variable"
            )
        };
        // `F` is zero-sized: there is nothing to keep.
        std::mem::forget(f);
        Fun(PhantomData)
    }

    fn conjure(&self) -> &F {
        const { assert!(std::mem::size_of::<F>() == 0) };
        // SAFETY: `F` is zero-sized (checked at compile time above), so any well-aligned
        // non-null pointer points to a value of it, provided one exists: this `Fun` comes from a
        // `Fun::new` that received such a value in this binary (the seal checked on decoding
        // proves it for decoded ones) and leaked it, so it is never dropped. Callers bound `F` by
        // `Fn + Send + Sync`, so the shared reference may be used from any thread.
        unsafe { std::ptr::NonNull::<F>::dangling().as_ref() }
    }

    /// The function, taking one argument.
    #[inline]
    pub fn get1<A, R>(&self) -> &F
    where
        F: Fn(A) -> R + Send + Sync,
    {
        self.conjure()
    }

    /// The function, taking two arguments.
    #[inline]
    pub fn get2<A, B, R>(&self) -> &F
    where
        F: Fn(A, B) -> R + Send + Sync,
    {
        self.conjure()
    }

    /// The function, taking three arguments.
    #[inline]
    pub fn get3<A, B, C, R>(&self) -> &F
    where
        F: Fn(A, B, C) -> R + Send + Sync,
    {
        self.conjure()
    }
}

impl<F> Clone for Fun<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F> Copy for Fun<F> {}

impl<F> fmt::Debug for Fun<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fun<{}>", std::any::type_name::<F>())
    }
}

impl<F: 'static> Serialize for Fun<F> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let key = ShipKey::current().ok_or_else(|| {
            serde::ser::Error::custom("user functions are encoded only through Ship::encode or a ShipKey")
        })?;
        s.serialize_u64(key.fun_seal(fingerprint::<F>()))
    }
}

impl<'de, F: 'static> Deserialize<'de> for Fun<F> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let seal = u64::deserialize(d)?;
        let Some(key) = ShipKey::current() else {
            return Err(decode_failed("user functions are decoded only through a ShipKey".into()));
        };
        if key.fun_seal(fingerprint::<F>()) != seal {
            return Err(decode_failed(format!(
                "user function {} has a bad seal: the bytes are corrupt or come from another binary",
                std::any::type_name::<F>()
            )));
        }
        Ok(Fun(PhantomData))
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

// ---- trust domains -------------------------------------------------------------------------

/// The key of a trust domain: the processes, all running this very binary, that may send each
/// other code references.
///
/// Encoding seals every code reference (entry offset and type fingerprint) with a keyed MAC
/// (SipHash-2-4). Decoding checks the seal before the offset is turned into an address, and then
/// checks that the address lies inside this binary's executable code. Bytes that no holder of the
/// key produced — corrupted, truncated, random, or taken from another binary or another
/// application — are therefore an error, never a jump.
///
/// A process's own key ([`ShipKey::local`]) is random per process and never leaves it; local mode
/// encodes and decodes with it. A cluster runtime that has authenticated a peer and verified that
/// it runs the same binary shares a session key with it through [`ShipKey::for_verified_peers`].
/// Only code holding a key can decode shipped code: [`ShipKey::decode`] is the single way in.
#[derive(Clone)]
pub struct ShipKey {
    k0: u64,
    k1: u64,
}

impl fmt::Debug for ShipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShipKey(..)")
    }
}

/// Domain bytes of the keyed PRF's inputs.
const DOMAIN_MAC: u8 = 0;
const DOMAIN_SEAL: u8 = 1;
const DOMAIN_FUN: u8 = 2;

thread_local! {
    /// The key of the encode or decode running on this thread, if any.
    static SCOPE: std::cell::Cell<Option<(u64, u64)>> = const { std::cell::Cell::new(None) };
}

/// Restores the previous scope when an encode or decode ends, even by unwinding.
struct ScopeGuard(Option<(u64, u64)>);

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        SCOPE.with(|s| s.set(self.0));
    }
}

impl ShipKey {
    /// This process's own key: random, created once, never serialized.
    pub(crate) fn local() -> &'static ShipKey {
        static LOCAL: std::sync::OnceLock<ShipKey> = std::sync::OnceLock::new();
        LOCAL.get_or_init(|| {
            use std::hash::BuildHasher;
            // `RandomState` draws its keys from the operating system's random source; hashing
            // two different inputs with one gives 128 unpredictable bits.
            let rs = std::collections::hash_map::RandomState::new();
            let salt = std::process::id() as u64 ^ (anchor as *const () as usize as u64);
            ShipKey { k0: rs.hash_one((salt, 0u8)), k1: rs.hash_one((salt, 1u8)) }
        })
    }

    /// The key of a trust domain spanning several processes.
    ///
    /// # Safety
    ///
    /// Every process that holds `secret` must run this very binary (for example, its build id or
    /// executable hash was verified when it registered) and must have been authenticated, so
    /// that every code reference sealed with this key names a function of this binary's type
    /// `EntryFn`. Bytes sealed with the key are decoded into jumps to the functions they name.
    pub unsafe fn for_verified_peers(secret: [u8; 16]) -> ShipKey {
        let k0 = u64::from_le_bytes(secret[..8].try_into().unwrap_or_default());
        let k1 = u64::from_le_bytes(secret[8..].try_into().unwrap_or_default());
        ShipKey { k0, k1 }
    }

    // Seals, user-function seals and encoding MACs are one PRF (SipHash-2-4 under the key) over
    // inputs that start with different domain bytes, so that no MAC of chosen bytes is ever a
    // valid seal, whatever the key.
    fn seal(&self, offset: i64, fingerprint: u64) -> u64 {
        use std::hash::Hasher as _;
        let mut h = siphasher::sip::SipHasher24::new_with_keys(self.k0, self.k1);
        h.write_u8(DOMAIN_SEAL);
        h.write(&offset.to_le_bytes());
        h.write(&fingerprint.to_le_bytes());
        h.finish()
    }

    fn fun_seal(&self, fingerprint: u64) -> u64 {
        use std::hash::Hasher as _;
        let mut h = siphasher::sip::SipHasher24::new_with_keys(self.k0, self.k1);
        h.write_u8(DOMAIN_FUN);
        h.write(&fingerprint.to_le_bytes());
        h.finish()
    }

    fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = ScopeGuard(SCOPE.with(|s| s.replace(Some((self.k0, self.k1)))));
        f()
    }

    fn mac(&self, bytes: &[u8]) -> u64 {
        use std::hash::Hasher as _;
        let mut h = siphasher::sip::SipHasher24::new_with_keys(self.k0, self.k1);
        h.write_u8(DOMAIN_MAC);
        h.write(bytes);
        h.finish()
    }

    /// Encodes `value` (postcard), sealing every code reference inside it with this key and
    /// appending a MAC of the whole encoding, so that any change to the bytes is detected.
    pub fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        let mut bytes = self.scope(|| postcard::to_allocvec(value).map_err(Error::from))?;
        let mac = self.mac(&bytes);
        bytes.extend_from_slice(&mac.to_le_bytes());
        Ok(bytes)
    }

    /// Decodes a value encoded by [`ShipKey::encode`] with this key. Any other bytes (corrupt,
    /// truncated, extended, or encoded with another key) give an error before anything is
    /// decoded; no code address is used before its seal and range are checked.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let Some(split) = bytes.len().checked_sub(8) else {
            return Err(Error::Serialization(format!("encoding of {} bytes is too short", bytes.len())));
        };
        let (body, mac) = bytes.split_at(split);
        if mac != self.mac(body).to_le_bytes() {
            return Err(Error::Serialization(
                "encoding failed its integrity check: corrupt, truncated, or from another binary or application".into(),
            ));
        }
        self.scope(|| postcard::from_bytes(body).map_err(Error::from))
    }

    /// Appends a fresh MAC to an encoding's body, as a key holder would.
    #[cfg(test)]
    pub(crate) fn remac_for_tests(&self, body: &[u8]) -> Vec<u8> {
        let mut b = body.to_vec();
        b.extend_from_slice(&self.mac(body).to_le_bytes());
        b
    }

    pub(crate) fn current() -> Option<ShipKey> {
        SCOPE.with(|s| s.get()).map(|(k0, k1)| ShipKey { k0, k1 })
    }
}

/// A fingerprint of the key of the decode running on this thread (not the key itself), if any:
/// what the decoded-lineage cache keys its nodes by.
pub(crate) fn decode_key_fingerprint() -> Option<u64> {
    ShipKey::current().map(|k| k.mac(b"ember-decoded-lineage-v1"))
}

/// The address ranges of this binary's executable code, or `None` where they cannot be read.
fn code_ranges() -> Option<&'static [(usize, usize)]> {
    static RANGES: std::sync::OnceLock<Option<Vec<(usize, usize)>>> = std::sync::OnceLock::new();
    RANGES.get_or_init(read_code_ranges).as_deref()
}

#[cfg(target_os = "linux")]
fn read_code_ranges() -> Option<Vec<(usize, usize)>> {
    struct Search {
        anchor: usize,
        found: Option<Vec<(usize, usize)>>,
    }
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: libc::size_t, data: *mut libc::c_void) -> i32 {
        // SAFETY: `dl_iterate_phdr` passes a valid `info` for the duration of the call, and
        // `data` is the `Search` handed to it below, borrowed mutably for the whole iteration.
        let (info, search) = unsafe { (&*info, &mut *(data as *mut Search)) };
        let mut ranges = Vec::new();
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
                ranges.push((start, start.wrapping_add(ph.p_memsz as usize)));
            }
        }
        if ranges.iter().any(|&(a, b)| (a..b).contains(&search.anchor)) {
            search.found = Some(ranges);
            return 1;
        }
        0
    }
    let mut search = Search { anchor: anchor as *const () as usize, found: None };
    // SAFETY: `visit` only reads the headers it is given and writes to `search`, which outlives
    // the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut search as *mut Search as *mut libc::c_void) };
    search.found
}

#[cfg(not(target_os = "linux"))]
fn read_code_ranges() -> Option<Vec<(usize, usize)>> {
    None
}

/// Whether `addr` lies in this binary's executable code (always true where that is unknown;
/// the seal is then the only check).
fn in_code(addr: usize) -> bool {
    addr != 0 && code_ranges().is_none_or(|r| r.iter().any(|&(a, b)| (a..b).contains(&addr)))
}

/// Converts a shared concrete value into a shared trait object of the family `D`.
///
/// Implemented once per shippable trait family (RDD nodes, aggregators, task bodies, ...).
pub trait Upcast<D: ?Sized> {
    /// Upcasts `this`.
    fn upcast(this: Arc<Self>) -> Arc<D>;
}

/// A shared trait object `D` that can be encoded and rebuilt in another process running the same
/// binary. See the module documentation for the wire form; decoding goes through a [`ShipKey`].
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

    /// Encodes this value with the key of the encode in progress on this thread, or with this
    /// process's own key.
    pub fn encode(&self) -> Result<Vec<u8>> {
        match ShipKey::current() {
            Some(k) => k.encode(self),
            None => ShipKey::local().encode(self),
        }
    }

    /// Decodes a value this process encoded with its own key.
    #[cfg(test)]
    pub(crate) fn decode_local(bytes: &[u8]) -> Result<Self> {
        ShipKey::local().decode(bytes)
    }

    /// Decodes bytes made by [`Ship::encode`] inside an encode with the key of the decode in
    /// progress on this thread (the nodes of an encoded lineage); an error outside a decode.
    pub(crate) fn decode_nested(bytes: &[u8]) -> Result<Self> {
        ShipKey::current()
            .ok_or_else(|| Error::Serialization("shipped code is decoded only through a ShipKey".into()))?
            .decode(bytes)
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
    seal: u64,
    #[serde(borrow)]
    payload: &'a [u8],
}

impl<D: ?Sized> Serialize for Ship<D> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let key = ShipKey::current().ok_or_else(|| {
            serde::ser::Error::custom("shipped code is encoded only through Ship::encode or a ShipKey")
        })?;
        // Offsets are taken from the anchor, which lives in the object holding this crate; an
        // entry compiled into another object (a dynamic library) would not be found again.
        if !in_code(self.entry as usize) {
            return Err(serde::ser::Error::custom(
                "this value's code lies outside the object that holds Ember's anchor (a dynamic library?) and cannot be shipped",
            ));
        }
        let payload = (self.encode)(&*self.any).map_err(serde::ser::Error::custom)?;
        let offset = entry_offset(self.entry);
        Wire { offset, fingerprint: self.fingerprint, seal: key.seal(offset, self.fingerprint), payload: &payload }
            .serialize(s)
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
        let Some(key) = ShipKey::current() else {
            return Err(decode_failed("shipped code is decoded only through a ShipKey".into()));
        };
        if key.seal(wire.offset, wire.fingerprint) != wire.seal {
            return Err(decode_failed(
                "code reference has a bad seal: the bytes are corrupt or come from another binary or application"
                    .into(),
            ));
        }
        let addr = (anchor as *const () as usize as i64).wrapping_add(wire.offset) as usize;
        if !in_code(addr) {
            return Err(decode_failed("code reference points outside this binary's code".into()));
        }
        // SAFETY: the seal proves that a holder of `key` produced this reference; every holder
        // runs this very binary (`ShipKey::local` never leaves the process, and
        // `ShipKey::for_verified_peers` requires a verified same-binary peer), so `offset` was
        // taken in this binary from a function of type `EntryFn`, and `anchor + offset` is that
        // function's address here (checked to lie in this binary's code). The entry checks the
        // fingerprint before it decodes anything.
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
    #[serde(bound = "F: 'static")]
    struct Hello<F> {
        prefix: String,
        f: Fun<F>,
    }

    impl<F: Fn(i32) -> i32 + Send + Sync + 'static> Greeter for Hello<F> {
        fn greet(&self, x: i32) -> String {
            format!("{}{}", self.prefix, (self.f.get1())(x))
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

    fn with_mac(key: &ShipKey, mut body: Vec<u8>) -> Vec<u8> {
        let mac = key.mac(&body);
        body.extend_from_slice(&mac.to_le_bytes());
        body
    }

    #[test]
    fn round_trip_rebuilds_closure_and_state() {
        let a = ship("a=", |x| x * 2);
        let b = ship("b=", |x| x + 100);
        let a2 = Ship::<dyn Greeter>::decode_local(&a.encode().unwrap()).unwrap();
        let b2 = Ship::<dyn Greeter>::decode_local(&b.encode().unwrap()).unwrap();
        assert_eq!(a2.greet(21), "a=42");
        assert_eq!(b2.greet(1), "b=101");
    }

    #[test]
    fn fingerprint_mismatch_is_an_error() {
        let a = ship("a=", |x| x * 2);
        let bytes = a.encode().unwrap();
        let mut wire: Wire<'_> = postcard::from_bytes(&bytes).unwrap();
        wire.fingerprint ^= 1;
        let key = ShipKey::local();
        let tampered = postcard::to_allocvec(&wire).unwrap();
        let err = key.decode::<Ship<dyn Greeter>>(&with_mac(key, tampered.clone())).expect_err("must fail");
        assert!(err.to_string().contains("seal"), "{err}");
        let err = Ship::<dyn Greeter>::decode_local(&tampered).expect_err("must fail");
        assert!(err.to_string().contains("integrity"), "{err}");
        // Resealed (as a same-key peer of another binary would), the fingerprint check catches it.
        wire.seal = key.seal(wire.offset, wire.fingerprint);
        let resealed = with_mac(key, postcard::to_allocvec(&wire).unwrap());
        let err = Ship::<dyn Greeter>::decode_local(&resealed).expect_err("must fail");
        assert!(err.to_string().contains("fingerprint"), "{err}");
    }

    #[test]
    fn another_key_or_no_key_cannot_decode() {
        let bytes = ship("a=", |x| x * 2).encode().unwrap();
        // SAFETY: test key; the bytes decoded with it are refused before any jump.
        let other = unsafe { ShipKey::for_verified_peers([7; 16]) };
        let err = other.decode::<Ship<dyn Greeter>>(&bytes).expect_err("foreign key");
        assert!(err.to_string().contains("integrity"), "{err}");
        let body = &bytes[..bytes.len() - 8];
        let err = other.decode::<Ship<dyn Greeter>>(&with_mac(&other, body.to_vec())).expect_err("foreign key");
        assert!(err.to_string().contains("seal"), "{err}");
        let err = postcard::from_bytes::<Ship<dyn Greeter>>(body).map_err(Error::from).expect_err("no key");
        assert!(err.to_string().contains("ShipKey"), "{err}");
        // A peer key decodes what it encoded.
        let mine = other.encode(&ship("b=", |x| x + 1)).unwrap();
        assert_eq!(other.decode::<Ship<dyn Greeter>>(&mine).unwrap().greet(1), "b=2");
    }

    #[test]
    fn an_offset_outside_the_code_is_refused_even_when_sealed() {
        let bytes = ship("a=", |x| x * 2).encode().unwrap();
        let mut wire: Wire<'_> = postcard::from_bytes(&bytes).unwrap();
        wire.offset = i64::MAX / 2;
        wire.seal = ShipKey::local().seal(wire.offset, wire.fingerprint);
        let forged = with_mac(ShipKey::local(), postcard::to_allocvec(&wire).unwrap());
        let err = Ship::<dyn Greeter>::decode_local(&forged).expect_err("must fail");
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(code_ranges().is_some_and(|r| !r.is_empty()));
    }

    fn decode_fun_like<F: 'static>(_: &F, key: &ShipKey, bytes: &[u8]) -> Result<Fun<F>> {
        key.decode::<Fun<F>>(bytes)
    }

    #[test]
    fn a_fun_decodes_only_from_a_seal_of_its_own_type() {
        let double = |x: i32| x * 2;
        let other = |x: i32| x + 1;
        let key = ShipKey::local();
        let bytes = key.encode(&Fun::new(double)).unwrap();
        assert_eq!((decode_fun_like(&double, key, &bytes).unwrap().get1())(21), 42);
        // The seal of one function type does not make a `Fun` of another.
        let err = decode_fun_like(&other, key, &bytes).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("seal"), "{err}");
        // Nor can a `Fun` be made from nothing by deserializing outside a key.
        let body = &bytes[..bytes.len() - 8];
        assert!(postcard::from_bytes::<Fun<fn()>>(body).is_err());
        assert!(postcard::to_allocvec(&Fun::new(double)).is_err(), "encoding needs a key too");
    }

    #[test]
    fn no_mac_of_chosen_bytes_is_a_seal_even_for_a_key_with_equal_halves() {
        // SAFETY: test key; nothing decoded with it is run unless its seals check.
        let key = unsafe { ShipKey::for_verified_peers([9; 16]) };
        let (offset, fp) = (1234i64, 5678u64);
        let mut chosen = offset.to_le_bytes().to_vec();
        chosen.extend_from_slice(&fp.to_le_bytes());
        assert_ne!(key.mac(&chosen), key.seal(offset, fp));
        let mut tagged = vec![DOMAIN_SEAL];
        tagged.extend_from_slice(&chosen);
        assert_ne!(key.mac(&tagged), key.seal(offset, fp));
    }

    #[test]
    fn fun_is_zero_sized() {
        let f = Fun::new(|x: u8| x + 1);
        assert_eq!(std::mem::size_of_val(&f), 0);
        assert_eq!((f.clone().get1())(1), 2);
    }
}
