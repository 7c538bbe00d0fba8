//! Service endpoints: health, status, stats, plugins.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use poem_openapi::{Object, OpenApi, payload::Json};
use serde_json::Value;

use super::{ApiTags, AppState, error::ApiError};

/// Liveness.
#[derive(Debug, Clone, Object)]
pub(crate) struct Health {
    /// Always `ok` while the process serves requests.
    pub status: String,
}

/// A loaded plugin.
#[derive(Debug, Clone, Object)]
pub(crate) struct PluginView {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// plugin-api version it was built against.
    pub api_version: String,
    /// Description.
    pub description: String,
    /// Library file.
    pub file: String,
    /// Task types with their input schemas and concurrency limits.
    pub task_types: Vec<TaskTypeView>,
    /// Engine operations.
    pub ops: Vec<String>,
}

/// A task type.
#[derive(Debug, Clone, Object)]
pub(crate) struct TaskTypeView {
    /// Name, e.g. `imageops.transform`.
    pub name: String,
    /// Description.
    pub description: String,
    /// JSON Schema of the input.
    pub input_schema: Value,
    /// Tasks of this type that run at once in one consumer (0: host default).
    pub max_concurrency: u32,
}

/// A library that failed to load.
#[derive(Debug, Clone, Object)]
pub(crate) struct PluginFailureView {
    /// Manifest entry name, if any.
    pub name: Option<String>,
    /// Library path.
    pub file: String,
    /// Stable code, e.g. `plugin_wrong_interface`.
    pub code: String,
    /// One-line reason.
    pub message: String,
}

/// Loaded plugins and failures.
#[derive(Debug, Clone, Object)]
pub(crate) struct PluginList {
    /// Loaded plugins.
    pub plugins: Vec<PluginView>,
    /// Libraries that failed to load.
    pub failures: Vec<PluginFailureView>,
}

/// What a reload did.
#[derive(Debug, Clone, Object)]
pub(crate) struct ReloadView {
    /// Plugins newly loaded.
    pub loaded: Vec<String>,
    /// Libraries that failed this time (e.g. `plugin_needs_restart` for a replaced library).
    pub failed: Vec<PluginFailureView>,
}

/// Service status.
#[derive(Debug, Clone, Object)]
pub(crate) struct StatusView {
    /// `ok`, or `degraded` when the store, the storage or an engine is unreachable.
    pub status: String,
    /// aihost version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The task store answers and its last write succeeded (a failed write makes it false
    /// until a write succeeds again).
    pub store_ok: bool,
    /// Why `store_ok` is false; absent while it is true.
    pub store_error: Option<StoreErrorView>,
    /// The storage answers.
    pub storage_ok: bool,
    /// Pending tasks.
    pub queue_depth: u64,
    /// Attempts running in this process.
    pub running: u64,
    /// Each plugin's health answer (or its error).
    pub plugins: BTreeMap<String, Value>,
    /// Libraries that failed to load.
    pub plugin_failures: Vec<PluginFailureView>,
    /// Consumer processes heard from recently, with the task types each serves (PostgreSQL
    /// deployments; empty on SQLite).
    pub consumers: Vec<ConsumerView>,
}

/// Why the task store is failing.
#[derive(Debug, Clone, Object)]
pub(crate) struct StoreErrorView {
    /// The error code requests that need the store answer (`store_unavailable`).
    pub code: String,
    /// What the failure means: `disk_full`, `permission_denied`, `read_only`, `busy`,
    /// `io_error`, `connection_lost`, `corrupt`, or `database_error`.
    pub cause: String,
    /// The database's message of the last failure.
    pub message: String,
    /// When writes started failing (absent when only reads fail).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Writes failed since then.
    pub failed_writes: u64,
}

impl StoreErrorView {
    fn of(fault: crate::store::StoreFault) -> StoreErrorView {
        StoreErrorView {
            code: crate::error_codes::STORE_UNAVAILABLE.into(),
            cause: fault.cause.as_str().into(),
            message: fault.message,
            since: Some(fault.since),
            failed_writes: fault.failed_writes,
        }
    }
}

/// A consumer process of the deployment.
#[derive(Debug, Clone, Object)]
pub(crate) struct ConsumerView {
    /// Worker id (the `worker` recorded on the tasks it runs).
    pub worker: String,
    /// Its machine.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// aihost version.
    pub version: String,
    /// Task types it serves.
    pub task_types: Vec<String>,
    /// First announcement.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Last heartbeat.
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
}

/// Figures for dashboards.
#[derive(Debug, Clone, Object)]
pub(crate) struct StatsView {
    /// Tasks per status.
    pub by_status: BTreeMap<String, u64>,
    /// Tasks per type and status.
    pub by_type: BTreeMap<String, BTreeMap<String, u64>>,
    /// COMPLETED / (COMPLETED + FAILED).
    pub success_rate: Option<f64>,
    /// Processing time percentiles of completed tasks, milliseconds.
    pub processing_ms: BTreeMap<String, f64>,
    /// Pending tasks.
    pub queue_depth: u64,
    /// Tasks this process deleted since it started: pruned by its retention passes and
    /// removed by `DELETE /api/tasks/{id}` (other processes keep their own counts).
    pub deleted_since_start: u64,
}

