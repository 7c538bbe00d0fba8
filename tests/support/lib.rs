//! Test support: runs the real `aihost` binary with real plugin libraries in a temporary
//! folder, and talks to it over HTTP.
//!
//! The binary and plugin libraries must be built first (`cargo build --workspace`); they are
//! found next to the test executable (`target/<profile>/`).

use std::{
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub mod browser;
pub mod fake_comfyui;
mod wait;

pub use wait::{poll, wait_for, wait_until};

/// `target/<profile>`, found from the test executable's path (`target/<profile>/deps/x`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// The repository's `workflows/` folder (the ComfyUI templates), as an absolute path.
pub fn workflows_dir() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../workflows")
        .canonicalize()
        .expect("the workflows folder")
        .display()
        .to_string()
}

/// The built `aihost` binary.
pub fn aihost_bin() -> PathBuf {
    let p = target_dir().join("aihost");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// A built plugin library by crate lib name, e.g. `aihost_imageops`.
pub fn plugin_lib(lib_name: &str) -> PathBuf {
    let p = target_dir().join(format!("lib{lib_name}.so"));
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What to start.
#[derive(Clone)]
pub struct Options {
    /// `[[plugin]]` entries: (name, library path, config TOML lines).
    pub plugins: Vec<(String, PathBuf, String)>,
    /// Extra lines for aihost.toml (full sections).
    pub extra_toml: String,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plugins: vec![
                (
                    "imageops".into(),
                    plugin_lib("aihost_imageops"),
                    String::new(),
                ),
                (
                    "testkit".into(),
                    plugin_lib("aihost_test_testkit"),
                    String::new(),
                ),
            ],
            extra_toml: String::new(),
            env: Vec::new(),
        }
    }
}

/// A running `aihost serve`.
pub struct Server {
    /// The temporary folder holding config, database, outputs and the log.
    pub dir: tempfile::TempDir,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    /// HTTP client.
    pub http: reqwest::Client,
    child: Option<Child>,
    port: u16,
    options: Options,
    role: String,
}

impl Server {
    /// Starts a server with the default plugins (imageops, testkit).
    pub async fn start() -> Server {
        Server::start_with(Options::default()).await
    }

    /// Starts a server.
    pub async fn start_with(options: Options) -> Server {
        Server::start_role(options, "serve").await
    }

    /// Starts the binary with another role: `api` (waits for `/api/health`) or `consumer`
    /// (serves no HTTP: waits for its `aihost ready` log line).
    pub async fn start_role(options: Options, role: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut s = Server {
            dir,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            child: None,
            port,
            options,
            role: role.to_owned(),
        };
        s.write_config();
        s.spawn().await;
        s
    }

    /// Starts the binary again on the same folder and port, in another role (see
    /// [`Server::start_role`]).
    pub async fn restart_as(&mut self, role: &str) {
        assert!(self.child.is_none(), "stop it first");
        self.role = role.to_owned();
        self.spawn().await;
    }

