//! Operations endpoints outside `/api`: `GET /healthz` for load balancers and `GET /metrics`
//! for Prometheus. Neither takes a token; restrict `/metrics` at the proxy if its numbers are
//! private (see the README).

use rocket::http::{ContentType, Header};
use rocket::serde::json::{json, Value};
use rocket::State;

use crate::hub::Hub;
use crate::metrics::Metrics;

/// Liveness: the process answers HTTP. It depends on nothing else, so a slow dependency can
/// never make a load balancer pull a healthy instance.
#[get("/healthz")]
pub fn healthz() -> Value {
    json!({"status": "ok"})
}

/// The exposition, in the OpenMetrics text format that Prometheus asks for first.
#[derive(Responder)]
pub struct Exposition {
    body: String,
    content_type: ContentType,
    cache: Header<'static>,
}

#[get("/metrics")]
pub fn metrics(hub: &State<Hub>, metrics: &State<Metrics>) -> Exposition {
    let (rooms, peers) = hub.counts();
    Exposition {
        body: metrics.render(rooms, peers),
        content_type: ContentType::new("application", "openmetrics-text")
            .with_params([("version", "1.0.0"), ("charset", "utf-8")]),
        cache: Header::new("Cache-Control", "no-store"),
    }
}
