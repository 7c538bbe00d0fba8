//! The HTTP API: poem-openapi services, the plain poem handlers for files,
//! uploads and WebSocket, and the middleware every route shares (API keys, body limit, the one
//! error shape).

use std::{sync::Arc, time::Instant};

use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get,
    http::{Method, StatusCode, header},
    post,
    web::Html,
};
use poem_openapi::{OpenApiService, Tags};

use crate::{dispatcher::Dispatcher, plugins::Registry, storage::Storage, store::TaskStore};

mod access_log;
pub(crate) mod comfy;
pub(crate) mod conn;
pub(crate) mod console;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod files;
mod ids;
mod input_check;
pub(crate) mod listen;
pub(crate) mod metrics;
pub(crate) mod seed;
pub(crate) mod spec;
pub(crate) mod system;
pub(crate) mod tasks;
pub(crate) mod webhooks;

/// Tags grouping the operations in `/docs`.
#[derive(Tags)]
pub(crate) enum ApiTags {
    /// Submit and follow tasks.
    Tasks,
    /// Health, status, statistics and plugins.
    System,
}

/// Everything a request handler needs.
pub(crate) struct AppState {
    /// Task state.
    pub store: Arc<dyn TaskStore>,
    /// Loaded plugins.
    pub registry: Arc<Registry>,
    /// Output and upload storage.
    pub storage: Storage,
    /// Deletion of tasks and their files (`DELETE /api/tasks/{id}`), and the count of tasks
    /// deleted since start for `/api/stats`.
    pub retention: Arc<crate::retention::Retention>,
    /// The consumer of this process, if it runs one.
    pub dispatcher: Option<Arc<Dispatcher>>,
    /// Accepted API keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Readiness answers 503 above this many pending tasks (0: no limit).
    pub max_queue_depth: u64,
    /// Origins allowed to call the API from a browser (empty: CORS off).
    pub cors_origins: Vec<String>,
    /// The last readiness verdict, reused for a moment so probes stay cheap.
    pub readiness: system::ReadinessCache,
    /// Largest JSON body.
    pub max_body_bytes: u64,
    /// Largest upload.
    pub max_upload_bytes: u64,
    /// Submits get 429 above this many pending tasks (0: no limit).
    pub max_pending: u64,
    /// `max_attempts` when a request gives none.
    pub default_max_attempts: u32,
    /// Public base URL of this service.
    pub public_url: String,
    /// The fetcher, whose SSRF rules `webhook_url` must pass at submit (none only in the
    /// throwaway state `aihost openapi` builds to print the document).
    pub fetcher: Option<crate::fetch::Fetcher>,
    /// Process start.
    pub started: Instant,
    /// One permit per SSE or WebSocket subscriber (`server.max_streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// One permit per upload being streamed (`server.max_concurrent_uploads`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// The ComfyUI gateway's `queue_remaining`, counted at most twice a second (clients poll
    /// it and every socket announces it).
    pub comfy_remaining: comfy::RemainingCache,
    /// With `include=input`, a task page stops once its inputs reach this many bytes.
    pub max_list_input_bytes: u64,
    /// `server.max_inline_output_bytes`: the most output bytes `outputs=base64` answers.
    pub max_inline_output_bytes: u64,
}

/// A semaphore of `n` permits (at most tokio's maximum).
pub(crate) fn permits(n: u64) -> Arc<tokio::sync::Semaphore> {
    let n = usize::try_from(n)
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    Arc::new(tokio::sync::Semaphore::new(n))
}

/// The OpenAPI service (operations documented by poem-openapi).
pub(crate) fn openapi(
    state: Arc<AppState>,
) -> OpenApiService<
    (
        tasks::TasksApi,
        system::SystemApi,
        seed::faceswap::FaceswapApi,
        webhooks::WebhooksApi,
    ),
    (),
