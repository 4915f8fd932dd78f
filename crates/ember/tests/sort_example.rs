//! The `sort` example's job: output lines are the input lines, unchanged, in byte order.

#[path = "../../../examples/common/mod.rs"]
mod common;

use std::path::Path;

use common::sort_lines::{sort_lines, SortMode};
use ember::prelude::*;

fn ctx() -> Context {
    let conf = EmberConf::new()
        .master("local[2]")
        .and_then(|c| c.set("ember.ui.showConsoleProgress", "false"))
        .expect("valid conf");
    Context::new(conf).expect("context starts")
}

/// The lines of `text` as `text_file` reads them: split at `\n`, a `\r` before it removed, no
/// empty line after a final `\n`.
fn lines_of(text: &str) -> Vec<String> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Vec::new();
    }
    body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect()
}

/// The concatenated part files of an output directory, split into lines (each ends in `\n`).
fn output_lines(dir: &Path) -> Vec<String> {
    let mut parts: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("part-"))
        .collect();
    parts.sort();
    assert!(!parts.is_empty(), "no part files in {}", dir.display());
    let text: String = parts.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    assert!(text.is_empty() || text.ends_with('\n'), "output does not end with a newline");
    lines_of(&text)
}

/// Files with tabs, empty lines, leading spaces, a control byte below TAB, CRLF endings, Unicode,
/// very long lines and a last line without a newline. Returns the input lines.
fn write_input(dir: &Path) -> Vec<String> {
    let long_a = "x".repeat(20_000);
    let long_b = format!("{}\tvalue", "é".repeat(10_000));
    let mut seed = 7u64;
    let mut rand_line = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let words = ["b", "a\tz", " lead", "\tonly-value", "漢字", "ümlaut", "a b", "a\u{1}c", "z\t\t"];
        let n = 1 + (seed % 3) as usize;
        (0..n).map(|i| words[((seed >> (8 * i)) % words.len() as u64) as usize]).collect::<String>()
    };
    let mut texts = Vec::new();
    let mut plain = String::new();
    for i in 0..3000 {
        if i % 97 == 0 {
            plain.push('\n');
        }
        plain.push_str(&rand_line());
        plain.push('\n');
    }
    plain.push_str(&format!("{long_a}\n{long_b}\n\n  two leading\n\ttab first\nno newline at the end"));
    texts.push(("plain.txt", plain));
    let mut crlf = String::new();
    for _ in 0..2000 {
        crlf.push_str(&rand_line());
        crlf.push_str("\r\n");
    }
    crlf.push_str(&format!("{long_a}\r\n\r\nlast crlf line\r\n"));
    texts.push(("crlf.txt", crlf));
    texts.push(("empty.txt", String::new()));
    let mut all = Vec::new();
    for (name, text) in texts {
        std::fs::write(dir.join(name), &text).unwrap();
        all.extend(lines_of(&text));
    }
    all
}

#[test]
fn sort_keeps_every_input_line_and_orders_by_bytes() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut expected = write_input(&input);
    // The reference: text_file's view of the input.
    let read = ctx.text_file(input.to_str().unwrap(), 1).unwrap().collect().unwrap();
    let mut read_sorted = read.clone();
    read_sorted.sort();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(read_sorted, expected, "text_file reads the lines as written");

    let out = dir.path().join("sorted");
    sort_lines(&ctx, input.to_str().unwrap(), &out, SortMode::Line).unwrap();
    let got = output_lines(&out);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "output is not the input lines in byte order");
}

#[test]
fn sort_by_key_keeps_every_input_line_and_orders_by_key() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut expected = write_input(&input);
    let out = dir.path().join("sorted");
    sort_lines(&ctx, input.to_str().unwrap(), &out, SortMode::Key).unwrap();
    let got = output_lines(&out);
    let key = |l: &str| l.split_once('\t').map_or(l, |(k, _)| k).as_bytes().to_vec();
    for w in got.windows(2) {
        assert!(key(&w[0]) <= key(&w[1]), "{:?} before {:?}", &w[0][..w[0].len().min(40)], &w[1][..w[1].len().min(40)]);
    }
    let mut got_sorted = got;
    got_sorted.sort();
    expected.sort();
    assert!(got_sorted == expected, "output lines are not the input lines");
}
