//! Trace export: with `log.otlp_endpoint` set, a task submitted over HTTP leaves one trace in
//! an OTLP/HTTP collector: the `request` span of `POST /api/tasks`, the attempt's `task` span
//! as its child (carried through the task row), and `plugin.run_task` under that; the spans
//! still batched are sent when the process stops. The same holds when an API process takes the
//! request and a consumer process runs the task. Without the switch nothing is sent.
//!
//! The collector is a few lines of poem in the test, decoding the protobuf body with the
//! generated OTLP types; it runs on a thread of its own so that a test blocked on the server's
//! exit cannot stall it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aihost_tests::{Options, Server, TestDatabase, wait_for};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, any_value::Value as Any},
};
use poem::{
    EndpointExt as _, Request, Response, Route, handler, http::StatusCode, listener::TcpAcceptor,
    post, web::Data,
};
use prost::Message as _;
use serde_json::json;

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct SeenSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
    service_name: Option<String>,
}

#[derive(Default)]
struct Received {
    spans: Vec<SeenSpan>,
    /// Content types of the export requests.
    content_types: Vec<String>,
}

/// An OTLP/HTTP traces collector on a free port.
struct Collector {
    url: String,
    received: Arc<Mutex<Received>>,
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[handler]
async fn traces(
    req: &Request,
    body: poem::Body,
    Data(received): Data<&Arc<Mutex<Received>>>,
) -> Response {
    let content_type = req.content_type().unwrap_or_default().to_owned();
    let bytes = body.into_bytes().await.unwrap_or_default();
    let Ok(export) = ExportTraceServiceRequest::decode(bytes.as_ref()) else {
        return Response::builder().status(StatusCode::BAD_REQUEST).finish();
    };
    let mut received = received.lock().unwrap();
    received.content_types.push(content_type);
    for resource_spans in export.resource_spans {
        let service_name = resource_spans.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
        });
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.spans.push(SeenSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    Response::builder()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collector {
    fn start() -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Route::new()
            .at("/v1/traces", post(traces))
            .data(received.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let acceptor = TcpAcceptor::from_std(listener).unwrap();
                let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
            });
        });
        Collector {
            url: format!("http://127.0.0.1:{port}/v1/traces"),
            received,
        }
    }

    fn spans(&self) -> Vec<SeenSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    fn posts(&self) -> usize {
        self.received.lock().unwrap().content_types.len()
    }
}

