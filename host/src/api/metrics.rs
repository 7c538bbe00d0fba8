//! `GET /metrics`: the Prometheus exposition, the HTTP request metrics (by route template),
//! and the values read at scrape time (queue depth, in-flight tasks, engines, build and
//! plugins). Metric names and recording live in `crate::metrics`; this file gathers what only
//! the API layer can see.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, handler, web::Data,
};
use serde_json::Value;

use super::AppState;
use crate::store::Status;

/// Every route of the API as a template (`{name}` stands for one path segment; the last
/// segment of `/files/{key}` takes the rest of the path). Kept equal to the routes by a test.
const ROUTES: &[&str] = &[
    "/api/health",
    "/api/ready",
    "/api/status",
    "/api/stats",
    "/api/plugins",
    "/api/plugins/reload",
    "/api/tasks",
    "/api/tasks/create",
    "/api/tasks/{task_id}",
    "/api/tasks/{task_id}/cancel",
    "/api/tasks/{task_id}/events",
    "/api/tasks/{task_id}/retry",
    "/api/tasks/{task_id}/ws",
    "/api/uploads",
    "/api/faceswap/create",
    "/api/comfyui-queue-status",
    "/api/comfyui-system-stats",
    "/api/comfyui-interrupt",
    "/api/workflows",
    "/api/workflows/{name}",
    "/files/{key}",
    "/openapi.json",
    "/docs",
    "/metrics",
];

/// The route template of a concrete path, or `other` for a path no route serves. Literal
/// segments win over `{name}` ones (`/api/tasks/create` is not `/api/tasks/{task_id}`).
pub(crate) fn route_template(path: &str) -> &'static str {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    if path.starts_with("/files/") && path.len() > "/files/".len() {
        return "/files/{key}";
    }
    // The ComfyUI gateway's routes are one template (its paths are ComfyUI's, not the API's).
    if super::comfy::is_gateway_path(path) {
        return "/comfy/{route}";
    }
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, &'static str)> = None;
    for route in ROUTES {
        let pattern: Vec<&str> = route.split('/').collect();
        if pattern.len() != segments.len() {
            continue;
        }
        let mut literal = 0;
        let matches = pattern.iter().zip(&segments).all(|(p, s)| {
            if p.starts_with('{') {
                !s.is_empty()
            } else {
                literal += 1;
                p == s
            }
        });
        if matches && best.is_none_or(|(n, _)| literal > n) {
            best = Some((literal, route));
        }
    }
    best.map_or(crate::metrics::OTHER, |(_, r)| r)
}

/// Middleware: counts and times every request by method, route template and status.
pub(crate) async fn track<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let began = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = route_template(req.uri().path());
    let answer = ep.call(req).await.map(IntoResponse::into_response);
    let status = match &answer {
        Ok(r) => r.status(),
        Err(e) => e.status(),
    };
    crate::metrics::http_request(&method, route, status.as_u16(), began);
    answer
}

