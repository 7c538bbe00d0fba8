//! The `aihost` command line. See `aihost --help`.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use aihost::{
    config::{Config, LogFormat},
    plugins::Library,
    service::{self, Roles},
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

fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    Config::load(path, &env).map_err(|errors| {
        eprintln!("aihost: configuration errors:\n{errors}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(&config.log.level, config.log.format);
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
    runtime.block_on(run(cli.command.unwrap_or(Command::Serve), config))
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
        Command::Config {
            command: ConfigCommand::Check,
        } => return config_check(&config),
        Command::Plugins {
            command: PluginsCommand::List,
        } => return plugins_list(&config).await,
        Command::Plugins {
            command: PluginsCommand::Check { file },
        } => return plugins_check(&file),
    };
    match service::run(config, roles).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aihost: {e} [{}]", e.code());
            ExitCode::FAILURE
        }
    }
}

fn config_check(config: &Config) -> ExitCode {
    match aihost::manifest::PluginManifest::load(&config.plugins.manifest, false) {
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
    let store = match aihost::store::sqlite::SqliteStore::open(&dir.join("spec.db")).await {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("aihost: {e}");
            return ExitCode::FAILURE;
        }
    };
    let storage = aihost::storage::Storage::new(aihost::storage::StorageSettings {
        kind: aihost::storage::StorageKind::Memory,
        root: dir.clone(),
        prefix: String::new(),
        public_base_url: format!("{}/files", config.public_url()),
    });
    let Ok(storage) = storage else {
        eprintln!("aihost: cannot create memory storage");
        return ExitCode::FAILURE;
    };
    let state = std::sync::Arc::new(aihost::api::AppState {
        store,
        registry: registry.clone(),
        storage,
        dispatcher: None,
        api_keys: Vec::new(),
        max_body_bytes: 0,
        max_upload_bytes: 0,
        max_pending: 0,
        default_max_attempts: 3,
        public_url: config.public_url(),
        started: std::time::Instant::now(),
    });
    let spec = aihost::api::openapi_document(state);
    registry.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{spec}");
    ExitCode::SUCCESS
}
