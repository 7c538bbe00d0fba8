//! The service's metrics: every metric's name, type, labels and meaning ([`DEFS`]), the label
//! rules that keep their cardinality bounded, the histogram buckets, the recorder, and one
//! function per fact that the modules owning that fact call.
//!
//! Built on the `metrics` facade with `metrics-exporter-prometheus` as the recorder, without
//! its HTTP listener: `GET /metrics` (in `api`) renders [`render`]. The module stands on the
//! ground floor (it uses nothing of the crate) so that the store, storage, dispatcher and API
//! can all record what they own. Values that are read rather than counted (queue depth,
//! in-flight tasks, engines, build and plugin info) are set by the scrape handler through the
//! `set_*` functions just before it renders.
//!
//! Cardinality: no label holds a task id, a URL path or free text. Task types and plugin names
//! are bounded by what plugins register; error codes outside `[a-z0-9_]{1,64}` become
//! `other`; HTTP routes are route templates (mapped in `api`); engine instances are those a
//! plugin's configuration lists.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use ::metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Tasks accepted (a new row; an idempotent repeat is not counted).
pub(crate) const TASKS_SUBMITTED: &str = "aihost_tasks_submitted_total";
/// Attempts started (claimed by this consumer).
pub(crate) const TASKS_STARTED: &str = "aihost_tasks_started_total";
/// Tasks that reached COMPLETED.
pub(crate) const TASKS_COMPLETED: &str = "aihost_tasks_completed_total";
/// Tasks that reached FAILED, by error code.
pub(crate) const TASKS_FAILED: &str = "aihost_tasks_failed_total";
/// Failed attempts put back in the queue for another attempt, by error code.
pub(crate) const TASKS_RETRIED: &str = "aihost_tasks_retried_total";
/// Tasks that reached CANCELLED.
pub(crate) const TASKS_CANCELLED: &str = "aihost_tasks_cancelled_total";
/// Tasks whose lease expired, by what the rescue made of them.
pub(crate) const TASKS_RESCUED: &str = "aihost_tasks_rescued_total";
/// Seconds from a task's creation to the start of its first attempt.
pub(crate) const TASK_QUEUE_SECONDS: &str = "aihost_task_queue_seconds";
/// Seconds one attempt ran, by how it ended.
pub(crate) const TASK_RUN_SECONDS: &str = "aihost_task_run_seconds";
/// Tasks per type and status in the store.
pub(crate) const QUEUE_TASKS: &str = "aihost_queue_tasks";
/// Attempts running in this consumer.
pub(crate) const TASKS_IN_FLIGHT: &str = "aihost_tasks_in_flight";
/// Attempts this consumer runs at once at most.
pub(crate) const TASK_CONCURRENCY_LIMIT: &str = "aihost_task_concurrency_limit";
/// Whether a plugin's engine answers its health check.
pub(crate) const ENGINE_UP: &str = "aihost_engine_up";
/// Whether one engine instance is reachable.
pub(crate) const ENGINE_INSTANCE_UP: &str = "aihost_engine_instance_up";
/// Prompts of this service queued or running on one engine instance.
pub(crate) const ENGINE_INSTANCE_QUEUE: &str = "aihost_engine_instance_queue_length";
/// HTTP requests answered.
pub(crate) const HTTP_REQUESTS: &str = "aihost_http_requests_total";
/// Seconds to answer an HTTP request (to the response head; streams stay open after).
pub(crate) const HTTP_REQUEST_SECONDS: &str = "aihost_http_request_duration_seconds";
/// Webhook delivery attempts, by outcome.
pub(crate) const WEBHOOK_DELIVERIES: &str = "aihost_webhook_deliveries_total";
/// Seconds a task-store transaction took, from BEGIN to COMMIT.
pub(crate) const STORE_COMMIT_SECONDS: &str = "aihost_store_commit_seconds";
/// Task-store transactions that failed.
pub(crate) const STORE_COMMIT_ERRORS: &str = "aihost_store_commit_errors_total";
/// Bytes stored in object storage.
pub(crate) const STORAGE_WRITTEN_BYTES: &str = "aihost_storage_written_bytes_total";
/// Bytes read from object storage.
pub(crate) const STORAGE_READ_BYTES: &str = "aihost_storage_read_bytes_total";
/// Task event streams open now.
pub(crate) const EVENT_STREAMS_OPEN: &str = "aihost_event_streams_open";
/// Always 1; the labels carry the build.
pub(crate) const BUILD_INFO: &str = "aihost_build_info";
/// Always 1 per loaded plugin; the labels carry its version.
pub(crate) const PLUGIN_INFO: &str = "aihost_plugin_info";

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    /// The Prometheus type name.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the README test"))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric: name, kind, labels and meaning (the README's metrics table repeats these; a
/// test keeps them equal).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Def {
    /// Exposed name.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Label names.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the README test"))]
    pub labels: &'static [&'static str],
    /// Meaning (the `# HELP` line).
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Def {
    Def {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric the service exposes.
pub(crate) const DEFS: &[Def] = &[
    def(
        TASKS_SUBMITTED,
        Counter,
        &["type"],
        "Tasks accepted (a new row; an idempotent repeat is not counted).",
    ),
    def(
        TASKS_STARTED,
        Counter,
        &["type"],
        "Attempts started by this consumer (a retried task starts again).",
    ),
    def(
        TASKS_COMPLETED,
        Counter,
        &["type"],
        "Tasks that reached COMPLETED.",
    ),
    def(
        TASKS_FAILED,
        Counter,
        &["type", "code"],
        "Tasks that reached FAILED, by error code (lease_expired when the rescue gave up).",
    ),
    def(
        TASKS_RETRIED,
        Counter,
        &["type", "code"],
        "Failed attempts put back in the queue for another attempt, by error code.",
    ),
    def(
        TASKS_CANCELLED,
        Counter,
        &["type"],
        "Tasks that reached CANCELLED.",
    ),
    def(
        TASKS_RESCUED,
        Counter,
        &["type", "outcome"],
        "Tasks whose lease expired: back to the queue (retried), failed or cancelled.",
    ),
    def(
        TASK_QUEUE_SECONDS,
        Histogram,
        &["type"],
        "Seconds from a task's creation to the start of its first attempt.",
    ),
    def(
        TASK_RUN_SECONDS,
        Histogram,
        &["type", "outcome"],
        "Seconds one attempt ran, by how it ended (completed, failed, retried, cancelled, released, abandoned).",
    ),
    def(
        QUEUE_TASKS,
        Gauge,
        &["type", "status"],
        "Tasks in the store per type and status (read at scrape time).",
    ),
    def(
        TASKS_IN_FLIGHT,
        Gauge,
        &["type", "plugin"],
        "Attempts running in this consumer.",
    ),
    def(
        TASK_CONCURRENCY_LIMIT,
        Gauge,
        &["type", "plugin"],
        "Attempts of the type this consumer runs at once at most.",
    ),
    def(
        ENGINE_UP,
        Gauge,
        &["plugin"],
        "1 when the plugin's health check answers (its engine is usable), else 0.",
    ),
    def(
        ENGINE_INSTANCE_UP,
        Gauge,
        &["plugin", "instance"],
        "1 when one engine instance (e.g. a ComfyUI server of the pool) is reachable, else 0.",
    ),
    def(
        ENGINE_INSTANCE_QUEUE,
        Gauge,
        &["plugin", "instance"],
        "Prompts of this service queued or running on one engine instance.",
    ),
    def(
        HTTP_REQUESTS,
        Counter,
        &["method", "route", "status"],
        "HTTP requests answered, by route template and status.",
    ),
    def(
        HTTP_REQUEST_SECONDS,
        Histogram,
        &["method", "route"],
        "Seconds to answer an HTTP request, up to the response head.",
    ),
    def(
        WEBHOOK_DELIVERIES,
        Counter,
        &["outcome"],
        "Webhook delivery attempts: delivered (2xx), retried (error, to be tried again) or dead (dead-lettered: retry window over or URL refused).",
    ),
    def(
        STORE_COMMIT_SECONDS,
        Histogram,
        &["store"],
        "Seconds one task-store transaction took (a group commit of one or more writes).",
    ),
    def(
        STORE_COMMIT_ERRORS,
        Counter,
        &["store"],
        "Task-store transactions that failed.",
    ),
    def(
        STORAGE_WRITTEN_BYTES,
        Counter,
        &[],
        "Bytes stored in object storage (outputs, uploads, copies).",
    ),
    def(
        STORAGE_READ_BYTES,
        Counter,
        &[],
        "Bytes read from object storage (downloads, inputs).",
    ),
    def(
        EVENT_STREAMS_OPEN,
        Gauge,
        &["kind"],
        "Task event streams open now (sse or ws).",
    ),
    def(
        BUILD_INFO,
        Gauge,
        &["version"],
        "Always 1; the label is the aihost version.",
    ),
    def(
        PLUGIN_INFO,
        Gauge,
        &["plugin", "version", "api_version"],
        "Always 1 per loaded plugin; the labels are its version and plugin-api version.",
    ),
];

/// Buckets of task queue and run times: 5 ms to an hour.
const TASK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];
/// Buckets of HTTP latency: 1 ms to a minute.
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of store transactions: 100 µs to 2.5 s.
const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Label value for anything outside a bounded set.
pub(crate) const OTHER: &str = "other";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process; later calls do nothing). Until then every
/// recording is a no-op.
pub(crate) fn install() {
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for d in DEFS.iter().filter(|d| d.kind == Histogram) {
            let buckets = match d.name {
                HTTP_REQUEST_SECONDS => HTTP_BUCKETS,
                STORE_COMMIT_SECONDS => STORE_BUCKETS,
                _ => TASK_BUCKETS,
            };
            builder = builder
                .set_buckets_for_metric(Matcher::Full(d.name.to_owned()), buckets)
                .expect("buckets are not empty");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder can only be there if a test installed one: keep it.
        let _ = ::metrics::set_global_recorder(recorder);
        for d in DEFS {
            match d.kind {
                Counter => ::metrics::describe_counter!(d.name, d.help),
                Gauge => ::metrics::describe_gauge!(d.name, d.help),
                Histogram => ::metrics::describe_histogram!(d.name, d.help),
            }
        }
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        for outcome in ["delivered", "refused", "failed"] {
            counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(0);
        }
        counter!(STORAGE_WRITTEN_BYTES).increment(0);
        counter!(STORAGE_READ_BYTES).increment(0);
        for kind in ["sse", "ws"] {
            gauge!(EVENT_STREAMS_OPEN, "kind" => kind).increment(0.0);
        }
        handle
    });
}

