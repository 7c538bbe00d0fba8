//! One log line per request, and the request id that ties it to the client.
//!
//! The outermost middleware (`api::app`): it sees the final response of every request, errors
//! included. A client's `X-Request-Id` is kept when it is a sane token, otherwise one is made;
//! either way it is answered in `X-Request-Id` and carried by every log line written while the
//! request runs (a span), so a client's report can be matched to the log.
//!
//! Routes are logged by their template (`/api/tasks/{task_id}`, the same one the HTTP metrics
//! use, from `api/metrics.rs`), never their concrete path.
//!
//! The span (`request`: request id, method, route) is also the root of the request's trace
//! when traces are exported (`crate::telemetry`).

use std::{sync::Arc, time::Instant};

use poem::{Endpoint, IntoResponse, Request, Response, http::HeaderValue};
use tracing::Instrument;

/// The request-id header, accepted and answered.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// A client's request id is kept when it is 1 to 128 characters of `A-Za-z0-9._:-`.
fn client_request_id(req: &Request) -> Option<String> {
    let id = req.headers().get(REQUEST_ID)?.to_str().ok()?;
    let sane = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    sane.then(|| id.to_owned())
}

/// The middleware: runs the request inside a span carrying its id, answers the id, and writes
/// the access line (target `aihost::access`).
pub(crate) async fn observe<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let started = Instant::now();
    let method = req.method().clone();
    let route = super::metrics::route_template(req.uri().path());
    let request_id = client_request_id(&req).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route);
    let mut response = match ep.call(req).instrument(span).await {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let duration_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    if response.status().is_server_error() {
        tracing::warn!(target: "aihost::access", method = %method, route, status, duration_ms, request_id = %request_id, "request");
    } else {
        tracing::info!(target: "aihost::access", method = %method, route, status, duration_ms, request_id = %request_id, "request");
    }
    Ok(response)
}
