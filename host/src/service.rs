//! Wiring: builds the store, storage, fetcher, plugins, dispatcher and HTTP server from the
//! config, runs them, and stops them in order on SIGTERM/SIGINT.

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};

use crate::{
    api::{self, AppState},
    config::{Config, QueueType},
    dispatcher::{Dispatcher, DispatcherSettings},
    error_codes,
    fetch::{FetchSettings, Fetcher},
    manifest::PluginManifest,
    plugins::Registry,
    retention::Retention,
    storage::{Storage, StorageSettings},
    store::{
        ConsumerInfo, TaskStore,
        postgres::{PostgresSettings, PostgresStore},
        sqlite::SqliteStore,
    },
};

/// Why the service could not start. One line each.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// Configuration problems (all of them).
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    /// The task store could not be opened.
    #[error("task store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Storage could not be set up.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// The fetcher could not be set up.
    #[error("fetcher: {0}")]
    Fetch(#[from] crate::fetch::FetchError),
    /// A required plugin failed.
    #[error("{0}")]
    Plugin(#[from] crate::plugins::registry::RequiredPluginFailed),
    /// A backend this build does not support yet.
    #[error("{0}")]
    Unsupported(String),
    /// The store cannot serve this process's role as configured.
    #[error("{0}")]
    ModeUnsupported(String),
    /// A bug: a part of the start-up panicked.
    #[error("{0}")]
    Internal(String),
    /// The system has no CA certificates, so no HTTPS client can be built.
    #[error(
        "no CA certificates: HTTPS needs the system's CA certificates and none were found \
         (SSL_CERT_FILE, SSL_CERT_DIR, /etc/ssl/certs); install them, e.g. `apt-get install \
         ca-certificates` on Debian or Ubuntu"
    )]
    TlsRoots,
    /// No consumer identity could be had.
    #[error("{0}")]
    Worker(#[from] crate::worker::WorkerError),
    /// Binding the listener failed.
    #[error("cannot listen on {bind}: {reason}")]
    Bind {
        /// Address.
        bind: String,
        /// Why.
        reason: String,
    },
}

impl StartError {
    /// Stable error code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            StartError::Config(_) => error_codes::CONFIG_INVALID,
            StartError::Store(e) => e.code(),
            StartError::Storage(e) => e.code(),
            StartError::Fetch(e) => e.code(),
            StartError::Plugin(_) => error_codes::PLUGIN_REQUIRED_FAILED,
            StartError::Unsupported(_) => error_codes::UNSUPPORTED_BACKEND,
            StartError::ModeUnsupported(_) => error_codes::STORE_MODE_UNSUPPORTED,
            StartError::Internal(_) => error_codes::INTERNAL,
            StartError::Bind { .. } => error_codes::BIND_FAILED,
            StartError::Worker(e) => e.code(),
            StartError::TlsRoots => error_codes::TLS_ROOTS_MISSING,
        }
    }
}

/// Which parts of the service this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Roles {
    /// Serve the HTTP API.
    pub api: bool,
    /// Claim and run tasks.
    pub consumer: bool,
}

/// The services built from a config.
pub(crate) struct Services {
    /// Task state.
    pub store: Arc<dyn TaskStore>,
    /// Storage.
    pub storage: Storage,
    /// Fetcher.
    pub fetcher: Fetcher,
    /// Plugins.
    pub registry: Arc<Registry>,
}

/// Opens the task store the config names.
pub(crate) async fn open_store(config: &Config) -> Result<Arc<dyn TaskStore>, StartError> {
    match config.queue.kind {
        QueueType::Sqlite => Ok(Arc::new(SqliteStore::open(&config.queue.path).await?)),
        QueueType::Postgres => {
            let url = config.queue.url.clone().ok_or_else(|| {
                StartError::Unsupported("queue.type = \"postgres\" needs queue.url".into())
            })?;
            let settings = PostgresSettings {
                max_connections: config.queue.max_connections,
                ..PostgresSettings::new(url)
            };
            Ok(Arc::new(PostgresStore::open(&settings).await?))
        }
    }
}