> {
    OpenApiService::new(
        (
            tasks::TasksApi {
                state: state.clone(),
            },
            system::SystemApi {
                state: state.clone(),
            },
            seed::faceswap::FaceswapApi {
                state: state.clone(),
            },
            webhooks::WebhooksApi {
                state: state.clone(),
            },
        ),
        "aihost",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "AI engines behind one REST API. Submit a task of any registered type, follow it over \
         SSE or WebSocket, fetch its outputs. The input schema of every installed task type is \
         part of this document.",
    )
    .server(state.public_url.clone())
}

/// The whole application: API, docs, spec, files, uploads, WebSocket, with middleware.
pub(crate) fn app(state: Arc<AppState>) -> impl Endpoint {
    let service = openapi(state.clone());
    let base_spec = service.spec();
    let docs = spec::Docs::new(base_spec, service.swagger_ui_html(), state.registry.clone());
    let docs_html = docs.clone();
    let docs_json = docs.clone();
    let docs_allow = docs.clone();
    let auth_state = state.clone();
    let limit_state = state.clone();
    let cors_origins = state.cors_origins.clone();
    let public_url = state.public_url.clone();
    seed::comfyui::mount(Route::new().nest("/", service))
        .nest(comfy::PREFIX, comfy::routes())
        .at("/api/uploads", post(files::upload))
        .at("/api/tasks/:task_id/ws", get(events::task_ws))
        .at("/files/*key", get(files::get_file))
        .at("/metrics", get(metrics::scrape))
        .at(
            "/openapi.json",
            get(poem::endpoint::make_sync(move |_| {
                Response::builder()
                    .content_type("application/json")
                    .body(docs_json.spec_json())
            })),
        )
        .at(
            "/docs",
            get(poem::endpoint::make_sync(move |_| Html(docs_html.html()))),
        )
        .data(state)
        .around(console::serve)
        .around(move |ep, req| {
            let st = auth_state.clone();
            async move {
                comfy::check_origin(&st, &req).map_or(Ok(()), Err)?;
                check_api_key(&st, &req).map_or(Ok(()), Err)?;
                ep.call(req).await.map(IntoResponse::into_response)
            }
        })
        .around(move |ep, req| {
            let st = limit_state.clone();
            async move { limit_body(&st, ep, req).await }
        })
        .catch_all_error(|err| async move { error::normalize(err) })
        .with_if(!cors_origins.is_empty(), cors(&cors_origins, &public_url))
        .catch_all_error(|err| async move { error::normalize(err) })
        .around(move |ep, req| {
            let docs = docs_allow.clone();
            async move {
                let path = req.uri().path().to_owned();
                let mut resp = ep.call(req).await?.into_response();
                // RFC 9110: a 405 lists the methods the resource answers.
                if resp.status() == StatusCode::METHOD_NOT_ALLOWED
                    && let Some(allow) = docs.allowed_methods(&path)
                    && let Ok(value) = header::HeaderValue::from_str(&allow)
                {
                    resp.headers_mut().insert(header::ALLOW, value);
                }
                Ok(resp)
            }
        })
        .around(metrics::track)
        .around(access_log::observe)
        .around(nosniff)
}

/// `X-Content-Type-Options: nosniff` on every answer, errors included, so that no browser
/// guesses a type the service did not state.
pub(crate) async fn nosniff<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let mut resp = match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    };
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// CORS for `server.cors_origins`: preflight requests are answered here (before the API-key
/// check, which browsers cannot pass on a preflight), and answers carry the CORS headers. The
/// service's own origin (`server.public_url`) is always allowed, so `/docs` keeps working.
fn cors(origins: &[String], public_url: &str) -> poem::middleware::Cors {
    let cors = poem::middleware::Cors::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-api-key"),
            header::HeaderName::from_static("idempotency-key"),
            header::HeaderName::from_static(access_log::REQUEST_ID),
        ])
        .expose_headers([
            header::HeaderName::from_static(access_log::REQUEST_ID),
            header::RETRY_AFTER,
            header::CONTENT_RANGE,
        ])
        .max_age(600);
    if origins.iter().any(|o| o == "*") {
        cors
    } else {
        let own = url::Url::parse(public_url)
            .ok()
            .map(|u| u.origin().ascii_serialization());
        cors.allow_origins(origins.iter().cloned().chain(own))
    }
}