fn failure_view(f: crate::plugins::LoadFailure) -> PluginFailureView {
    PluginFailureView {
        name: f.name,
        file: f.path.display().to_string(),
        code: f.code,
        message: f.message,
    }
}

/// Plugins as views.
pub(crate) fn plugin_list(state: &AppState) -> PluginList {
    PluginList {
        plugins: state
            .registry
            .plugins()
            .iter()
            .map(|p| PluginView {
                name: p.desc.name.clone(),
                version: p.desc.version.clone(),
                api_version: p.desc.api_version.clone(),
                description: p.desc.description.clone(),
                file: p.path.display().to_string(),
                task_types: p
                    .desc
                    .task_types
                    .iter()
                    .map(|t| TaskTypeView {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        input_schema: t.input_schema.clone(),
                        max_concurrency: t.max_concurrency,
                    })
                    .collect(),
                ops: p.desc.ops.iter().map(|o| o.name.clone()).collect(),
            })
            .collect(),
        failures: state
            .registry
            .failures()
            .into_iter()
            .map(failure_view)
            .collect(),
    }
}

/// `GET /api/ready` when the service can take work.
#[derive(Debug, Clone, Object)]
pub(crate) struct ReadyView {
    /// `ready`.
    pub status: String,
    /// Pending tasks.
    pub queue_depth: u64,
}

/// How long a readiness verdict is reused: probes every second cost one store ping and one
/// storage probe per this period, not per probe.
const READINESS_TTL: Duration = Duration::from_secs(2);

/// The last readiness verdict and when it was taken.
#[derive(Debug, Default)]
pub(crate) struct ReadinessCache(Mutex<Option<(Instant, Result<u64, String>)>>);

/// Checks what a load balancer needs before sending work: the store answers, storage accepts
/// a probe, and the queue is not deeper than `server.max_queue_depth`. `Ok(queue depth)` or
/// `Err(every reason, joined)`.
async fn readiness(st: &AppState) -> Result<u64, String> {
    if let Some((at, verdict)) = st.readiness.0.lock().expect("readiness lock").as_ref()
        && at.elapsed() < READINESS_TTL
    {
        return verdict.clone();
    }
    let mut problems = Vec::new();
    let mut depth = 0;
    match st.store.pending_by_type().await {
        Ok(by_type) => depth = by_type.values().sum(),
        Err(e) => {
            // The detail may name the database file: logged, not answered.
            tracing::warn!(code = e.code(), error = %e, "readiness: the task store is failing");
            problems.push(format!("the task store is failing ({})", e.code()));
        }
    }
    if let Some(fault) = st.store.health() {
        problems.push(format!(
            "task store writes are failing: {} ({})",
            fault.cause.describe(),
            fault.message
        ));
    }
    if let Err(e) = st.storage.check().await {
        tracing::warn!(code = e.code(), error = %e, "readiness: storage is failing");
        problems.push(format!("storage is failing ({})", e.code()));
    }
    if st.max_queue_depth > 0 && depth > st.max_queue_depth {
        problems.push(format!(
            "{depth} tasks are pending, more than server.max_queue_depth ({})",
            st.max_queue_depth
        ));
    }
    let verdict = if problems.is_empty() {
        Ok(depth)
    } else {
        Err(problems.join("; "))
    };
    if let Err(reason) = &verdict {
        tracing::warn!(reason = %reason, "not ready");
    }
    *st.readiness.0.lock().expect("readiness lock") = Some((Instant::now(), verdict.clone()));
    verdict
}

