//! The consumer: claims tasks for loaded task types, runs them through their plugin, stores
//! outputs and records the outcome.
//!
//! One loop claims work when woken (a task was created or is due again) or every poll
//! interval; each claimed attempt runs in its own tokio task that renews its lease, writes
//! progress at most every `progress_interval`, and ends in exactly one of: completed, failed
//! (or back to PENDING for a retry), cancelled, or released (shutdown). Concurrency is limited
//! per task type.

mod cancel;
mod outage;
mod work_dirs;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aihost_plugin_api::{PluginError, TaskRequest};
use chrono::Utc;
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    fetch::Fetcher,
    metrics::AttemptEnd,
    plugins::{Registry, services::task_context},
    storage::Storage,
    store::{EventKind, Progress, Task, TaskError, TaskStore},
};

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub(crate) struct DispatcherSettings {
    /// This worker's id, recorded on claimed tasks.
    pub worker_id: String,
    /// Lease length; renewed every third of it.
    pub lease: Duration,
    /// Poll for due work at least this often.
    pub poll_interval: Duration,
    /// Concurrency per task type when the plugin leaves it to the host.
    pub default_concurrency: u32,
    /// Minimum time between two progress writes of one task.
    pub progress_interval: Duration,
    /// Parent of the per-attempt work folders.
    pub work_dir: PathBuf,
    /// First retry delay; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long running tasks may take to finish at shutdown before they are put back.
    pub shutdown_grace: Duration,
    /// Time limits of attempts.
    pub timeouts: Timeouts,
    /// How long a cancelled attempt's plugin may take to stop its engine before the attempt
    /// is dropped anyway (`dispatcher.cancel_grace_secs`).
    pub cancel_grace: Duration,
    /// How long tasks of a type no engine can take wait in the queue before they fail with
    /// `engine_unavailable` (`dispatcher.max_unavailable_wait_secs`).
    pub max_unavailable_wait: Duration,
    /// Least time between two `task.progress` webhook messages of one task
    /// (`webhooks.progress_interval_ms`).
    pub webhook_progress_interval: Duration,
}

/// Time limits of attempts, from the configuration (`dispatcher.timeout_secs`,
/// `type_timeouts`, `retry_timeouts`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeouts {
    /// For types with no other limit; `None`: no limit.
    pub default: Option<Duration>,
    /// Per task type; override the plugin's default.
    pub per_type: HashMap<String, Duration>,
    /// Whether a timed-out attempt may be retried.
    pub retry: bool,
}

impl Timeouts {
    /// The limit of one attempt of `task`: its own `timeout_secs`, else the configured limit of
    /// its type, else the plugin's default (`plugin_secs`, 0 for none), else the default.
    pub(crate) fn of(&self, task: &Task, plugin_secs: u32) -> Option<Duration> {
        if let Some(secs) = task.timeout_secs {
            return Some(Duration::from_secs(u64::from(secs)));
        }
        if let Some(d) = self.per_type.get(&task.task_type) {
            return Some(*d);
        }
        if plugin_secs > 0 {
            return Some(Duration::from_secs(u64::from(plugin_secs)));
        }
        self.default
    }
}

struct Running {
    task_type: String,
    cancel: watch::Sender<Stop>,
    /// The plugin's work is done and the host stores its outputs: the attempt no longer
    /// counts against its type's concurrency (the engine can take the next task meanwhile).
    storing: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    No,
    Cancel,
    Release,
}

/// The consumer. Create with [`Dispatcher::new`], run with [`Dispatcher::run`].
pub(crate) struct Dispatcher {
    store: Arc<dyn TaskStore>,
    registry: Arc<Registry>,
    storage: Storage,
    fetcher: Fetcher,
    settings: DispatcherSettings,
    running: Mutex<HashMap<Uuid, Running>>,
    wake: Notify,
    idle: Notify,
    /// Task types whose engines are unavailable, since when (see `outage.rs`).
    unready_since: Mutex<HashMap<String, Instant>>,
    /// The attempts' work folders.
    work_dirs: work_dirs::WorkDirs,
}

