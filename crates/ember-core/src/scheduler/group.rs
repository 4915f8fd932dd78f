//! How many jobs of an iterative program go out as one group (`ember.scheduler.groupSize`).
//!
//! A group's tasks are scheduled in one round (and pre-scheduled across executors), so the
//! driver's per-group overhead is paid once per group; a larger group also delays what the
//! program sees between iterations (and how soon it can react). `auto` sizes groups as Drizzle
//! does, to keep the scheduling overhead under a target share of a group's time: an iteration
//! in a group of `g` takes about `c + O / g` (`c` the iteration's own work, `O` the per-group
//! overhead). After three groups of 1 and three of 4 the sizer fits `c` and `O` to the mean
//! times measured at the smallest and largest sizes tried and picks the smallest `g` with
//! `(O / g) / (c + O / g)` under the target, refitting as it measures more. A size measured
//! more than 10% slower per iteration than the fastest size measured is left (the model does
//! not hold there): for the geometric middle of the fastest and the next larger size measured
//! when they are far apart and the middle is untried, else for the fastest.

use std::collections::BTreeMap;
use std::time::Duration;

/// The share of an iteration's time spent on per-group overhead that `auto` aims to stay under.
pub const AUTO_TARGET_OVERHEAD: f64 = 0.1;

/// The largest group `auto` makes.
pub const AUTO_MAX_GROUP: usize = 128;

/// Groups of a size `auto` measures before it trusts their mean.
const SAMPLES_PER_SIZE: u32 = 3;

/// How much larger the second size `auto` tries is than the first.
const EXPLORE_FACTOR: usize = 4;

/// `ember.scheduler.groupSize`: a fixed size, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GroupSize {
    /// Always this many jobs (at least 1).
    Fixed(usize),
    /// Adapted to keep the scheduling overhead under [`AUTO_TARGET_OVERHEAD`].
    Auto,
}

impl GroupSize {
    /// Parses a positive number or `auto`.
    pub fn parse(text: &str) -> Option<GroupSize> {
        match text.trim() {
            "auto" => Some(GroupSize::Auto),
            n => n.parse::<usize>().ok().filter(|&n| (1..=1 << 20).contains(&n)).map(GroupSize::Fixed),
        }
    }
}

/// Chooses the size of each next group of an iterative program: ask [`size`](Self::size), run
/// that many jobs with [`crate::Context::run_jobs`], then report their time with
/// [`finished`](Self::finished).
#[derive(Debug, Clone)]
pub struct GroupSizer {
    mode: GroupSize,
    size: usize,
    /// Per-iteration times measured, by group size: sum of milliseconds and count.
    samples: BTreeMap<usize, (f64, u32)>,
    /// The per-group overhead and per-iteration work fitted last, in milliseconds.
    fit: Option<(f64, f64)>,
}

impl GroupSizer {
    /// A sizer for `mode`; `auto` starts at 1.
    pub fn new(mode: GroupSize) -> GroupSizer {
        let size = match mode {
            GroupSize::Fixed(n) => n.max(1),
            GroupSize::Auto => 1,
        };
        GroupSizer { mode, size, samples: BTreeMap::new(), fit: None }
    }

    /// The size of the next group.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The fitted per-group overhead and per-iteration work, in milliseconds (`auto`, once
    /// groups of two sizes ran).
    pub fn fit(&self) -> Option<(f64, f64)> {
        self.fit
    }

    /// A group of `jobs` jobs took `wall`; `auto` chooses the next size.
    pub fn finished(&mut self, jobs: usize, wall: Duration) {
        if jobs == 0 {
            return;
        }
        self.observe(jobs, wall.as_secs_f64() * 1e3 / jobs as f64);
    }

    /// An iteration in a group of `size` took `per_iter_ms`.
    pub fn observe(&mut self, size: usize, per_iter_ms: f64) {
        if self.mode != GroupSize::Auto || size == 0 || !per_iter_ms.is_finite() || per_iter_ms <= 0.0 {
            return;
        }
        let e = self.samples.entry(size).or_insert((0.0, 0));
        e.0 += per_iter_ms;
        e.1 += 1;
        if e.1 < SAMPLES_PER_SIZE {
            // One measurement is noise: this size again.
            return;
        }
        let (Some((&small, a)), Some((&large, b))) = (self.samples.first_key_value(), self.samples.last_key_value())
        else {
            return;
        };
        if small == large {
            // One size measured: try a larger one to see what grouping saves.
            self.size = (small * EXPLORE_FACTOR).min(AUTO_MAX_GROUP);
            return;
        }
        let (p_small, p_large) = (a.0 / f64::from(a.1), b.0 / f64::from(b.1));
        // p(g) = c + O / g through both points.
        let overhead = (p_small - p_large) / (1.0 / small as f64 - 1.0 / large as f64);
        let work = p_small - overhead / small as f64;
        self.fit = Some((overhead, work));
        let proposed = if overhead <= 0.0 {
            // Grouping saves nothing measurable.
            small
        } else if work <= 0.0 {
            AUTO_MAX_GROUP
        } else {
            let g = overhead * (1.0 - AUTO_TARGET_OVERHEAD) / (work * AUTO_TARGET_OVERHEAD);
            // (Less a rounding error, so that an exact fit lands on its size.)
            ((g - 1e-9).ceil() as usize).clamp(1, AUTO_MAX_GROUP)
        };
        self.size = self.measured_against(proposed);
    }