    /// Whether the process is still running (the same process: never restarted by this).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let mut host = std::fs::File::create(d.join("aihost.toml")).unwrap();
        writeln!(
            host,
            "[server]\nbind = \"127.0.0.1:{}\"\nshutdown_grace_secs = 5\n\n[queue]\nlease_secs = 3\npoll_interval_ms = 100\nbackoff_base_ms = 50\nbackoff_max_ms = 200\n\n{}",
            self.port, self.options.extra_toml
        )
        .unwrap();
        let mut plugins = std::fs::File::create(d.join("plugins.toml")).unwrap();
        for (name, lib, cfg) in &self.options.plugins {
            writeln!(
                plugins,
                "[[plugin]]\nname = \"{name}\"\nlibrary = {:?}\n",
                lib.display().to_string()
            )
            .unwrap();
            if !cfg.is_empty() {
                writeln!(plugins, "[plugin.config]\n{cfg}\n").unwrap();
            }
        }
    }

    /// Path of the server's log (stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("aihost.log")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(aihost_bin());
        cmd.arg("--config")
            .arg(self.dir.path().join("aihost.toml"))
            .arg(&self.role)
            .current_dir(self.dir.path())
            .env("LOG_LEVEL", "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn aihost"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("aihost exited early with {status}; log:\n{}", self.log());
            }
            if self.role == "consumer" {
                if self.log().contains("aihost ready") {
                    return;
                }
            } else if let Ok(r) = self.http.get(self.url("/api/health")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "aihost did not become ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Full URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`, and waits for the process to go.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit; answers its exit status success.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the binary again on the same folder and port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn().await;
    }

    /// POST JSON, answers (status, body).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GET, answers (status, body as JSON or string).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates a task and answers its body; panics unless 200/202.
    pub async fn create(&self, task_type: &str, input: Value) -> Value {
        let (status, body) = self
            .post("/api/tasks", &json!({"type": task_type, "input": input}))
            .await;
        assert!(
            status == 202 || status == 200,
            "create failed: {status} {body}"
        );
        body
    }

    /// Creates a task and waits (up to `timeout`) until it is finished; answers the finished
    /// task.
    pub async fn run(&self, task_type: &str, input: Value, timeout: Duration) -> Value {
        let t = self.create(task_type, input).await;
        self.wait_done(t["task_id"].as_str().expect("task_id"), timeout)
            .await
    }

    /// Uploads a file with `POST /api/uploads` (multipart field `file`, with `content_type` if
    /// given, else none); panics unless 201, answers the upload's body (`key`, `url`, ...).
    pub async fn upload(
        &self,
        file_name: &str,
        bytes: Vec<u8>,
        content_type: Option<&str>,
    ) -> Value {
        let mut part = reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_owned());
        if let Some(mime) = content_type {
            part = part.mime_str(mime).unwrap();
        }
        let r = self
            .http
            .post(self.url("/api/uploads"))
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(
            status,
            201,
            "upload of {file_name}: {text}\nlog:\n{}",
            self.log()
        );
        serde_json::from_str(&text).unwrap()
    }

    /// GETs a full URL (e.g. an output's `url`); panics unless 200, answers the body.
    pub async fn download(&self, url: &str) -> Vec<u8> {
        let r = self.http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {url}");
        r.bytes().await.unwrap().to_vec()
    }

    /// Follows a task's event stream (`GET /api/tasks/{id}/events`, SSE) until the server
    /// ends it (at most `timeout`); answers its events.
    pub async fn events(&self, id: &str, timeout: Duration) -> Vec<Value> {
        let r = self
            .http
            .get(self.url(&format!("/api/tasks/{id}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let text = tokio::time::timeout(timeout, r.text())
            .await
            .unwrap_or_else(|_| panic!("the event stream of {id} did not end in {timeout:?}"))
            .unwrap();
        sse_events(&text)
    }

    /// Polls a task until its status is terminal (or `timeout`), answers it.
    pub async fn wait_done(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, t) = self.get(&format!("/api/tasks/{id}")).await;
            assert_eq!(status, 200, "{t}");
            if matches!(
                t["status"].as_str(),
                Some("COMPLETED" | "FAILED" | "CANCELLED")
            ) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not finished in {timeout:?}: {t}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls until the task has `status`.
    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, t) = self.get(&format!("/api/tasks/{id}")).await;
            if t["status"] == status {
                return t;
            }
            assert!(Instant::now() < deadline, "task {id} never {status}: {t}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes a PNG of `w`×`h` with a gradient to `path`.
pub fn write_png(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    img.save(path).unwrap();
}

/// A PNG of `w`×`h` in one colour, encoded in memory.
pub fn solid_png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The events (JSON `data:` lines) of an SSE text. A last line without its newline is left
/// out: it is an event cut off by a stream read only in part.
pub fn sse_events(text: &str) -> Vec<Value> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("event {d}: {e}")))
        .collect()
}

/// Runs the binary with arguments; answers (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(aihost_bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run aihost");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A database of its own on the machine's PostgreSQL (`AIHOST_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`, names the server and its maintenance
/// database), dropped (with its connections) when this is dropped.
pub struct TestDatabase {
    /// Its name, `aihost_test_<pid>_<n>`.
    pub name: String,
    /// URL of the database.
    pub url: String,
}

fn postgres_admin_url() -> String {
    std::env::var("AIHOST_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Drops database `name` (with its connections) if it exists, then creates it again if
/// `create`: the one place that creates and drops the test databases, on one connection to
/// the maintenance database.
async fn reset_database(name: &str, create: bool) -> Result<(), String> {
    use sqlx::Connection as _;
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .map_err(|e| format!("PostgreSQL at {admin}: {e}"))?;
    let mut statements = vec![format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")];
    if create {
        statements.push(format!("CREATE DATABASE {name}"));
    }
    let result = async {
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut conn)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
        }
        Ok(())
    }
    .await;
    let _ = conn.close().await;
    result
}

impl TestDatabase {
    /// Creates it.
    pub async fn create() -> TestDatabase {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "aihost_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        reset_database(&name, true)
            .await
            .unwrap_or_else(|e| panic!("create test database: {e}"));
        let admin = postgres_admin_url();
        let (base, _) = admin.rsplit_once('/').expect("admin URL has a database");
        TestDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Environment that points a server at this database.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AIHOST_QUEUE__TYPE".into(), "postgres".into()),
            ("AIHOST_QUEUE__URL".into(), self.url.clone()),
            ("AIHOST_QUEUE__MAX_CONNECTIONS".into(), "4".into()),
        ]
    }

    /// Runs one statement on a fresh connection to this database and answers its rows.
    pub async fn query(&self, sql: &str) -> Vec<sqlx::postgres::PgRow> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
        rows
    }

    /// Drops the database now, with its connections (a store that is gone, as after a failed
    /// disk or a dropped database); dropping `self` later does nothing more.
    pub async fn drop_now(&self) {
        reset_database(&self.name, false)
            .await
            .unwrap_or_else(|e| panic!("drop test database: {e}"));
    }

    /// Terminates every other connection to this database (as a failover or a network cut
    /// would); answers how many were terminated.
    pub async fn terminate_connections(&self) -> usize {
        use sqlx::Row as _;
        self.query(
            "SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .iter()
        .filter(|r| r.get::<bool, _>("t"))
        .count()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // On a thread of its own: drop may run inside the test's runtime, which cannot block.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(reset_database(&name, false))
        })
        .join();
    }
}
