//! Text input and output: files, directories, globs, gzip, splits, whole files, atomic saves.

use std::io::Write;

use super::common::*;

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn text_file_splits_reproduce_the_lines_in_order() {
    // No open cost, so that `min_partitions` cuts even a small file.
    let ctx = ctx_conf(&[("ember.files.openCostInBytes", "0")], false);
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..3000).map(|i| format!("line {i} {}", "é".repeat(i % 7))).collect();
    let f = dir.path().join("big.txt");
    write(&f, &(lines.join("\n") + "\n"));
    for min_parts in [1, 3, 8, 40] {
        let rdd = ctx.text_file(f.to_str().unwrap(), min_parts).unwrap();
        assert!(rdd.num_partitions() >= min_parts.min(40), "{} partitions", rdd.num_partitions());
        assert_eq!(rdd.collect().unwrap(), lines, "min_partitions = {min_parts}");
    }
    // CRLF endings and a last line without a newline.
    let g = dir.path().join("crlf.txt");
    write(&g, "a\r\nb\r\n\r\nc");
    assert_eq!(ctx.text_file(g.to_str().unwrap(), 1).unwrap().collect().unwrap(), vec!["a", "b", "", "c"]);
}

#[test]
fn directories_globs_and_gzip() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.txt"), "1\n2\n");
    write(&dir.path().join("b.txt"), "3\n");
    write(&dir.path().join("_SUCCESS"), "");
    write(&dir.path().join(".hidden"), "x\n");
    let gz = dir.path().join("c.txt.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all(b"4\n5\n").unwrap();
    enc.finish().unwrap();
    let all = ctx.text_file(dir.path().to_str().unwrap(), 2).unwrap().collect().unwrap();
    assert_eq!(all, vec!["1", "2", "3", "4", "5"]);
    let globbed = ctx.text_file(&format!("{}/*.txt", dir.path().display()), 1).unwrap().collect().unwrap();
    assert_eq!(globbed, vec!["1", "2", "3"]);
    let whole = ctx.whole_text_files(dir.path().to_str().unwrap(), 2).unwrap().collect().unwrap();
    let mut names: Vec<(String, String)> =
        whole.into_iter().map(|(p, c)| (p.rsplit('/').next().unwrap().to_string(), c)).collect();
    names.sort();
    assert_eq!(
        names,
        vec![("a.txt".into(), "1\n2\n".into()), ("b.txt".into(), "3\n".into()), ("c.txt.gz".into(), "4\n5\n".into())]
    );
}

#[test]
fn save_as_text_file_writes_parts_atomically_and_reads_back() {
    for ctx in both() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nums");
        ctx.parallelize((0..50).collect::<Vec<i32>>(), 3).save_as_text_file(&out).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, vec!["_SUCCESS", "part-00000", "part-00001", "part-00002"]);
        let back: Vec<i32> =
            ctx.text_file(out.to_str().unwrap(), 1).unwrap().map(|l| l.parse().unwrap()).collect().unwrap();
        assert_eq!(back, (0..50).collect::<Vec<_>>());
    }
}

#[test]
fn many_small_files_share_partitions_and_count_exactly() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let files = 5000usize;
    for i in 0..files {
        write(&dir.path().join(format!("f{i:05}.txt")), &format!("common w{} w{}\n", i % 10, i % 7));
    }
    let lines = ctx.text_file(dir.path().to_str().unwrap(), 2).unwrap();
    // 32 MiB per partition at 4 MiB per file: 8 files each.
    assert_eq!(lines.num_partitions(), files.div_ceil(8));
    let counts = lines
        .flat_map(|l: String| l.split_whitespace().map(|w| (w.to_string(), 1u64)).collect::<Vec<_>>())
        .reduce_by_key(|a, b| a + b, None);
    assert_eq!(counts.num_partitions(), files.div_ceil(8), "shuffle partitions follow the input");
    let mut got = counts.collect().unwrap();
    got.sort();
    let mut want = std::collections::BTreeMap::new();
    *want.entry("common".to_string()).or_insert(0u64) += files as u64;
    for i in 0..files {
        *want.entry(format!("w{}", i % 10)).or_insert(0) += 1;
        *want.entry(format!("w{}", i % 7)).or_insert(0) += 1;
    }
    assert_eq!(got, want.into_iter().collect::<Vec<_>>());
}

