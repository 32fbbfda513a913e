//! What a run measured: error tallies, delivery checks, latencies, the server's memory, progress
//! lines while it runs, and the final report as a summary or as JSON.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::http::Failure;

/// Errors by status code (or `connection`), each with the first answer seen, to say why.
#[derive(Default)]
pub struct Errors {
    by_key: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Errors {
    pub fn record(&self, failure: &Failure) {
        let mut by_key = self.by_key.lock();
        let entry = by_key
            .entry(failure.key())
            .or_insert_with(|| (0, failure.detail()));
        entry.0 += 1;
    }

    pub fn total(&self) -> u64 {
        self.by_key.lock().values().map(|(count, _)| count).sum()
    }

    fn to_json(&self) -> Value {
        let by_key = self.by_key.lock();
        Value::Object(
            by_key
                .iter()
                .map(|(key, (count, _))| (key.clone(), json!(count)))
                .collect(),
        )
    }

    fn first_answers(&self) -> Vec<String> {
        let by_key = self.by_key.lock();
        by_key
            .iter()
            .map(|(key, (count, detail))| format!("{key} ×{count}: {}", truncate(detail, 200)))
            .collect()
    }
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// Delivery faults. Every one of them must stay at 0.
#[derive(Default)]
pub struct Delivery {
    /// Accepted messages that a recipient never received (by the sequence numbers the generator
    /// writes into messages, or by counting events where a mode has no sequence numbers).
    pub lost: AtomicU64,
    /// Messages received more often than they had recipients, or received although the server
    /// refused them.
    pub duplicated: AtomicU64,
    /// Ids a mailbox skipped: the server assigned them but the stream or poll never showed them.
    pub id_gaps: AtomicU64,
    /// Ids a mailbox showed again, or out of order.
    pub id_repeats: AtomicU64,
    /// `reset` events or flags: the server said it could not continue gaplessly.
    pub resets: AtomicU64,
}

impl Delivery {
    /// Counts a recipient that should have received `expected` messages and got `received`:
    /// the shortfall as lost, the excess as duplicated.
    pub fn tally(&self, expected: u64, received: u64) {
        self.lost
            .fetch_add(expected.saturating_sub(received), Ordering::Relaxed);
        self.duplicated
            .fetch_add(received.saturating_sub(expected), Ordering::Relaxed);
    }
}

/// Checks that the ids one mailbox delivers are 1, 2, 3, … without gaps or repeats.
#[derive(Default)]
pub struct IdCheck {
    last: u64,
}

impl IdCheck {
    pub fn see(&mut self, id: u64, delivery: &Delivery) {
        if id <= self.last {
            delivery.id_repeats.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if id > self.last + 1 {
            delivery
                .id_gaps
                .fetch_add(id - self.last - 1, Ordering::Relaxed);
        }
        self.last = id;
    }

    #[cfg(test)]
    fn last(&self) -> u64 {
        self.last
    }
}

/// A short tag that keeps this run's room names apart from earlier runs' peers.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}", (nanos as u64) ^ u64::from(std::process::id()))
}

/// A latency histogram in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The server's resident memory in KiB, from `/proc/<pid>/status`.
pub fn server_rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// This process's limit on open files (soft), which bounds how many streams it can hold.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Prints `line()` to stderr every second until the returned task is aborted.
pub fn progress(line: impl Fn() -> String + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.tick().await;
        loop {
            ticks.tick().await;
            eprintln!("[{:6.1}s] {}", start.elapsed().as_secs_f64(), line());
        }
    })
}

/// The outcome of a run: named figures, in the order they were added.
pub struct Report {
    mode: &'static str,
    settings: Map<String, Value>,
    figures: Vec<(&'static str, Value, &'static str)>,
    latency: Option<Histogram<u64>>,
    lost: u64,
    duplicated: u64,
    id_gaps: u64,
    id_repeats: u64,
    resets: u64,
    errors: Value,
    error_details: Vec<String>,
}

