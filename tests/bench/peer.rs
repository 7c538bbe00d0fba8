//! The `peer` scenario: aihost's ComfyUI path side by side with the reference peer
//! (`reference_peer.py`, the seed's design in Python: FastAPI, an in-memory asyncio queue, one
//! consumer, one reused WebSocket) against one fake ComfyUI (the `fake-comfyui` binary, its own
//! process) in the same run, so the figures come with their ratio (issue 17).
//!
//! - 32 polling clients on each service: submit `POST /api/tasks/create` (the same seed body on
//!   both, colours never repeated so the fake's cache never answers), then `GET /api/tasks/{id}`
//!   every [`POLL_MS`] until the task is finished; tasks/s and p50/p99 submit → seen finished.
//! - Submits from a Python asyncio client (`asyncio_client.py`, aiohttp) at 64 connections:
//!   durable `POST /api/tasks` (testkit no-op, `aihost api`) against the peer's in-memory create
//!   route (started with `--accept-only`, so its consumer does not compete).
//!
//! The Python side runs in a venv made on first use from `requirements-peer.txt` in
//! `$AIHOST_BENCH_CACHE`, or `bench-venv` in the build folder (beside `release/`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{Bench, Proc, free_port, percentile};

const PEER_PY: &str = include_str!("reference_peer.py");
const CLIENT_PY: &str = include_str!("asyncio_client.py");
const REQUIREMENTS: &str = include_str!("requirements-peer.txt");

/// Polling clients per service.
const CLIENTS: usize = 32;
/// Pause between two status reads of one polling client.
const POLL_MS: u64 = 10;

/// The venv's folder, its scripts written beside it; made (or brought up to the pinned
/// requirements) on first use. Answers the venv's python.
fn python_env(b: &Bench) -> Result<PathBuf, String> {
    let cache = std::env::var_os("AIHOST_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| b.target.parent().unwrap_or(&b.target).join("bench-venv"));
    let python = cache.join("bin").join("python");
    let scripts = cache.join("scripts");
    std::fs::create_dir_all(&scripts).map_err(|e| format!("{}: {e}", scripts.display()))?;
    for (name, text) in [
        ("reference_peer.py", PEER_PY),
        ("asyncio_client.py", CLIENT_PY),
        ("requirements-peer.txt", REQUIREMENTS),
    ] {
        std::fs::write(scripts.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    let stamp = cache.join("installed-requirements.txt");
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == REQUIREMENTS) {
        return Ok(python);
    }
    println!(
        "peer: making the reference peer's Python venv in {} (first use: python3 -m venv, pip install -r requirements-peer.txt)",
        cache.display()
    );
    if !python.is_file() {
        let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let ok = Command::new(&base)
            .args(["-m", "venv"])
            .arg(&cache)
            .status()
            .map_err(|e| format!("{base}: {e}"))?;
        if !ok.success() {
            return Err(format!("{base} -m venv failed"));
        }
    }
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "-q", "-r"])
        .arg(scripts.join("requirements-peer.txt"))
        .status()
        .map_err(|e| format!("pip: {e}"))?;
    if !ok.success() {
        return Err("pip install -r requirements-peer.txt failed".into());
    }
    std::fs::write(&stamp, REQUIREMENTS).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(python)
}

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap()
}