#[test]
fn splits_pack_whole_files_and_ranges_and_read_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    // Small files, a big one cut into many ranges, a gzip file, an empty file, no final newline.
    for (name, n, width) in [("a.txt", 3, 5), ("b.txt", 1, 0), ("c.txt", 400, 37), ("d.txt", 2, 3), ("e.txt", 0, 0)] {
        let lines: Vec<String> = (0..n).map(|i| format!("{name}-{i}-{}", "é".repeat((i * width) % 50))).collect();
        write(&dir.path().join(name), &lines.join("\n"));
        expected.extend(lines);
    }
    let gz = dir.path().join("f.txt.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all(b"g1\r\ng2\r\n").unwrap();
    enc.finish().unwrap();
    expected.extend(["g1".to_string(), "g2".to_string()]);
    for serialize in [false, true] {
        let ctx =
            ctx_conf(&[("ember.files.maxPartitionBytes", "1k"), ("ember.files.openCostInBytes", "100")], serialize);
        let rdd = ctx.text_file(dir.path().to_str().unwrap(), 1).unwrap();
        let parts = rdd.glom().collect().unwrap();
        assert!(parts.len() > 10, "c.txt is cut into ranges: {} partitions", parts.len());
        assert!(parts[0].iter().any(|l| l.starts_with("a.txt")) && parts[0].iter().any(|l| l.starts_with("b.txt")));
        assert!(parts.iter().any(|p| p.iter().any(|l| l.starts_with("d.txt")) && p.contains(&"g1".to_string())));
        assert_eq!(parts.concat(), expected);
    }
}

#[test]
fn a_line_longer_than_the_limit_fails_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("long.txt");
    let exact = "y".repeat(1024);
    write(&f, &format!("short\n{exact}\r\n{}\nafter\n", "x".repeat(3 << 20)));
    let ctx = ctx_conf(&[("ember.input.maxLineLength", "1k")], false);
    let e = ctx.text_file(f.to_str().unwrap(), 1).unwrap().count().unwrap_err().to_string();
    assert!(e.contains("line longer than 1024 bytes"), "{e}");
    assert!(e.contains(&f.display().to_string()), "{e}");
    assert!(e.contains("byte offset 1032"), "{e}");
    // Up to the limit, lines are read; the default limit lets a 3 MiB line through.
    let ok = ctx.text_file(f.to_str().unwrap(), 1).unwrap().take(2).unwrap();
    assert_eq!(ok, vec!["short".to_string(), exact]);
    let lens = ctx_conf(&[], false).text_file(f.to_str().unwrap(), 1).unwrap().map(|l: String| l.len()).collect();
    assert_eq!(lens.unwrap(), vec![5, 1024, 3 << 20, 5]);
}

#[test]
fn a_long_line_counts_in_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("long.txt");
    write(&f, &format!("short\n{}\n", "x".repeat(3 << 20)));
    // A task's share of a 2 MiB budget on two slots is 1 MiB: the 3 MiB line does not fit.
    let ctx = ctx_with_memory(Some("2m"), false);
    let e = ctx.text_file(f.to_str().unwrap(), 1).unwrap().count().unwrap_err().to_string();
    assert!(e.contains("memory budget") && e.contains(&f.display().to_string()) && e.contains("offset 6"), "{e}");
}

#[test]
fn text_file_reads_comma_separated_paths_in_order() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("sub")).unwrap();
    write(&d.join("sub/x.txt"), "x1\nx2\n");
    write(&d.join("sub/y.txt"), "y1\n");
    write(&d.join("a.log"), "a1\n");
    write(&d.join("b.log"), "b1\n");
    write(&d.join("z.txt"), "z1\n");
    let paths = format!("{0}/z.txt,{0}/sub,{0}/*.log", d.display());
    let lines = ctx.text_file(&paths, 2).unwrap().collect().unwrap();
    assert_eq!(lines, vec!["z1", "x1", "x2", "y1", "a1", "b1"]);
    let whole = ctx.whole_text_files(&paths, 1).unwrap().keys().count().unwrap();
    assert_eq!(whole, 5);
    // Each piece must name something; the error says which.
    let e = ctx.text_file(&format!("{0}/z.txt,{0}/missing.txt", d.display()), 1).unwrap_err().to_string();
    assert!(e.contains("missing.txt"), "{e}");
    let e = ctx.text_file(&format!("{}/z.txt,", d.display()), 1).unwrap_err().to_string();
    assert!(e.contains("empty path"), "{e}");
}