impl Report {
    pub fn new(mode: &'static str, settings: Value, delivery: &Delivery, errors: &Errors) -> Self {
        Self {
            mode,
            settings: match settings {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            figures: Vec::new(),
            latency: None,
            lost: delivery.lost.load(Ordering::Relaxed),
            duplicated: delivery.duplicated.load(Ordering::Relaxed),
            id_gaps: delivery.id_gaps.load(Ordering::Relaxed),
            id_repeats: delivery.id_repeats.load(Ordering::Relaxed),
            resets: delivery.resets.load(Ordering::Relaxed),
            errors: errors.to_json(),
            error_details: errors.first_answers(),
        }
    }

    /// Adds a figure; `unit` is shown in the summary only.
    pub fn figure(&mut self, name: &'static str, value: impl Into<Value>, unit: &'static str) {
        self.figures.push((name, value.into(), unit));
    }

    pub fn latency(&mut self, histogram: Histogram<u64>) {
        self.latency = Some(histogram);
    }

    pub fn delivery_ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.id_gaps == 0 && self.id_repeats == 0
    }

    fn latency_ms(&self) -> Option<Value> {
        let h = self.latency.as_ref().filter(|h| !h.is_empty())?;
        let ms = |micros: u64| (micros as f64 / 10.0).round() / 100.0;
        Some(json!({
            "samples": h.len(),
            "p50": ms(h.value_at_quantile(0.50)),
            "p90": ms(h.value_at_quantile(0.90)),
            "p99": ms(h.value_at_quantile(0.99)),
            "max": ms(h.max()),
            "mean": (h.mean() / 10.0).round() / 100.0,
        }))
    }

    pub fn to_json(&self) -> String {
        let mut figures = Map::new();
        for (name, value, _) in &self.figures {
            figures.insert((*name).into(), value.clone());
        }
        let report = json!({
            "mode": self.mode,
            "settings": self.settings,
            "results": figures,
            "latency_ms": self.latency_ms(),
            "lost": self.lost,
            "duplicated": self.duplicated,
            "id_gaps": self.id_gaps,
            "id_repeats": self.id_repeats,
            "resets": self.resets,
            "errors": self.errors,
        });
        serde_json::to_string_pretty(&report).expect("a report is JSON")
    }

    pub fn to_human(&self) -> String {
        let mut out = format!("signpost-bench {}\n", self.mode);
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        out.push_str(&format!("  settings: {}\n", settings.join(" ")));
        for (name, value, unit) in &self.figures {
            let shown = match value {
                Value::Number(n) if n.is_f64() => format_number(n.as_f64().unwrap_or_default()),
                Value::Number(n) => format_number(n.as_f64().unwrap_or_default()),
                other => other.to_string(),
            };
            out.push_str(&format!("  {name:<28} {shown} {unit}\n"));
        }
        if let Some(latency) = self.latency_ms() {
            out.push_str(&format!(
                "  {:<28} p50 {} | p90 {} | p99 {} | max {} ms ({} samples)\n",
                "latency",
                latency["p50"],
                latency["p90"],
                latency["p99"],
                latency["max"],
                latency["samples"]
            ));
        }
        out.push_str(&format!(
            "  {:<28} lost {} | duplicated {} | id gaps {} | id repeats {} | resets {}\n",
            "delivery", self.lost, self.duplicated, self.id_gaps, self.id_repeats, self.resets
        ));
        if self.error_details.is_empty() {
            out.push_str(&format!("  {:<28} none\n", "errors"));
        } else {
            for detail in &self.error_details {
                out.push_str(&format!("  {:<28} {detail}\n", "errors"));
            }
        }
        out
    }
}

/// `31234.6` → `31,235`; small values keep two decimals.
pub fn format_number(value: f64) -> String {
    if value.abs() < 100.0 && value.fract() != 0.0 {
        return format!("{value:.2}");
    }
    let digits = format!("{:.0}", value.abs());
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < 0.0 {
        grouped.insert(0, '-');
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gap counts the missing ids as lost; an id seen again counts as duplicated.
    #[test]
    fn id_check_counts_gaps_and_repeats() {
        let delivery = Delivery::default();
        let mut check = IdCheck::default();
        for id in [1, 2, 5, 5, 3, 6] {
            check.see(id, &delivery);
        }
        assert_eq!(
            delivery.id_gaps.load(Ordering::Relaxed),
            2,
            "3 and 4 skipped"
        );
        assert_eq!(
            delivery.id_repeats.load(Ordering::Relaxed),
            2,
            "5 again, 3 late"
        );
        assert_eq!(check.last(), 6);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(format_number(31234.6), "31,235");
        assert_eq!(format_number(1234567.0), "1,234,567");
        assert_eq!(format_number(7.25), "7.25");
        assert_eq!(format_number(12.0), "12");
    }
}
