//! Signed, durable webhooks (Standard Webhooks): a receiver in the test verifies every
//! signature with the configured secrets (two during a rotation); a delivery pending when the
//! service is killed with -9 is delivered after the restart; 500s are retried with growing
//! delays and a delivery is dead-lettered after `webhooks.max_age_secs`; optional
//! `task.started`/`task.progress` events; the delivery list and redelivery; PostgreSQL too.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use aihost_tests::{Options, Server, TestDatabase, free_port, wait_for};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use poem::{
    EndpointExt, Request, Route, handler, http::StatusCode, listener::TcpListener, post, web::Data,
};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_c2Vjb25kLXNlY3JldC1rZXktMTIzNDU2Nzg5MA==";

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

#[derive(Clone)]
struct Shared {
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
}

#[handler]
async fn hook(req: &Request, body: String, shared: Data<&Shared>) -> StatusCode {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    shared.got.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    StatusCode::from_u16(shared.status.load(Ordering::SeqCst)).unwrap()
}

/// A webhook receiver on `port` answering `status` (changeable).
struct Receiver {
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(port: u16, status: u16) -> Receiver {
        let shared = Shared {
            got: Arc::default(),
            status: Arc::new(AtomicU16::new(status)),
        };
        let app = Route::new().at("/hook", post(hook)).data(shared.clone());
        let task = tokio::spawn(async move {
            let _ = poem::Server::new(TcpListener::bind(format!("127.0.0.1:{port}")))
                .run(app)
                .await;
        });
        // Ready when it accepts connections.
        wait_for(
            "the receiver listens",
            Duration::from_secs(10),
            async || {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        Receiver { shared, task }
    }

    fn got(&self) -> Vec<Received> {
        self.shared.got.lock().unwrap().clone()
    }

    /// The messages received so far with this event.
    fn events(&self, event: &str) -> Vec<Received> {
        self.got()
            .into_iter()
            .filter(|r| serde_json::from_str::<Value>(&r.body).unwrap()["event"] == event)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Verifies a message as a receiver would, with the Standard Webhooks rule: some `v1,`
/// signature of `webhook-signature` equals base64 HMAC-SHA256(key, "id.timestamp.body").
fn verify(r: &Received, secret: &str) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    let signed = format!(
        "{}.{}.{}",
        r.headers["webhook-id"], r.headers["webhook-timestamp"], r.body
    );
    mac.update(signed.as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    r.headers
        .get("webhook-signature")
        .is_some_and(|h| h.split(' ').any(|s| s == expected))
}

fn options(port: u16, webhooks: &str, db: Option<&TestDatabase>) -> Options {
    let mut env = vec![(
        "AIHOST_FETCH__ALLOW_HOSTS".to_owned(),
        format!("127.0.0.1:{port}"),
    )];
    if let Some(db) = db {
        env.extend(db.env());
    }
    Options {
        extra_toml: format!("[webhooks]\n{webhooks}\n"),
        env,
        ..Options::default()
    }
}

async fn create_with_hook(s: &Server, port: u16, input: Value, events: Value) -> String {
    let (status, t) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": input,
                    "webhook_url": format!("http://127.0.0.1:{port}/hook"),
                    "webhook_events": events}),
        )
        .await;
    assert_eq!(status, 202, "{t}");
    t["task_id"].as_str().unwrap().to_owned()
}

async fn deliveries(s: &Server, id: &str) -> Vec<Value> {
    let (status, body) = s.get(&format!("/api/tasks/{id}/webhooks")).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn messages_are_signed_by_every_secret_and_optional_events_sent_on_request() {
    let port = free_port();
    let receiver = Receiver::start(port, 204).await;
    let s = Server::start_with(options(
        port,
        &format!("secrets = [\"{SECRET_A}\", \"{SECRET_B}\"]\nprogress_interval_ms = 1"),
        None,
    ))
    .await;
    let id = create_with_hook(
        &s,
        port,
        json!({"mode": "progress", "steps": 5}),
        json!(["task.started", "task.progress"]),
    )
    .await;
    s.wait_done(&id, Duration::from_secs(20)).await;
    wait_for(
        "the completion arrives",
        Duration::from_secs(20),
        async || match receiver.events("task.completed").len() {
            1 => Ok(()),
            n => Err(format!("{n} completions")),
        },
    )
    .await;
    let got = receiver.got();
    // Both secrets verify every message (a receiver on either one during rotation), a wrong
    // one does not.
    for r in &got {
        assert!(verify(r, SECRET_A), "{r:?}");
        assert!(verify(r, SECRET_B), "{r:?}");
        assert!(
            !verify(r, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            "{r:?}"
        );
        assert!(r.headers["webhook-id"].starts_with("msg_"), "{r:?}");
        let ts: i64 = r.headers["webhook-timestamp"].parse().unwrap();
        assert!((ts - chrono::Utc::now().timestamp()).abs() < 600, "{ts}");
    }
    let done: Value = serde_json::from_str(&receiver.events("task.completed")[0].body).unwrap();
    assert_eq!(
        (done["task_id"].as_str(), done["status"].as_str()),
        (Some(id.as_str()), Some("COMPLETED"))
    );
    assert_eq!(receiver.events("task.started").len(), 1, "{got:?}");
    assert!(!receiver.events("task.progress").is_empty(), "{got:?}");
    // The terminal message carries the input; the started and progress ones go without it.
    assert_eq!(done["input"]["mode"], "progress", "{done}");
    for r in receiver
        .events("task.started")
        .iter()
        .chain(receiver.events("task.progress").iter())
    {
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert!(body.get("input").is_none(), "{body}");
        assert_eq!(body["task_id"].as_str(), Some(id.as_str()), "{body}");
    }
    // In order: started first, completed last (each message waits for the first attempt of
    // the earlier ones of its task).
    let order: Vec<String> = got
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["event"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        order.first().map(String::as_str),
        Some("task.started"),
        "{order:?}"
    );
    assert_eq!(
        order.last().map(String::as_str),
        Some("task.completed"),
        "{order:?}"
    );

    // The deliveries are listed, delivered, and summed up on the task.
    // (Each attempt is recorded once the receiver's answer is read, a moment after it arrived.)
    let listed = wait_for(
        "every delivery is recorded",
        Duration::from_secs(10),
        async || {
            let listed = deliveries(&s, &id).await;
            if listed.iter().all(|d| {
                (d["state"] == "delivered" && d["last_status"] == 204)
                    // A progress message a newer one superseded before it was sent.
                    || (d["event"] == "task.progress"
                        && d["state"] == "dead"
                        && d["attempts"] == 0)
            }) {
                Ok(listed)
            } else {
                Err(format!("{listed:?}"))
            }
        },
    )
    .await;
    let (_, t) = s.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(t["webhook"]["deliveries"], listed.len(), "{t}");

    // Redelivery of one message sends it again with the same id.
    let completed = listed
        .iter()
        .find(|d| d["event"] == "task.completed")
        .unwrap();
    let msg = completed["id"].as_str().unwrap();
    let (st, body) = s
        .post(
            &format!("/api/tasks/{id}/webhooks/{msg}/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!((st, body["redelivered"].as_u64()), (200, Some(1)), "{body}");
    wait_for(
        "the redelivery arrives",
        Duration::from_secs(20),
        async || {
            let n = receiver.events("task.completed").len();
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{n} completions"))
            }
        },
    )
    .await;
    let again = receiver.events("task.completed");
    assert_eq!(
        again[0].headers["webhook-id"],
        again[1].headers["webhook-id"]
    );
    assert_eq!(again[0].body, again[1].body);
    let (st, body) = s
        .post(
            &format!("/api/tasks/{id}/webhooks/msg_nope/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (404, Some("delivery_not_found")),
        "{body}"
    );

    // An unknown event name is refused at submit.
    let (st, body) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "ok"},
                    "webhook_url": format!("http://127.0.0.1:{port}/hook"),
                    "webhook_events": ["task.exploded"]}),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (422, Some("invalid_webhook_events")),
        "{body}"
    );
}

/// The receiver is down when the task completes; the service is killed with -9 while the
/// delivery waits for its retry; after the restart (receiver up) it is delivered.
async fn survives_kill_9(db: Option<TestDatabase>) {
    let port = free_port();
    let mut s = Server::start_with(options(
        port,
        &format!("secrets = [\"{SECRET_A}\"]\nbackoff_base_ms = 300\nbackoff_max_ms = 1000"),
        db.as_ref(),
    ))
    .await;
    let id = create_with_hook(&s, port, json!({"mode": "ok"}), json!([])).await;
    s.wait_done(&id, Duration::from_secs(20)).await;
    wait_for(
        "a failed attempt is recorded",
        Duration::from_secs(20),
        async || {
            let d = deliveries(&s, &id).await;
            match d.first() {
                Some(d) if d["attempts"].as_u64() >= Some(1) && d["state"] == "pending" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    s.kill9();
    let receiver = Receiver::start(port, 200).await;
    s.restart().await;
    wait_for(
        "the completion arrives after the restart",
        Duration::from_secs(30),
        async || match receiver.events("task.completed").len() {
            0 => Err("nothing yet".to_owned()),
            _ => Ok(()),
        },
    )
    .await;
    let r = &receiver.events("task.completed")[0];
    assert!(verify(r, SECRET_A), "{r:?}");
    // The attempt is recorded once the receiver's answer is read: a moment after it arrived.
    let d = wait_for(
        "the delivery is recorded",
        Duration::from_secs(10),
        async || {
            let d = deliveries(&s, &id).await.remove(0);
            if d["state"] == "delivered" {
                Ok(d)
            } else {
                Err(d.to_string())
            }
        },
    )
    .await;
    assert_eq!(r.headers["webhook-id"], d["id"].as_str().unwrap());
}

#[tokio::test]
async fn a_pending_delivery_survives_kill_9() {
    survives_kill_9(None).await;
}

#[tokio::test]
async fn a_pending_delivery_survives_kill_9_on_postgres() {
    survives_kill_9(Some(TestDatabase::create().await)).await;
}

#[tokio::test]
async fn server_errors_back_off_then_dead_letter_after_max_age() {
    let port = free_port();
    let receiver = Receiver::start(port, 500).await;
    let s = Server::start_with(options(
        port,
        "backoff_base_ms = 200\nbackoff_max_ms = 100000\nmax_age_secs = 5\npoll_interval_ms = 20",
        None,
    ))
    .await;
    let id = create_with_hook(&s, port, json!({"mode": "ok"}), json!([])).await;
    s.wait_done(&id, Duration::from_secs(20)).await;
    let dead = wait_for(
        "the delivery is dead-lettered",
        Duration::from_secs(30),
        async || {
            let d = deliveries(&s, &id).await.remove(0);
            if d["state"] == "dead" {
                Ok(d)
            } else {
                Err(d.to_string())
            }
        },
    )
    .await;
    assert_eq!(dead["last_status"], 500, "{dead}");
    let got = receiver.events("task.completed");
    assert_eq!(
        got.len() as u64,
        dead["attempts"].as_u64().unwrap(),
        "{dead}"
    );
    assert!(got.len() >= 4, "{} attempts", got.len());
    // Exponential backoff: the n-th delay is 200 ms × 2^n × a jitter in [0.5, 1], so the
    // third gap (at least 400 ms) outgrows the first (at most 200 ms and a poll).
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[2] > gaps[0] && gaps.last() > gaps.first(),
        "gaps {gaps:?}"
    );
    let (_, t) = s.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(t["webhook"]["dead"], 1, "{t}");
}

/// Base64 in and out: a `data:` URL is an input like a URL; `outputs=base64` answers the
/// outputs' bytes (equal to the downloaded files); over the cap, 413 with the task and URLs;
/// a data URL that is not base64 fails the task with a clear code.
#[tokio::test]
async fn data_url_inputs_and_base64_outputs() {
    let s = Server::start_with(Options {
        env: vec![(
            "AIHOST_SERVER__MAX_INLINE_OUTPUT_BYTES".into(),
            "5000".into(),
        )],
        ..Options::default()
    })
    .await;
    let png = aihost_tests::solid_png(40, 30, [200, 10, 10]);
    let data_url = format!("data:image/png;base64,{}", STANDARD.encode(&png));
    let (st, t) = s
        .post(
            "/api/tasks?wait=30&outputs=base64",
            &json!({"type": "imageops.transform", "input": {"source": data_url,
                    "operations": [{"op": "rotate", "degrees": 90}], "format": "png"}}),
        )
        .await;
    assert_eq!(st, 200, "{t}\n{}", s.log());
    assert_eq!(t["status"], "COMPLETED", "{t}");
    let out = &t["result"]["outputs"][0];
    let inline = &t["outputs_base64"][0];
    assert_eq!(inline["key"], out["key"], "{t}");
    assert_eq!(inline["content_type"], "image/png");
    let bytes = STANDARD.decode(inline["base64"].as_str().unwrap()).unwrap();
    assert_eq!(bytes, s.download(out["url"].as_str().unwrap()).await);
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (30, 40));
    // Without outputs=base64 the answer has URLs only.
    let (_, t) = s
        .post(
            "/api/tasks?wait=30",
            &json!({"type": "imageops.transform", "input": {"source": format!("data:image/png;base64,{}", STANDARD.encode(&png))}}),
        )
        .await;
    assert!(t.get("outputs_base64").is_none(), "{t}");

    // Over the cap (5000 bytes): 413, naming the task and its output URL.
    let big_path = s.dir.path().join("big.png");
    aihost_tests::write_png(&big_path, 800, 600);
    let big = std::fs::read(&big_path).unwrap();
    let (st, e) = s
        .post(
            "/api/tasks?wait=30&outputs=base64",
            &json!({"type": "imageops.transform", "input": {
                "source": format!("data:image/png;base64,{}", STANDARD.encode(&big)),
                "format": "jpeg", "quality": 100}}),
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (413, Some("inline_outputs_too_large")),
        "{e}"
    );
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("/files/outputs/"), "{msg}");

    // Not base64: the task fails with fetch_invalid_url and says why.
    let (_, t) = s
        .post(
            "/api/tasks?wait=30",
            &json!({"type": "imageops.transform", "input": {"source": "data:image/png;base64,@@not base64@@"}}),
        )
        .await;
    assert_eq!(t["status"], "FAILED", "{t}");
    assert_eq!(t["error"]["code"], "fetch_invalid_url", "{t}");
    assert!(
        t["error"]["message"].as_str().unwrap().contains("base64"),
        "{t}"
    );
}
