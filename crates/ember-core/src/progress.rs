//! The console progress bar: one line on standard error for the running stages, like Spark's
//! `[Stage 3:======>   (12 + 2) / 40]`, shown only on a terminal and only for stages running
//! longer than half a second.
//!
//! Written by hand rather than with a progress-bar crate because Spark's format puts several
//! concurrent stages on one line, which per-bar templates do not express.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const SHOW_AFTER: Duration = Duration::from_millis(500);
const REFRESH: Duration = Duration::from_millis(200);
const WIDTH: usize = 80;

pub(crate) struct Progress {
    enabled: bool,
    last: Instant,
    shown: bool,
}

impl Progress {
    pub(crate) fn new(wanted: bool) -> Self {
        Progress { enabled: wanted && std::io::stderr().is_terminal(), last: Instant::now(), shown: false }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Renders rows of (stage, done, running, total, started).
    pub(crate) fn render(&mut self, rows: &[(u64, usize, usize, usize, Instant)]) {
        if !self.enabled || self.last.elapsed() < REFRESH {
            return;
        }
        let rows: Vec<_> = rows.iter().filter(|r| r.4.elapsed() >= SHOW_AFTER).take(3).collect();
        if rows.is_empty() {
            self.clear();
            return;
        }
        let width = WIDTH / rows.len();
        let line: String = rows.iter().map(|r| bar(r.0, r.1, r.2, r.3, width)).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}");
        let _ = err.flush();
        self.shown = true;
        self.last = Instant::now();
    }

    pub(crate) fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{}\r", " ".repeat(WIDTH));
            let _ = err.flush();
            self.shown = false;
        }
    }
}

/// One stage's bar, e.g. `[Stage 3:======>   (12 + 2) / 40]`.
pub(crate) fn bar(stage: u64, done: usize, running: usize, total: usize, width: usize) -> String {
    let header = format!("[Stage {stage}:");
    let tailer = format!("({done} + {running}) / {total}]");
    let w = width.saturating_sub(header.len() + tailer.len());
    let filled = (w * done).checked_div(total).unwrap_or(0);
    let mut s = header;
    for i in 0..w {
        s.push(if i < filled {
            '='
        } else if i == filled {
            '>'
        } else {
            ' '
        });
    }
    s.push_str(&tailer);
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn bar_looks_like_spark() {
        let b = super::bar(3, 12, 2, 40, 40);
        assert!(b.starts_with("[Stage 3:===="), "{b}");
        assert!(b.ends_with("(12 + 2) / 40]"), "{b}");
        assert_eq!(b.len(), 40);
    }
}
