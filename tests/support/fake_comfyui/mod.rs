//! A fake ComfyUI for the integration tests: HTTP + WebSocket on a free port (poem), behaving
//! as the transcripts recorded from a real ComfyUI 0.3.64 show (`tests/fixtures/comfyui/`,
//! checked by `tests/e2e/comfyui_fixtures.rs`):
//!
//! - every route also under `/api/` (including `/api/ws`), connections kept alive;
//! - `POST /prompt` validation with the real error bodies, against the recorded `object_info`
//!   of the node classes it runs (`validate.rs`, `nodes.rs`);
//! - the message order of a fresh run, a cached rerun, an `execution_error`, an
//!   `execution_interrupted` (effective at the next node boundary), `executing` null after the
//!   history write (`executor.rs`);
//! - messages to the socket registered for the prompt's client id, `status` and binary TEXT
//!   frames broadcast, ComfyUI's shared-client-id bug (`websocket.rs`);
//! - `kill()` drops every connection without a close frame and loses queue and history; the
//!   output files stay on disk and numbering continues after `restart()`.
//!
//! Models: each instance has its own lists (`set_models`, served at `/models/{folder}`, in
//! the loaders' combos of `/object_info` and checked by validation as ComfyUI does); a fake
//! started in a folder with a `models/` subfolder lists the files there instead, as ComfyUI.
//! `serve_forever` runs one as a process of its own (the `fake-comfyui` binary).
//!
//! Test hooks: `hold` (pause execution at node boundaries), `stall_sockets`, the request log,
//! and the count of WebSocket connections.

mod executor;
mod nodes;
mod routes;
mod server;
mod state;
mod validate;
mod websocket;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use serde_json::Value;
use tokio::net::TcpSocket;

use state::Inner;

/// A request the fake received: method, path (without `/api`), JSON body or `null`.
#[derive(Debug, Clone)]
pub struct Logged {
    /// HTTP method.
    pub method: String,
    /// Path without the `/api` prefix and query.
    pub path: String,
    /// JSON body, if any.
    pub body: Value,
}

/// A running fake ComfyUI.
pub struct FakeComfy {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    models: state::Models,
    inner: Option<Arc<Inner>>,
}

impl FakeComfy {
    /// Starts on a free port with empty input/output folders.
    pub async fn start() -> FakeComfy {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut f = FakeComfy::start_in(crate::free_port(), dir).await;
        f._tmp = Some(tmp);
        f
    }

    /// Starts on `port` serving the folder `dir` (its `input`, `output` and `temp` are
    /// created; a `models/` folder in it is listed as ComfyUI lists its models).
    pub async fn start_in(port: u16, dir: PathBuf) -> FakeComfy {
        for d in ["input", "output", "temp"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let mut f = FakeComfy {
            port,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            _tmp: None,
            models: state::Models::default(),
            inner: None,
        };
        f.restart().await;
        f
    }

    /// Gives this instance its own list of model files in `folder` (`checkpoints`, `loras`):
    /// served at `/models/{folder}`, offered by the loaders in `/object_info`, and checked by
    /// validation (another value is `value_not_in_list`).
    pub fn set_models(&self, folder: &str, files: &[&str]) {
        self.models.lock().unwrap().insert(
            folder.to_owned(),
            files.iter().map(|f| (*f).to_owned()).collect(),
        );
    }

    /// (Re)starts on the same port and folders, with an empty queue and history.
    pub async fn restart(&mut self) {
        assert!(self.inner.is_none(), "kill it first");
        let inner = Arc::new(Inner::new(self.dir.clone(), self.models.clone()));
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        let mut tries = 0;
        while let Err(e) = sock.bind(([127, 0, 0, 1], self.port).into()) {
            tries += 1;
            assert!(tries < 100, "cannot bind port {}: {e}", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listener = sock.listen(128).unwrap();
        let acceptor = server::KillableAcceptor::new(listener, inner.conns.clone()).unwrap();
        let app = server::app(inner.clone());
        let serve = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
        });
        let exec = tokio::spawn(executor::executor(inner.clone()));
        inner
            .tasks
            .lock()
            .unwrap()
            .extend([serve.abort_handle(), exec.abort_handle()]);
        self.inner = Some(inner);
    }

    /// Like SIGKILL: every connection dropped without a close frame; queue and history lost.
    pub fn kill(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.killed.store(true, Ordering::SeqCst);
            for t in inner.tasks.lock().unwrap().drain(..) {
                t.abort();
            }
            inner.conns.shutdown_all();
            inner.st().sockets.clear();
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        self.inner.as_ref().expect("fake ComfyUI is not running")
    }

    /// Turns latent previews on or off, as ComfyUI's `--preview-method auto` (until the next
    /// restart): each KSampler step then sends a binary preview frame (a JPEG) to the
    /// prompt's client, of type 4 with metadata when its socket announced
    /// `supports_preview_metadata`, else of type 1.
    pub fn previews(&self, on: bool) {
        self.inner().previews.store(on, Ordering::SeqCst);
    }

    /// Pauses (true) or resumes (false) execution at node boundaries.
    pub fn hold(&self, on: bool) {
        self.inner().hold.send_replace(on);
    }

    /// Stalls every WebSocket open now: it stays open but the server neither sends nor
    /// reads anything on it (a hung proxy or server thread). Later connections work.
    pub fn stall_sockets(&self) {
        let last = self.inner().next_conn.load(Ordering::SeqCst) - 1;
        self.inner().stalled_upto.store(last, Ordering::SeqCst);
    }

    /// WebSocket handshakes accepted since the last (re)start.
    pub fn ws_connections(&self) -> u64 {
        self.inner().ws_connections.load(Ordering::SeqCst)
    }

    /// Requests since the last (re)start.
    pub fn requests(&self) -> Vec<Logged> {
        self.inner().log.lock().unwrap().clone()
    }

    /// Bodies of every `POST /prompt` received (accepted or not).
    pub fn prompts(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/prompt")
            .map(|r| r.body)
            .collect()
    }

    /// The running prompt's id.
    pub fn running(&self) -> Option<String> {
        let st = self.inner().st();
        st.running.as_ref().map(|(q, _)| q.id.clone())
    }

    /// The most prompts that were queued or running at once since the last (re)start (the
    /// fake's own record of its queue).
    pub fn max_queued(&self) -> usize {
        self.inner().st().max_remaining
    }

    /// Pending prompt ids.
    pub fn pending(&self) -> Vec<String> {
        let st = self.inner().st();
        st.pending.iter().map(|q| q.id.clone()).collect()
    }

    /// Path of a file in the fake's folders (`input`, `output`, `temp`).
    pub fn file(&self, kind: &str, rel: &str) -> PathBuf {
        self.dir.join(kind).join(rel)
    }

    /// Waits until `f` holds (polling), panicking after `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, f: impl Fn(&FakeComfy) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !f(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fake ComfyUI: never {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs a fake ComfyUI on `port` in `dir` until the process is killed, printing ComfyUI's
/// start lines (for the `fake-comfyui` binary, which supervised-instance tests launch).
/// `hold` pauses execution at node boundaries for good.
pub async fn serve_forever(port: u16, dir: PathBuf, hold: bool) {
    println!("Starting server");
    let f = FakeComfy::start_in(port, dir).await;
    f.hold(hold);
    println!("To see the GUI go to: http://127.0.0.1:{port}");
    eprintln!("fake ComfyUI: pid {}", std::process::id());
    std::future::pending::<()>().await;
}

impl Drop for FakeComfy {
    fn drop(&mut self) {
        self.kill();
    }
}
