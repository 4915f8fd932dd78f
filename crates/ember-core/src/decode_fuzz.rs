//! Decoding corrupted task, lineage and record-stream encodings: every corruption is an error,
//! none a panic, an abort or a jump to a forged address.

use std::panic::AssertUnwindSafe;
use std::path::Path;

use crate::conf::Codec;
use crate::rdd::{Dependency, Rdd};
use crate::ship::{Ship, ShipKey};
use crate::stream;
use crate::task::TaskBody;
use crate::{Context, EmberConf};

/// A small deterministic generator (xorshift64*), so that a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One corruption of `bytes`: bit flips, a truncation, an extension, random bytes, an
/// overwritten window, a splice with another encoding.
fn corrupt(rng: &mut Rng, bytes: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match rng.below(7) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
        }
        1 => b.truncate(rng.below(b.len())),
        2 => {
            let n = 1 + rng.below(16);
            b.extend((0..n).map(|_| rng.next() as u8));
        }
        3 => {
            let n = rng.below(2 * b.len() + 1);
            b = (0..n).map(|_| rng.next() as u8).collect();
        }
        4 => {
            let start = rng.below(b.len());
            let end = (start + 1 + rng.below(32)).min(b.len());
            for x in &mut b[start..end] {
                *x = rng.next() as u8;
            }
        }
        5 => {
            let i = rng.below(b.len() + 1);
            b.insert(i, rng.next() as u8);
        }
        _ => {
            let cut = rng.below(b.len());
            let from = rng.below(other.len());
            b.truncate(cut);
            b.extend_from_slice(&other[from..]);
        }
    }
    if b == bytes || b == other {
        // A flip pair that cancelled out, or a splice that rebuilt the other encoding whole:
        // corrupt for sure.
        b.push(0);
    }
    b
}

fn context() -> Context {
    let conf = EmberConf::new()
        .master("local[2]")
        .and_then(|c| c.set("ember.ui.showConsoleProgress", "false"))
        .expect("valid conf");
    Context::new(conf).expect("context starts")
}

/// A lineage with a shuffle, an aggregator, a partitioner, closures and captured state.
fn lineage(ctx: &Context) -> Rdd<(String, u64)> {
    let words: Vec<String> = (0..64).map(|i| format!("w{}", i % 7)).collect();
    ctx.parallelize(words, 3)
        .map_with(3u64, |k, w: String| (w, *k))
        .filter(|(w, _)| !w.is_empty())
        .reduce_by_key(|a, b| a + b, Some(2))
        .map(|(w, n)| (w, n * 2))
}

/// Decodes with `decode` under `catch_unwind`; returns whether it was an error.
fn is_error<T>(decode: impl FnOnce() -> crate::Result<T>) -> bool {
    match std::panic::catch_unwind(AssertUnwindSafe(decode)) {
        Ok(r) => r.is_err(),
        Err(_) => panic!("decoding corrupt bytes panicked"),
    }
}

#[test]
fn corrupted_encodings_are_errors() {
    let ctx = context();
    let rdd = lineage(&ctx);
    let key = ShipKey::local();
    // SAFETY: a key that only this test holds; bytes sealed with it are refused by `key`.
    let foreign = unsafe { ShipKey::for_verified_peers(*b"another-app-key!") };

    let count = Ship::new(crate::rdd::CountFn::<(String, u64)>::default()) as Ship<dyn crate::rdd::PartitionFn<_, u64>>;
    let result_task = crate::context::result_task(&rdd, count);
    let Some(Dependency::Shuffle(dep)) = rdd.dependencies().into_iter().next().and_then(|d| match d {
        Dependency::Narrow(p) => p.dependencies().into_iter().next(),
        s => Some(s),
    }) else {
        panic!("the lineage has a shuffle under its last map")
    };
    let map_task = dep.map_task().expect("map task");

    let tasks = [result_task.encode().expect("encodes"), map_task.encode().expect("encodes")];
    let lineage_bytes = key.encode(&rdd).expect("encodes");
    let records: Vec<(String, u64)> =
        (0..3_000u64).map(|i| (format!("k{i}{}", "x".repeat(i as usize % 48)), i)).collect();
    let streams: Vec<Vec<u8>> = [Codec::Lz4, Codec::Zstd, Codec::None]
        .iter()
        .map(|&c| stream::encode_all(c, &records).expect("encodes"))
        .collect();

    // Several chunks each, so that cuts at chunk boundaries are among the truncations.
    assert!(streams[2].len() > stream::CHUNK_BYTES);
    // The originals decode.
    for t in &tasks {
        assert!(Ship::<dyn TaskBody>::decode_local(t).is_ok());
    }
    assert_eq!(key.decode::<Rdd<(String, u64)>>(&lineage_bytes).expect("decodes").num_partitions(), 2);
    for s in &streams {
        assert_eq!(stream::decode_exact::<(String, u64)>(s, s.len() as u64, Path::new("m")).expect("decodes"), records);
    }

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut decoded = 0u64;
    for round in 0..34_000 {
        let t = &tasks[round % 2];
        let bad = corrupt(&mut rng, t, &tasks[(round + 1) % 2]);
        assert!(is_error(|| Ship::<dyn TaskBody>::decode_local(&bad)), "round {round}: corrupt task decoded");

        let bad = corrupt(&mut rng, &lineage_bytes, t);
        assert!(is_error(|| key.decode::<Rdd<(String, u64)>>(&bad)), "round {round}: corrupt lineage decoded");

        let s = &streams[round % 3];
        let bad = corrupt(&mut rng, s, &streams[(round + 1) % 3]);
        assert!(
            is_error(|| stream::decode_exact::<(String, u64)>(&bad, s.len() as u64, Path::new("m"))),
            "round {round}: corrupt stream decoded"
        );
        decoded += 3;

        // Encoded by a peer of another trust domain (another binary or application): its
        // offsets are foreign, and it fails as a whole.
        if round % 26 == 0 {
            let alien = foreign.encode(&result_task).expect("encodes");
            assert!(is_error(|| Ship::<dyn TaskBody>::decode_local(&alien)));
            let alien = foreign.encode(&rdd).expect("encodes");
            assert!(is_error(|| key.decode::<Rdd<(String, u64)>>(&alien)));
            decoded += 2;
        }
    }
    assert!(decoded >= 100_000, "{decoded}");
}

/// Corruption that happened before the integrity check was applied (a buggy peer holding the
/// key): code references are still checked by their seals, and nothing may panic.
#[test]
fn corruption_under_a_valid_mac_never_panics_or_jumps() {
    let ctx = context();
    let rdd = lineage(&ctx);
    let key = ShipKey::local();
    let bytes = key.encode(&rdd).expect("encodes");
    let body = &bytes[..bytes.len() - 8];
    let mut rng = Rng(42);
    let mut errors = 0;
    for _ in 0..5_000 {
        let bad = corrupt(&mut rng, body, body);
        let resealed = key.remac_for_tests(&bad);
        if is_error(|| key.decode::<Rdd<(String, u64)>>(&resealed)) {
            errors += 1;
        }
    }
    // Most corruptions hit lengths, tags, seals or nested integrity checks.
    assert!(errors > 4_000, "{errors}");
}
