//! Word count: `word_count INPUT OUTPUT_DIR [--master M]` writes `word<TAB>count` lines, words
//! split on Unicode whitespace, case kept. `word_count --sample` generates a corpus under
//! `target/ember-sample/` and counts it.

mod common;

// Records are many small allocations; mimalloc handles them much faster than the system
// allocator (measured on the sort and word count benchmarks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ember::prelude::*;

fn main() {
    // Executors of a cluster master are this program started again: they stop here.
    ember::executor_entry();
    ember::init_logging();
    let args = common::Args::parse("word_count INPUT OUTPUT_DIR [--master M] [--memory SIZE] | word_count --sample");
    if let Err(e) = run(&args) {
        eprintln!("word_count failed: {e}");
        std::process::exit(1);
    }
}

fn run(args: &common::Args) -> ember::Result<()> {
    let (input, output) = if args.flag("--sample") {
        let dir = PathBuf::from("target/ember-sample");
        let corpus = dir.join("corpus");
        make_sample(&corpus)?;
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        (corpus.display().to_string(), dir.join(format!("word-counts-{stamp}")))
    } else {
        match args.positional.as_slice() {
            [i, o] => (i.clone(), PathBuf::from(o)),
            _ => {
                eprintln!("usage: word_count INPUT OUTPUT_DIR [--master M] | word_count --sample");
                std::process::exit(2);
            }
        }
    };
    let ctx = args.context()?;
    let start = Instant::now();
    let counts = ctx
        .text_file(&input, ctx.default_parallelism())?
        .flat_map(|line: String| line.split_whitespace().map(|w| (w.to_string(), 1u64)).collect::<Vec<_>>())
        .reduce_by_key(|a, b| a + b, None)
        .persist(StorageLevel::MemoryOnly)?;
    counts.map(|(w, c)| format!("{w}\t{c}")).save_as_text_file(&output)?;
    let elapsed = start.elapsed();
    let distinct = counts.count()?;
    let top = counts.map(|(w, c)| (c, w)).top(10)?;
    println!("counted {distinct} distinct words in {:.2} s; output in {}", elapsed.as_secs_f64(), output.display());
    println!("most frequent:");
    for (c, w) in top {
        println!("  {c:>10}  {w}");
    }
    Ok(())
}

/// Writes a deterministic sample corpus (8 files, about 40 MB) unless it is already there.
fn make_sample(dir: &Path) -> ember::Result<()> {
    let io = |p: &Path, e| ember::Error::io(p, e);
    if dir.join("_DONE").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu", "el", "an", "or", "is", "ün", "ße"];
    let mut vocab: Vec<String> = Vec::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..50_000u64 {
        let n = 1 + (next() % 3) as usize;
        let mut w: String = (0..n).map(|_| syllables[(next() % syllables.len() as u64) as usize]).collect();
        if i % 7 == 0 {
            let mut chars = w.chars();
            if let Some(c) = chars.next() {
                w = c.to_uppercase().chain(chars).collect();
            }
        }
        vocab.push(w);
    }
    for f in 0..8 {
        let path = dir.join(format!("part-{f}.txt"));
        let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
        let mut out = std::io::BufWriter::new(file);
        for _ in 0..60_000 {
            let words = 6 + (next() % 10) as usize;
            let line: Vec<&str> = (0..words)
                .map(|_| {
                    // Zipf-like: small indexes far more often.
                    let r = (next() % 1_000_000) as f64 / 1_000_000.0;
                    let idx = ((vocab.len() as f64).powf(r) - 1.0) as usize;
                    vocab[idx.min(vocab.len() - 1)].as_str()
                })
                .collect();
            writeln!(out, "{}", line.join(" ")).map_err(|e| io(&path, e))?;
        }
        out.flush().map_err(|e| io(&path, e))?;
    }
    std::fs::write(dir.join("_DONE"), b"").map_err(|e| io(dir, e))?;
    Ok(())
}