/// Refuses a role the configured store cannot serve. SQLite serves `serve`, and `api` plus
/// any number of `consumer` processes sharing its file on one machine; a file on a network
/// file system means processes on several machines, which SQLite cannot coordinate (its WAL
/// index is shared memory), so `api` and `consumer` refuse it. PostgreSQL serves every role.
fn check_mode(config: &Config, roles: Roles) -> Result<(), StartError> {
    if config.queue.kind != QueueType::Sqlite || (roles.api && roles.consumer) {
        return Ok(());
    }
    match crate::store::sqlite::network_file_system(&config.queue.path) {
        Some(fs_type) => Err(StartError::ModeUnsupported(format!(
            "queue.path {} is on a network file system ({fs_type}): SQLite is shared by \
             `aihost api` and `aihost consumer` on one machine only; put it on a local disk, \
             or use queue.type = \"postgres\" for processes on several machines",
            config.queue.path.display()
        ))),
        None => Ok(()),
    }
}

/// This consumer as it announces itself: worker id, machine, and the task types of its loaded
/// plugins (read again at every heartbeat: plugins can be added at run time).
fn consumer_info(worker: &str, registry: &Registry) -> ConsumerInfo {
    let hostname = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let now = chrono::Utc::now();
    ConsumerInfo {
        worker: worker.to_owned(),
        hostname,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        task_types: registry
            .task_types()
            .iter()
            .map(|t| t.desc.name.clone())
            .collect(),
        started_at: now,
        heartbeat_at: now,
    }
}

/// Logs which task types this consumer serves and keeps its row in the store fresh.
async fn announce_loop(store: Arc<dyn TaskStore>, registry: Arc<Registry>, worker: String) {
    let info = consumer_info(&worker, &registry);
    tracing::info!(
        worker = %worker,
        task_types = %info.task_types.join(","),
        "consumer serving task types"
    );
    loop {
        let info = consumer_info(&worker, &registry);
        if let Err(e) = store.announce_consumer(&info).await {
            tracing::warn!(error = %e, "consumer heartbeat failed");
        }
        tokio::time::sleep(crate::store::CONSUMER_HEARTBEAT).await;
    }
}

/// Builds the storage facade the config names (`storage.*`).
pub(crate) fn open_storage(config: &Config) -> Result<Storage, StartError> {
    let files_base = format!("{}/files", config.public_url());
    let settings = StorageSettings::from_config(&config.storage, files_base);
    Ok(Storage::new(settings)?)
}

/// Loads the plugins of the manifest the config names (blocking work on a blocking thread).
pub(crate) async fn load_plugins(config: &Config) -> Result<Arc<Registry>, StartError> {
    let manifest = PluginManifest::load(&config.plugins.manifest, false)?;
    let registry = tokio::task::spawn_blocking(move || Registry::load(manifest))
        .await
        .map_err(|e| StartError::Internal(format!("plugin loading panicked: {e}")))??;
    Ok(Arc::new(registry))
}

/// Builds every service.
pub(crate) async fn build(config: &Config) -> Result<Services, StartError> {
    check_tls_roots()?;
    let store = open_store(config).await?;
    let storage = open_storage(config)?;
    let fetcher = Fetcher::new(
        FetchSettings {
            allow_hosts: config.fetch.allow_hosts.clone(),
            max_bytes: config.fetch.max_bytes,
            timeout: Duration::from_secs(config.fetch.timeout_secs),
            connect_timeout: Duration::from_secs(config.fetch.connect_timeout_secs),
            max_redirects: config.fetch.max_redirects,
            concurrency: config.fetch.concurrency,
        },
        storage.clone(),
    )?;
    let registry = load_plugins(config).await?;
    Ok(Services {
        store,
        storage,
        fetcher,
        registry,
    })
}

