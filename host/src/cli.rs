//! The `aihost` command line (`aihost --help`): parses the arguments, loads the config, starts
//! logging and the runtime, and runs one command. `main.rs` only calls [`main`].

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use crate::{
    config::{Config, LogConfig, LogFormat},
    plugins::Library,
    service::{self, Roles},
    telemetry,
};
use clap::{Parser, Subcommand};

/// aihost: AI engines behind one production REST API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Host settings file (default: aihost.toml in the working directory, if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API and a consumer in one process (the default).
    Serve,
    /// Run only the HTTP API.
    Api,
    /// Run only a consumer (claims and runs tasks).
    Consumer,
    /// Print the OpenAPI document (with the installed task types) and exit.
    Openapi,
    /// Task store commands.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Plugin commands.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Storage commands.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// Ask a running aihost whether it is alive (`GET /api/health`); exit 0 if it answers 200
    /// within 5 s, else 1. For container health checks: needs no curl in the image.
    Health {
        /// Base URL of the service (default: `server.bind` of the config, with a wildcard
        /// address replaced by the loopback one).
        #[arg(long)]
        url: Option<String>,
    },
    /// Client: submit a task to a running aihost, optionally uploading files, following it
    /// and downloading its outputs. Exit codes: 0 completed (or submitted, without `--wait`),
    /// 1 failed, 2 bad usage or input, 3 cancelled, 5 service unreachable, 6 request refused.
    Submit(crate::client::SubmitArgs),
    /// Client: run a workflow template (`POST /api/workflows/{name}`); options and exit codes
    /// as `submit`.
    Run(crate::client::RunArgs),
    /// Client: list, show, cancel, retry, delete or watch the tasks of a running aihost.
    Tasks {
        #[command(subcommand)]
        command: crate::client::TasksCommand,
    },
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Write, read back and delete a probe object in the configured storage, fetch its public
    /// URL without credentials, and print that URL (exit 1 if the backend refuses a step).
    Check,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy every task (every field, its state included) from a SQLite database into a
    /// PostgreSQL database, creating the schema there if needed. Tasks already present (same
    /// id or idempotency key) are skipped, so a second run copies only what is new. Stop the
    /// service that writes the SQLite file first.
    Migrate {
        /// The SQLite database file (`queue.path`).
        #[arg(long, value_name = "SQLITE_PATH")]
        from: PathBuf,
        /// The PostgreSQL URL (`postgres://user:password@host/database`).
        #[arg(long, value_name = "POSTGRES_URL")]
        to: String,
    },
    /// Run one retention pass now with the `[retention]` settings: delete the finished tasks
    /// past their period with their output files, and the expired unreferenced uploads; print
    /// the counts per status and of files.
    Prune {
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check aihost.toml, plugins.toml and the environment; print the effective config.
    Check,
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Load the plugins of plugins.toml and list them.
    List,
    /// Open one plugin library and describe it (exit 1 with the reason if it is refused).
    Check {
        /// Path of the library.
        file: PathBuf,
    },
}

/// Starts the log (stderr, filtered by `log.level` or `RUST_LOG`) and, when `log.otlp_endpoint`
/// is set, the trace export, whose exporter is answered so that it can flush at exit.
fn init_logging(log: &LogConfig) -> Option<telemetry::Exporter> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::{
        EnvFilter, Layer as _, Registry, fmt, layer::SubscriberExt as _,
        util::SubscriberInitExt as _,
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let lines = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let lines = match log.format {
        LogFormat::Json => lines.json().with_filter(filter).boxed(),
        LogFormat::Text => lines.with_filter(filter).boxed(),
    };
    let mut layers: Vec<Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>> = vec![lines];
    let mut exporter = None;
    let mut refused = None;
    if let Some(endpoint) = log.otlp() {
        match telemetry::otlp_layer(endpoint, &log.otlp_service_name) {
            Ok((layer, e)) => {
                layers.push(layer.boxed());
                exporter = Some(e);
            }
            Err(e) => refused = Some(e),
        }
    }
    tracing_subscriber::registry().with(layers).init();
    match (log.otlp(), &exporter, refused) {
        (Some(endpoint), Some(_), _) => {
            tracing::info!(endpoint, service_name = %log.otlp_service_name, "exporting traces over OTLP")
        }
        (Some(endpoint), None, Some(e)) => {
            tracing::error!(endpoint, error = %e, "OTLP trace export could not start; running without it")
        }
        _ => {}
    }
    exporter
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    Config::load(path, &env).map_err(|errors| {
        eprintln!("aihost: configuration errors:\n{errors}");
        ExitCode::from(2)
    })
}

