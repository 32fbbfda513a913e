//! signpost-bench: a load generator that drives a running signpost server over HTTP exactly as
//! its clients do (join, SSE or long-poll, POST, leave), and reports what it measured.
//!
//! ```text
//! cargo run --release --bin signpost-bench -- relay --rooms 200 --peers 2 --senders 64
//! ```
//!
//! Modes:
//! - `relay`: delivered messages per second and end-to-end latency (POST start → event parsed by
//!   its recipient), over SSE or long-poll, targeted or broadcast, closed-loop or at a fixed rate.
//! - `idle`: many idle SSE streams; the time to open them and the server's memory per stream.
//! - `churn`: joins plus leaves per second.
//! - `storm`: a reconnect storm: the server (started by the generator) restarted under N peers
//!   with open streams, every peer rejoining as signpost.js does; the time until all are back.
//! - `abuse`: one attack shape at a time against a server on its default profile, from one or
//!   more client addresses at their full default allowances: the server's memory and
//!   descriptors, and a fresh client's round-trip latency, while it lasts.
//!
//! Every mode but `abuse` checks delivery: lost and duplicated messages (from the gapless per-mailbox ids and
//! a sequence number the generator puts in each message's `data`) must be 0. Errors are counted
//! by status code. Every run is bounded in time and in count, and it only talks to the loopback
//! interface. See `docs/BENCHMARKS.md` for the server configuration (`ROCKET_PROFILE=bench`)
//! and the commands behind the published figures.
//!
//! Layout: [`options`] parses the command line, [`http`] is the client side of the API,
//! [`report`] gathers counters, latencies and the summary, and [`relay`], [`idle`], [`churn`],
//! [`storm`] and [`abuse`] are the modes.

mod abuse;
mod churn;
mod http;
mod idle;
mod options;
mod relay;
mod report;
mod storm;

use std::future::Future;
use std::process::ExitCode;

use options::Mode;
use tokio::sync::watch;

/// `work`'s output, or `None` once the run is told to stop (or its stop signal is gone): every
/// receiving loop waits on both.
async fn unless_stopped<T>(
    stop: &mut watch::Receiver<bool>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        output = work => Some(output),
        _ = stop.changed() => None,
    }
}

fn main() -> ExitCode {
    let options = match options::parse() {
        Ok(options) => options,
        Err(message) if message == options::USAGE => {
            print!("{message}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("signpost-bench: {message}\n\n{}", options::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        match options.mode.clone() {
            Mode::Relay(relay) => relay::run(&options, relay).await,
            Mode::Idle(idle) => idle::run(&options, idle).await,
            Mode::Churn(churn) => churn::run(&options, churn).await,
            Mode::Storm(storm) => storm::run(&options, storm).await,
            Mode::Abuse(abuse) => abuse::run(&options, abuse).await,
        }
    });
    match outcome {
        Ok(report) => {
            if options.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_human());
            }
            if report.delivery_ok() {
                ExitCode::SUCCESS
            } else {
                eprintln!("signpost-bench: messages were lost or duplicated");
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("signpost-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
