//! Output safety: the commit protocol of `save_as_text_file`, compressed output, checkpoint
//! directories.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use ember_core::{Error, TextCodec};

use super::common::*;

/// The sorted names in a directory.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Every file under `dir`, recursively, relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn an_existing_target_is_an_error_and_is_left_untouched() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "precious\n").unwrap();
    let e = ctx.parallelize((0..10).collect::<Vec<i32>>(), 2).save_as_text_file(&out).unwrap_err();
    assert!(matches!(e, Error::OutputExists(ref p) if p == &out), "{e:?}");
    assert_eq!(tree(&out), vec!["keep.txt"]);
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "precious\n");
    // An existing file is refused the same way.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = ctx.parallelize(vec![1], 1).save_as_text_file_compressed(&file, TextCodec::Gzip).unwrap_err();
    assert!(matches!(e, Error::OutputExists(_)), "{e:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn two_writers_of_one_path_cannot_both_succeed() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<(i32, ember_core::Result<()>)> = std::thread::scope(|s| {
            let handles: Vec<_> = [1, 2]
                .map(|tag| {
                    let (out, barrier) = (&out, &barrier);
                    s.spawn(move || {
                        let ctx = ctx();
                        let rdd = ctx.parallelize(vec![tag; 1000], 4);
                        barrier.wait();
                        (tag, rdd.save_as_text_file(out))
                    })
                })
                .into_iter()
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<i32> = results.iter().filter(|(_, r)| r.is_ok()).map(|(t, _)| *t).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (_, r) in &results {
            if let Err(e) = r {
                assert!(matches!(e, Error::OutputExists(_)), "{e:?}");
            }
        }
        let ctx = ctx();
        let back = ctx.text_file(out.to_str().unwrap(), 1).unwrap().collect().unwrap();
        assert_eq!(back, vec![winners[0].to_string(); 1000], "round {round}");
        assert_eq!(names(&out), vec!["_SUCCESS", "part-00000", "part-00001", "part-00002", "part-00003"]);
    }
}

static SAVE_FAILED_ONCE: AtomicBool = AtomicBool::new(false);

#[test]
fn a_retried_task_leaves_one_part_file_and_no_temporary_files() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // The first attempt of partition 1 writes 25..29, then fails; the retry succeeds.
    ctx.parallelize((0..100).collect::<Vec<i32>>(), 4)
        .map(|x| {
            if x == 30 && !SAVE_FAILED_ONCE.swap(true, Ordering::SeqCst) {
                panic!("first attempt fails");
            }
            x
        })
        .save_as_text_file(&out)
        .unwrap();
    assert!(SAVE_FAILED_ONCE.load(Ordering::SeqCst), "the first attempt failed");
    assert_eq!(tree(&out), vec!["_SUCCESS", "part-00000", "part-00001", "part-00002", "part-00003"]);
    let part1: String = (25..50).map(|x| format!("{x}\n")).collect();
    assert_eq!(std::fs::read_to_string(out.join("part-00001")).unwrap(), part1);
    assert_eq!(
        tree(dir.path()),
        vec!["out", "out/_SUCCESS", "out/part-00000", "out/part-00001", "out/part-00002", "out/part-00003"]
    );
}

#[test]
fn gzip_output_round_trips() {
    for ctx in both() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("gz");
        let lines: Vec<String> = (0..2000).map(|i| format!("line {i} {}", "ü".repeat(i % 9))).collect();
        ctx.parallelize(lines.clone(), 3).save_as_text_file_compressed(&out, TextCodec::Gzip).unwrap();
        assert_eq!(names(&out), vec!["_SUCCESS", "part-00000.gz", "part-00001.gz", "part-00002.gz"]);
        // Each part is a real gzip file holding its slice of the lines.
        let mut first = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(out.join("part-00000.gz")).unwrap())
            .read_to_string(&mut first)
            .unwrap();
        let slice: String = lines[..666].iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(first, slice);
        assert_eq!(ctx.text_file(out.to_str().unwrap(), 2).unwrap().collect().unwrap(), lines);
        // Plain output through the same entry point.
        let plain = dir.path().join("plain");
        ctx.parallelize(lines.clone(), 2).save_as_text_file_compressed(&plain, TextCodec::None).unwrap();
        assert_eq!(names(&plain), vec!["_SUCCESS", "part-00000", "part-00001"]);
    }
}

#[test]
fn contexts_sharing_a_checkpoint_dir_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (ctx(), ctx());
    assert_ne!(a.application_id(), b.application_id());
    a.set_checkpoint_dir(dir.path()).unwrap();
    b.set_checkpoint_dir(dir.path()).unwrap();
    let ra = a.parallelize((0..100).collect::<Vec<i64>>(), 3);
    let rb = b.parallelize((1000..1050).collect::<Vec<i64>>(), 2);
    ra.checkpoint().unwrap();
    rb.checkpoint().unwrap();
    // Each application writes only inside its own directory.
    let mut apps = vec![a.application_id().to_string(), b.application_id().to_string()];
    apps.sort();
    assert_eq!(names(dir.path()), apps);
    assert_eq!(names(&dir.path().join(a.application_id())).len(), 1);
    assert_eq!(names(&dir.path().join(b.application_id())).len(), 1);
    assert_eq!(ra.collect().unwrap(), (0..100).collect::<Vec<_>>());
    assert_eq!(rb.collect().unwrap(), (1000..1050).collect::<Vec<_>>());
}

static CHECKPOINT_FAILED_ONCE: AtomicBool = AtomicBool::new(false);

#[test]
fn checkpoints_leave_no_temporary_files_on_failure() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    ctx.set_checkpoint_dir(dir.path()).unwrap();
    let app = dir.path().join(ctx.application_id());
    // A failing job leaves nothing.
    let failing =
        ctx.parallelize((0..100).collect::<Vec<i32>>(), 2).map(|x| if x == 70 { panic!("always") } else { x });
    assert!(failing.checkpoint().is_err());
    assert!(!failing.is_checkpointed());
    assert_eq!(tree(&app), Vec::<String>::new());
    // A retried task leaves only the part files.
    let retried = ctx.parallelize((0..100).collect::<Vec<i32>>(), 2).map(|x| {
        if x == 70 && !CHECKPOINT_FAILED_ONCE.swap(true, Ordering::SeqCst) {
            panic!("first attempt fails");
        }
        x
    });
    retried.checkpoint().unwrap();
    let files = tree(&app);
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files[1].ends_with("part-00000") && files[2].ends_with("part-00001"), "{files:?}");
    assert_eq!(retried.collect().unwrap(), (0..100).collect::<Vec<_>>());
}