/// `GET /metrics`.
#[handler]
pub(crate) async fn scrape(Data(state): Data<&Arc<AppState>>) -> Response {
    refresh(state).await;
    Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

/// The endpoint of `server.metrics_bind`: only `GET /metrics`, without API keys.
pub(crate) fn metrics_only(state: Arc<AppState>) -> impl Endpoint {
    Route::new()
        .at("/metrics", get(scrape))
        .data(state)
        .around(super::nosniff)
}

/// Sets the values read at scrape time.
async fn refresh(state: &AppState) {
    let types = state.registry.task_types();
    for t in &types {
        crate::metrics::register_task_type(&t.desc.name);
    }
    for p in state.registry.plugins() {
        crate::metrics::set_plugin_info(&p.desc.name, &p.desc.version, &p.desc.api_version);
    }
    match state.store.stats().await {
        Ok(stats) => {
            let mut names: BTreeSet<String> = types.iter().map(|t| t.desc.name.clone()).collect();
            names.extend(stats.by_type.keys().cloned());
            for name in names {
                let counts = stats.by_type.get(&name);
                for status in Status::ALL {
                    let n = counts
                        .and_then(|c| c.get(status.as_str()))
                        .copied()
                        .unwrap_or(0);
                    crate::metrics::set_queue(&name, status.as_str(), n);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: could not read the queue"),
    }
    if let Some(d) = &state.dispatcher {
        for t in &types {
            crate::metrics::set_in_flight(
                &t.desc.name,
                &t.plugin.desc.name,
                d.running_of(&t.desc.name),
                d.limit_of(t.desc.max_concurrency),
            );
        }
    }
    refresh_engines(state).await;
}

/// How long plugin health answers are reused between scrapes.
const HEALTH_TTL: Duration = Duration::from_secs(5);

/// What the last health round saw.
struct EngineCache {
    /// When it ran.
    at: Option<Instant>,
    /// Instances seen per plugin (kept, so that an engine that stops answering shows its
    /// instances down rather than gone).
    instances: BTreeMap<String, BTreeSet<String>>,
}

static ENGINES: Mutex<EngineCache> = Mutex::new(EngineCache {
    at: None,
    instances: BTreeMap::new(),
});

/// Engine gauges from each plugin's `health()` answer, at most once per [`HEALTH_TTL`]: up
/// when it answers, and per instance (`instances: [{url, reachable, inflight}]`, as the
/// ComfyUI pool reports) reachable and queue length.
async fn refresh_engines(state: &AppState) {
    {
        let mut cache = ENGINES.lock().expect("engine cache");
        if cache.at.is_some_and(|at| at.elapsed() < HEALTH_TTL) {
            return;
        }
        cache.at = Some(Instant::now());
    }
    let plugins = state.registry.plugins();
    let answers = futures_util::future::join_all(plugins.iter().map(|p| async move {
        let answer = tokio::time::timeout(Duration::from_secs(3), p.health()).await;
        (
            p.desc.name.clone(),
            matches!(answer, Ok(Ok(_))),
            answer.ok().and_then(Result::ok),
        )
    }))
    .await;
    let mut cache = ENGINES.lock().expect("engine cache");
    for (plugin, up, health) in answers {
        crate::metrics::set_engine_up(&plugin, up);
        let known = cache.instances.entry(plugin.clone()).or_default();
        let mut seen = BTreeSet::new();
        let listed = health
            .as_ref()
            .and_then(|h| h.get("instances"))
            .and_then(Value::as_array);
        for i in listed.into_iter().flatten() {
            let Some(name) = i
                .get("url")
                .or_else(|| i.get("name"))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let reachable = i.get("reachable").and_then(Value::as_bool).unwrap_or(up);
            let queue = i.get("inflight").and_then(Value::as_u64);
            crate::metrics::set_engine_instance(&plugin, name, reachable, queue);
            seen.insert(name.to_owned());
        }
        for gone in known.difference(&seen) {
            crate::metrics::set_engine_instance(&plugin, gone, false, None);
        }
        known.extend(seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_route_template() {
        for (path, route) in [
            ("/api/tasks", "/api/tasks"),
            ("/api/tasks/", "/api/tasks"),
            ("/api/tasks/create", "/api/tasks/create"),
            (
                "/api/tasks/0190c1d2-0000-7000-8000-000000000000",
                "/api/tasks/{task_id}",
            ),
            ("/api/tasks/abc/events", "/api/tasks/{task_id}/events"),
            ("/api/tasks/abc/ws", "/api/tasks/{task_id}/ws"),
            ("/files/outputs/x/y.png", "/files/{key}"),
            ("/api/workflows/basic_generation", "/api/workflows/{name}"),
            ("/metrics", "/metrics"),
            ("/", "other"),
            ("/files/", "other"),
            ("/api/tasks/a/b/c", "other"),
            ("/wp-admin/login.php", "other"),
        ] {
            assert_eq!(route_template(path), route, "{path}");
        }
    }

    /// Every route the source declares (`#[oai(path = ...)]` and `.at(...)` in `api/`) has its
    /// template in [`ROUTES`], and every template is declared.
    #[test]
    fn the_route_templates_are_the_routes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let mut declared = BTreeSet::new();
        for file in [
            "mod.rs",
            "tasks.rs",
            "system.rs",
            "seed/comfyui.rs",
            "seed/faceswap.rs",
        ] {
            let text = std::fs::read_to_string(root.join(file)).expect("read source");
            // rustfmt may wrap a long attribute: `#[oai(\n    path = ...`.
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            for marker in ["oai(path = ", "oai( path = ", ".at("] {
                for part in text.split(marker).skip(1) {
                    let Some(quoted) = part.trim_start().strip_prefix('"') else {
                        continue;
                    };
                    let path = quoted.split('"').next().unwrap_or_default();
                    let template: Vec<String> = path
                        .split('/')
                        .map(
                            |s| match s.strip_prefix(':').or_else(|| s.strip_prefix('*')) {
                                Some(name) => format!("{{{name}}}"),
                                None => s.to_owned(),
                            },
                        )
                        .collect();
                    declared.insert(template.join("/"));
                }
            }
        }
        let listed: BTreeSet<String> = ROUTES.iter().map(|r| (*r).to_owned()).collect();
        assert_eq!(declared, listed);
        for route in ROUTES {
            let concrete = route
                .replace("{task_id}", "x")
                .replace("{name}", "x")
                .replace("{key}", "k");
            assert_eq!(route_template(&concrete), *route);
        }
    }
}
