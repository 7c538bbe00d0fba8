//! aihost benchmark suite: starts the real release binary with its real plugins and prints
//! (and writes as JSON) the host's figures. Run from the repository root:
//!
//! ```sh
//! cargo build --release --workspace && ./target/release/aihost-bench [--quick] [--out FILE]
//! ```
//!
//! Every figure is the median of several runs after a warm-up. Nothing here asserts: the
//! figures go to BENCHMARKS.md.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;

mod engine_alone;
mod peer;
use serde_json::{Value, json};

thread_local! {
    /// A whole plugins.toml for the next start (set by `start_configured`).
    static MANIFEST: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// Environment for every started service (the PostgreSQL runs set the queue here).
    static ENV: std::cell::RefCell<Vec<(String, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Bench {
    target: PathBuf,
    quick: bool,
    http: reqwest::Client,
}

struct Proc {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

/// CPU time the process `pid` has used so far (user and kernel, all its threads), in ms.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) close with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) * 1000.0 / clock_ticks()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be read.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

impl Bench {
    fn lib(&self, name: &str) -> Option<PathBuf> {
        let p = self.target.join(format!("lib{name}.so"));
        p.is_file().then_some(p)
    }

    /// Starts `aihost <role>` with the given plugins and extra config; waits until ready.
    async fn start(&self, role: &str, plugins: &[(&str, &str)], extra: &str) -> (Proc, Duration) {
        self.start_with(role, plugins, extra, "").await
    }

    /// Starts `aihost serve` with one plugin and its `[plugin.config]` lines.
    async fn start_configured(&self, plugin: (&str, &str), config: &str) -> (Proc, Duration) {
        let path = self.lib(plugin.1).expect("plugin built");
        let manifest = format!(
            "[[plugin]]\nname = \"{}\"\nlibrary = {:?}\n\n[plugin.config]\n{config}\n",
            plugin.0,
            path.display().to_string()
        );
        MANIFEST.with(|m| *m.borrow_mut() = Some(manifest));
        let r = self.start_with("serve", &[], "", "").await;
        MANIFEST.with(|m| *m.borrow_mut() = None);
        r
    }

    /// Like `start`, with extra lines in the `[server]` table.
    async fn start_with(
        &self,
        role: &str,
        plugins: &[(&str, &str)],
        extra: &str,
        server_lines: &str,
    ) -> (Proc, Duration) {
        let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("aihost.toml"),
            format!(
                "[server]\nbind = \"127.0.0.1:{port}\"\n{server_lines}\n\n[log]\nlevel = \"warn\"\n\n{extra}\n"
            ),
        )
        .unwrap();
        let mut manifest = String::new();
        for (name, lib) in plugins {
            let path = self.lib(lib).unwrap_or_else(|| {
                panic!("lib{lib}.so not built: cargo build --release --workspace")
            });
            manifest.push_str(&format!(
                "[[plugin]]\nname = \"{name}\"\nlibrary = {:?}\n\n",
                path.display().to_string()
            ));
        }
        if let Some(m) = MANIFEST.with(|m| m.borrow().clone()) {
            manifest = m;
        }
        std::fs::write(dir.path().join("plugins.toml"), manifest).unwrap();
        let started = Instant::now();
        let child = Command::new(self.target.join("aihost"))
            .arg("--config")
            .arg(dir.path().join("aihost.toml"))
            .arg(role)
            .current_dir(dir.path())
            .envs(ENV.with(|e| e.borrow().clone()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn aihost");
        let base = format!("http://127.0.0.1:{port}");
        loop {
            if let Ok(r) = self.http.get(format!("{base}/api/health")).send().await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (
            Proc {
                child,
                base,
                _dir: dir,
            },
            started.elapsed(),
        )
    }

    /// Runs `op` from `conns` concurrent workers for `secs`, answers operations per second.
    async fn load<F, Fut>(&self, conns: usize, secs: f64, op: F) -> f64
    where
        F: Fn(reqwest::Client) -> Fut + Send + Sync + 'static + Clone,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let start = Instant::now();
        let workers: Vec<_> = (0..conns)
            .map(|_| {
                let op = op.clone();
                let done = done.clone();
                let http = self.http.clone();
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        if op(http.clone()).await {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.await;
        }
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    }

    fn runs(&self) -> usize {
        if self.quick { 1 } else { 3 }
    }

    fn secs(&self) -> f64 {
        if self.quick { 2.0 } else { 5.0 }
    }
}

/// Runs `wrk` (when installed) against `url` for `secs` with 64 connections; answers requests
/// per second counting only 2xx answers, or `None` without wrk.
fn wrk(url: &str, secs: f64, post_body: Option<&str>) -> Option<f64> {
    let which = Command::new("wrk").arg("--version").output().ok()?;
    let _ = which;
    let dir = tempfile::tempdir().ok()?;
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", &format!("-d{}s", secs.ceil() as u64)]);
    if let Some(body) = post_body {
        let script = dir.path().join("post.lua");
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{body}]]\n"
            ),
        )
        .ok()?;
        cmd.arg("-s").arg(script);
    }
    let out = cmd.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let total: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())?;
    let duration: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split("requests in").nth(1))
        .and_then(|r| r.trim().split(',').next())
        .map(|d| {
            d.trim()
                .trim_end_matches('s')
                .parse::<f64>()
                .unwrap_or(secs)
        })
        .unwrap_or(secs);
    let errors: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    Some(total - errors / duration)
}

