//! `chainlog-bench catalog`: log creation at scale, next to an appender on the same shard.
//!
//! The run: an appender (one append of `--record-size` bytes outstanding, on a log of its
//! own) runs alone for `--baseline` seconds; then `--concurrency` creators create `--logs`
//! new logs (`catalog-<pid>-<i>`) as fast as the target answers, while the appender goes on.
//! The report gives the create rate for each tenth of the logs (does creating get slower as
//! the catalog grows?), the creates' latency, and the appender's latency alone and during the
//! creates, from the same run (do creates hold appends up?). With one shard (`--dev 1`, the
//! default `--dev-shards 1`) every log lands on the appender's shard.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use chainlog::client::Client;
use clap::Args;
use futures_util::future::join_all;
use hdrhistogram::Histogram;

use crate::append_mode::{connect, create_logs};
use crate::report::{latency_histogram, record_latency};
use crate::target::TargetArgs;

/// Arguments of `chainlog-bench catalog`.
#[derive(Debug, Args)]
pub(crate) struct CatalogArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Logs to create.
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(10..))]
    pub(crate) logs: u32,
    /// Creates outstanding at once.
    #[arg(long, value_name = "C", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: u32,
    /// Seconds the appender runs alone before the creates start (its baseline).
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub(crate) baseline: f64,
    /// Bytes per appended record.
    #[arg(long, value_name = "BYTES", default_value_t = 128)]
    pub(crate) record_size: usize,
}

/// "p50 / p99 / max µs (n)" of `h`.
fn summary(h: &Histogram<u64>) -> String {
    format!(
        "p50 {} / p99 {} / max {} µs ({} samples)",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        h.len()
    )
}

/// Runs `chainlog-bench catalog` and prints its report.
pub(crate) fn main(args: CatalogArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(run(&args))
}

async fn run(args: &CatalogArgs) -> Result<(), String> {
    // `_guard` keeps a dev cluster up until the report is printed.
    let (addr, creator, _guard) = connect(&args.target).await?;
    let rf = args.target.rf;
    let appender = Client::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let log = create_logs(&appender, 1, rf).await?.remove(0);
    let log_id = chainlog::net::log_id_of(&log);
    let payload = vec![0x5a; args.record_size];

    // The appender: alone until `flood_started` is set, then during the creates, until
    // `flood_done`.
    let phase = RefCell::new(0u8); // 0 baseline, 1 creates, 2 done
    let alone = RefCell::new(latency_histogram());
    let during = RefCell::new(latency_histogram());
    let append_loop = async {
        while *phase.borrow() < 2 {
            let sent = Instant::now();
            appender
                .append(log_id, &[&payload])
                .await
                .map_err(|e| format!("appending to {log}: {e}"))?;
            let h = if *phase.borrow() == 0 {
                &alone
            } else {
                &during
            };
            record_latency(&mut h.borrow_mut(), sent.elapsed());
        }
        Ok::<(), String>(())
    };

    let tenth = (args.logs / 10).max(1);
    let next = RefCell::new(0u32);
    let created = RefCell::new(0u32);
    let creates = RefCell::new(latency_histogram());
    let marks = RefCell::new(Vec::new()); // (logs created, when)
    let prefix = format!("catalog-{}", std::process::id());
    let flood = async {
        tokio::time::sleep(Duration::from_secs_f64(args.baseline)).await;
        *phase.borrow_mut() = 1;
        let start = Instant::now();
        marks.borrow_mut().push((0, start));
        let creator_loop = || async {
            loop {
                let i = {
                    let mut n = next.borrow_mut();
                    if *n == args.logs {
                        return Ok::<(), String>(());
                    }
                    *n += 1;
                    *n - 1
                };
                let name = format!("{prefix}-{i}");
                let sent = Instant::now();
                creator
                    .create_log_with(&name, rf)
                    .await
                    .map_err(|e| format!("creating log {name}: {e}"))?;
                record_latency(&mut creates.borrow_mut(), sent.elapsed());
                let mut done = created.borrow_mut();
                *done += 1;
                if done.is_multiple_of(tenth) {
                    marks.borrow_mut().push((*done, Instant::now()));
                }
            }
        };
        let outcome: Result<Vec<()>, String> =
            join_all((0..args.concurrency).map(|_| creator_loop()))
                .await
                .into_iter()
                .collect();
        *phase.borrow_mut() = 2;
        outcome.map(|_| start.elapsed())
    };
    let (appended, took) = tokio::join!(append_loop, flood);
    appended?;
    let took = took?;

    println!(
        "chainlog-bench catalog: {} logs created in {:.1} s ({:.0}/s), {} at once, rf {rf}",
        args.logs,
        took.as_secs_f64(),
        f64::from(args.logs) / took.as_secs_f64(),
        args.concurrency
    );
    println!("  creates by tenth (logs created so far: creates/s in that tenth):");
    for pair in marks.borrow().windows(2) {
        let ((from, t0), (to, t1)) = (pair[0], pair[1]);
        let rate = f64::from(to - from) / (t1 - t0).as_secs_f64();
        println!("    {to:>9}: {rate:>8.0}/s");
    }
    println!("  create latency: {}", summary(&creates.borrow()));
    println!("  appender alone:          {}", summary(&alone.borrow()));
    println!("  appender during creates: {}", summary(&during.borrow()));
    let (a, d) = (alone.borrow(), during.borrow());
    if !a.is_empty() && !d.is_empty() {
        println!(
            "  appender p99 during / alone: {:.2}x",
            d.value_at_quantile(0.99) as f64 / a.value_at_quantile(0.99) as f64
        );
    }
    Ok(())
}