/// Loads `.env` from the working directory, when there is one, into the environment: each
/// `NAME=value` line sets a variable the real environment does not already set (the real
/// environment wins, as with `docker run --env-file`). Must run before any thread starts.
/// Answers whether a file was loaded; a file that cannot be read or parsed is refused with the
/// line it fails on.
fn load_dotenv() -> Result<bool, ExitCode> {
    match dotenvy::from_path(".env") {
        Ok(()) => Ok(true),
        Err(e) if e.not_found() => Ok(false),
        Err(e) => {
            eprintln!(
                "aihost: .env in the working directory: {e} [{}]",
                crate::error_codes::DOTENV_INVALID
            );
            Err(ExitCode::from(2))
        }
    }
}

/// Runs the command line and answers the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let dotenv = match load_dotenv() {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let config = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let exporter = init_logging(&config.log);
    if dotenv {
        tracing::info!(
            "loaded .env from the working directory (the environment's own variables win)"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aihost: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli.command.unwrap_or(Command::Serve), config));
    // Outside the runtime: the exporter's flush blocks until the last spans are sent.
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    code
}

async fn run(command: Command, config: Config) -> ExitCode {
    let roles = match command {
        Command::Serve => Roles {
            api: true,
            consumer: true,
        },
        Command::Api => Roles {
            api: true,
            consumer: false,
        },
        Command::Consumer => Roles {
            api: false,
            consumer: true,
        },
        Command::Openapi => return print_openapi(&config).await,
        Command::Store {
            command: StoreCommand::Migrate { from, to },
        } => return store_migrate(&from, &to, config.queue.max_connections).await,
        Command::Store {
            command: StoreCommand::Prune { dry_run },
        } => return store_prune(&config, dry_run).await,
        Command::Config {
            command: ConfigCommand::Check,
        } => return config_check(&config),
        Command::Plugins {
            command: PluginsCommand::List,
        } => return plugins_list(&config).await,
        Command::Plugins {
            command: PluginsCommand::Check { file },
        } => return plugins_check(&file),
        Command::Storage {
            command: StorageCommand::Check,
        } => return storage_check(&config).await,
        Command::Health { url } => return health(&config, url).await,
        Command::Submit(args) => {
            return crate::client::run(crate::client::Request::Submit(args), client_url(&config))
                .await;
        }
        Command::Run(args) => {
            return crate::client::run(crate::client::Request::Run(args), client_url(&config))
                .await;
        }
        Command::Tasks { command } => {
            return crate::client::run(crate::client::Request::Tasks(command), client_url(&config))
                .await;
        }
    };
    match service::run(config, roles).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aihost: {e} [{}]", e.code());
            ExitCode::FAILURE
        }
    }
}

/// The local base URL of a listen address: `0.0.0.0:8000` → `http://127.0.0.1:8000`,
/// `[::]:8000` → `http://[::1]:8000`.
fn local_url(bind: &str) -> String {
    let bind = bind
        .strip_prefix("0.0.0.0:")
        .map(|port| format!("127.0.0.1:{port}"))
        .or_else(|| {
            bind.strip_prefix("[::]:")
                .map(|port| format!("[::1]:{port}"))
        })
        .unwrap_or_else(|| bind.to_owned());
    format!("http://{bind}")
}

/// The service the client commands talk to without `--url`: `server.public_url`, else the
/// local URL of `server.bind`.
fn client_url(config: &Config) -> String {
    config
        .server
        .public_url
        .as_deref()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| local_url(&config.server.bind))
}