/// Drains recorded histogram samples into their buckets; run every few seconds so that samples
/// do not pile up between scrapes.
pub(crate) async fn upkeep() {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some(h) = HANDLE.get() {
            h.run_upkeep();
        }
    }
}

/// The exposition text (empty before [`install`]).
pub(crate) fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// An error code as a label: itself when it is `[a-z0-9_]{1,64}`, else `other`.
pub(crate) fn code_label(code: &str) -> String {
    let ok = (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        code.to_owned()
    } else {
        OTHER.to_owned()
    }
}

/// A free value (engine instance) as a label: no user info of a URL, at most 128 characters.
fn instance_label(instance: &str) -> String {
    let without_user = match instance.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) if !user.contains('/') => format!("{scheme}://{host}"),
            _ => instance.to_owned(),
        },
        None => instance.to_owned(),
    };
    without_user.chars().take(128).collect()
}

fn seconds_between(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> f64 {
    (to - from).to_std().unwrap_or_default().as_secs_f64()
}

/// Makes the per-type counters of `task_type` exist at zero, so that rates start from 0.
pub(crate) fn register_task_type(task_type: &str) {
    for name in [
        TASKS_SUBMITTED,
        TASKS_STARTED,
        TASKS_COMPLETED,
        TASKS_CANCELLED,
    ] {
        counter!(name, "type" => task_type.to_owned()).increment(0);
    }
}

/// A task was accepted.
pub(crate) fn task_submitted(task_type: &str) {
    counter!(TASKS_SUBMITTED, "type" => task_type.to_owned()).increment(1);
}

/// An attempt started; for the first attempt, the time the task waited is observed.
pub(crate) fn task_started(
    task_type: &str,
    attempt: u32,
    created_at: chrono::DateTime<chrono::Utc>,
    started_at: chrono::DateTime<chrono::Utc>,
) {
    counter!(TASKS_STARTED, "type" => task_type.to_owned()).increment(1);
    if attempt == 1 {
        histogram!(TASK_QUEUE_SECONDS, "type" => task_type.to_owned())
            .record(seconds_between(created_at, started_at));
    }
}

/// How an attempt ended, for [`attempt_ended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptEnd {
    /// The task completed.
    Completed,
    /// The task failed for good.
    Failed,
    /// The attempt failed and the task waits for another.
    Retried,
    /// The task was cancelled while running.
    Cancelled,
    /// Given back at shutdown.
    Released,
    /// Nothing recorded: the lease was lost, or the store refused or failed the write.
    Abandoned,
}

