//! Operations endpoints outside `/api`: `GET /healthz` (liveness) and `GET /readyz` (readiness)
//! for load balancers and orchestrators, and `GET /metrics` for Prometheus. The health checks
//! take no token; `/metrics` asks for `metrics_token` when one is set (see the README).

use std::convert::Infallible;

use rocket::http::{ContentType, Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::serde::json::{json, Value};
use rocket::State;
use subtle::ConstantTimeEq;

use crate::api::auth::BearerHeader;
use crate::config::Config;
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

/// Whether a request may read the metrics: always without a `metrics_token`; with one, only
/// with `Authorization: Bearer <metrics_token>`.
pub struct MetricsAccess(bool);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for MetricsAccess {
    type Error = Infallible;

    async fn from_request(request: &'r Request<'_>) -> Outcome<Self, Infallible> {
        let expected = request
            .rocket()
            .state::<Config>()
            .and_then(|config| config.metrics_token.as_ref());
        let allowed = match expected {
            None => true,
            // Compared in constant time, so that the answer's timing does not spell the token.
            Some(expected) => BearerHeader::of(request)
                .as_deref()
                .is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.expose()))),
        };
        Outcome::Success(MetricsAccess(allowed))
    }
}

#[get("/metrics")]
pub async fn metrics(
    access: MetricsAccess,
    hub: &State<Hub>,
    metrics: &State<Metrics>,
) -> ApiResult<Exposition> {
    if !access.0 {
        return Err(Error::MetricsTokenRequired);
    }
    // With the store down, the gauges are left out rather than reported as zero.
    let counts = hub.counts().await.map_err(|_: Error| ()).ok();
    Ok(Exposition {
        body: metrics.render(counts),
        content_type: ContentType::new("application", "openmetrics-text")
            .with_params([("version", "1.0.0"), ("charset", "utf-8")]),
        cache: Header::new("Cache-Control", "no-store"),
    })
}
