//! Operations endpoints outside `/api`: `GET /healthz` (liveness) and `GET /readyz` (readiness)
//! for load balancers and orchestrators, and `GET /metrics` for Prometheus. None takes a token;
//! restrict `/metrics` at the proxy if its numbers are private (see the README).

use rocket::http::{ContentType, Header, Status};
use rocket::serde::json::{json, Value};
use rocket::State;

use crate::error::{ApiResult, Error};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Liveness: the process answers HTTP. It depends on nothing else, so a slow store can never
/// make an orchestrator restart a healthy process; the store's state is a field for people.
#[get("/healthz")]
pub async fn healthz(hub: &State<Hub>) -> Value {
    let store = match hub.store().ready().await {
        Ok(()) => "ok",
        Err(_) => "unavailable",
    };
    json!({"status": "ok", "store": hub.store().kind(), "store_status": store})
}

/// Readiness: this instance can serve signaling, its store included. A load balancer that
/// checks it sends no one to an instance whose Redis is unreachable.
#[get("/readyz")]
pub async fn readyz(hub: &State<Hub>) -> ApiResult<(Status, Value)> {
    hub.store().ready().await?;
    Ok((
        Status::Ok,
        json!({"status": "ready", "store": hub.store().kind()}),
    ))
}

/// The exposition, in the OpenMetrics text format that Prometheus asks for first.
#[derive(Responder)]
pub struct Exposition {
    body: String,
    content_type: ContentType,
    cache: Header<'static>,
}

#[get("/metrics")]
pub async fn metrics(hub: &State<Hub>, metrics: &State<Metrics>) -> Exposition {
    // With the store down, the gauges are left out rather than reported as zero.
    let counts = hub.counts().await.map_err(|_: Error| ()).ok();
    Exposition {
        body: metrics.render(counts),
        content_type: ContentType::new("application", "openmetrics-text")
            .with_params([("version", "1.0.0"), ("charset", "utf-8")]),
        cache: Header::new("Cache-Control", "no-store"),
    }
}
