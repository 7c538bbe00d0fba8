//! The fetcher's tests against a tiny local HTTP server: the SSRF guard end to end, redirects,
//! limits, retries, timeouts, concurrency and storage sources.
//!
//! They are in their own file because they exercise every submodule through the facade.

use super::client::classify;
use super::*;
use crate::error_codes;
use crate::storage::{StorageKind, StorageSettings};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A tiny HTTP/1.1 server on 127.0.0.1; counts the requests it receives.
struct TestServer {
    port: u16,
    hits: Arc<AtomicUsize>,
}

fn payload() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

async fn serve() -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let flaky = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let ok = |ct: &str, body: Vec<u8>| {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend(body);
                    r
                };
                let redirect = |to: &str| {
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\
                         Connection: close\r\n\r\n"
                    )
                    .into_bytes()
                };
                let status = |code: &str| {
                    format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .into_bytes()
                };
                let response = match path.as_str() {
                    "/file.bin" | "/" => ok("application/octet-stream", payload()),
                    "/noext" => ok("image/png", b"png bytes".to_vec()),
                    "/big-len" => ok("application/octet-stream", vec![7u8; 5000]),
                    "/big-nolen" => {
                        let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
                        r.extend(vec![7u8; 5000]);
                        r
                    }
                    "/redirect-private" => redirect("http://10.0.0.1/secret"),
                    "/redirect-local" => redirect("/file.bin"),
                    "/redirect-ftp" => redirect("ftp://example.com/x"),
                    "/loop" => redirect("/loop"),
                    "/missing" => status("404 Not Found"),
                    "/flaky" => {
                        if flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                            status("503 Service Unavailable")
                        } else {
                            ok("text/plain", b"recovered".to_vec())
                        }
                    }
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        ok("text/plain", b"late".to_vec())
                    }
                    "/delay" => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        ok("text/plain", b"delayed".to_vec())
                    }
                    _ => status("404 Not Found"),
                };
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    TestServer { port, hits }
}

fn memory_storage() -> Storage {
    Storage::new(StorageSettings {
        kind: StorageKind::Memory,
        root: PathBuf::new(),
        prefix: String::new(),
        // Nothing listens there: a network fetch of it would fail.
        public_base_url: "http://127.0.0.1:9/files".to_owned(),
    })
    .unwrap()
}

fn settings(allow: &[String]) -> FetchSettings {
    FetchSettings {
        allow_hosts: allow.to_vec(),
        max_bytes: 1024 * 1024,
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        max_redirects: 3,
        concurrency: 4,
    }
}

fn fetcher(settings: FetchSettings) -> Fetcher {
    Fetcher::new(settings, memory_storage()).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[tokio::test]
async fn fetch_refuses_private_addresses() {
    let server = serve().await;
    let port = server.port;
    let f = fetcher(settings(&[]));
    let dir = tempfile::tempdir().unwrap();
    for (url, shows) in [
        (format!("http://127.0.0.1:{port}/file.bin"), "127.0.0.1"),
        ("http://10.0.0.1/".to_owned(), "10.0.0.1"),
        (
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "169.254.169.254",
        ),
        (format!("http://[::1]:{port}/"), "::1"),
        (format!("http://localhost:{port}/file.bin"), "localhost"),
        (format!("http://LocalHost:{port}/file.bin"), "localhost"),
        ("http://[::ffff:10.0.0.1]/".to_owned(), "10.0.0.1"),
        ("http://0x7f.1/".to_owned(), "127.0.0.1"),
        ("http://[fd00:ec2::254]/".to_owned(), "fd00:ec2::254"),
    ] {
        let err = f.fetch_to(&url, dir.path(), None).await.unwrap_err();
        assert_eq!(err.code(), error_codes::FETCH_BLOCKED, "{url}: {err}");
        assert!(!err.retryable());
        let msg = err.to_string();
        assert!(msg.contains(shows), "{msg}");
        assert!(msg.contains("fetch.allow_hosts"), "{msg}");
        assert!(!msg.contains('\n'));
    }
    let err = f
        .fetch_to("http://10.0.0.1/x", dir.path(), None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused to fetch http://10.0.0.1/x: 10.0.0.1 is a private address \
         (allow it with fetch.allow_hosts)"
    );
    let err = f
        .fetch_to(&format!("http://localhost:{port}/"), dir.path(), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("localhost resolves to 127.0.0.1, a loopback address")
            || err.to_string().contains("localhost resolves to ::1"),
        "{err}"
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn fetch_resolver_refuses_private_names() {
    // The client's own resolver refuses too: the addresses connected to are checked, even
    // if a name resolved differently when the guard looked.
    let server = serve().await;
    let f = fetcher(settings(&[]));
    let err = f
        .inner
        .client
        .get(format!("http://localhost:{}/file.bin", server.port))
        .send()
        .await
        .unwrap_err();
    let url = Url::parse("http://localhost/").unwrap();
    let err = classify(err, &url, Duration::from_secs(1));
    assert_eq!(err.code(), error_codes::FETCH_BLOCKED, "{err}");
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);

    // An allow-listed name passes the resolver.
    let f = fetcher(settings(&["localhost".to_owned()]));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://localhost:{}/file.bin", server.port);
    let path = f.fetch_to(&url, dir.path(), None).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), payload());
}