/// The three spans of one task's trace, once all of them arrived: (request, task, plugin).
fn trace_of(spans: &[SeenSpan], task_id: &str) -> Result<(SeenSpan, SeenSpan, SeenSpan), String> {
    let seen = || {
        spans
            .iter()
            .map(|s| format!("{} {}<-{}", s.name, s.span_id, s.parent_span_id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let task = spans
        .iter()
        .find(|s| {
            s.name == "task" && s.attributes.get("task_id").map(String::as_str) == Some(task_id)
        })
        .ok_or_else(|| format!("no task span yet; seen: {}", seen()))?;
    let plugin = spans
        .iter()
        .find(|s| s.name == "plugin.run_task" && s.parent_span_id == task.span_id)
        .ok_or_else(|| {
            format!(
                "no plugin.run_task span under the task yet; seen: {}",
                seen()
            )
        })?;
    let request = spans
        .iter()
        .find(|s| s.span_id == task.parent_span_id)
        .ok_or_else(|| format!("no span is the task's parent yet; seen: {}", seen()))?;
    Ok((request.clone(), task.clone(), plugin.clone()))
}

/// Checks the spans' names, attributes and trace; `services` are the `service.name`s of the
/// process that took the request and of the one that ran the task.
fn check_trace(request: &SeenSpan, task: &SeenSpan, plugin: &SeenSpan, services: [&str; 2]) {
    assert_eq!(request.name, "request");
    assert_eq!(request.attributes["route"], "/api/tasks");
    assert_eq!(request.attributes["method"], "POST");
    assert!(!request.attributes["request_id"].is_empty());
    assert_eq!(task.attributes["task_type"], "testkit.run");
    assert_eq!(task.attributes["attempt"], "1");
    assert_eq!(plugin.attributes["plugin"], "testkit");
    for s in [request, task, plugin] {
        assert_eq!(s.trace_id, request.trace_id, "one trace: {s:?}");
    }
    assert_eq!(request.service_name.as_deref(), Some(services[0]));
    assert_eq!(task.service_name.as_deref(), Some(services[1]));
    assert_eq!(plugin.service_name.as_deref(), Some(services[1]));
    assert!(request.parent_span_id.is_empty(), "the request is the root");
    assert_ne!(request.trace_id, "0".repeat(32));
}

#[tokio::test]
async fn a_task_continues_the_trace_of_the_request_that_submitted_it() {
    let collector = Collector::start();
    let mut s = Server::start_with(Options {
        env: vec![
            ("AIHOST_LOG__OTLP_ENDPOINT".into(), collector.url.clone()),
            ("AIHOST_LOG__OTLP_SERVICE_NAME".into(), "aihost-test".into()),
        ],
        ..Options::default()
    })
    .await;
    assert!(
        s.log().contains("exporting traces over OTLP"),
        "{}",
        s.log()
    );

    let done = s
        .run(
            "testkit.run",
            json!({"mode": "ok"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let id = done["task_id"].as_str().unwrap().to_owned();
    // Spans are batched (a few seconds by default): wait until this task's trace is complete.
    let (request, task, plugin) = wait_for(
        "the collector received the task's trace",
        Duration::from_secs(30),
        async || trace_of(&collector.spans(), &id),
    )
    .await;
    check_trace(&request, &task, &plugin, ["aihost-test"; 2]);
    assert!(
        collector
            .received
            .lock()
            .unwrap()
            .content_types
            .iter()
            .all(|c| c == "application/x-protobuf")
    );

    // The spans still batched when the process stops are sent before it exits.
    let done = s
        .run(
            "testkit.run",
            json!({"mode": "ok"}),
            Duration::from_secs(20),
        )
        .await;
    let id = done["task_id"].as_str().unwrap().to_owned();
    assert!(s.terminate(Duration::from_secs(20)), "{}", s.log());
    let (request, task, plugin) = trace_of(&collector.spans(), &id)
        .unwrap_or_else(|e| panic!("the last trace was not flushed at exit: {e}"));
    check_trace(&request, &task, &plugin, ["aihost-test"; 2]);
}

#[tokio::test]
async fn the_trace_crosses_from_the_api_process_to_the_consumer_process() {
    let collector = Collector::start();
    let db = TestDatabase::create().await;
    let options = |service: &str| {
        let mut o = Options {
            env: db.env(),
            ..Options::default()
        };
        o.env.extend([
            ("AIHOST_LOG__OTLP_ENDPOINT".into(), collector.url.clone()),
            ("AIHOST_LOG__OTLP_SERVICE_NAME".into(), service.into()),
        ]);
        o
    };
    let api = Server::start_role(options("aihost-api"), "api").await;
    let _consumer = Server::start_role(options("aihost-consumer"), "consumer").await;

    let done = api
        .run(
            "testkit.run",
            json!({"mode": "ok"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let id = done["task_id"].as_str().unwrap().to_owned();
    let (request, task, plugin) = wait_for(
        "the collector received the task's trace from both processes",
        Duration::from_secs(30),
        async || trace_of(&collector.spans(), &id),
    )
    .await;
    check_trace(&request, &task, &plugin, ["aihost-api", "aihost-consumer"]);
}

#[tokio::test]
async fn without_the_switch_nothing_is_exported() {
    let collector = Collector::start();
    // Even OpenTelemetry's own variable does not turn export on: only log.otlp_endpoint does.
    let mut s = Server::start_with(Options {
        env: vec![(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(),
            collector.url.clone(),
        )],
        ..Options::default()
    })
    .await;
    let done = s
        .run(
            "testkit.run",
            json!({"mode": "ok"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    // A process that exported would have flushed by the time it exits.
    assert!(s.terminate(Duration::from_secs(20)), "{}", s.log());
    assert_eq!(collector.posts(), 0);
    // Startup says nothing of trace export (the export line, or the exporter's own logs).
    let log = s.log();
    for word in ["OTLP", "exporting traces", "opentelemetry"] {
        assert!(!log.contains(word), "{word} in {log}");
    }
}
