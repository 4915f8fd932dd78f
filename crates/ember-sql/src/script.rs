//! SQL scripts: splitting text into statements at `;`, never inside a string, a quoted
//! identifier or a comment.

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's text, trimmed, without its `;`.
    pub text: String,
    /// The 1-based line of the script it starts on.
    pub line: usize,
    /// The 1-based column (in bytes) of that line it starts at.
    pub column: usize,
}

/// Where a scan of SQL text stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Code,
    /// Inside '...' (with '' as an escaped quote).
    Single,
    /// Inside "..." (a quoted identifier).
    Double,
    /// Inside a `--` comment, up to the end of the line.
    Line,
    /// Inside /* ... */.
    Block,
}

/// Scans `text`, calling `on_end(i)` at every `;` that ends a statement (byte offset `i`).
/// Returns the state at the end.
fn scan(text: &str, mut on_end: impl FnMut(usize)) -> State {
    let bytes = text.as_bytes();
    let mut state = State::Code;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        match state {
            State::Code => match c {
                b'\'' => state = State::Single,
                b'"' => state = State::Double,
                b'-' if next == Some(b'-') => {
                    state = State::Line;
                    i += 1;
                }
                b'/' if next == Some(b'*') => {
                    state = State::Block;
                    i += 1;
                }
                b';' => on_end(i),
                _ => {}
            },
            State::Single => {
                if c == b'\'' {
                    if next == Some(b'\'') {
                        i += 1;
                    } else {
                        state = State::Code;
                    }
                }
            }
            State::Double => {
                if c == b'"' {
                    state = State::Code;
                }
            }
            State::Line => {
                if c == b'\n' {
                    state = State::Code;
                }
            }
            State::Block => {
                if c == b'*' && next == Some(b'/') {
                    state = State::Code;
                    i += 1;
                }
            }
        }
        i += 1;
    }
    state
}

/// Whether `text` holds only whitespace and comments.
fn is_blank(text: &str) -> bool {
    let mut blank = true;
    let mut state = State::Code;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let (c, next) = (bytes[i], bytes.get(i + 1).copied());
        match state {
            State::Code if c == b'-' && next == Some(b'-') => {
                state = State::Line;
                i += 1;
            }
            State::Code if c == b'/' && next == Some(b'*') => {
                state = State::Block;
                i += 1;
            }
            State::Code if !c.is_ascii_whitespace() => blank = false,
            State::Line if c == b'\n' => state = State::Code,
            State::Block if c == b'*' && next == Some(b'/') => {
                state = State::Code;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    blank
}

/// Splits a script into statements. A last statement without its `;` counts; empty statements
/// (`;;`, comments alone) are skipped.
pub fn split_statements(text: &str) -> Vec<Statement> {
    let mut ends = Vec::new();
    scan(text, |i| ends.push(i));
    ends.push(text.len());
    let mut out = Vec::new();
    let mut start = 0;
    for end in ends {
        if end < start {
            continue;
        }
        let piece = &text[start..end];
        if !is_blank(piece) {
            let lead = piece.len() - piece.trim_start().len();
            let before = &text[..start + lead];
            let line = 1 + before.bytes().filter(|&b| b == b'\n').count();
            let column = 1 + before.len() - before.rfind('\n').map_or(0, |i| i + 1);
            out.push(Statement { text: piece.trim().to_string(), line, column });
        }
        start = end + 1;
    }
    out
}

/// Whether `buffer` ends a statement: it has a `;` outside strings and comments, after which
/// only whitespace and comments follow. A REPL keeps reading lines until it does.
pub fn is_complete(buffer: &str) -> bool {
    let mut last = None;
    let end = scan(buffer, |i| last = Some(i));
    match last {
        Some(i) => matches!(end, State::Code | State::Line) && is_blank(&buffer[i + 1..]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        split_statements(s).into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn semicolons_in_strings_identifiers_and_comments_do_not_split() {
        let script = "select 'a;b', \"c;d\" -- e;f\nfrom t; /* g;h */ select 'it''s;' ;\n-- tail;\n";
        assert_eq!(texts(script), vec!["select 'a;b', \"c;d\" -- e;f\nfrom t", "/* g;h */ select 'it''s;'"]);
    }

    #[test]
    fn a_last_statement_needs_no_semicolon_and_blank_ones_are_skipped() {
        assert_eq!(texts("select 1;; ;\n select 2"), vec!["select 1", "select 2"]);
        assert!(texts("  -- only a comment\n/* and this */ ").is_empty());
    }

    #[test]
    fn statements_know_their_line() {
        let s = split_statements("select 1;\n\n  select\n 2;");
        assert_eq!(s[0].line, 1);
        assert_eq!((s[1].line, s[1].column), (3, 3));
        assert_eq!(s[0].column, 1);
    }

    #[test]
    fn a_buffer_is_complete_at_a_semicolon_outside_strings() {
        assert!(is_complete("select 1;"));
        assert!(is_complete("select 1; -- done"));
        assert!(!is_complete("select ';"));
        assert!(!is_complete("select 1 -- ;"));
        assert!(!is_complete("select 1; select"));
        assert!(!is_complete("select /* ; */ 1"));
        assert!(is_complete("select 'a;''b';\n"));
    }
}
