//! Tiny iterative jobs after Drizzle's running-sum example:
//! `running_sum ITERS TASKS [GROUP] [--trials N] [--master M]`.
//!
//! A cached input of TASKS partitions (1000 numbers each) feeds ITERS iterations. Each
//! iteration is one job: map every number to (number mod TASKS, number + offset), reduce by key
//! through a shuffle into TASKS partitions, zip the sums with the cached state of the previous
//! iteration, cache the new state and collect it. GROUP iterations are submitted at once with
//! `Context::run_jobs` (group scheduling); without GROUP the size comes from
//! `ember.scheduler.groupSize` (a number, or `auto`). Prints one line per trial:
//! `iters=.. tasks=.. group=.. total_ms=.. per_iter_ms=..` (for `auto`, `group=auto:N` with the
//! size it ended at).

mod common;

// Records are many small allocations; mimalloc handles them much faster than the system
// allocator (measured on the sort and word count benchmarks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use ember::prelude::*;
use ember::IndexPartitioner;

const PER_TASK: u64 = 1000;

fn main() {
    // Executors of a cluster master are this program started again: they stop here.
    ember::executor_entry();
    ember::init_logging();
    let usage = "running_sum ITERS TASKS [GROUP] [--trials N] [--master M]";
    let args = common::Args::parse(usage);
    let nums: Vec<u64> = args.positional.iter().filter_map(|a| a.parse().ok()).collect();
    if nums.len() < 2 || nums.len() != args.positional.len() {
        eprintln!("usage: {usage}");
        std::process::exit(2);
    }
    let trials = args.trials.unwrap_or(3);
    let (iters, tasks, group) = (nums[0] as usize, nums[1] as usize, nums.get(2).map(|&g| g.max(1) as usize));
    if let Err(e) = run(&args, iters, tasks, group, trials) {
        eprintln!("running_sum failed: {e}");
        std::process::exit(1);
    }
}

fn step(data: &Rdd<u64>, state: &Rdd<(u64, u64)>, offset: u64, tasks: usize) -> Result<Rdd<(u64, u64)>> {
    let sums = data
        .map_with((offset, tasks as u64), |&(off, n), x| ((x + off) % n, x + off))
        .reduce_by_key_with(IndexPartitioner::new(tasks), |a, b| a + b);
    sums.zip(state)?.map(|((k, inc), (_, old))| (k, old + inc)).persist(StorageLevel::MemoryOnly)
}

fn run(args: &common::Args, iters: usize, tasks: usize, group: Option<usize>, trials: usize) -> Result<()> {
    let ctx = args.context()?;
    let n = PER_TASK * tasks as u64;
    for trial in 0..=trials {
        let data = ctx.parallelize((1..=n).collect::<Vec<u64>>(), tasks).cache()?;
        let mut state = ctx
            .parallelize((0..tasks as u64).map(|k| (k, 0u64)).collect(), tasks)
            .partition_by(IndexPartitioner::new(tasks))
            .cache()?;
        data.count()?;
        state.count()?;
        let mut sizer = match group {
            Some(g) => ember::scheduler::group::GroupSizer::new(ember::scheduler::group::GroupSize::Fixed(g)),
            None => ctx.group_sizer(),
        };
        let start = Instant::now();
        let mut done = 0;
        let mut last: Vec<(u64, u64)> = Vec::new();
        while done < iters {
            let g = sizer.size().min(iters - done);
            let group_start = Instant::now();
            let mut batch = Vec::with_capacity(g);
            for j in 0..g {
                let next = step(&data, &state, (done + j) as u64 * n, tasks)?;
                batch.push(next.clone());
                state = next;
            }
            let jobs = batch.iter().map(|r| (r.clone(), collect_fn())).collect();
            let mut results = ctx.run_jobs(jobs)?;
            last = results.pop().unwrap_or_default().into_iter().flatten().collect();
            sizer.finished(g, group_start.elapsed());
            done += g;
        }
        let total_ms = start.elapsed().as_secs_f64() * 1e3;
        let t = iters as u64 * n;
        let sum: u64 = last.iter().map(|(_, v)| v).sum();
        if sum != t * (t + 1) / 2 {
            return Err(Error::Internal(format!("wrong running sum {sum}, expected {}", t * (t + 1) / 2)));
        }
        // Trial 0 warms up (thread start, page cache) and is not reported.
        if trial > 0 {
            let label = match (group, ctx.settings().group_size) {
                (Some(g), _) => g.to_string(),
                (None, ember::scheduler::group::GroupSize::Auto) => format!("auto:{}", sizer.size()),
                (None, ember::scheduler::group::GroupSize::Fixed(g)) => g.to_string(),
            };
            println!(
                "iters={iters} tasks={tasks} group={label} total_ms={total_ms:.2} per_iter_ms={:.3}",
                total_ms / iters as f64
            );
        }
    }
    Ok(())
}

fn collect_fn() -> ember::ship::Ship<dyn ember::PartitionFn<(u64, u64), Vec<(u64, u64)>>> {
    ember::ship::Ship::new(ember::rdd::CollectPartition::default())
}