/// Waits until `url` answers 2xx, or gives up when the process ended or after 60 s.
async fn ready(b: &Bench, proc: &mut Proc, url: &str) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = b.http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!("{url}: the process ended ({status})"));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(format!("{url}: not ready after 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `fake-comfyui` binary in its own process.
async fn start_fake(b: &Bench) -> Result<Proc, String> {
    let bin = b.target.join("fake-comfyui");
    if !bin.is_file() {
        return Err("fake-comfyui not built: cargo build --release --workspace".into());
    }
    let dir = bench_dir();
    let port = free_port();
    let child = Command::new(bin)
        .args(["--port", &port.to_string(), "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("fake-comfyui: {e}"))?;
    let mut p = Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let url = format!("{}/system_stats", p.base);
    ready(b, &mut p, &url).await?;
    Ok(p)
}

/// The reference peer against `comfy` (or accepting only, without a consumer).
async fn start_peer(
    b: &Bench,
    python: &Path,
    comfy: &str,
    accept_only: bool,
) -> Result<Proc, String> {
    let dir = bench_dir();
    let port = free_port();
    let script = python
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("scripts")
        .join("reference_peer.py");
    let workflows = std::env::current_dir().unwrap().join("workflows");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args(["--port", &port.to_string(), "--comfyui", comfy])
        .arg("--workflows")
        .arg(workflows)
        .arg("--outputs")
        .arg(dir.path().join("outputs"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if accept_only {
        cmd.arg("--accept-only");
    }
    let child = cmd.spawn().map_err(|e| format!("reference peer: {e}"))?;
    let mut p = Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let url = format!("{}/api/health", p.base);
    ready(b, &mut p, &url).await?;
    Ok(p)
}

/// The seed's template body, the same on both services; `color` makes each prompt new.
fn seed_body(color: u64) -> Value {
    json!({"workflow_name": "solid_color", "params": {"input_data": {"wf_json": {
        "width": 512, "height": 512, "color": color % 16_777_215}}}})
}

/// What the polling clients saw on one service.
struct Polled {
    per_sec: f64,
    latencies_ms: Vec<f64>,
    failed: u64,
}

/// `n` tasks from [`CLIENTS`] clients, each submitting one task and polling it until finished.
async fn polling_clients(b: &Bench, base: &str, colors: u64, n: u64) -> Polled {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, failed, http) = (next.clone(), failed.clone(), b.http.clone());
            let base = base.to_owned();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return lat;
                    }
                    let start = Instant::now();
                    match submit_and_poll(&http, &base, &seed_body(colors + i)).await {
                        true => lat.push(start.elapsed().as_secs_f64() * 1000.0),
                        false => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let mut latencies_ms = Vec::new();
    for w in workers {
        latencies_ms.extend(w.await.unwrap_or_default());
    }
    Polled {
        per_sec: latencies_ms.len() as f64 / t0.elapsed().as_secs_f64(),
        latencies_ms,
        failed: failed.load(Ordering::Relaxed),
    }
}

/// True when the task was created and seen COMPLETED (within 60 s).
async fn submit_and_poll(http: &reqwest::Client, base: &str, body: &Value) -> bool {
    let Ok(r) = http
        .post(format!("{base}/api/tasks/create"))
        .json(body)
        .send()
        .await
    else {
        return false;
    };
    let Ok(task) = r.json::<Value>().await else {
        return false;
    };
    let Some(id) = task["task_id"].as_str() else {
        return false;
    };
    let url = format!("{base}/api/tasks/{id}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        let Ok(r) = http.get(&url).send().await else {
            continue;
        };
        let Ok(t) = r.json::<Value>().await else {
            continue;
        };
        match t["status"].as_str() {
            Some("COMPLETED") => return true,
            Some("FAILED" | "CANCELLED") => return false,
            _ => {}
        }
    }
    false
}

fn polled_row(who: &str, p: &Polled) -> (String, String, Value) {
    let (p50, p99) = (
        percentile(p.latencies_ms.clone(), 50.0),
        percentile(p.latencies_ms.clone(), 99.0),
    );
    (
        format!(
            "ComfyUI path, {CLIENTS} polling clients (poll every {POLL_MS} ms, 512×512 PNG, fake at zero execution time): {who}"
        ),
        format!(
            "{:.0} tasks/s, p50 {p50:.1} ms, p99 {p99:.1} ms{}",
            p.per_sec,
            if p.failed > 0 {
                format!(" ({} failed)", p.failed)
            } else {
                String::new()
            }
        ),
        json!({"tasks_per_s": p.per_sec, "p50_ms": p50, "p99_ms": p99, "failed": p.failed}),
    )
}

/// Runs `asyncio_client.py` (64 connections) against `url` with `body`; answers submits/s.
async fn asyncio_submits(python: &Path, url: &str, body: &Value, secs: f64) -> Result<f64, String> {
    let script = python
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("scripts")
        .join("asyncio_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).args([
        url,
        &body.to_string(),
        "--conns",
        "64",
        "--secs",
        &secs.to_string(),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("asyncio client: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line: Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            format!(
                "asyncio client printed no figure: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    line["per_sec"]
        .as_f64()
        .ok_or_else(|| format!("asyncio client: {line}"))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

/// The `peer` scenario (see the module's comment).
pub async fn peer_comparison(b: &Bench, results: &mut Vec<(String, String, Value)>) {
    if let Err(e) = run(b, results).await {
        results.push((
            "reference peer comparison".into(),
            format!("skipped: {e}"),
            Value::Null,
        ));
    }
}

async fn run(b: &Bench, results: &mut Vec<(String, String, Value)>) -> Result<(), String> {
    if b.lib("aihost_comfyui").is_none() {
        return Err("libaihost_comfyui.so not built".into());
    }
    let python = python_env(b)?;
    let fake = start_fake(b).await?;
    let n = if b.quick { 200 } else { 2000 };
    let warm = if b.quick { 32 } else { 200 };

    // aihost's ComfyUI path (same plugin configuration as the `comfyui` scenario).
    let workflows = std::env::current_dir().unwrap().join("workflows");
    let config = format!(
        "urls = [{:?}]\nworkflows_dir = {:?}\nqueue_depth = 2\n",
        fake.base,
        workflows.display().to_string()
    );
    let ours = {
        let (p, _) = b
            .start_configured(("comfyui", "aihost_comfyui"), &config)
            .await;
        polling_clients(b, &p.base, 3_000_000, warm).await;
        polling_clients(b, &p.base, 1_000_000, n).await
    };
    // The reference peer against the same fake (colours of its own: no cached prompt).
    let theirs = {
        let p = start_peer(b, &python, &fake.base, false).await?;
        polling_clients(b, &p.base, 4_000_000, warm).await;
        polling_clients(b, &p.base, 2_000_000, n).await
    };
    results.push(polled_row("aihost", &ours));
    results.push(polled_row("reference peer (Python)", &theirs));
    let (p50_ours, p50_theirs) = (
        percentile(ours.latencies_ms.clone(), 50.0),
        percentile(theirs.latencies_ms.clone(), 50.0),
    );
    results.push((
        "ComfyUI path, 32 polling clients: aihost ÷ reference peer".into(),
        format!(
            "throughput {}, p50 {}",
            ratio(ours.per_sec, theirs.per_sec),
            ratio(p50_ours, p50_theirs)
        ),
        json!({"throughput": ours.per_sec / theirs.per_sec, "p50": p50_ours / p50_theirs}),
    ));
    drop(fake);

    // Submits from a Python asyncio client at 64 connections.
    let secs = b.secs();
    let ours = {
        let (p, _) = b
            .start("api", &[("testkit", "aihost_test_testkit")], "")
            .await;
        asyncio_submits(
            &python,
            &format!("{}/api/tasks", p.base),
            &json!({"type": "testkit.run", "input": {"mode": "noop"}}),
            secs,
        )
        .await?
    };
    let theirs = {
        let p = start_peer(b, &python, "http://127.0.0.1:9", true).await?;
        asyncio_submits(
            &python,
            &format!("{}/api/tasks/create", p.base),
            &seed_body(1),
            secs,
        )
        .await?
    };
    results.push((
        "submits from a Python asyncio client (aiohttp, 64 conns): aihost, durable POST /api/tasks"
            .into(),
        format!("{ours:.0} tasks/s"),
        json!(ours),
    ));
    results.push((
        "submits from a Python asyncio client (aiohttp, 64 conns): reference peer, in memory"
            .into(),
        format!("{theirs:.0} tasks/s"),
        json!(theirs),
    ));
    results.push((
        "submits from a Python asyncio client: aihost ÷ reference peer".into(),
        ratio(ours, theirs),
        json!(ours / theirs),
    ));
    Ok(())
}
