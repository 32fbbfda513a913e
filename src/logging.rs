//! signpost's log: one record per failed request, join, leave and eviction, as `tracing` events
//! with target `signpost`, and the subscriber that the server binary installs to print them.
//!
//! The library only emits events; [`install`] is called by `src/main.rs` alone, because tests
//! start many servers in one process and must stay quiet. Each record on stderr carries a UTC
//! RFC 3339 timestamp, its level, the instance's name (`signpost.instance`) and its target, as a
//! line of text or, with `signpost.log_format = "json"`, as one JSON object per line.
//!
//! No record may hold a token or a query string: `EventSource` and `sendBeacon` clients must put
//! their token in the URL (`?token=`). signpost's own records print paths without their query.
//! Rocket's records arrive through the `log` crate (bridged by tracing-log) once the subscriber
//! is installed, whatever Rocket's own `log_level` says, and the request records among them
//! print whole URIs, headers or form values; [`install`] therefore drops the targets in
//! [`NEVER_LOGGED`] whatever the level or `RUST_LOG` asks for. hyper only logs through `tracing`
//! behind an unstable compile-time flag, which signpost does not set.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{Config, LogFormat, LogLevel};

/// An event of information, target `signpost`: the call sites that format a line themselves.
pub fn info(line: fmt::Arguments<'_>) {
    tracing::info!(target: "signpost", "{line}");
}

/// A warning, target `signpost`.
pub fn warn(line: fmt::Arguments<'_>) {
    tracing::warn!(target: "signpost", "{line}");
}

/// Logs a request that failed: method, path (never the query, which may hold a token), status
/// and error code (`-` when there is none). Server errors are warnings, client errors
/// information; successful requests are not logged one by one (the hub logs joins and leaves).
pub fn failed_request(method: &str, path: &str, status: u16, code: &str) {
    if status >= 500 {
        tracing::warn!(target: "signpost", %method, %path, status, %code, "request failed");
    } else if status >= 400 {
        tracing::info!(target: "signpost", %method, %path, status, %code, "request failed");
    }
}

/// Targets whose records are dropped whatever the level: each can print a request's URI (and so
/// a `?token=`), its headers (`Authorization`) or its form values. Matched as prefixes, so
/// `rocket::server` also covers Rocket's indented `rocket::server::_`.
/// - `rocket::server`: the request line (`GET /…?token=…:`), `No matching routes for …`, the
///   whole request and response at debug;
/// - `rocket::request`: a URI Rocket and hyper disagree on;
/// - `rocket::form`: every url-encoded or multipart field, value included, at trace;
/// - `rocket::local`: the local client that the front dispatches through.
pub const NEVER_LOGGED: &[&str] = &[
    "rocket::server",
    "rocket::request",
    "rocket::form",
    "rocket::local",
];

/// Whether records of `target` may be printed at all.
fn may_log(target: &str) -> bool {
    !NEVER_LOGGED.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// The filter directives for `log_level`. Up to `info`, libraries say only their warnings, and
/// Rocket only its errors: its warnings are about single requests (a missing static file for each
/// 404), which signpost already logs once as a failed request, and any client could flood the
/// log with them. `debug` lets libraries' information through, Rocket's launch banner included.
fn directives(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Off => "off",
        LogLevel::Warn => "warn,rocket=error",
        LogLevel::Info => "warn,rocket=error,signpost=info",
        LogLevel::Debug => "info,signpost=debug",
    }
}

/// The name on every record: `signpost.instance`, or `<hostname>-<pid>`.
pub fn instance_name(config: &Config) -> String {
    if let Some(instance) = &config.instance {
        return instance.clone();
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "signpost".into());
    format!("{hostname}-{}", std::process::id())
}

/// Installs the process's subscriber, printing to stderr as `config` says; `RUST_LOG`, when set,
/// replaces `log_level` with its directives (`EnvFilter` syntax). Also routes the `log` crate's
/// records (Rocket's) into it, which keeps Rocket's own printer from being installed. Call once,
/// from the binary, before the server is built; a second call changes nothing.
pub fn install(config: &Config) {
    let mut unparsed = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(rust_log) if !rust_log.trim().is_empty() => EnvFilter::try_new(&rust_log)
            .unwrap_or_else(|error| {
                unparsed = Some(error);
                EnvFilter::new(directives(config.log_level))
            }),
        _ => EnvFilter::new(directives(config.log_level)),
    };
    let format = Format {
        instance: instance_name(config),
        json: config.log_format == LogFormat::Json,
    };
    let ansi = !format.json && std::io::stderr().is_terminal();
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .event_format(format)
        .with_filter(filter.and(filter_fn(|metadata| may_log(metadata.target()))));
    if tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .is_err()
    {
        return;
    }
    if let Some(error) = unparsed {
        warn(format_args!(
            "RUST_LOG ignored, it does not parse ({error}); using signpost.log_level"
        ));
    }
}

/// The line format: text or JSON, each with the timestamp, level, instance and target.
struct Format {
    instance: String,
    json: bool,
}

impl<S, N> FormatEvent<S, N> for Format
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records bridged from the `log` crate carry their real target in fields; this reads it.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if self.json {
            let mut timestamp = String::new();
            SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
            let mut fields = JsonFields(Map::new());
            event.record(&mut fields);
            // Written key by key (a `Map` would sort them), so that every line starts with its
            // timestamp and level; `Value`'s `Display` is its JSON.
            writeln!(
                writer,
                r#"{{"timestamp":{},"level":{},"instance":{},"target":{},"fields":{}}}"#,
                Value::from(timestamp),
                Value::from(metadata.level().as_str()),
                Value::from(self.instance.as_str()),
                Value::from(metadata.target()),
                Value::Object(fields.0),
            )
        } else {
            SystemTime.format_time(&mut writer)?;
            let level = metadata.level();
            if writer.has_ansi_escapes() {
                let colour = match *level {
                    Level::ERROR => "31",
                    Level::WARN => "33",
                    Level::INFO => "32",
                    Level::DEBUG => "34",
                    Level::TRACE => "35",
                };
                write!(writer, " \x1b[{colour}m{level:>5}\x1b[0m")?;
            } else {
                write!(writer, " {level:>5}")?;
            }
            write!(writer, " {} {}: ", self.instance, metadata.target())?;
            context.format_fields(writer.by_ref(), event)?;
            writeln!(writer)
        }
    }
}

/// An event's fields as JSON values, numbers as numbers; tracing-log's `log.*` fields (the
/// bridged record's metadata, already in the target) are left out.
struct JsonFields(Map<String, Value>);

impl JsonFields {
    fn insert(&mut self, field: &Field, value: Value) {
        if !field.name().starts_with("log.") {
            self.0.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets_are_never_logged_and_their_neighbours_are() {
        for target in [
            "rocket::server",
            "rocket::server::_",
            "rocket::form::parser",
        ] {
            assert!(!may_log(target), "{target}");
        }
        for target in ["rocket", "rocket::launch", "rocket::serverless", "signpost"] {
            assert!(may_log(target), "{target}");
        }
    }
}