/// Delay before retry number `attempt` (1-based): base·2^(attempt−1), capped, with ±25% jitter.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
    let capped = exp.min(max);
    let jitter = rand::random_range(0.75..=1.25);
    capped.mul_f64(jitter)
}

impl Dispatcher {
    /// A dispatcher over these services.
    pub(crate) fn new(
        store: Arc<dyn TaskStore>,
        registry: Arc<Registry>,
        storage: Storage,
        fetcher: Fetcher,
        settings: DispatcherSettings,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            store,
            registry,
            storage,
            fetcher,
            work_dirs: work_dirs::WorkDirs::new(&settings.work_dir),
            settings,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            idle: Notify::new(),
            unready_since: Mutex::new(HashMap::new()),
        })
    }

    /// Number of attempts running now.
    pub(crate) fn running(&self) -> usize {
        self.running.lock().expect("running lock").len()
    }

    /// Attempts of `task_type` running now.
    pub(crate) fn running_of(&self, task_type: &str) -> u32 {
        self.running
            .lock()
            .expect("running lock")
            .values()
            .filter(|r| r.task_type == task_type && !r.storing)
            .count()
            .try_into()
            .unwrap_or(u32::MAX)
    }

    /// Runs until `shutdown` turns true: then stops claiming, waits up to the grace period for
    /// running attempts, and puts the rest back in the queue.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let events = self.clone().watch_events();
        let rescue = self.clone().rescue_loop();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.claim_round().await {
                tracing::warn!(error = %e, "claiming failed; retrying");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
        events.abort();
        rescue.abort();
        self.drain().await;
    }

    async fn drain(&self) {
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_grace;
        tracing::info!(
            running = self.running(),
            "stopping: waiting for running tasks"
        );
        while self.running() > 0 {
            let idle = self.idle.notified();
            if self.running() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        let left: Vec<watch::Sender<Stop>> = self
            .running
            .lock()
            .expect("running lock")
            .values()
            .map(|r| r.cancel.clone())
            .collect();
        if !left.is_empty() {
            tracing::warn!(
                count = left.len(),
                "grace period over: putting running tasks back in the queue"
            );
            for tx in left {
                let _ = tx.send(Stop::Release);
            }
            let until = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.running() > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn watch_events(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        let mut rx = self.store.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => match ev.kind {
                        EventKind::Created | EventKind::Retrying => self.wake.notify_one(),
                        EventKind::CancelRequested => {
                            let running = self.running.lock().expect("running lock");
                            if let Some(r) = running.get(&ev.task.id) {
                                let _ = r.cancel.send(Stop::Cancel);
                            }
                        }
                        _ => {}
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.wake.notify_one()
                    }
                    Err(_) => break,
                }
            }
        })
    }

    fn rescue_loop(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // A quarter of the lease: an expired lease is found within 1.25 leases of the
            // worker's last renewal.
            let every = (self.settings.lease / 4).max(Duration::from_millis(100));
            loop {
                match self.store.rescue_expired().await {
                    Ok(tasks) => {
                        for t in &tasks {
                            tracing::warn!(
                                task_id = %t.id,
                                task_type = %t.task_type,
                                attempt = t.attempts,
                                status = t.status.as_str(),
                                "task rescued: its lease expired"
                            );
                        }
                        if !tasks.is_empty() {
                            self.wake.notify_one();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "lease rescue failed"),
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Attempts of a type this consumer runs at once: the plugin's `max_concurrency`, or the
    /// host default when it is 0.
    pub(crate) fn limit_of(&self, max_concurrency: u32) -> u32 {
        match max_concurrency {
            0 => self.settings.default_concurrency.max(1),
            n => n,
        }
    }

    async fn claim_round(self: &Arc<Self>) -> Result<(), crate::store::StoreError> {
        for entry in self.registry.task_types() {
            let limit = self.limit_of(entry.desc.max_concurrency);
            let free = limit.saturating_sub(self.running_of(&entry.desc.name));
            if free == 0 {
                continue;
            }
            // A type whose engines cannot take tasks now is not claimed: its tasks wait.
            if !self.type_ready(&entry).await {
                continue;
            }
            let asked = Instant::now();
            let claimed = self
                .store
                .claim(
                    &entry.desc.name,
                    &self.settings.worker_id,
                    self.settings.lease,
                    free,
                )
                .await?;
            for task in claimed {
                self.start(task, asked);
            }
        }
        Ok(())
    }

    fn start(self: &Arc<Self>, task: Task, claimed: Instant) {
        let (tx, rx) = watch::channel(Stop::No);
        if task.cancel_requested {
            let _ = tx.send(Stop::Cancel);
        }
        crate::metrics::task_started(
            &task.task_type,
            task.attempts,
            task.created_at,
            task.started_at.unwrap_or_else(Utc::now),
        );
        self.running.lock().expect("running lock").insert(
            task.id,
            Running {
                task_type: task.task_type.clone(),
                cancel: tx,
                storing: false,
            },
        );
        // One span per attempt, continuing the submitting request's trace when it was recorded.
        let span = tracing::info_span!(
            parent: None,
            "task",
            task_id = %task.id,
            task_type = %task.task_type,
            attempt = task.attempts
        );
        crate::telemetry::continue_trace(&span, task.trace_parent.as_deref());
        let this = self.clone();
        tokio::spawn(async move {
            let id = task.id;
            this.run_attempt(task, rx, claimed).instrument(span).await;
            this.running.lock().expect("running lock").remove(&id);
            this.idle.notify_waiters();
            this.wake.notify_one();
        });
    }

    async fn run_attempt(
        self: &Arc<Self>,
        task: Task,
        stop: watch::Receiver<Stop>,
        claimed: Instant,
    ) {
        let began = Instant::now();
        if let Some(end) = self.attempt(&task, stop, claimed).await {
            crate::metrics::attempt_ended(&task.task_type, began, end);
        }
    }

    /// Runs one attempt; answers how it ended (`None` when the type is not loaded).
    async fn attempt(
        self: &Arc<Self>,
        task: &Task,
        mut stop: watch::Receiver<Stop>,
        claimed: Instant,
    ) -> Option<AttemptEnd> {
        let id = task.id;
        let attempt = task.attempts;
        let Some(entry) = self.registry.task_type(&task.task_type) else {
            // Unreachable in practice: we claim only registered types.
            let _ = self.store.release(id, attempt).await;
            return None;
        };
        let plugin = entry.plugin.clone();
        let work_dir = match self.work_dirs.take(&format!("{id}-{attempt}")).await {
            Ok(dir) => dir,
            Err(e) => {
                let err = TaskError {
                    code: crate::error_codes::WORK_DIR_FAILED.into(),
                    message: e.to_string(),
                };
                return Some(self.record_failure(task, err, true).await);
            }
        };
        let (ctx, progress_rx) = task_context(
            id,
            &plugin.desc.name,
            self.fetcher.clone(),
            work_dir.clone(),
        );
        let progress_rx = crate::previews::split(
            crate::previews::Attempt {
                store: self.store.clone(),
                storage: self.storage.clone(),
                id,
                attempt,
                work_dir: work_dir.clone(),
            },
            progress_rx,
        );
        let progress = tokio::spawn(progress_writer(
            self.store.clone(),
            id,
            attempt,
            progress_rx,
            self.settings.progress_interval,
            task.webhook_url
                .is_some()
                .then_some(self.settings.webhook_progress_interval),
        ));
        let req = TaskRequest {
            task_id: id.to_string().into(),
            task_type: task.task_type.clone().into(),
            attempt,
            input_json: task.input.to_string().into(),
            work_dir: work_dir.to_string_lossy().as_ref().into(),
            // `first_run`: no earlier attempt can have reached an engine (see
            // `Task::is_first_run`); absent means "not known", which plugins treat as false.
            meta_json: if task.is_first_run() {
                r#"{"first_run":true}"#.into()
            } else {
                "{}".into()
            },
        };
        let lease_lost = self.clone().renew_loop(id, attempt);
        let limit = self.settings.timeouts.of(task, entry.desc.timeout_secs);
        let deadline = limit.map(|d| tokio::time::Instant::now() + d);
        let outcome = {
            let run = plugin
                .run_task(req, ctx)
                .instrument(tracing::info_span!("plugin.run_task", plugin = %plugin.desc.name));
            tokio::pin!(run);
            let mut lost = lease_lost;
            let outcome = loop {
                tokio::select! {
                    r = &mut run => break Outcome::Done(r),
                    _ = &mut lost => break Outcome::LeaseLost,
                    () = sleep_until_some(deadline) => break Outcome::TimedOut,
                    changed = stop.changed() => {
                        if changed.is_err() { continue; }
                        match *stop.borrow() {
                            Stop::Cancel => break Outcome::Cancelled,
                            Stop::Release => break Outcome::Released,
                            Stop::No => {}
                        }
                    }
                }
            };
            lost.abort();
            match outcome {
                // The plugin is asked to stop and its future runs until the engine stopped.
                Outcome::Cancelled => {
                    cancel::stop_engine(
                        self.store.as_ref(),
                        &plugin,
                        id,
                        attempt,
                        self.settings.cancel_grace,
                        run,
                    )
                    .await
                }
                other => other,
            }
            // `run` is dropped here: the plugin's work is aborted if it was still going.
        };
        if matches!(outcome, Outcome::Done(Ok(_))) {
            // Its outputs are stored next: the engine may take another task meanwhile.
            if let Some(r) = self.running.lock().expect("running lock").get_mut(&id) {
                r.storing = true;
            }
            self.wake.notify_one();
        }
        // The last progress report lands before the terminal write. A success stores its
        // outputs meanwhile (`complete` waits for it before the completion); every other end
        // waits here.
        let mut progress = Some(progress);
        if !matches!(outcome, Outcome::Done(Ok(_))) {
            land_progress(progress.take()).await;
        }
        let stopped = match &outcome {
            Outcome::CancelledStopped(Some(s)) => Some(*s),
            _ => None,
        };
        let end = match outcome {
            Outcome::Done(Ok(output)) => {
                self.complete(task, &output, &work_dir, claimed, progress.take())
                    .await
            }
            Outcome::Done(Err(e)) if self.engine_went_away(&plugin, task, &e).await => {
                // Not the task's fault: back to the queue without counting the attempt; the
                // type is not claimed again until it is ready.
                let _ = self.store.release(id, attempt).await;
                AttemptEnd::Released
            }
            Outcome::Done(Err(e)) => {
                let retryable = e.retryable;
                let err = TaskError {
                    code: e.code.to_string(),
                    message: e.message.to_string(),
                };
                self.record_failure(task, err, retryable).await
            }
            Outcome::Cancelled | Outcome::CancelledStopped(_) => {
                cancel::report_stopped(
                    self.store.as_ref(),
                    id,
                    attempt,
                    stopped,
                    self.settings.cancel_grace,
                )
                .await;
                match self.store.finish_cancelled(id, attempt).await {
                    Ok(Some(done)) => {
                        tracing::info!(
                            task_id = %id,
                            task_type = %task.task_type,
                            attempt,
                            "task cancelled while running"
                        );
                        crate::metrics::task_cancelled(&done.task_type);
                        AttemptEnd::Cancelled
                    }
                    Ok(None) => {
                        self.stale_attempt(task, "cancellation").await;
                        AttemptEnd::Abandoned
                    }
                    Err(e) => {
                        tracing::error!(task_id = %id, error = %e, "could not record the cancellation");
                        AttemptEnd::Abandoned
                    }
                }
            }
            Outcome::TimedOut => {
                let limit = limit.unwrap_or_default();
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    plugin.cancel_task(&id.to_string()),
                )
                .await;
                let err = TaskError {
                    code: crate::error_codes::TIMEOUT.into(),
                    message: format!(
                        "attempt {attempt} ran longer than its time limit of {} s and was stopped",
                        limit.as_secs()
                    ),
                };
                self.record_failure(task, err, self.settings.timeouts.retry)
                    .await
            }
            Outcome::Released => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    plugin.cancel_task(&id.to_string()),
                )
                .await;
                let _ = self.store.release(id, attempt).await;
                AttemptEnd::Released
            }
            Outcome::LeaseLost => {
                tracing::warn!(
                    task_id = %id,
                    task_type = %task.task_type,
                    attempt,
                    "lease lost; abandoning this attempt"
                );
                AttemptEnd::Abandoned
            }
        };
        self.work_dirs.give_back(work_dir).await;
        Some(end)
    }

    /// Stores the outputs of a successful attempt and records the completion. The lease is
    /// checked first so that an attempt that lost its task (paused past its lease, rescued, run
    /// again elsewhere) uploads nothing; if it loses the task during the uploads, the completion
    /// is refused and the files it wrote under its own attempt folder are removed. The
    /// attempt's last progress report (`progress`, its writer) is written while the outputs
    /// are stored, and lands before the completion.
    async fn complete(
        &self,
        task: &Task,
        output: &aihost_plugin_api::TaskOutput,
        work_dir: &std::path::Path,
        claimed: Instant,
        progress: Option<tokio::task::JoinHandle<()>>,
    ) -> AttemptEnd {
        let (id, attempt) = (task.id, task.attempts);
        // The lease it was claimed with is certainly still ours while less than half of it
        // has passed since the claim was asked for (a cancel or a delete meanwhile is caught
        // by the completion's own check, which then removes the outputs): only an older
        // attempt checks it with a write first.
        let young = claimed.elapsed() < self.settings.lease / 2;
        match if young {
            Ok(true)
        } else {
            self.store
                .renew(id, attempt, &self.settings.worker_id, self.settings.lease)
                .await
        } {
            Ok(true) => {}
            Ok(false) => {
                self.stale_attempt(task, "completion").await;
                return AttemptEnd::Abandoned;
            }
            Err(e) => tracing::warn!(task_id = %id, error = %e, "lease check before upload failed"),
        }
        let stored = self.store_outputs(id, attempt, output, work_dir).await;
        land_progress(progress).await;
        let result = match stored {
            Ok(result) => result,
            Err(err) => return self.record_failure(task, err, true).await,
        };
        match self.store.complete(id, attempt, result).await {
            Ok(Some(done)) => {
                tracing::debug!(task_id = %id, task_type = %task.task_type, attempt, "task completed");
                crate::metrics::task_completed(&done.task_type);
                AttemptEnd::Completed
            }
            Ok(None) => {
                self.stale_attempt(task, "completion").await;
                let folder = attempt_folder(id, attempt);
                if let Err(e) = self.storage.delete_folder(&folder).await {
                    tracing::warn!(task_id = %id, attempt, error = %e, "could not remove a stale attempt's outputs");
                }
                AttemptEnd::Abandoned
            }
            Err(e) => {
                tracing::error!(task_id = %id, error = %e, "could not record completion");
                AttemptEnd::Abandoned
            }
        }
    }

    /// Logs a terminal write the store refused because the attempt is no longer current
    /// (rescued, cancelled or finished by another consumer meanwhile): the recorded outcome
    /// stands. Names this attempt and, when the task can be read, the task's current attempt
    /// and status.
    async fn stale_attempt(&self, task: &Task, what: &str) {
        let now = self.store.get(task.id).await.ok().flatten();
        tracing::warn!(
            task_id = %task.id,
            task_type = %task.task_type,
            attempt = task.attempts,
            current_attempt = now.as_ref().map(|t| t.attempts),
            current_status = now.as_ref().map(|t| t.status.as_str()),
            "stale attempt dropped: its {what} was not recorded (the task moved on)"
        );
    }

    /// Renews the lease every third of its length; resolves if the lease is lost.
    fn renew_loop(self: Arc<Self>, id: Uuid, attempt: u32) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let every = self.settings.lease / 3;
            let mut failures = 0u32;
            loop {
                tokio::time::sleep(every).await;
                match self
                    .store
                    .renew(id, attempt, &self.settings.worker_id, self.settings.lease)
                    .await
                {
                    Ok(true) => failures = 0,
                    Ok(false) => return,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(task_id = %id, error = %e, "lease renewal failed");
                        if failures >= 2 {
                            return;
                        }
                    }
                }
            }
        })
    }

    /// Records a failed attempt: FAILED, or PENDING again for a retry; answers which.
    async fn record_failure(&self, task: &Task, err: TaskError, retryable: bool) -> AttemptEnd {
        let delay = (retryable && task.attempts < task.max_attempts).then(|| {
            backoff(
                task.attempts,
                self.settings.backoff_base,
                self.settings.backoff_max,
            )
        });
        let retry_at =
            delay.map(|d| Utc::now() + chrono::Duration::from_std(d).unwrap_or_default());
        let (code, message) = (err.code.clone(), err.message.clone());
        match self.store.fail(task.id, task.attempts, err, retry_at).await {
            Ok(Some(t)) if t.status.is_terminal() => {
                tracing::warn!(
                    task_id = %task.id,
                    task_type = %task.task_type,
                    attempt = task.attempts,
                    code = %code,
                    message = %message,
                    "task failed"
                );
                crate::metrics::task_failed(&t.task_type, &code);
                AttemptEnd::Failed
            }
            Ok(Some(t)) => {
                tracing::info!(
                    task_id = %task.id,
                    task_type = %task.task_type,
                    attempt = task.attempts,
                    code = %code,
                    message = %message,
                    delay_ms = delay.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    "retry scheduled"
                );
                crate::metrics::task_retried(&t.task_type, &code);
                AttemptEnd::Retried
            }
            Ok(None) => {
                self.stale_attempt(task, "failure").await;
                AttemptEnd::Abandoned
            }
            Err(e) => {
                tracing::error!(task_id = %task.id, error = %e, "could not record failure");
                AttemptEnd::Abandoned
            }
        }
    }

    /// Uploads the output files, four at a time, under the attempt's own folder
    /// (`outputs/{task}/{attempt}/`), and builds the task's `result`. A stale attempt may still
    /// get here (a consumer paused past its lease), but it writes only under its own attempt's
    /// keys, which the recorded result of the winning attempt never names.
    async fn store_outputs(
        &self,
        id: Uuid,
        attempt: u32,
        output: &aihost_plugin_api::TaskOutput,
        work_dir: &std::path::Path,
    ) -> Result<Value, TaskError> {
        let jobs: Vec<(String, PathBuf, String)> = output
            .files
            .iter()
            .map(|f| {
                let key = format!(
                    "{}/{}",
                    attempt_folder(id, attempt),
                    sanitize_name(f.name.as_str())
                );
                (
                    key,
                    PathBuf::from(f.path.as_str()),
                    f.content_type.to_string(),
                )
            })
            .collect();
        let storage = self.storage.clone();
        let uploads = jobs.into_iter().map(move |(key, path, ct)| {
            let storage = storage.clone();
            async move {
                let mut last = None;
                for attempt in 0..3u32 {
                    // The attempt's work folder is deleted after this: its files are given up.
                    match storage.put_work_file(&key, &path, work_dir, &ct).await {
                        Ok(obj) => return Ok(obj),
                        Err(e) if !e.retryable() => {
                            last = Some(e);
                            break;
                        }
                        Err(e) => {
                            last = Some(e);
                            tokio::time::sleep(Duration::from_millis(200 * 4u64.pow(attempt)))
                                .await;
                        }
                    }
                }
                let e = last.expect("at least one attempt");
                // The backend's detail may name the storage root or the work folder: it goes
                // to the log; the task's error (which clients read) names the key only.
                tracing::error!(key = %key, code = e.code(), error = %e, "storing an output failed");
                Err(TaskError {
                    code: e.code().into(),
                    message: format!(
                        "storing output {key} failed ({}); the server log has the details",
                        e.code()
                    ),
                })
            }
        });
        let stored: Vec<_> = stream::iter(uploads).buffered(4).collect().await;
        let mut outputs = Vec::new();
        for s in stored {
            outputs.push(serde_json::to_value(s?).unwrap_or(Value::Null));
        }
        let mut result = json!({ "outputs": outputs });
        if let Ok(Value::Object(extra)) = serde_json::from_str::<Value>(output.result_json.as_str())
        {
            let obj = result.as_object_mut().expect("object");
            for (k, v) in extra {
                if k != "outputs" {
                    obj.insert(k, v);
                }
            }
        }
        Ok(result)
    }
}