/// `aihost health`: one GET of `/api/health`.
async fn health(config: &Config, url: Option<String>) -> ExitCode {
    let base = url.unwrap_or_else(|| local_url(&config.server.bind));
    let target = format!("{}/api/health", base.trim_end_matches('/'));
    let code = crate::error_codes::HEALTH_CHECK_FAILED;
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("aihost: cannot build an HTTP client: {e} [{code}]");
            return ExitCode::FAILURE;
        }
    };
    match client.get(&target).send().await {
        Ok(r) if r.status().is_success() => {
            println!("ok: {target}");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("aihost: {target} answered {} [{code}]", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("aihost: {target}: {e} [{code}]");
            ExitCode::FAILURE
        }
    }
}

async fn storage_check(config: &Config) -> ExitCode {
    let storage = match service::open_storage(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("aihost: {e} [{}]", e.code());
            return ExitCode::FAILURE;
        }
    };
    match storage.check_public().await {
        Ok(report) => {
            println!("backend: {}", report.backend);
            println!("probe key: {} (written, read back, deleted)", report.key);
            println!("public url: {}", report.url);
            match report.public_get {
                Ok(status) if (200..300).contains(&status) => {
                    println!("public GET: HTTP {status}")
                }
                Ok(status) => println!(
                    "public GET: HTTP {status} (clients cannot read outputs at this URL: check the bucket's public access or storage.public_base_url)"
                ),
                Err(e) => println!(
                    "public GET: failed ({e}){}",
                    if report.backend == "fs" || report.backend == "memory" {
                        " - the /files URL is served by the running service"
                    } else {
                        ""
                    }
                ),
            }
            println!("# storage OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aihost: storage check failed: {e} [{}]", e.code());
            ExitCode::FAILURE
        }
    }
}

/// `aihost store prune [--dry-run]`: one retention pass now; prints what it deleted (or would).
async fn store_prune(config: &Config, dry_run: bool) -> ExitCode {
    let store = match service::open_store(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("aihost: {e} [{}]", e.code());
            return ExitCode::FAILURE;
        }
    };
    let storage = match service::open_storage(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("aihost: {e} [{}]", e.code());
            return ExitCode::FAILURE;
        }
    };
    let retention = crate::retention::Retention::new(store, storage, config.retention.clone());
    match retention.pass(dry_run).await {
        Ok(report) => {
            let verb = if dry_run { "would delete" } else { "deleted" };
            for (status, n) in &report.tasks {
                println!("{status}: {n}");
            }
            if dry_run {
                println!("output files: not counted in a dry run");
            } else {
                println!("output files: {}", report.output_files);
            }
            println!("uploads: {}", report.uploads);
            println!(
                "# {verb} {} tasks and {} uploads",
                report.total_tasks(),
                report.uploads
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aihost: store prune failed: {e} [{}]", e.code());
            ExitCode::FAILURE
        }
    }
}

