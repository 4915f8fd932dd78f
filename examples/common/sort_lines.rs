//! The `sort` example's job, kept apart from argument handling so that it can be tested.

use std::path::Path;

use ember::prelude::*;

/// How `sort` orders lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortMode {
    /// By the line's bytes, as `LC_ALL=C sort` does.
    Line,
    /// By the text before the line's first tab (the whole line when it has none); lines with
    /// equal keys come out in no particular order. This is what Spark's sort benchmark does.
    Key,
}

/// Sorts the lines of `input` (a file, directory or glob, read by `text_file`) and writes them,
/// in order across `part-NNNNN` files, into `output`. Every output line is an input line
/// unchanged: only its position differs.
pub fn sort_lines(ctx: &Context, input: &str, output: &Path, mode: SortMode) -> ember::Result<()> {
    let lines = ctx.text_file(input, ctx.default_parallelism())?;
    match mode {
        // `String` orders by its UTF-8 bytes, which is `LC_ALL=C` order.
        SortMode::Line => lines.map(|l: String| (l, ())).sort_by_key(true, None)?.keys().save_as_text_file(output),
        // The value remembers whether the line had a tab, so that the line is rebuilt exactly.
        SortMode::Key => lines
            .map(|l: String| match l.split_once('\t') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (l, None),
            })
            .sort_by_key(true, None)?
            .map(|(k, v): (String, Option<String>)| match v {
                Some(v) => format!("{k}\t{v}"),
                None => k,
            })
            .save_as_text_file(output),
    }
}
