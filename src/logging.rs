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