enum Outcome {
    Done(Result<aihost_plugin_api::TaskOutput, PluginError>),
    /// A cancel was asked for (the plugin is not told yet).
    Cancelled,
    /// The plugin was told to cancel: `Some(how it ended)` when its future ended within the
    /// grace, `None` when it was dropped at the end of it.
    CancelledStopped(Option<cancel::Stopped>),
    Released,
    LeaseLost,
    TimedOut,
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The storage folder of one attempt's outputs: `outputs/{task}/{attempt}`.
pub(crate) fn attempt_folder(id: Uuid, attempt: u32) -> String {
    format!("outputs/{id}/{attempt}")
}

/// An output name as stored: a relative path under the one file-name rule (a plugin may keep
/// an engine's subfolders, e.g. `clips/clip_00001_.webm`).
fn sanitize_name(name: &str) -> String {
    crate::names::sanitize_path(name, "output")
}

/// Waits for an attempt's progress writer to write its last report (bounded: a plugin that
/// leaks its context must not hold the task open).
async fn land_progress(progress: Option<tokio::task::JoinHandle<()>>) {
    let Some(progress) = progress else { return };
    let abort = progress.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), progress)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// Writes progress reports to the store, at most one per `interval` (the latest wins) and the
/// last one always. With `webhook` (the task has a webhook), also adds a `task.progress`
/// delivery at most once per that interval (the store adds it only if the task asked for it).
/// How long the first progress report of an attempt waits before it is written (the plugins'
/// first reports come in bursts at the start; each write is a store transaction).
const FIRST_PROGRESS_DELAY: Duration = Duration::from_millis(50);

