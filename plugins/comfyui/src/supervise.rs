//! Supervised instances: the plugin launches ComfyUI as a child process, waits until it
//! answers, forwards its output lines to the host log, restarts it with exponential backoff
//! when it dies (or when the watchdog finds its running prompt stalled), and stops it when the
//! plugin shuts down.
//!
//! The child runs in a process group of its own, so a stop (SIGTERM, then SIGKILL after a
//! grace period) reaches every process ComfyUI started. It is spawned with
//! `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when the host dies without shutting
//! down (kill -9, crash): the spawning thread is a worker of the plugin's runtime, which lives
//! as long as the process, and a child whose parent already died before the flag was set exits
//! at once.
//!
//! Separate from the engine (`engine.rs`, which only speaks HTTP and WebSocket to a URL): a
//! supervised instance is the same `Instance` plus this process around it.

use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aihost_plugin_api::{PluginError, codes};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::{Notify, watch},
};

use crate::error::fatal;

/// One instance in the richer form of the config (`[[plugin.config.instances]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// The instance's base URL (`http://127.0.0.1:8188`).
    pub url: String,
    /// How to start it; without it the instance is started by someone else.
    #[serde(default)]
    pub launch: Option<Launch>,
    /// Its ComfyUI folder (holding `models/` and `input/`) when it is not supervised but
    /// local: inputs aihost uploaded are removed from its `input/` folder after each task.
    #[serde(default)]
    pub input_dir: Option<String>,
}

/// How the plugin starts and supervises one ComfyUI instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Launch {
    /// Program and arguments; `{port}` is replaced by `port`, e.g.
    /// `["python", "main.py", "--listen", "127.0.0.1", "--port", "{port}"]`.
    pub command: Vec<String>,
    /// Working folder of the child; empty = the host's.
    pub cwd: String,
    /// ComfyUI's folder (models go to `{comfyui_dir}/models/{folder}`, uploads to
    /// `{comfyui_dir}/input`); empty = `cwd`.
    pub comfyui_dir: String,
    /// Extra environment of the child.
    pub env: BTreeMap<String, String>,
    /// The port for `{port}`; 0 = the port of `url`.
    pub port: u16,
    /// `CUDA_VISIBLE_DEVICES` of the child (e.g. `"0"`); empty leaves it unset.
    pub cuda_device: String,
    /// How long a start may take before the child is killed and started again, seconds.
    pub start_timeout_secs: u64,
    /// Longest pause between restarts, seconds (the pause starts at 1 s and doubles).
    pub max_backoff_secs: u64,
    /// How long a stop waits after SIGTERM before SIGKILL, seconds.
    pub stop_grace_secs: u64,
}

impl Default for Launch {
    fn default() -> Self {
        Launch {
            command: Vec::new(),
            cwd: String::new(),
            comfyui_dir: String::new(),
            env: BTreeMap::new(),
            port: 0,
            cuda_device: String::new(),
            start_timeout_secs: 600,
            max_backoff_secs: 60,
            stop_grace_secs: 5,
        }
    }
}

impl InstanceConfig {
    /// `invalid_config` for a launch without a command.
    pub(crate) fn check(&self) -> Result<(), PluginError> {
        if let Some(l) = &self.launch
            && l.command.first().is_none_or(|c| c.trim().is_empty())
        {
            return Err(fatal(
                codes::INVALID_CONFIG,
                format!("instance {}: launch.command must name a program", self.url),
            ));
        }
        Ok(())
    }

    /// ComfyUI's folder when known (supervised: `comfyui_dir` or `cwd`; local: `input_dir`'s
    /// parent is not assumed, so only supervised instances have one).
    pub(crate) fn comfyui_dir(&self) -> Option<std::path::PathBuf> {
        let l = self.launch.as_ref()?;
        let d = if l.comfyui_dir.is_empty() {
            &l.cwd
        } else {
            &l.comfyui_dir
        };
        Some(std::path::PathBuf::from(if d.is_empty() { "." } else { d }))
    }
}

/// What the supervisor reports in the plugin's health.
#[derive(Debug, Clone, Default, Serialize)]
struct State {
    /// `downloading_models`, `starting`, `running`, `restarting` or `stopped`.
    phase: &'static str,
    /// Restarts so far (deaths, stalls and start timeouts).
    restarts: u64,
    /// The child's pid while it runs.
    pid: Option<u32>,
    /// How the last child ended.
    last_exit: Option<String>,
    /// Why it was last restarted by the plugin (watchdog, start timeout).
    last_restart_reason: Option<String>,
    #[serde(skip)]
    started: Option<Instant>,
}