/// Requires a key on `/api/*` except the probes `/api/health` and `/api/ready`, on
/// `/metrics` and on the ComfyUI gateway `/comfy/*`, when keys are configured: header
/// `Authorization: Bearer KEY` or `X-API-Key: KEY` (on `/comfy/*` also `?token=KEY`).
fn check_api_key(state: &AppState, req: &Request) -> Option<poem::Error> {
    if state.api_keys.is_empty() {
        return None;
    }
    let path = req.uri().path();
    let gateway = comfy::is_gateway_path(path);
    if !(path.starts_with("/api/") || path == "/metrics" || gateway)
        || path == "/api/health"
        || path == "/api/ready"
    {
        return None;
    }
    let headers = req.headers();
    // The ComfyUI gateway also takes the key as `?token=` (its clients often cannot set
    // headers); the access log names routes, never queries, so the key is not logged.
    let token = gateway
        .then(|| req.uri().query().and_then(comfy::query_token))
        .flatten();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .or(token.as_deref());
    let ok = given.is_some_and(|g| key_matches(&state.api_keys, g));
    if ok {
        None
    } else {
        let msg = if given.is_some() {
            "the API key is not valid"
        } else {
            "an API key is required (Authorization: Bearer KEY)"
        };
        Some(poem::Error::from_response(error::error_response(
            StatusCode::UNAUTHORIZED,
            crate::error_codes::UNAUTHORIZED,
            msg,
        )))
    }
}

/// Whether `given` is one of `keys`, in time that depends on neither the keys' lengths nor
/// where they differ: the SHA-256 digests (always 32 bytes) are compared in constant time
/// (`subtle`), and every key is compared, with no early return.
fn key_matches(keys: &[String], given: &str) -> bool {
    use sha2::{Digest as _, Sha256};
    use subtle::ConstantTimeEq as _;
    let given = Sha256::digest(given.as_bytes());
    let mut found = subtle::Choice::from(0);
    for key in keys {
        found |= Sha256::digest(key.as_bytes()).ct_eq(&given);
    }
    found.into()
}

