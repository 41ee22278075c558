//! Progress bars and a streamed result: what a running task reports while it runs.
//!
//! Run with `cargo run --release --example progress`. It shows three things:
//!
//! 1. a progress bar over a `map` of 200,000 items: one `on_progress` line;
//! 2. a progress bar over one long task that calls `offload::progress` as it goes;
//! 3. a streamed result: lines of a report, printed as the worker produces them, with the
//!    worker never more than its window of items ahead of this loop.
//!
//! The bars draw on stderr, and only when it is a terminal (indicatif hides them otherwise),
//! so the same program runs quietly in CI.

use std::time::Duration;

use futures_lite::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use offload::{ProcessPool, TaskInfo};

/// A little CPU work per item.
fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

/// One long task that says how far it is.
fn count_primes(limit: u64) -> u64 {
    let mut found = 0;
    for n in 2..limit {
        if (2..).take_while(|d| d * d <= n).all(|d| n % d != 0) {
            found += 1;
        }
        if n % 1000 == 0 {
            offload::progress(n, limit);
        }
    }
    offload::progress(limit, limit);
    found
}

/// A report produced line by line.
fn report(rows: u32) -> impl Iterator<Item = String> {
    (1..=rows).map(|row| {
        std::thread::sleep(Duration::from_millis(20));
        format!(
            "row {row:>2}: {} steps",
            collatz_steps(u64::from(row) * 7919)
        )
    })
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    offload::init();
    let pool = ProcessPool::new(2)?;
    futures_lite::future::block_on(async {
        // 1. A progress bar over a map: the callback sees the whole map's items done.
        const ITEMS: u64 = 200_000;
        let map_bar = bar(ITEMS, "map");
        let shown = map_bar.clone();
        let steps = pool
            .task(collatz_steps)
            .on_progress(move |i: &TaskInfo| shown.set_position(i.progress().unwrap().done))
            .map(1..=ITEMS)
            .await;
        map_bar.finish();
        let longest = steps.iter().filter_map(|s| s.as_ref().ok()).max().unwrap();
        println!(
            "map: {} items, the longest took {longest} steps",
            steps.len()
        );

        // 2. A progress bar over one long task.
        const LIMIT: u64 = 300_000;
        let task_bar = bar(LIMIT, "one task");
        let shown = task_bar.clone();
        let mut primes = pool
            .task(count_primes)
            .on_progress(move |i: &TaskInfo| shown.set_position(i.progress().unwrap().done))
            .spawn(LIMIT);
        let found = (&mut primes).await?;
        task_bar.finish();
        println!(
            "one task: {found} primes below {LIMIT}, last progress {:?}, pid {:?}, {:?}",
            primes.progress(),
            primes.pid(),
            primes.duration()
        );

        // 3. A streamed result, printed as it comes.
        let mut lines = pool.task(report).stream_window(4).spawn_stream(12);
        println!("stream:");
        while let Some(line) = lines.next().await {
            println!("  {}", line?);
        }
        println!("stream: {lines:?}");
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