/// The supervisor of one launched instance.
pub(crate) struct Supervisor {
    url: String,
    launch: Launch,
    state: Mutex<State>,
    stopping: AtomicBool,
    stop: watch::Sender<bool>,
    restart: Notify,
}

/// Sends `sig` to the process group `pgid`.
fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Whether `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

impl Supervisor {
    /// A supervisor for `url`; [`Supervisor::run`] starts it.
    pub(crate) fn new(url: &str, launch: Launch) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            url: url.to_owned(),
            launch,
            state: Mutex::new(State {
                phase: "starting",
                ..State::default()
            }),
            stopping: AtomicBool::new(false),
            stop: watch::channel(false).0,
            restart: Notify::new(),
        })
    }

    /// Sets the phase shown in health.
    pub(crate) fn set_phase(&self, phase: &'static str) {
        self.state.lock().unwrap().phase = phase;
    }

    /// The health entry: phase, pid, restarts, last exit.
    pub(crate) fn report(&self) -> Value {
        let st = self.state.lock().unwrap();
        let mut v = json!(*st);
        v["uptime_secs"] = json!(st.started.map(|t| t.elapsed().as_secs()));
        v
    }

    /// Whether the child answers (phase `running`).
    pub(crate) fn running(&self) -> bool {
        self.state.lock().unwrap().phase == "running"
    }

    /// Asks for a restart (the watchdog): the child is stopped and started again.
    pub(crate) fn request_restart(&self, why: String) {
        tracing::warn!(target: "comfyui::supervise", instance = %self.url, reason = %why, "restarting ComfyUI");
        self.state.lock().unwrap().last_restart_reason = Some(why);
        self.restart.notify_one();
    }

    fn port(&self) -> u16 {
        if self.launch.port != 0 {
            return self.launch.port;
        }
        url::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.port_or_known_default())
            .unwrap_or(8188)
    }

    /// Starts the child (unless stopping), its pid recorded under the state lock so a
    /// concurrent [`Supervisor::shutdown`] always sees it.
    fn spawn(&self) -> std::io::Result<Option<Child>> {
        // A base folder of its own (`--base-directory`) must have these before ComfyUI starts
        // (0.3.64 exits without custom_nodes/); an image's volume starts empty.
        if !self.launch.comfyui_dir.is_empty() {
            for sub in ["custom_nodes", "models", "input", "output"] {
                std::fs::create_dir_all(std::path::Path::new(&self.launch.comfyui_dir).join(sub))?;
            }
        }
        let port = self.port().to_string();
        let args: Vec<String> = self
            .launch
            .command
            .iter()
            .map(|a| a.replace("{port}", &port))
            .collect();
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false)
            .envs(&self.launch.env);
        if !self.launch.cwd.is_empty() {
            cmd.current_dir(&self.launch.cwd);
        }
        if !self.launch.cuda_device.is_empty() {
            cmd.env("CUDA_VISIBLE_DEVICES", &self.launch.cuda_device);
        }
        // SAFETY: getpid before the fork; in the child only async-signal-safe calls.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The host died between fork and prctl: nobody would ever stop us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut st = self.state.lock().unwrap();
        if self.stopping.load(Ordering::Acquire) {
            return Ok(None);
        }
        let child = cmd.spawn()?;
        st.pid = child.id();
        st.phase = "starting";
        st.started = Some(Instant::now());
        Ok(Some(child))
    }

    /// Forwards each line of the child's output to the host log.
    fn forward(&self, child: &mut Child) {
        let url = self.url.clone();
        if let Some(out) = child.stdout.take() {
            let url = url.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "comfyui::instance", instance = %url, stream = "stdout", "{line}");
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "comfyui::instance", instance = %url, stream = "stderr", "{line}");
                }
            });
        }
    }

    /// SIGTERM to the group, up to the grace period for the leader to exit, then SIGKILL to
    /// the group, then reaps the leader.
    async fn stop_child(&self, child: &mut Child) {
        let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        signal_group(pgid, libc::SIGTERM);
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.launch.stop_grace_secs);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal_group(pgid, libc::SIGKILL);
        let _ = child.wait().await;
    }

    /// Waits until the child answers `/system_stats`: `Ok(true)` when it does, `Ok(false)` on
    /// a start timeout, `Err(status)` when it exited first.
    async fn wait_ready(&self, child: &mut Child) -> Result<bool, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client");
        let url = format!("{}/system_stats", self.url.trim_end_matches('/'));
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.launch.start_timeout_secs);
        let mut stop = self.stop.subscribe();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(status.to_string());
            }
            if *stop.borrow_and_update() {
                return Ok(false);
            }
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs the child for the life of the plugin: start, wait until it answers, follow it, and
    /// start it again with backoff when it ends, until [`Supervisor::shutdown`].
    pub(crate) async fn run(self: Arc<Self>, on_up: impl Fn() + Send + Sync) {
        let mut backoff = Duration::from_secs(1);
        let max_backoff = Duration::from_secs(self.launch.max_backoff_secs.max(1));
        let mut stop = self.stop.subscribe();
        loop {
            let mut child = match self.spawn() {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    let why = format!("cannot start {:?}: {e}", self.launch.command);
                    tracing::error!(target: "comfyui::supervise", instance = %self.url, error = %why, "ComfyUI did not start");
                    {
                        let mut st = self.state.lock().unwrap();
                        st.last_exit = Some(why);
                        st.phase = "restarting";
                        st.restarts += 1;
                    }
                    if self.pause(&mut stop, &mut backoff, max_backoff).await {
                        break;
                    }
                    continue;
                }
            };
            self.forward(&mut child);
            let pid = child.id().unwrap_or(0);
            tracing::info!(target: "comfyui::supervise", instance = %self.url, pid, "ComfyUI started");
            let started = Instant::now();
            let ended = match self.wait_ready(&mut child).await {
                Ok(true) => {
                    self.set_phase("running");
                    tracing::info!(target: "comfyui::supervise", instance = %self.url, pid, secs = started.elapsed().as_secs(), "ComfyUI answers");
                    on_up();
                    tokio::select! {
                        status = child.wait() => Some(status.map_or_else(|e| e.to_string(), |s| s.to_string())),
                        _ = stop.changed() => None,
                        () = self.restart.notified() => {
                            self.stop_child(&mut child).await;
                            Some("stopped by the watchdog".to_owned())
                        }
                    }
                }
                Ok(false) => {
                    let stopping = self.stopping.load(Ordering::Acquire);
                    if !stopping {
                        self.state.lock().unwrap().last_restart_reason = Some(format!(
                            "no answer within {} s of the start",
                            self.launch.start_timeout_secs
                        ));
                    }
                    self.stop_child(&mut child).await;
                    (!stopping).then(|| "start timed out".to_owned())
                }
                Err(status) => Some(status),
            };
            let Some(exit) = ended else {
                self.stop_child(&mut child).await;
                break;
            };
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
            tracing::warn!(target: "comfyui::supervise", instance = %self.url, pid, exit = %exit, "ComfyUI ended; restarting");
            {
                let mut st = self.state.lock().unwrap();
                st.last_exit = Some(exit);
                st.pid = None;
                st.phase = "restarting";
                st.restarts += 1;
                st.started = None;
            }
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            if self.pause(&mut stop, &mut backoff, max_backoff).await {
                break;
            }
        }
        let mut st = self.state.lock().unwrap();
        st.phase = "stopped";
        st.pid = None;
    }

    /// Sleeps the backoff (doubling it); answers true when stopped meanwhile.
    async fn pause(
        &self,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Duration,
        max: Duration,
    ) -> bool {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(max);
        tokio::select! {
            () = tokio::time::sleep(wait) => self.stopping.load(Ordering::Acquire),
            _ = stop.changed() => true,
        }
    }

    /// Stops the child from any thread (the plugin's `shutdown`): no restart after this;
    /// SIGTERM to its group, up to the grace period, then SIGKILL.
    pub(crate) fn shutdown(&self) {
        let pid = {
            let mut st = self.state.lock().unwrap();
            self.stopping.store(true, Ordering::Release);
            st.phase = "stopped";
            st.pid.take()
        };
        let _ = self.stop.send(true);
        let Some(pid) = pid else { return };
        let pgid = i32::try_from(pid).unwrap_or(0);
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(self.launch.stop_grace_secs);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(pgid, libc::SIGKILL);
        tracing::info!(target: "comfyui::supervise", instance = %self.url, pid, "ComfyUI stopped");
    }
}