impl AttemptEnd {
    fn as_str(self) -> &'static str {
        match self {
            AttemptEnd::Completed => "completed",
            AttemptEnd::Failed => "failed",
            AttemptEnd::Retried => "retried",
            AttemptEnd::Cancelled => "cancelled",
            AttemptEnd::Released => "released",
            AttemptEnd::Abandoned => "abandoned",
        }
    }
}

/// An attempt that started at `started` ended as `end`.
pub(crate) fn attempt_ended(task_type: &str, started: Instant, end: AttemptEnd) {
    histogram!(TASK_RUN_SECONDS, "type" => task_type.to_owned(), "outcome" => end.as_str())
        .record(started.elapsed().as_secs_f64());
}

/// A task reached COMPLETED.
pub(crate) fn task_completed(task_type: &str) {
    counter!(TASKS_COMPLETED, "type" => task_type.to_owned()).increment(1);
}

/// A task reached FAILED with `code`.
pub(crate) fn task_failed(task_type: &str, code: &str) {
    counter!(TASKS_FAILED, "type" => task_type.to_owned(), "code" => code_label(code)).increment(1);
}

/// A failed attempt (with `code`) went back to the queue for another.
pub(crate) fn task_retried(task_type: &str, code: &str) {
    counter!(TASKS_RETRIED, "type" => task_type.to_owned(), "code" => code_label(code))
        .increment(1);
}