/// HTTPS (fetched inputs, webhooks, S3/GCS, ComfyUI over TLS) verifies servers with the
/// system's CA certificates; an HTTP client cannot even be built without them. Checked first so
/// that a machine or image without them is named in one line with the fix, not as the first
/// component's obscure `builder error`. aihost carries no roots of its own: the system's store
/// is what an operator updates and where a company's own CA is added.
fn check_tls_roots() -> Result<(), StartError> {
    reqwest::Client::builder()
        .build()
        .map(drop)
        .map_err(|_| StartError::TlsRoots)
}

/// Resolves when SIGINT or SIGTERM arrives.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Serves `GET /metrics` alone, without API keys, on `server.metrics_bind` (any role: a
/// consumer-only process has its metrics too) until `stop` turns true.
async fn serve_metrics(
    bind: &str,
    state: Arc<AppState>,
    settings: api::listen::ListenSettings,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let listener = bind_listener(bind).await?;
    tracing::info!(bind = %bind, "metrics listening at /metrics (no API key)");
    let app = api::metrics::metrics_only(state);
    Ok(tokio::spawn(async move {
        api::listen::serve(listener, app, settings, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
    }))
}

/// The attempts' time limits from `[dispatcher]` (validated at load).
fn timeouts(config: &Config) -> crate::dispatcher::Timeouts {
    let d = &config.dispatcher;
    crate::dispatcher::Timeouts {
        default: (d.timeout_secs > 0).then(|| Duration::from_secs(d.timeout_secs)),
        per_type: d
            .type_timeouts()
            .unwrap_or_default()
            .into_iter()
            .map(|(t, secs)| (t, Duration::from_secs(secs)))
            .collect(),
        retry: d.retry_timeouts,
    }
}

async fn bind_listener(bind: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(bind).await.map_err(|e| StartError::Bind {
        bind: bind.to_owned(),
        reason: e.to_string(),
    })
}

/// The connection settings of `[server]`.
fn listen_settings(config: &Config, grace: Duration) -> api::listen::ListenSettings {
    let s = &config.server;
    api::listen::ListenSettings {
        clocks: api::conn::Clocks {
            header_read: Duration::from_secs(s.header_read_timeout_secs),
            idle: Duration::from_secs(s.idle_timeout_secs),
            send: Duration::from_secs(s.send_timeout_secs),
        },
        max_connections: api::listen::connection_limit(s.max_connections),
        grace,
    }
}

/// Runs the service until a signal, then stops: the API stops accepting, the consumer stops
/// claiming, running tasks get the grace period, the rest go back to the queue.
pub(crate) async fn run(config: Config, roles: Roles) -> Result<(), StartError> {
    check_mode(&config, roles)?;
    crate::metrics::install();
    let upkeep = tokio::spawn(crate::metrics::upkeep());
    let services = build(&config).await?;
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker_id = match roles.consumer {
        true => Some(crate::worker::acquire(&config, services.store.as_ref()).await?),
        false => None,
    };
    let dispatcher = worker_id.as_ref().map(|worker| {
        Dispatcher::new(
            services.store.clone(),
            services.registry.clone(),
            services.storage.clone(),
            services.fetcher.clone(),
            DispatcherSettings {
                worker_id: worker.full(),
                lease: Duration::from_secs(config.queue.lease_secs),
                poll_interval: Duration::from_millis(config.queue.poll_interval_ms),
                default_concurrency: config.dispatcher.default_concurrency,
                progress_interval: Duration::from_millis(config.dispatcher.progress_interval_ms),
                work_dir: config.dispatcher.work_dir.clone(),
                backoff_base: Duration::from_millis(config.queue.backoff_base_ms),
                backoff_max: Duration::from_millis(config.queue.backoff_max_ms),
                shutdown_grace: grace,
                timeouts: timeouts(&config),
                cancel_grace: Duration::from_secs(config.dispatcher.cancel_grace_secs),
                max_unavailable_wait: Duration::from_secs(
                    config.dispatcher.max_unavailable_wait_secs,
                ),
                webhook_progress_interval: Duration::from_millis(
                    config.webhooks.progress_interval_ms,
                ),
            },
        )
    });
    let consumer = dispatcher
        .clone()
        .map(|d| tokio::spawn(d.run(stop_rx.clone())));
    let worker_id = worker_id.map(|w| w.full()).unwrap_or_default();
    let announcer = dispatcher.is_some().then(|| {
        tokio::spawn(announce_loop(
            services.store.clone(),
            services.registry.clone(),
            worker_id.clone(),
        ))
    });
    // Every process delivers webhooks: claims are leased, so several share the rows.
    let deliverer = tokio::spawn(
        Arc::new(crate::webhooks::Deliverer::new(
            services.store.clone(),
            services.fetcher.clone(),
            config.webhooks.clone(),
        ))
        .run(stop_rx.clone()),
    );
    let retention = Arc::new(Retention::new(
        services.store.clone(),
        services.storage.clone(),
        config.retention.clone(),
    ));
    // One pruner per process that serves the API: deletes are idempotent, so several API
    // processes on one PostgreSQL may prune at once.
    let pruner = roles.api.then(|| tokio::spawn(retention.clone().run()));
    let state = Arc::new(AppState {
        store: services.store.clone(),
        registry: services.registry.clone(),
        storage: services.storage.clone(),
        retention: retention.clone(),
        dispatcher: dispatcher.clone(),
        api_keys: config.server.api_keys.clone(),
        max_queue_depth: config.server.max_queue_depth,
        cors_origins: config.server.cors_origins.clone(),
        readiness: api::system::ReadinessCache::default(),
        max_body_bytes: config.server.max_body_bytes,
        max_upload_bytes: config.server.max_upload_bytes,
        max_pending: config.queue.max_pending,
        default_max_attempts: config.queue.default_max_attempts,
        public_url: config.public_url(),
        fetcher: Some(services.fetcher.clone()),
        started: std::time::Instant::now(),
        streams: api::permits(config.server.max_streams),
        uploads: api::permits(config.server.max_concurrent_uploads),
        comfy_remaining: Default::default(),
        max_list_input_bytes: config.server.max_list_input_bytes,
        max_inline_output_bytes: config.server.max_inline_output_bytes,
    });
    let listen = listen_settings(&config, grace + Duration::from_secs(5));
    let server = if roles.api {
        let bind = config.server.bind.clone();
        let listener = bind_listener(&bind).await?;
        let mut rx = stop_rx.clone();
        let app = api::app(state.clone());
        tracing::info!(bind = %bind, public_url = %config.public_url(), max_connections = listen.max_connections, "aihost listening; docs at /docs");
        Some(tokio::spawn(async move {
            api::listen::serve(listener, app, listen, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        }))
    } else {
        None
    };
    let metrics_server = if config.server.metrics_bind.is_empty() {
        None
    } else {
        let settings = api::listen::ListenSettings {
            grace: Duration::from_secs(5),
            ..listen
        };
        Some(
            serve_metrics(
                &config.server.metrics_bind,
                state.clone(),
                settings,
                stop_rx.clone(),
            )
            .await?,
        )
    };
    tracing::info!(api = roles.api, consumer = roles.consumer, "aihost ready");
    shutdown_signal().await;
    tracing::info!("signal received: stopping");
    let _ = stop_tx.send(true);
    if let Some(c) = consumer {
        let _ = c.await;
    }
    if let Some(s) = server {
        let _ = s.await;
    }
    if let Some(s) = metrics_server {
        let _ = s.await;
    }
    upkeep.abort();
    deliverer.abort();
    if let Some(p) = pruner {
        p.abort();
    }
    if let Some(a) = announcer {
        a.abort();
        let _ = services.store.retire_consumer(&worker_id).await;
    }
    services.registry.shutdown();
    tracing::info!("stopped");
    Ok(())
}