    /// `proposed`, unless it was measured slower than the fastest size measured: the model
    /// `c + O / g` does not hold there (a larger group can cost more per iteration, as held
    /// tasks and outputs pile up), so the size goes back to the fastest one, trying first the
    /// geometric middle of it and the next larger size measured when they are far apart.
    fn measured_against(&self, proposed: usize) -> usize {
        let mean =
            |g: &usize| self.samples.get(g).filter(|(_, n)| *n >= SAMPLES_PER_SIZE).map(|(sum, n)| sum / f64::from(*n));
        let Some((best, best_ms)) =
            self.samples.keys().filter_map(|g| mean(g).map(|m| (*g, m))).min_by(|a, b| a.1.total_cmp(&b.1))
        else {
            return proposed;
        };
        match mean(&proposed) {
            Some(ms) if ms > best_ms * (1.0 + SLOWER) => {
                // Between the fastest and the next larger size measured (slower, then), the
                // middle if it is far and untried.
                let above = self.samples.keys().copied().filter(|g| *g > best && mean(g).is_some()).min();
                match above {
                    Some(high) if high > best.saturating_mul(EXPLORE_FACTOR) => {
                        let middle = ((best as f64) * (high as f64)).sqrt().round() as usize;
                        let middle = middle.clamp(1, AUTO_MAX_GROUP);
                        if mean(&middle).is_none() {
                            middle
                        } else {
                            best
                        }
                    }
                    _ => best,
                }
            }
            _ => proposed,
        }
    }
}

/// How much slower than the fastest size measured a size may be before `auto` leaves it.
const SLOWER: f64 = 0.1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_fits_overhead_and_work_and_meets_the_target() {
        // An iteration costs 1 ms of work plus 2 ms of overhead per group.
        let time = |g: usize| 1.0 + 2.0 / g as f64;
        let mut s = GroupSizer::new(GroupSize::Auto);
        assert_eq!(s.size(), 1);
        for _ in 0..12 {
            let g = s.size();
            s.observe(g, time(g));
        }
        let (o, c) = s.fit().unwrap();
        assert!((o - 2.0).abs() < 1e-9 && (c - 1.0).abs() < 1e-9, "{o} {c}");
        // Overhead 2/g of 1 + 2/g under 10%: g >= 18.
        assert_eq!(s.size(), 18);
        let g = s.size();
        let share = (2.0 / g as f64) / time(g);
        assert!(share <= AUTO_TARGET_OVERHEAD, "{share}");
        // Grouping that saves nothing keeps groups small.
        let mut flat = GroupSizer::new(GroupSize::Auto);
        for g in [1, 1, 1] {
            flat.observe(g, 3.0);
        }
        assert_eq!(flat.size(), 4, "a second size is tried after three groups of the first");
        for g in [4, 4, 4] {
            flat.observe(g, 3.1);
        }
        assert_eq!(flat.size(), 1);
        // Past 16 an iteration costs more (what grouping saves is lost): once 18 measured slow,
        // the fit proposes 1, measured slower than 4; the sizer tries the middle of 4 and 18,
        // and stays there.
        let cliff = |g: usize| if g > 16 { 3.0 } else { 1.0 + 2.0 / g as f64 };
        let mut s = GroupSizer::new(GroupSize::Auto);
        let mut tried = Vec::new();
        for _ in 0..30 {
            let g = s.size();
            tried.push(g);
            s.observe(g, cliff(g));
        }
        assert!(tried.contains(&18), "the fit's size is tried: {tried:?}");
        assert_eq!(s.size(), 8, "the geometric middle of 4 and 18, the fastest measured: {tried:?}");
        let mut fixed = GroupSizer::new(GroupSize::Fixed(10));
        fixed.observe(10, 5.0);
        assert_eq!(fixed.size(), 10);
        assert_eq!(GroupSize::parse("auto"), Some(GroupSize::Auto));
        assert_eq!(GroupSize::parse("50"), Some(GroupSize::Fixed(50)));
        assert_eq!(GroupSize::parse("0"), None);
        assert_eq!(GroupSize::parse("ten"), None);
    }
}