async fn progress_writer(
    store: Arc<dyn TaskStore>,
    id: Uuid,
    attempt: u32,
    mut rx: mpsc::UnboundedReceiver<crate::plugins::services::ProgressReport>,
    interval: Duration,
    webhook: Option<Duration>,
) {
    // The first report is held up to FIRST_PROGRESS_DELAY (then written with what came
    // meanwhile): a task that ends sooner writes its progress once, not twice.
    let mut last_write =
        tokio::time::Instant::now() - interval + FIRST_PROGRESS_DELAY.min(interval);
    let mut last_hook: Option<tokio::time::Instant> = None;
    let mut pending: Option<Progress> = None;
    loop {
        let next = if pending.is_some() {
            tokio::time::timeout_at(last_write + interval, rx.recv()).await
        } else {
            Ok(rx.recv().await)
        };
        // The plugin is done: the report still pending lands before the terminal write (a
        // finished task keeps its last progress).
        let done = matches!(next, Ok(None));
        if let Ok(Some(p)) = next {
            pending = Some(Progress {
                percent: p.percent,
                message: p.message,
                preview: None,
            });
        }
        if pending.is_some() && (done || last_write.elapsed() >= interval) {
            let p = pending.take().expect("pending");
            let written = store.set_progress(id, attempt, p).await;
            last_write = tokio::time::Instant::now();
            if let (Some(every), Ok(true)) = (webhook, written)
                && last_hook.is_none_or(|t| t.elapsed() >= every)
            {
                last_hook = Some(last_write);
                if let Err(e) = store.add_delivery(id, "task.progress").await {
                    tracing::debug!(task_id = %id, error = %e, "could not add a progress webhook");
                }
            }
        }
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(1000);
        let max = Duration::from_secs(10);
        let b1 = backoff(1, base, max);
        assert!(
            b1 >= Duration::from_millis(750) && b1 <= Duration::from_millis(1250),
            "{b1:?}"
        );
        let b3 = backoff(3, base, max);
        assert!(
            b3 >= Duration::from_millis(3000) && b3 <= Duration::from_millis(5000),
            "{b3:?}"
        );
        let b30 = backoff(30, base, max);
        assert!(b30 <= Duration::from_millis(12500), "{b30:?}");
    }

    #[test]
    fn output_names_never_escape() {
        assert_eq!(sanitize_name("../../etc/passwd"), "etc/passwd");
        assert_eq!(sanitize_name("a/b.png"), "a/b.png");
        assert_eq!(sanitize_name("a b.png"), "a_b.png");
        assert_eq!(sanitize_name(".."), "output");
        assert_eq!(sanitize_name(""), "output");
    }
}