fn noop_task() -> Value {
    json!({"type": "testkit.run", "input": {"mode": "noop"}})
}

async fn submit_and_reads(b: &Bench, results: &mut Vec<(String, String, Value)>) {
    let (p, _) = b
        .start("api", &[("testkit", "aihost_test_testkit")], "")
        .await;
    let url = format!("{}/api/tasks", p.base);
    let body = serde_json::to_vec(&noop_task()).unwrap();
    // Warm-up.
    let u = url.clone();
    let bd = body.clone();
    b.load(64, 1.0, move |h| post_ok(h, u.clone(), bd.clone()))
        .await;
    let body_text = String::from_utf8(body.clone()).unwrap();
    let via_wrk = wrk(&url, 1.0, Some(&body_text)).is_some();
    let client = if via_wrk { "wrk" } else { "built-in client" };
    let mut rates = Vec::new();
    for _ in 0..b.runs() {
        let u = url.clone();
        let bd = body.clone();
        let rate = match wrk(&url, b.secs(), Some(&body_text)) {
            Some(r) => r,
            None => {
                b.load(64, b.secs(), move |h| post_ok(h, u.clone(), bd.clone()))
                    .await
            }
        };
        rates.push(rate);
    }
    let submit = median(rates);
    results.push((
        format!("submit, durable (64 conns, {client})"),
        format!("{submit:.0} tasks/s"),
        json!(submit),
    ));

    let r: Value = b
        .http
        .post(&url)
        .json(&noop_task())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let get_url = format!("{}/api/tasks/{}", p.base, r["task_id"].as_str().unwrap());
    let mut rates = Vec::new();
    for _ in 0..b.runs() {
        let g = get_url.clone();
        let rate = match wrk(&get_url, b.secs(), None) {
            Some(r) => r,
            None => {
                b.load(64, b.secs(), move |h| {
                    let g = g.clone();
                    async move { h.get(g).send().await.is_ok_and(|r| r.status().is_success()) }
                })
                .await
            }
        };
        rates.push(rate);
    }
    let reads = median(rates);
    results.push((
        format!("status reads (64 conns, {client})"),
        format!("{reads:.0} req/s"),
        json!(reads),
    ));
}

async fn post_ok(h: reqwest::Client, url: String, body: Vec<u8>) -> bool {
    h.post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 202)
}