/// Service endpoints.
pub(crate) struct SystemApi {
    /// Shared state.
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::System")]
impl SystemApi {
    /// Liveness: answers while the process serves requests.
    #[oai(path = "/api/health", method = "get")]
    async fn health(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
        })
    }

    /// Readiness: 200 when the store and storage work and the queue is not deeper than
    /// `server.max_queue_depth`; 503 `not_ready` with the reasons otherwise. For load balancers
    /// and autoscalers; needs no API key. `/api/status` has the detail.
    #[oai(path = "/api/ready", method = "get")]
    async fn ready(&self) -> Result<Json<ReadyView>, ApiError> {
        match readiness(&self.state).await {
            Ok(queue_depth) => Ok(Json(ReadyView {
                status: "ready".into(),
                queue_depth,
            })),
            Err(reason) => Err(ApiError::new(
                poem::http::StatusCode::SERVICE_UNAVAILABLE,
                crate::error_codes::NOT_READY,
                reason,
            )),
        }
    }

    /// Detail: store, storage, plugins and their engines, queue depth, consumers. Always 200
    /// (read `status`: `ok` or `degraded`); `/api/ready` is the probe that answers 503.
    #[oai(path = "/api/status", method = "get")]
    async fn status(&self) -> Result<Json<StatusView>, ApiError> {
        let st = &self.state;
        let ping = st.store.ping().await;
        let reachable = ping.is_ok();
        let store_error = match (ping, st.store.health()) {
            (_, Some(fault)) => Some(StoreErrorView::of(fault)),
            (Err(e), None) => Some(StoreErrorView {
                code: e.code().into(),
                cause: crate::store::Cause::Other.as_str().into(),
                message: e.to_string(),
                since: None,
                failed_writes: 0,
            }),
            (Ok(()), None) => None,
        };
        let store_ok = store_error.is_none();
        let queue_depth = if reachable {
            st.store
                .pending_by_type()
                .await
                .map(|m| m.values().sum())
                .unwrap_or(0)
        } else {
            0
        };
        let storage_ok = st.storage.check().await.is_ok();
        let mut plugins = BTreeMap::new();
        let mut engines_ok = true;
        for p in st.registry.plugins() {
            let h = tokio::time::timeout(std::time::Duration::from_secs(5), p.health()).await;
            let v = match h {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    engines_ok = false;
                    serde_json::json!({"status": "error", "code": e.code.as_str(), "message": e.message.as_str()})
                }
                Err(_) => {
                    engines_ok = false;
                    serde_json::json!({"status": "error", "code": crate::error_codes::TIMEOUT, "message": "health check took over 5 s"})
                }
            };
            // Task types whose tasks wait in the queue, and why (the `availability` op).
            let waiting = crate::plugins::availability::waiting(&p, false).await;
            let mut v = v;
            if !waiting.is_empty()
                && let Some(o) = v.as_object_mut()
            {
                o.insert("waiting".into(), serde_json::json!(waiting));
            }
            plugins.insert(p.desc.name.clone(), v);
        }
        let consumers = if reachable {
            st.store
                .consumers(crate::store::CONSUMER_HEARTBEAT * 3)
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let ok = store_ok && storage_ok && engines_ok;
        Ok(Json(StatusView {
            status: if ok { "ok" } else { "degraded" }.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: st.started.elapsed().as_secs(),
            store_ok,
            store_error,
            storage_ok,
            queue_depth,
            running: st.dispatcher.as_ref().map_or(0, |d| d.running() as u64),
            plugins,
            plugin_failures: st
                .registry
                .failures()
                .into_iter()
                .map(failure_view)
                .collect(),
            consumers: consumers
                .into_iter()
                .map(|c| ConsumerView {
                    worker: c.worker,
                    hostname: c.hostname,
                    pid: c.pid,
                    version: c.version,
                    task_types: c.task_types,
                    started_at: c.started_at,
                    heartbeat_at: c.heartbeat_at,
                })
                .collect(),
        }))
    }

    /// Counts by status and type, success rate, processing-time percentiles, queue depth.
    #[oai(path = "/api/stats", method = "get")]
    async fn stats(&self) -> Result<Json<StatsView>, ApiError> {
        let s = self.state.store.stats().await?;
        let mut processing_ms = BTreeMap::new();
        for (k, v) in [
            ("p50", s.processing_ms_p50),
            ("p95", s.processing_ms_p95),
            ("p99", s.processing_ms_p99),
        ] {
            if let Some(v) = v {
                processing_ms.insert(k.to_owned(), v);
            }
        }
        Ok(Json(StatsView {
            by_status: s.by_status,
            by_type: s.by_type,
            success_rate: s.success_rate,
            processing_ms,
            queue_depth: s.queue_depth,
            deleted_since_start: self.state.retention.deleted_since_start(),
        }))
    }

    /// Loaded plugins, their task types and input schemas, and libraries that failed.
    #[oai(path = "/api/plugins", method = "get")]
    async fn plugins(&self) -> Json<PluginList> {
        Json(plugin_list(&self.state))
    }

    /// Load plugin libraries added to the plugin folder since start (no restart needed).
    /// A library that replaced an already loaded one is reported: that needs a restart.
    #[oai(path = "/api/plugins/reload", method = "post")]
    async fn reload(&self) -> Result<Json<ReloadView>, ApiError> {
        let registry = self.state.registry.clone();
        let report = tokio::task::spawn_blocking(move || registry.reload())
            .await
            .map_err(|e| {
                ApiError::new(
                    poem::http::StatusCode::INTERNAL_SERVER_ERROR,
                    crate::error_codes::INTERNAL,
                    e.to_string(),
                )
            })?;
        Ok(Json(ReloadView {
            loaded: report.loaded,
            failed: report.failed.into_iter().map(failure_view).collect(),
        }))
    }
}