#[test]
fn binary_files_gives_path_and_bytes() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.bin");
    let b = dir.path().join("b.bin.gz");
    std::fs::write(&a, [0u8, 255, 10, 13, 0]).unwrap();
    std::fs::write(&b, b"\x1f\x8b not really gzip").unwrap();
    std::fs::write(dir.path().join("_SUCCESS"), b"").unwrap();
    let mut got = ctx.binary_files(dir.path().to_str().unwrap(), 2).unwrap().collect().unwrap();
    got.sort();
    assert_eq!(
        got,
        vec![
            (a.display().to_string(), vec![0u8, 255, 10, 13, 0]),
            (b.display().to_string(), b"\x1f\x8b not really gzip".to_vec())
        ]
    );
}

#[test]
fn binary_records_cuts_files_into_fixed_length_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for (name, n) in [("a.bin", 3u32), ("b.bin", 500), ("c.bin", 0), ("d.bin", 7)] {
        let recs: Vec<Vec<u8>> = (0..n).map(|i| format!("{name}{i:05}\n").into_bytes()).collect();
        assert!(recs.iter().all(|r| r.len() == 11));
        std::fs::write(dir.path().join(name), recs.concat()).unwrap();
        expected.extend(recs);
    }
    // Tiny partitions: b.bin is cut into ranges that do not fall on record boundaries.
    for serialize in [false, true] {
        let ctx =
            ctx_conf(&[("ember.files.maxPartitionBytes", "100"), ("ember.files.openCostInBytes", "7")], serialize);
        let rdd = ctx.binary_records(dir.path().to_str().unwrap(), 11).unwrap();
        assert!(rdd.num_partitions() > 20, "{} partitions", rdd.num_partitions());
        assert_eq!(rdd.collect().unwrap(), expected);
    }
    let ctx = ctx();
    assert_eq!(ctx.binary_records(dir.path().to_str().unwrap(), 11).unwrap().collect().unwrap(), expected);
    // A length that is not a multiple of the record length is an error naming the file.
    std::fs::write(dir.path().join("e.bin"), [1u8; 12]).unwrap();
    let e = ctx.binary_records(dir.path().to_str().unwrap(), 11).unwrap_err().to_string();
    assert!(e.contains("e.bin") && e.contains("not a multiple of the record length 11"), "{e}");
    assert!(ctx.binary_records(dir.path().to_str().unwrap(), 0).is_err());
}

mod props {
    use proptest::prelude::*;

    use super::super::common::*;

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z ]{1,20}", "[a-zé漢\\t]{1,12}", "[ -~]{20,200}",]
    }

    #[test]
    fn text_file_reads_back_what_save_as_text_file_wrote() {
        // Tiny partitions: ranges end mid-line, and several part files share a partition.
        let tiny = [("ember.files.maxPartitionBytes", "200"), ("ember.files.openCostInBytes", "16")];
        let ctxs = [ctx_conf(&tiny, false), ctx_conf(&tiny, true)];
        let config = ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() };
        proptest!(config, |(lines in prop::collection::vec(line(), 0..300), parts in 1usize..7, min_parts in 1usize..9, crlf in any::<bool>())| {
            for ctx in &ctxs {
                let dir = tempfile::tempdir().unwrap();
                // A file written by hand, read with many splits.
                let f = dir.path().join("in.txt");
                let sep = if crlf { "\r\n" } else { "\n" };
                let text: String = lines.iter().map(|l| format!("{l}{sep}")).collect();
                std::fs::write(&f, text).unwrap();
                let read = ctx.text_file(f.to_str().unwrap(), min_parts).unwrap().collect().unwrap();
                prop_assert_eq!(&read, &lines);
                // Saved by Ember over `parts` partitions, then read back in order.
                let out = dir.path().join("out");
                ctx.parallelize(lines.clone(), parts).save_as_text_file(&out).unwrap();
                let back = ctx.text_file(out.to_str().unwrap(), min_parts).unwrap().collect().unwrap();
                prop_assert_eq!(&back, &lines);
                let whole = ctx.whole_text_files(out.to_str().unwrap(), 2).unwrap().values().collect().unwrap();
                prop_assert_eq!(whole.len(), parts);
            }
        });
    }
}
