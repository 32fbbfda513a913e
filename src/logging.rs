//! signpost's log: one line per request, join, leave and eviction, on stderr.
//!
//! Rocket's own log is turned off (in `Rocket.toml`) because it prints request URLs, even at its
//! `critical` level, and with them
//! the `?token=` that EventSource and sendBeacon clients must use. This log prints paths without
//! their query, and never a token. The level is process-wide: it is set from the config of the
//! server that ignites last, which in practice is the only one.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed) && level != LogLevel::Off
}

pub fn info(line: fmt::Arguments<'_>) {
    if enabled(LogLevel::Info) {
        eprintln!("signpost info: {line}");
    }
}

pub fn warn(line: fmt::Arguments<'_>) {
    if enabled(LogLevel::Warn) {
        eprintln!("signpost warn: {line}");
    }
}

/// Logs a request that failed: method, path (never the query, which may hold a token), status
/// and error code (`-` when there is none). Server errors are warnings, client errors
/// information; successful requests are not logged one by one (the hub logs joins and leaves).
pub fn failed_request(method: &str, path: &str, status: u16, code: &str) {
    let line = format_args!("{method} {path} {status} {code}");
    if status >= 500 {
        warn(line);
    } else if status >= 400 {
        info(line);
    }
}