#[tokio::test]
async fn fetch_allow_listed_host() {
    let server = serve().await;
    let port = server.port;
    let f = fetcher(settings(&[format!("127.0.0.1:{port}")]));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/file.bin");
    let first = f.fetch_to(&url, dir.path(), None).await.unwrap();
    assert_eq!(first, dir.path().join("file.bin"));
    assert_eq!(std::fs::read(&first).unwrap(), payload());
    // Never overwrites.
    let second = f.fetch_to(&url, dir.path(), None).await.unwrap();
    assert_eq!(second, dir.path().join("file-1.bin"));
    let named = f
        .fetch_to(&url, dir.path(), Some("../my input (1).png"))
        .await
        .unwrap();
    assert_eq!(named, dir.path().join("_my_input__1_.png"));
    // A redirect to the same allowed host is followed.
    let redirected = f
        .fetch_to(
            &format!("http://127.0.0.1:{port}/redirect-local"),
            dir.path(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(redirected, dir.path().join("redirect-local"));
    assert_eq!(std::fs::read(&redirected).unwrap(), payload());
    // A name without extension gets one from the content type; "/" becomes "input".
    let png = f
        .fetch_to(&format!("http://127.0.0.1:{port}/noext"), dir.path(), None)
        .await
        .unwrap();
    assert_eq!(png, dir.path().join("noext.png"));
    let root = f
        .fetch_to(&format!("http://127.0.0.1:{port}/"), dir.path(), None)
        .await
        .unwrap();
    assert_eq!(root, dir.path().join("input"));
    // The allow entry is for that port only.
    let err = f
        .fetch_to("http://127.0.0.1:1/file.bin", dir.path(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::FETCH_BLOCKED);
}

#[tokio::test]
async fn fetch_redirects_are_checked() {
    let server = serve().await;
    let port = server.port;
    let f = fetcher(settings(&[format!("127.0.0.1:{port}")]));
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let err = f
        .fetch_to(&format!("{base}/redirect-private"), dir.path(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::FETCH_BLOCKED, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("http://10.0.0.1/secret"), "{msg}");
    assert!(msg.contains("10.0.0.1 is a private address"), "{msg}");

    let err = f
        .fetch_to(&format!("{base}/redirect-ftp"), dir.path(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::FETCH_BLOCKED, "{err}");

    let err = f
        .fetch_to(&format!("{base}/loop"), dir.path(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::FETCH_BLOCKED, "{err}");
    assert!(err.to_string().contains("more than 3 redirects"), "{err}");
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn fetch_too_large_leaves_nothing() {
    let server = serve().await;
    let port = server.port;
    let mut s = settings(&[format!("127.0.0.1:{port}")]);
    s.max_bytes = 1000;
    let f = fetcher(s);
    let dir = tempfile::tempdir().unwrap();
    for path in ["/big-len", "/big-nolen"] {
        let url = format!("http://127.0.0.1:{port}{path}");
        let err = f.fetch_to(&url, dir.path(), None).await.unwrap_err();
        assert_eq!(err.code(), error_codes::FETCH_TOO_LARGE, "{err}");
        assert!(!err.retryable());
    }
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn fetch_refuses_other_schemes_and_bad_input() {
    let f = fetcher(settings(&[]));
    let dir = tempfile::tempdir().unwrap();
    for source in [
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "gopher://x/",
    ] {
        let err = f.fetch_to(source, dir.path(), None).await.unwrap_err();
        assert_eq!(
            err.code(),
            error_codes::FETCH_INVALID_URL,
            "{source}: {err}"
        );
    }
    for source in ["/etc/passwd", "a/../../b", "http://", ""] {
        let err = f.fetch_to(source, dir.path(), None).await.unwrap_err();
        assert_eq!(
            err.code(),
            error_codes::FETCH_INVALID_URL,
            "{source}: {err}"
        );
    }
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn fetch_own_storage_objects() {
    let storage = memory_storage();
    let f = Fetcher::new(settings(&[]), storage.clone()).unwrap();
    let key = "uploads/0190/my photo.png";
    let body = futures_util::stream::iter([Ok(bytes::Bytes::from_static(b"uploaded"))]);
    storage.put_stream(key, body, "", 1000).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    let by_key = f.fetch_to(key, dir.path(), None).await.unwrap();
    assert_eq!(by_key, dir.path().join("my_photo.png"));
    assert_eq!(std::fs::read(&by_key).unwrap(), b"uploaded");

    let url = storage.public_url(key);
    assert!(url.starts_with("http://127.0.0.1:9/files/"), "{url}");
    let by_url = f.fetch_to(&url, dir.path(), None).await.unwrap();
    assert_eq!(by_url, dir.path().join("my_photo-1.png"));
    assert_eq!(std::fs::read(&by_url).unwrap(), b"uploaded");

    let named = f
        .fetch_to(&url, dir.path(), Some("face.png"))
        .await
        .unwrap();
    assert_eq!(named, dir.path().join("face.png"));

    let err = f
        .fetch_to("uploads/0190/absent.png", dir.path(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::FETCH_NOT_FOUND, "{err}");
    let err = f
        .fetch_to(
            &storage.public_url("uploads/x/absent.png"),
            dir.path(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::FETCH_NOT_FOUND, "{err}");
    assert_eq!(files_in(dir.path()).len(), 3);
}

#[tokio::test]
async fn fetch_http_status_and_retries() {
    let server = serve().await;
    let port = server.port;
    let f = fetcher(settings(&[format!("127.0.0.1:{port}")]));
    let dir = tempfile::tempdir().unwrap();
    let err = f
        .fetch_to(
            &format!("http://127.0.0.1:{port}/missing"),
            dir.path(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::FETCH_NOT_FOUND);
    assert!(!err.retryable());
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "404 is not retried");

    // The first answer is a 503: retried, then fetched.
    let path = f
        .fetch_to(&format!("http://127.0.0.1:{port}/flaky"), dir.path(), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"recovered");
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);

    // Nothing listens on port 1 (allow-listed so the guard lets it through).
    let f = fetcher(settings(&["127.0.0.1".to_owned()]));
    let err = f
        .fetch_to("http://127.0.0.1:1/x", dir.path(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::FETCH_FAILED, "{err}");
    assert!(err.retryable());
}

#[tokio::test]
async fn fetch_timeout() {
    let server = serve().await;
    let port = server.port;
    let mut s = settings(&[format!("127.0.0.1:{port}")]);
    s.timeout = Duration::from_millis(300);
    let f = fetcher(s);
    let dir = tempfile::tempdir().unwrap();
    let err = f
        .fetch_to(&format!("http://127.0.0.1:{port}/slow"), dir.path(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::FETCH_TIMEOUT, "{err}");
    assert!(err.retryable());
    assert_eq!(server.hits.load(Ordering::SeqCst), 3, "tried three times");
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn fetch_concurrency_is_bounded() {
    let server = serve().await;
    let port = server.port;
    let mut s = settings(&[format!("127.0.0.1:{port}")]);
    s.concurrency = 1;
    let f = fetcher(s);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/delay");
    let start = Instant::now();
    let g = f.clone();
    let (a, b) = tokio::join!(
        f.fetch_to(&url, dir.path(), None),
        g.fetch_to(&url, dir.path(), None)
    );
    a.unwrap();
    b.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(600));
    assert_eq!(files_in(dir.path()), ["delay", "delay-1"]);
}