/// True when no task is PENDING or PROCESSING (two cheap index reads, unlike /api/stats).
async fn queue_idle(b: &Bench, base: &str) -> bool {
    for status in ["PENDING", "PROCESSING"] {
        let page: Value = b
            .http
            .get(format!("{base}/api/tasks?status={status}&limit=1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["tasks"].as_array().is_some_and(|t| !t.is_empty()) {
            return false;
        }
    }
    true
}

async fn end_to_end(b: &Bench, results: &mut Vec<(String, String, Value)>) {
    let extra = "[dispatcher]\ndefault_concurrency = 64\nprogress_interval_ms = 250\n\n[queue]\npoll_interval_ms = 500\n";
    let (p, _) = b
        .start("serve", &[("testkit", "aihost_test_testkit")], extra)
        .await;
    let base = p.base.clone();

    // Light load: one task at a time, answered when finished (?wait).
    let mut client_ms = Vec::new();
    let mut created_to_done = Vec::new();
    let mut dispatch = Vec::new();
    let n_light = if b.quick { 100 } else { 300 };
    for i in 0..n_light {
        let t0 = Instant::now();
        let r: Value = b
            .http
            .post(format!("{base}/api/tasks?wait=10"))
            .json(&noop_task())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let el = t0.elapsed().as_secs_f64() * 1000.0;
        if i >= 20 {
            client_ms.push(el);
            if let (Some(c), Some(s), Some(f)) = (
                r["created_at"].as_str(),
                r["started_at"].as_str(),
                r["finished_at"].as_str(),
            ) {
                let p = |x: &str| chrono_ms(x);
                created_to_done.push(p(f) - p(c));
                dispatch.push(p(s) - p(c));
            }
        }
    }
    results.push((
        "host overhead per task, light load (client: submit → finished answer)".into(),
        format!("p50 {:.2} ms, p99 {:.2} ms", percentile(client_ms.clone(), 50.0), percentile(client_ms.clone(), 99.0)),
        json!({"p50_ms": percentile(client_ms.clone(), 50.0), "p99_ms": percentile(client_ms, 99.0)}),
    ));
    results.push((
        "dispatch latency, light load (created_at → started_at, ms resolution)".into(),
        format!(
            "p50 {:.0} ms, p99 {:.0} ms",
            percentile(dispatch.clone(), 50.0),
            percentile(dispatch.clone(), 99.0)
        ),
        json!({"p50_ms": percentile(dispatch.clone(), 50.0), "p99_ms": percentile(dispatch, 99.0)}),
    ));

    // Full load: N tasks from 64 connections, until all are COMPLETED.
    let n = if b.quick { 2000 } else { 10000 };
    let mut rates = Vec::new();
    let mut overhead_full = Vec::new();
    for _ in 0..b.runs() {
        let t0 = Instant::now();
        let url = format!("{base}/api/tasks");
        let body = serde_json::to_vec(&noop_task()).unwrap();
        let ids: Vec<String> = futures_util::stream::iter(0..n)
            .map(|_| {
                let h = b.http.clone();
                let url = url.clone();
                let body = body.clone();
                async move {
                    let r: Value = h
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    r["task_id"].as_str().unwrap_or_default().to_owned()
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        while !queue_idle(b, &base).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rates.push(n as f64 / t0.elapsed().as_secs_f64());
        for id in ids.iter().step_by(50) {
            let t: Value = b
                .http
                .get(format!("{base}/api/tasks/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let (Some(c), Some(f)) = (t["created_at"].as_str(), t["finished_at"].as_str()) {
                overhead_full.push(chrono_ms(f) - chrono_ms(c));
            }
        }
    }
    let e2e = median(rates);
    results.push((
        "end-to-end no-op tasks (64 conns)".into(),
        format!("{e2e:.0} tasks/s"),
        json!(e2e),
    ));
    results.push((
        "host overhead per task, full load (created_at → finished_at)".into(),
        format!("p50 {:.0} ms, p99 {:.0} ms", percentile(overhead_full.clone(), 50.0), percentile(overhead_full.clone(), 99.0)),
        json!({"p50_ms": percentile(overhead_full.clone(), 50.0), "p99_ms": percentile(overhead_full, 99.0)}),
    ));
}

fn chrono_ms(s: &str) -> f64 {
    // RFC 3339 with milliseconds, e.g. 2026-11-28T01:19:11.118+00:00: take the time of day.
    let t = s.split('T').nth(1).unwrap_or("0:0:0");
    let t = t.split(['+', 'Z']).next().unwrap_or(t);
    let mut parts = t.split(':');
    let h: f64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let m: f64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let sec: f64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ((h * 60.0 + m) * 60.0 + sec) * 1000.0
}

async fn startup_and_idle(b: &Bench, results: &mut Vec<(String, String, Value)>) {
    let mut plugins = vec![
        ("imageops", "aihost_imageops"),
        ("testkit", "aihost_test_testkit"),
    ];
    for (name, lib) in [
        ("comfyui", "aihost_comfyui"),
        ("facefusion", "aihost_facefusion"),
    ] {
        if b.lib(lib).is_some() && plugins.len() < 3 {
            plugins.push((name, lib));
        }
    }
    let mut times = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..5 {
        let (p, t) = b.start("serve", &plugins, "").await;
        times.push(t.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle.push(status_kib(p.child.id(), "VmRSS:") as f64 / 1024.0);
    }
    let names: Vec<&str> = plugins.iter().map(|p| p.0).collect();
    let t = median(times);
    results.push((
        format!(
            "start to ready, {} plugins ({})",
            plugins.len(),
            names.join(", ")
        ),
        format!("{t:.0} ms"),
        json!(t),
    ));
    let m = median(idle);
    results.push(("idle memory (RSS)".into(), format!("{m:.1} MiB"), json!(m)));
}

async fn stream_1gib(b: &Bench, results: &mut Vec<(String, String, Value)>) {
    let size: u64 = if b.quick { 256 << 20 } else { 1 << 30 };
    let server_lines = format!("max_upload_bytes = {}\n", size * 2);
    let (p, _) = b
        .start_with(
            "serve",
            &[("imageops", "aihost_imageops")],
            "",
            &server_lines,
        )
        .await;
    let file =
        tempfile::NamedTempFile::new_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(file.as_file());
        let chunk = vec![0xA5u8; 1 << 20];
        for _ in 0..(size >> 20) {
            f.write_all(&chunk).unwrap();
        }
    }
    let before = status_kib(p.child.id(), "VmHWM:");
    let f = tokio::fs::File::open(file.path()).await.unwrap();
    let stream = tokio_util_stream(f);
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), size)
            .file_name("big.bin");
    let t0 = Instant::now();
    let r = b
        .http
        .post(format!("{}/api/uploads", p.base))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let up_secs = t0.elapsed().as_secs_f64();
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        results.push((
            "streaming 1 GiB".into(),
            format!("upload failed: {status} {body}"),
            Value::Null,
        ));
        return;
    }
    let t1 = Instant::now();
    let mut resp = b
        .http
        .get(body["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let mut got = 0u64;
    while let Some(c) = resp.chunk().await.unwrap() {
        got += c.len() as u64;
    }
    let down_secs = t1.elapsed().as_secs_f64();
    let peak = status_kib(p.child.id(), "VmHWM:") as f64 / 1024.0;
    results.push((
        format!("peak memory streaming {} MiB up and down", size >> 20),
        format!(
            "{peak:.1} MiB (before: {:.1} MiB; up {:.0} MiB/s, down {:.0} MiB/s, {} bytes back)",
            before as f64 / 1024.0,
            (size >> 20) as f64 / up_secs,
            (size >> 20) as f64 / down_secs,
            got
        ),
        json!({"peak_mib": peak, "upload_mib_s": (size >> 20) as f64 / up_secs, "download_mib_s": (size >> 20) as f64 / down_secs}),
    ));
}

fn tokio_util_stream(
    f: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

/// The ComfyUI path against the test suite's fake ComfyUI (which follows the protocol
/// recorded in `tests/fixtures/comfyui/` and encodes a real PNG): light-load latency per task and throughput of one
/// instance whose execution takes no time.
async fn comfyui_path(b: &Bench, results: &mut Vec<(String, String, Value)>) {
    if b.lib("aihost_comfyui").is_none() {
        return;
    }
    // The fake alone first (its own instance and folder): the ceiling of any client of it on
    // these cores, and its own share of a task's latency. Its folder is removed at the end:
    // ext4 scans past recently freed inodes when it allocates one, so deleting a thousand
    // files just before the run below would slow every file that run creates.
    let alone = aihost_tests::fake_comfyui::FakeComfy::start().await;
    {
        let n_light = if b.quick { 50 } else { 200 };
        let n = if b.quick { 300 } else { 1000 };
        let light = engine_alone::run_prompts(&alone.url, n_light, 1, 512, 1).await;
        let rate = engine_alone::run_prompts(&alone.url, n, 2, 512, 10_000).await;
        match (light, rate) {
            (Ok((_, lat)), Ok((rate, _))) => {
                let lat = lat[10.min(lat.len())..].to_vec();
                let (p50, p99) = (percentile(lat.clone(), 50.0), percentile(lat, 99.0));
                results.push((
                    "the fake ComfyUI alone (no aihost; one client, one prompt at a time): POST /prompt → output read".into(),
                    format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
                    json!({"p50_ms": p50, "p99_ms": p99}),
                ));
                results.push((
                    "the fake ComfyUI alone (no aihost), 2 prompts in flight".into(),
                    format!("{rate:.0} prompts/s"),
                    json!(rate),
                ));
            }
            (Err(e), _) | (_, Err(e)) => {
                results.push((
                    "the fake ComfyUI alone".into(),
                    format!("failed: {e}"),
                    Value::Null,
                ));
            }
        }
    }
    let fake = aihost_tests::fake_comfyui::FakeComfy::start().await;
    let workflows = std::env::current_dir().unwrap().join("workflows");
    let config = format!(
        "urls = [{:?}]\nworkflows_dir = {:?}\nqueue_depth = 2\n",
        fake.url,
        workflows.display().to_string()
    );
    let (p, _) = b
        .start_configured(("comfyui", "aihost_comfyui"), &config)
        .await;
    let task = |seed: u64| json!({"type": "comfyui.workflow", "input": {"workflow": "solid_color", "params": {"width": 512, "height": 512, "color": seed % 16_777_215}}});
    let mut lat = Vec::new();
    let n_light = if b.quick { 50 } else { 200 };
    for i in 0..n_light {
        let t0 = Instant::now();
        let r: Value = b
            .http
            .post(format!("{}/api/tasks?wait=30", p.base))
            .json(&task(i))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r["status"] != "COMPLETED" {
            results.push((
                "ComfyUI path".into(),
                format!("task failed: {r}"),
                Value::Null,
            ));
            return;
        }
        if i >= 10 {
            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    results.push((
        "ComfyUI path, light load: submit → finished answer, 512×512 PNG into fs storage (includes the fake's own PNG encode)".into(),
        format!("p50 {:.2} ms, p99 {:.2} ms", percentile(lat.clone(), 50.0), percentile(lat.clone(), 99.0)),
        json!({"p50_ms": percentile(lat.clone(), 50.0), "p99_ms": percentile(lat, 99.0)}),
    ));
    let n = if b.quick { 300 } else { 1000 };
    // Read before the clock starts: it runs `getconf`.
    let cpu0 = cpu_ms(p.child.id());
    let t0 = Instant::now();
    let url = format!("{}/api/tasks", p.base);
    let _: Vec<()> = futures_util::stream::iter(0..n)
        .map(|i| {
            let h = b.http.clone();
            let url = url.clone();
            let body = task(10_000 + i);
            async move {
                let _ = h.post(url).json(&body).send().await;
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    while !queue_idle(b, &p.base).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let cpu = (cpu_ms(p.child.id()) - cpu0) / n as f64;
    results.push((
        "one ComfyUI instance (fake, zero execution time), queue_depth 2".into(),
        format!("{rate:.0} tasks/s"),
        json!(rate),
    ));
    results.push((
        "aihost's CPU time per task in that run (user + kernel, all threads, /proc)".into(),
        format!("{cpu:.2} ms"),
        json!(cpu),
    ));
    drop(alone);
}

/// The submit, read and end-to-end figures again with the queue on the machine's PostgreSQL
/// (a database of its own, dropped afterwards).
async fn postgres_runs(b: &Bench, results: &mut Vec<(String, String, Value)>) {
    let admin = std::env::var("AIHOST_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let reachable = {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&admin).await.is_ok()
    };
    if !reachable {
        results.push((
            "PostgreSQL figures".into(),
            format!("skipped: no PostgreSQL at {admin}"),
            Value::Null,
        ));
        return;
    }
    let mut rows = Vec::new();
    for run in [0, 1] {
        let db = aihost_tests::TestDatabase::create().await;
        ENV.with(|e| *e.borrow_mut() = db.env());
        if run == 0 {
            submit_and_reads(b, &mut rows).await;
        } else {
            end_to_end(b, &mut rows).await;
        }
        ENV.with(|e| e.borrow_mut().clear());
        drop(db);
    }
    for (name, shown, v) in rows {
        results.push((format!("{name} [PostgreSQL]"), shown, v));
    }
}

fn target_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "bench-results.json".into());
    let only: Option<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = Bench {
            target: target_dir(),
            quick,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()
                .unwrap(),
        };
        let mut results: Vec<(String, String, Value)> = Vec::new();
        let want = |s: &str| only.as_deref().is_none_or(|o| o == s);
        if want("startup") {
            startup_and_idle(&b, &mut results).await;
        }
        if want("submit") {
            submit_and_reads(&b, &mut results).await;
        }
        if want("e2e") {
            end_to_end(&b, &mut results).await;
        }
        if want("postgres") {
            postgres_runs(&b, &mut results).await;
        }
        if want("comfyui") {
            comfyui_path(&b, &mut results).await;
        }
        if want("peer") {
            peer::peer_comparison(&b, &mut results).await;
        }
        if want("stream") {
            stream_1gib(&b, &mut results).await;
        }
        println!("\n| figure | result |\n|---|---|");
        for (name, shown, _) in &results {
            println!("| {name} | {shown} |");
        }
        let json: serde_json::Map<String, Value> =
            results.into_iter().map(|(n, _, v)| (n, v)).collect();
        std::fs::write(
            Path::new(&out),
            serde_json::to_string_pretty(&Value::Object(json)).unwrap(),
        )
        .unwrap();
        println!("\n(written to {out})");
    });
}