/// Caps JSON bodies at `max_body_bytes` (uploads have their own limit): 413 from the
/// Content-Length alone when it is given, else while reading.
async fn limit_body<E: Endpoint>(
    state: &AppState,
    ep: Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    let is_upload = req.uri().path() == "/api/uploads" || comfy::is_upload_path(req.uri().path());
    let limit = if is_upload {
        state.max_upload_bytes.saturating_add(1 << 20)
    } else {
        state.max_body_bytes
    };
    let too_large = || {
        poem::Error::from_response(error::error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            crate::error_codes::BODY_TOO_LARGE,
            &if is_upload {
                format!(
                    "the upload is over the limit of {} bytes",
                    state.max_upload_bytes
                )
            } else {
                format!("the body is over the limit of {limit} bytes")
            },
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let is_faceswap = req.uri().path() == "/api/faceswap/create";
    let is_create =
        (req.uri().path() == "/api/tasks" || is_faceswap) && *req.method() == Method::POST;
    let mut create_body = None;
    if is_create
        || (declared.is_none()
            && !is_upload
            && matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH))
    {
        let body = req.take_body();
        match body
            .into_bytes_limit(usize::try_from(limit).unwrap_or(usize::MAX))
            .await
        {
            Ok(bytes) => {
                if is_create {
                    // poem-openapi reads a number or a boolean as a string field; the
                    // envelope's string fields must be strings.
                    if let Some(msg) = wrong_string_fields(&bytes, is_faceswap) {
                        return Err(poem::Error::from_response(error::error_response(
                            StatusCode::BAD_REQUEST,
                            crate::error_codes::INVALID_BODY,
                            &msg,
                        )));
                    }
                    create_body = Some(bytes.clone());
                }
                req.set_body(bytes)
            }
            Err(poem::error::ReadBodyError::PayloadTooLarge) => return Err(too_large()),
            Err(e) => return Err(e.into()),
        }
    }
    match ep.call(req).await {
        Ok(r) => Ok(r.into_response()),
        // poem-openapi's message does not name the field: look at the body again (only on
        // this error path, so a good request is parsed once).
        Err(e) if e.is::<poem_openapi::error::ParseRequestPayloadError>() => {
            match create_body
                .as_deref()
                .filter(|_| !is_faceswap)
                .map(check_create_envelope)
            {
                Some(Err(msg)) => Err(poem::Error::from_response(error::error_response(
                    StatusCode::BAD_REQUEST,
                    crate::error_codes::INVALID_BODY,
                    &msg,
                ))),
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The merged OpenAPI document as pretty JSON (what `/openapi.json` serves).
pub(crate) fn openapi_document(state: Arc<AppState>) -> String {
    let base = openapi(state.clone()).spec();
    serde_json::to_string_pretty(&spec::merge(&base, &state.registry)).unwrap_or_default()
}

/// The first string field of a create's envelope that holds a number or a boolean (which
/// poem-openapi would read as its text), as a message naming it.
fn wrong_string_fields(bytes: &[u8], faceswap: bool) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let obj = value.as_object()?;
    let fields: &[&str] = if faceswap {
        &[
            "source_url",
            "target_url",
            "resolution",
            "media_type",
            "webhook_url",
            "idempotency_key",
        ]
    } else {
        &["type", "webhook_url", "idempotency_key"]
    };
    fields.iter().find_map(|f| {
        obj.get(*f)
            .filter(|v| v.is_number() || v.is_boolean())
            .map(|v| format!("field `{f}` must be a string, found {v}"))
    })
}

/// Checks the envelope of `POST /api/tasks` after poem-openapi refused it, so that a wrong type
/// is reported with the field's name (poem-openapi's message omits it).
fn check_create_envelope(bytes: &[u8]) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    let expect = |field: &str, what: &str, ok: bool| -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(format!(
                "field `{field}` must be {what}, found {}",
                obj[field]
            ))
        }
    };
    for (field, v) in obj {
        match field.as_str() {
            "type" => expect(field, "a string", v.is_string())?,
            "priority" => expect(
                field,
                "an integer",
                v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()) || v.is_null(),
            )?,
            "max_attempts" => expect(
                field,
                "an integer from 1 to 100",
                v.as_u64().is_some_and(|n| (1..=100).contains(&n)) || v.is_null(),
            )?,
            "webhook_url" | "idempotency_key" => {
                expect(field, "a string", v.is_string() || v.is_null())?
            }
            "webhook_events" => expect(
                field,
                "an array of event names",
                v.is_null()
                    || v.as_array()
                        .is_some_and(|a| a.iter().all(serde_json::Value::is_string)),
            )?,
            _ => {}
        }
    }
    for required in ["type", "input"] {
        if !obj.contains_key(required) {
            return Err(format!("field `{required}` is required"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::key_matches;

    #[test]
    fn api_keys_match_only_exactly() {
        let keys = vec![
            "short".to_owned(),
            "a-much-longer-key-0123456789".to_owned(),
        ];
        assert!(key_matches(&keys, "short"));
        assert!(key_matches(&keys, "a-much-longer-key-0123456789"));
        for wrong in ["", "shor", "shortt", "Short", "a-much-longer-key-012345678"] {
            assert!(!key_matches(&keys, wrong), "{wrong:?}");
        }
        assert!(!key_matches(&[], "short"));
    }
}
