//! What bounds the service when it faces the internet, through the real binary: inputs left out
//! of lists and events, the stream and upload caps, the connection clocks (header read, idle,
//! send) and cap, safe file answers (nosniff, attachment + sandbox), ranges that overflow, and
//! truncated uploads that leave nothing behind.

use std::{path::Path, time::Duration};

use aihost_tests::{Options, Server, wait_for, wait_until};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn with_env(vars: &[(&str, &str)]) -> Options {
    Options {
        env: vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Options::default()
    }
}

fn addr(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes (EOF or reset) or `timeout`; answers the bytes and whether it
/// closed.
async fn read_to_close(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until the end of a response head; answers the head.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte))
            .await
            .expect("a response head")
            .expect("read");
        assert!(
            n == 1,
            "closed before the head ended: {}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Opens a raw subscription to a task's SSE stream; answers the socket once the 200 head came.
async fn raw_sse(s: &Server, id: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr(s)).await.unwrap();
    c.write_all(format!("GET /api/tasks/{id}/events HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c
}

fn nosniff(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get("x-content-type-options")
        .is_some_and(|v| v == "nosniff")
}

#[tokio::test]
async fn lists_and_events_leave_inputs_out_unless_asked() {
    let s = Server::start_with(with_env(&[("AIHOST_SERVER__MAX_LIST_INPUT_BYTES", "3000")])).await;
    let big = "x".repeat(2000);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let t = s
            .run(
                "testkit.run",
                json!({"mode": "noop", "code": big}),
                Duration::from_secs(30),
            )
            .await;
        ids.push(t["task_id"].as_str().unwrap().to_owned());
    }

    let (status, page) = s.get("/api/tasks").await;
    assert_eq!(status, 200, "{page}");
    let tasks = page["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(tasks.iter().all(|t| t["input"].is_null()), "{page}");
    assert!(tasks.iter().all(|t| t["status"] == "COMPLETED"));

    // With inputs: about 2 KB each against a 3,000-byte budget, so a page holds two and
    // points at the rest.
    let (status, page) = s.get("/api/tasks?include=input").await;
    assert_eq!(status, 200, "{page}");
    let first = page["tasks"].as_array().unwrap().clone();
    assert_eq!(first.len(), 2, "{page}");
    assert!(first.iter().all(|t| t["input"]["code"] == big.as_str()));
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let (_, rest) = s
        .get(&format!("/api/tasks?include=input&cursor={cursor}"))
        .await;
    let rest = rest["tasks"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["input"]["code"], big.as_str());

    let (status, body) = s.get("/api/tasks?include=everything").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_parameter");

    // One task keeps its input (the seed service's GET /api/tasks/{id}).
    let (_, one) = s.get(&format!("/api/tasks/{}", ids[0])).await;
    assert_eq!(one["input"]["code"], big.as_str());

    // Events (SSE and WebSocket read the same stream) carry none.
    let t = s
        .create(
            "testkit.run",
            json!({"mode": "progress", "steps": 3, "code": big}),
        )
        .await;
    assert_eq!(
        t["input"]["code"],
        big.as_str(),
        "the create answer keeps it"
    );
    let events = s
        .events(t["task_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert!(!events.is_empty());
    for e in &events {
        assert!(e["task"].is_object(), "{e}");
        assert!(e["task"]["input"].is_null(), "{e}");
    }
    assert_eq!(events.last().unwrap()["status"], "COMPLETED");

    // A create that waits for the end answers the input it was given.
    let (status, done) = s
        .post(
            "/api/tasks?wait=30",
            &json!({"type": "testkit.run", "input": {"mode": "noop", "code": big}}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["input"]["code"], big.as_str());
}

#[tokio::test]
async fn subscribers_beyond_max_streams_get_503() {
    let s = Server::start_with(with_env(&[("AIHOST_SERVER__MAX_STREAMS", "2")])).await;
    let t = s
        .create("testkit.run", json!({"mode": "ok", "ms": 120_000}))
        .await;
    let id = t["task_id"].as_str().unwrap();
    let _a = raw_sse(&s, id).await;
    let _b = raw_sse(&s, id).await;

    let r = s
        .http
        .get(s.url(&format!("/api/tasks/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(nosniff(r.headers()));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");

    let ws_url = s.base.replace("http://", "ws://") + &format!("/api/tasks/{id}/ws");
    match tokio_tungstenite::connect_async(ws_url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
        }
        other => panic!("the WebSocket past the cap was not refused: {other:?}"),
    }
    // Other requests are not affected.
    let (status, _) = s.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_dropped() {
    let s = Server::start_with(Options {
        extra_toml: "[dispatcher]\nprogress_interval_ms = 0\n".into(),
        ..with_env(&[("AIHOST_SERVER__SEND_TIMEOUT_SECS", "1")])
    })
    .await;
    // Many events, each made larger by a long idempotency key, so that they overflow the
    // socket buffers of a client that does not read.
    let key = "k".repeat(255);
    let (status, t) = s
        .post(
            "/api/tasks",
            &json!({"type": "testkit.run", "input": {"mode": "progress", "steps": 4000}, "idempotency_key": key}),
        )
        .await;
    assert_eq!(status, 202, "{t}");
    let id = t["task_id"].as_str().unwrap().to_owned();

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr(&s).parse().unwrap()).await.unwrap();
    stalled
        .write_all(format!("GET /api/tasks/{id}/events HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // A subscriber that reads gets every event to the end.
    let reading = s.events(&id, Duration::from_secs(180)).await;
    assert_eq!(reading.last().unwrap()["status"], "COMPLETED");

    // The one that did not read was disconnected: what it can still read ends before the
    // terminal event.
    let (got, closed) = read_to_close(&mut stalled, Duration::from_secs(30)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(closed, "the stalled subscriber is still connected");
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(
        !text.contains("event: completed"),
        "the stalled subscriber was served to the end"
    );
    let (status, _) = s.get("/api/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn uploads_beyond_the_cap_get_503() {
    let s = Server::start_with(with_env(&[("AIHOST_SERVER__MAX_CONCURRENT_UPLOADS", "1")])).await;
    // An upload that keeps its slot: the head and the start of the body, then nothing.
    let open_slow = async || {
        let boundary = "XBOUNDARYX";
        let start = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.bin\"\r\nContent-Type: application/octet-stream\r\n\r\nsome bytes"
        );
        let mut slow = TcpStream::connect(addr(&s)).await.unwrap();
        slow.write_all(
            format!(
                "POST /api/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 1000000\r\n\r\n{start}"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        slow
    };
    let mut slow = open_slow().await;
    let upload = async || {
        let part = reqwest::multipart::Part::bytes(vec![7u8; 1000]).file_name("b.bin");
        let r = s
            .http
            .post(s.url("/api/uploads"))
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = r.json().await.unwrap();
        (status, retry, body)
    };
    // The slow upload takes its slot as soon as its head is read (unless another upload held
    // it at that moment: then it was answered 503 itself, and is started again).
    let (retry, body) = wait_for(
        "an upload is refused",
        Duration::from_secs(30),
        async || match upload().await {
            (503, retry, body) => Ok((retry, body)),
            (status, _, body) => {
                let mut b = [0u8; 1];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(100), slow.peek(&mut b)).await
                    && n > 0
                {
                    slow = open_slow().await;
                }
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
    assert_eq!(body["error"]["code"], "too_many_uploads", "{body}");
    assert_eq!(retry.as_deref(), Some("1"));

    // Once the slow one is gone, uploads go through again.
    drop(slow);
    wait_for(
        "an upload succeeds again",
        Duration::from_secs(30),
        async || match upload().await {
            (201, _, body) => Ok(body),
            (status, _, body) => Err(format!("{status} {body}")),
        },
    )
    .await;
}

#[tokio::test]
async fn a_slow_header_sender_is_disconnected() {
    let s = Server::start_with(with_env(&[(
        "AIHOST_SERVER__HEADER_READ_TIMEOUT_SECS",
        "1",
    )]))
    .await;
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // One byte every 100 ms, never ending the head; the server must close first.
    let (mut r, mut w) = c.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..600 {
            if w.write_all(b"a").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got))
        .await
        .is_ok();
    writer.abort();
    assert!(closed, "the slow sender is still connected");
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "the slow request was answered"
    );
    // A normal request is not affected.
    let (status, _) = s.get("/api/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let s = Server::start_with(with_env(&[("AIHOST_SERVER__IDLE_TIMEOUT_SECS", "1")])).await;
    // After an answer, the keep-alive connection is closed when it stays idle.
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"));
    let (rest, closed) = read_to_close(&mut c, Duration::from_secs(30)).await;
    assert!(closed, "the idle keep-alive connection is still open");
    assert!(rest.len() < 200, "only the rest of the body came");

    // A connection that never sends anything is closed too.
    let mut silent = TcpStream::connect(addr(&s)).await.unwrap();
    let (got, closed) = read_to_close(&mut silent, Duration::from_secs(30)).await;
    assert!(closed && got.is_empty());
}

#[tokio::test]
async fn the_connection_cap_closes_idle_ones_first_then_refuses() {
    let s = Server::start_with(with_env(&[("AIHOST_SERVER__MAX_CONNECTIONS", "20")])).await;
    // Idle connections fill the cap; a real request still gets through by closing one.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr(&s)).await.unwrap());
    }
    let health = async || {
        // A fresh connection each time (no pool).
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        client
            .get(s.url("/api/health"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    wait_for(
        "/api/health answers",
        Duration::from_secs(30),
        async || match health().await {
            Ok(200) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let (_, closed) = read_to_close(&mut idle[0], Duration::from_secs(30)).await;
    assert!(closed, "the longest-idle connection was not closed");

    // Busy connections (event streams) are never closed for a new one: past the cap, new
    // connections are refused.
    let t = s
        .create("testkit.run", json!({"mode": "ok", "ms": 120_000}))
        .await;
    let id = t["task_id"].as_str().unwrap();
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(raw_sse(&s, id).await);
    }
    let warnings = || s.log().matches("connection limit reached").count();
    let before = warnings();
    for _ in 0..5 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        let _ = c
            .write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let (got, closed) = read_to_close(&mut c, Duration::from_secs(30)).await;
        assert!(closed, "a connection past the cap was kept");
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    // Logged once per burst, not once per connection.
    assert!(warnings() >= 1, "no warning logged");
    assert!(warnings() - before <= 1, "{}", s.log());
    drop(streams);
}

#[tokio::test]
async fn every_answer_says_nosniff() {
    let s = Server::start().await;
    let png = aihost_tests::solid_png(4, 4, [1, 2, 3]);
    let up = s.upload("a.png", png, Some("image/png")).await;
    let t = s
        .run(
            "testkit.run",
            json!({"mode": "noop"}),
            Duration::from_secs(30),
        )
        .await;
    let id = t["task_id"].as_str().unwrap();
    let file = up["url"].as_str().unwrap().to_owned();
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (s.http.get(s.url("/api/health")), 200),
        (s.http.get(s.url("/api/tasks")), 200),
        (s.http.get(s.url(&format!("/api/tasks/{id}"))), 200),
        (s.http.get(s.url(&format!("/api/tasks/{id}/events"))), 200),
        (
            s.http
                .get(s.url("/api/tasks/0190a0a0-0000-7000-8000-000000000000")),
            404,
        ),
        (s.http.get(s.url("/api/tasks/not-a-uuid")), 404),
        (s.http.get(s.url("/no/such/route")), 404),
        (s.http.delete(s.url("/api/health")), 405),
        (
            s.http
                .post(s.url("/api/tasks"))
                .body("{not json")
                .header("content-type", "application/json"),
            400,
        ),
        (s.http.get(s.url("/openapi.json")), 200),
        (s.http.get(s.url("/docs")), 200),
        (s.http.get(s.url("/metrics")), 200),
        (s.http.get(&file), 200),
        (s.http.get(&file).header("range", "bytes=0-3"), 206),
        (s.http.get(&file).header("range", "bytes=99999-"), 416),
        (s.http.get(s.url("/files/uploads/none.png")), 404),
    ];
    for (req, expected) in cases {
        let r = req.send().await.unwrap();
        let what = format!("{} {}", r.status(), r.url());
        assert_eq!(r.status().as_u16(), expected, "{what}");
        assert!(nosniff(r.headers()), "no nosniff on {what}");
    }
}

#[tokio::test]
async fn files_a_browser_would_run_are_attachments_in_a_sandbox() {
    let s = Server::start().await;
    let cases = [
        (
            "evil.html",
            "text/html",
            b"<script>alert(1)</script>".to_vec(),
            false,
        ),
        (
            "evil.svg",
            "image/svg+xml",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>".to_vec(),
            false,
        ),
        ("evil.xml", "application/xml", b"<a/>".to_vec(), false),
        ("evil.js", "text/javascript", b"alert(1)".to_vec(), false),
        ("blob.bin", "application/octet-stream", vec![0u8; 16], false),
        (
            "pic.png",
            "image/png",
            aihost_tests::solid_png(4, 4, [9, 9, 9]),
            true,
        ),
        ("doc.pdf", "application/pdf", b"%PDF-1.4\n".to_vec(), true),
        ("clip.mp4", "video/mp4", vec![0u8; 32], true),
    ];
    for (name, mime, bytes, inline) in cases {
        let up = s.upload(name, bytes, Some(mime)).await;
        let r = s
            .http
            .get(up["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let h = r.headers();
        let disposition = h["content-disposition"].to_str().unwrap();
        let csp = h
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap());
        if inline {
            assert_eq!(disposition, "inline", "{name}");
            assert_eq!(csp, None, "{name}");
        } else {
            assert!(
                disposition.starts_with("attachment"),
                "{name}: {disposition}"
            );
            assert_eq!(csp, Some("sandbox"), "{name}");
        }
        assert!(nosniff(h), "{name}");
    }
}

#[tokio::test]
async fn ranges_that_overflow_are_clamped_or_refused() {
    let s = Server::start().await;
    let bytes: Vec<u8> = (0..7858u32).map(|i| (i % 251) as u8).collect();
    let up = s.upload("data.bin", bytes.clone(), None).await;
    let url = up["url"].as_str().unwrap().to_owned();
    let get = async |range: &str| {
        let r = s
            .http
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        let (cr, cl) = (header("content-range"), header("content-length"));
        (status, cr, cl, r.bytes().await.unwrap().to_vec())
    };

    let (status, cr, cl, body) = get("bytes=0-18446744073709551615").await;
    assert_eq!(status, 206);
    assert_eq!(cr.as_deref(), Some("bytes 0-7857/7858"));
    assert_eq!(cl.as_deref(), Some("7858"));
    assert_eq!(body, bytes);

    let (status, cr, _, body) = get("bytes=7000-18446744073709551615").await;
    assert_eq!(status, 206);
    assert_eq!(cr.as_deref(), Some("bytes 7000-7857/7858"));
    assert_eq!(body, bytes[7000..]);

    let (status, cr, _, body) = get("bytes=100-99999").await;
    assert_eq!(status, 206);
    assert_eq!(cr.as_deref(), Some("bytes 100-7857/7858"));
    assert_eq!(body, bytes[100..]);

    for unsatisfiable in ["bytes=7858-", "bytes=18446744073709551615-", "bytes=-0"] {
        let (status, cr, _, body) = get(unsatisfiable).await;
        assert_eq!(status, 416, "{unsatisfiable}");
        assert_eq!(cr.as_deref(), Some("bytes */7858"), "{unsatisfiable}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "range_not_satisfiable");
    }
}

/// Every file and folder under `dir`, recursively.
fn entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            out.extend(entries(&e.path()));
        }
    }
    out
}

#[tokio::test]
async fn a_truncated_upload_is_400_and_leaves_nothing() {
    let s = Server::start().await;
    let uploads = s.dir.path().join("data/outputs/uploads");
    let boundary = "XBOUNDARYX";
    let truncated = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n{}",
        "z".repeat(300_000)
    );
    // A complete HTTP body whose multipart content stops in the middle of the file.
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(
        format!(
            "POST /api/uploads HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n{truncated}",
            truncated.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (got, _) = read_to_close(&mut c, Duration::from_secs(30)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\"upload_incomplete\""), "{text}");
    assert_eq!(entries(&uploads), Vec::<String>::new());

    // A connection cut in the middle of the body: the same answer, nothing left.
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(
        format!(
            "POST /api/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 2000000\r\n\r\n{truncated}"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    c.shutdown().await.unwrap();
    let (got, _) = read_to_close(&mut c, Duration::from_secs(30)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.contains("\"upload_incomplete\""),
        "{text}"
    );
    wait_until(
        "nothing is left under uploads/",
        Duration::from_secs(30),
        async || entries(&uploads).is_empty(),
    )
    .await;

    // A whole upload still works.
    let up = s.upload("ok.bin", vec![1u8; 10], None).await;
    assert_eq!(up["size"], 10);
}