/// `aihost store migrate`: pages through the SQLite store (newest first) and imports each page
/// into PostgreSQL in one transaction.
async fn store_migrate(from: &std::path::Path, to: &str, max_connections: u32) -> ExitCode {
    use crate::store::{
        ListFilter, TaskStore,
        postgres::{PostgresSettings, PostgresStore},
        sqlite::SqliteStore,
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("aihost: {what}: {e}");
        ExitCode::FAILURE
    };
    if !from.is_file() {
        return fail(
            "store migrate",
            &format!("{} is not a SQLite database file", from.display()),
        );
    }
    let source = match SqliteStore::open(from).await {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot open {}", from.display()), &e),
    };
    let shown = match url::Url::parse(to) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(e) => return fail("--to is not a URL", &e),
    };
    let target = match PostgresStore::open(&PostgresSettings {
        max_connections: max_connections.clamp(1, 4),
        ..PostgresSettings::new(to)
    })
    .await
    {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot open {shown}"), &e),
    };
    let (mut read, mut copied) = (0u64, 0u64);
    let mut cursor = None;
    loop {
        let page = match source
            .list(ListFilter {
                limit: 1000,
                cursor: cursor.take(),
                // A page's memory bounded whatever the inputs' sizes.
                input_budget: Some(64 << 20),
                ..ListFilter::default()
            })
            .await
        {
            Ok(p) => p,
            Err(e) => return fail("reading the SQLite store", &e),
        };
        read += page.tasks.len() as u64;
        match target.import(&page.tasks).await {
            Ok(n) => copied += n,
            Err(e) => return fail("writing to PostgreSQL", &e),
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    source.close().await;
    target.close().await;
    println!(
        "copied {copied} of {read} tasks from {} to {shown} ({} were already there)",
        from.display(),
        read - copied
    );
    ExitCode::SUCCESS
}

fn config_check(config: &Config) -> ExitCode {
    match crate::manifest::PluginManifest::load(&config.plugins.manifest, false) {
        Ok(m) => {
            println!("{}", config.redacted_toml());
            println!(
                "# plugins.toml: {} ({} entries)",
                config.plugins.manifest.display(),
                m.plugins.len()
            );
            println!("# configuration OK");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("aihost: configuration errors:\n{errors}");
            ExitCode::from(2)
        }
    }
}

async fn plugins_list(config: &Config) -> ExitCode {
    let registry = match service::load_plugins(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("aihost: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{:<14} {:<9} {:<9} {:<40} FILE",
        "NAME", "VERSION", "API", "TASK TYPES"
    );
    for p in registry.plugins() {
        let types: Vec<&str> = p.desc.task_types.iter().map(|t| t.name.as_str()).collect();
        println!(
            "{:<14} {:<9} {:<9} {:<40} {}",
            p.desc.name,
            p.desc.version,
            p.desc.api_version,
            types.join(","),
            p.path.display()
        );
    }
    let failures = registry.failures();
    for f in &failures {
        eprintln!("failed: {} [{}]", f.message, f.code);
    }
    registry.shutdown();
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn plugins_check(file: &std::path::Path) -> ExitCode {
    match Library::open(file) {
        Ok(lib) => {
            let d = &lib.desc;
            println!(
                "{} {} (plugin-api {}): {}",
                d.name, d.version, d.api_version, d.description
            );
            println!("file: {}", lib.path.display());
            for t in &d.task_types {
                println!("task type {}: {}", t.name, t.description);
            }
            for o in &d.ops {
                println!("op {}: {}", o.name, o.description);
            }
            println!("default config: {}", d.default_config);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e} [{}]", e.code());
            ExitCode::FAILURE
        }
    }
}

async fn print_openapi(config: &Config) -> ExitCode {
    let registry = match service::load_plugins(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("aihost: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The document needs a state; give it a throwaway store and memory storage.
    let dir = std::env::temp_dir().join(format!("aihost-openapi-{}", std::process::id()));
    let store = match crate::store::sqlite::SqliteStore::open(&dir.join("spec.db")).await {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("aihost: {e}");
            return ExitCode::FAILURE;
        }
    };
    let storage = crate::storage::Storage::new(crate::storage::StorageSettings {
        kind: crate::storage::StorageKind::Memory,
        root: dir.clone(),
        prefix: String::new(),
        public_base_url: format!("{}/files", config.public_url()),
    });
    let Ok(storage) = storage else {
        eprintln!("aihost: cannot create memory storage");
        return ExitCode::FAILURE;
    };
    let retention = std::sync::Arc::new(crate::retention::Retention::new(
        store.clone(),
        storage.clone(),
        config.retention.clone(),
    ));
    let state = std::sync::Arc::new(crate::api::AppState {
        store,
        registry: registry.clone(),
        storage,
        retention,
        dispatcher: None,
        api_keys: Vec::new(),
        max_queue_depth: 0,
        cors_origins: Vec::new(),
        readiness: crate::api::system::ReadinessCache::default(),
        max_body_bytes: 0,
        max_upload_bytes: 0,
        max_pending: 0,
        default_max_attempts: 3,
        public_url: config.public_url(),
        fetcher: None,
        started: std::time::Instant::now(),
        streams: crate::api::permits(0),
        uploads: crate::api::permits(0),
        comfy_remaining: Default::default(),
        max_list_input_bytes: 0,
        max_inline_output_bytes: 0,
    });
    let spec = crate::api::openapi_document(state);
    registry.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{spec}");
    ExitCode::SUCCESS
}
