//! Text input and output: files, directories, globs, gzip, splits, whole files, atomic saves.

use std::io::Write;

use super::common::*;

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn text_file_splits_reproduce_the_lines_in_order() {
    let ctx = ctx();
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

mod props {
    use proptest::prelude::*;

    use super::super::common::*;

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z ]{1,20}", "[a-zé漢\\t]{1,12}", "[ -~]{20,200}",]
    }

    #[test]
    fn text_file_reads_back_what_save_as_text_file_wrote() {
        let ctxs = both();
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