/// A task reached CANCELLED.
pub(crate) fn task_cancelled(task_type: &str) {
    counter!(TASKS_CANCELLED, "type" => task_type.to_owned()).increment(1);
}

/// The rescue of expired leases changed a task to `status` (`PENDING`, `FAILED` with
/// `lease_expired`, or `CANCELLED`): counted as rescued, and as failed or cancelled too.
pub(crate) fn task_rescued(task_type: &str, status: &str, code: &str) {
    let outcome = match status {
        "FAILED" => {
            task_failed(task_type, code);
            "failed"
        }
        "CANCELLED" => {
            task_cancelled(task_type);
            "cancelled"
        }
        _ => "retried",
    };
    counter!(TASKS_RESCUED, "type" => task_type.to_owned(), "outcome" => outcome).increment(1);
}

/// A webhook delivery attempt ended: `delivered`, `retried` or `dead`.
pub(crate) fn webhook_delivery(outcome: &'static str) {
    counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

/// A task-store transaction of `store` (`sqlite`, `postgres`) that began at `began` ended.
pub(crate) fn store_commit(store: &'static str, began: Instant, ok: bool) {
    histogram!(STORE_COMMIT_SECONDS, "store" => store).record(began.elapsed().as_secs_f64());
    if !ok {
        counter!(STORE_COMMIT_ERRORS, "store" => store).increment(1);
    }
}

/// A task store of kind `store` started its committer: its error counter starts at zero.
pub(crate) fn store_opened(store: &'static str) {
    counter!(STORE_COMMIT_ERRORS, "store" => store).increment(0);
}

/// `bytes` were stored in object storage.
pub(crate) fn storage_written(bytes: u64) {
    counter!(STORAGE_WRITTEN_BYTES).increment(bytes);
}

/// `bytes` were read from object storage.
pub(crate) fn storage_read(bytes: u64) {
    counter!(STORAGE_READ_BYTES).increment(bytes);
}

/// One HTTP request answered.
pub(crate) fn http_request(method: &str, route: &'static str, status: u16, began: Instant) {
    let method = match method {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method.to_owned(),
        _ => OTHER.to_owned(),
    };
    counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route, "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_REQUEST_SECONDS, "method" => method, "route" => route)
        .record(began.elapsed().as_secs_f64());
}

/// An open task event stream; counted in [`EVENT_STREAMS_OPEN`] until dropped.
pub(crate) struct StreamGuard {
    kind: &'static str,
}

impl StreamGuard {
    /// Opens one stream of `kind` (`sse` or `ws`).
    pub(crate) fn open(kind: &'static str) -> StreamGuard {
        gauge!(EVENT_STREAMS_OPEN, "kind" => kind).increment(1.0);
        StreamGuard { kind }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        gauge!(EVENT_STREAMS_OPEN, "kind" => self.kind).decrement(1.0);
    }
}

/// Scrape time: `count` tasks of `task_type` in `status`.
pub(crate) fn set_queue(task_type: &str, status: &str, count: u64) {
    #[expect(clippy::cast_precision_loss, reason = "task counts are far below 2^53")]
    let v = count as f64;
    gauge!(QUEUE_TASKS, "type" => task_type.to_owned(), "status" => status.to_owned()).set(v);
}

/// Scrape time: attempts of `task_type` (plugin `plugin`) running here, and the limit.
pub(crate) fn set_in_flight(task_type: &str, plugin: &str, running: u32, limit: u32) {
    let labels = [
        ("type", task_type.to_owned()),
        ("plugin", plugin.to_owned()),
    ];
    gauge!(TASKS_IN_FLIGHT, &labels).set(f64::from(running));
    gauge!(TASK_CONCURRENCY_LIMIT, &labels).set(f64::from(limit));
}

/// Scrape time: a loaded plugin and its versions.
pub(crate) fn set_plugin_info(plugin: &str, version: &str, api_version: &str) {
    gauge!(PLUGIN_INFO, "plugin" => plugin.to_owned(), "version" => version.to_owned(), "api_version" => api_version.to_owned())
        .set(1.0);
}

/// Scrape time: whether `plugin`'s engine is up.
pub(crate) fn set_engine_up(plugin: &str, up: bool) {
    gauge!(ENGINE_UP, "plugin" => plugin.to_owned()).set(if up { 1.0 } else { 0.0 });
}

/// Scrape time: one engine instance of `plugin`: reachable or not, and its queue if known.
pub(crate) fn set_engine_instance(plugin: &str, instance: &str, up: bool, queue: Option<u64>) {
    let labels = [
        ("plugin", plugin.to_owned()),
        ("instance", instance_label(instance)),
    ];
    gauge!(ENGINE_INSTANCE_UP, &labels).set(if up { 1.0 } else { 0.0 });
    if let Some(q) = queue {
        #[expect(
            clippy::cast_precision_loss,
            reason = "queue lengths are far below 2^53"
        )]
        gauge!(ENGINE_INSTANCE_QUEUE, &labels).set(q as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_codes_become_other() {
        assert_eq!(code_label("my_code_1"), "my_code_1");
        assert_eq!(code_label("http_404"), "http_404");
        assert_eq!(code_label(""), OTHER);
        assert_eq!(code_label("My-Code"), OTHER);
        assert_eq!(code_label("a b"), OTHER);
        assert_eq!(code_label(&"x".repeat(65)), OTHER);
        assert_eq!(code_label(&"x".repeat(64)), "x".repeat(64));
    }

    #[test]
    fn instance_labels_lose_user_info_and_length() {
        assert_eq!(
            instance_label("http://user:pw@10.0.0.1:8188"),
            "http://10.0.0.1:8188"
        );
        assert_eq!(instance_label("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(instance_label(&"y".repeat(300)).len(), 128);
    }

    fn repo_file(path: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::read_to_string(root.join(path)).expect(path)
    }

    /// The README's "Metrics" table: (name, type, labels) per row.
    fn readme_rows() -> Vec<(String, String, Vec<String>)> {
        let readme = repo_file("README.md");
        let section = readme
            .split("\n## Metrics\n")
            .nth(1)
            .expect("a Metrics section")
            .split("\n## ")
            .next()
            .unwrap_or_default();
        section
            .lines()
            .filter(|l| l.starts_with("| `aihost_"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let unquote = |c: &str| c.trim_matches('`').to_owned();
                let labels = cells[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(unquote)
                    .collect();
                (unquote(cells[1]), cells[2].to_owned(), labels)
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_every_metric_with_its_type_and_labels() {
        let documented = readme_rows();
        let defined: Vec<(String, String, Vec<String>)> = DEFS
            .iter()
            .map(|d| {
                (
                    d.name.to_owned(),
                    d.kind.as_str().to_owned(),
                    d.labels.iter().map(|l| (*l).to_owned()).collect(),
                )
            })
            .collect();
        assert_eq!(documented, defined);
    }

    /// The metric names the dashboard's queries use, histogram series suffixes removed.
    fn dashboard_metrics() -> std::collections::BTreeSet<String> {
        fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("expr" | "query", serde_json::Value::String(e)) => out.push(e.clone()),
                            _ => exprs(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
                _ => {}
            }
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(&repo_file("deploy/grafana/aihost-dashboard.json"))
                .expect("the dashboard is JSON");
        let mut found = Vec::new();
        exprs(&dashboard, &mut found);
        assert!(!found.is_empty(), "the dashboard has queries");
        let mut names = std::collections::BTreeSet::new();
        for e in found {
            for (i, _) in e.match_indices("aihost_") {
                let name: String = e[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| DEFS.iter().any(|d| d.name == *b && d.kind == Histogram))
                    .map_or(name.clone(), str::to_owned);
                names.insert(base);
            }
        }
        names
    }

    #[test]
    fn the_dashboard_queries_only_documented_metrics() {
        let documented: std::collections::BTreeSet<String> =
            readme_rows().into_iter().map(|r| r.0).collect();
        let used = dashboard_metrics();
        let unknown: Vec<&String> = used.difference(&documented).collect();
        assert!(unknown.is_empty(), "not in README: {unknown:?}");
        for panel_topic in [
            QUEUE_TASKS,
            TASKS_COMPLETED,
            TASK_RUN_SECONDS,
            TASKS_FAILED,
            ENGINE_UP,
        ] {
            assert!(used.contains(panel_topic), "no panel uses {panel_topic}");
        }
    }

    #[test]
    fn every_metric_is_named_by_the_rules() {
        let mut names = std::collections::BTreeSet::new();
        for d in DEFS {
            assert!(names.insert(d.name), "{} twice", d.name);
            assert!(d.name.starts_with("aihost_"), "{}", d.name);
            assert!(
                d.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                d.name
            );
            assert_eq!(
                d.kind == Counter,
                d.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                d.name
            );
            for l in d.labels {
                assert!(*l != "task_id" && *l != "id", "{}: no task ids", d.name);
            }
        }
    }
}
