//! Every error code aihost can produce, in one list.
//!
//! Each module keeps its error enum and its `code()`, but the codes themselves are spelled here
//! only: one `pub(crate) const` per code, and [`ALL`], which says for each where it appears, the
//! HTTP status when it is an HTTP answer, and what it means. `/openapi.json` publishes the list
//! (`components.schemas.ErrorCode`, `x-error-codes`) and `README.md` has it as a table; tests
//! below keep both honest and fail when a code is spelled as a string literal anywhere else in
//! `host/src`.
//!
//! The codes plugins share are those of [`aihost_plugin_api::codes`]: they are referenced, not
//! spelled again. Plugins may add task codes of their own (`invalid_target`, ...); those are
//! not listed here, except the ones the shipped plugins' schemas make HTTP answers at submit
//! (`x-error-code`, see `api/input_check.rs`): `invalid_workflow`.
//!
//! A code names one thing. Where a word alone would be ambiguous the constant's name says where
//! the code comes from (`CONFIG_DUPLICATE`, `FILES_INVALID_KEY`); codes that clients already see
//! keep their spelling.

use aihost_plugin_api::codes;

/// Where a code reaches the one who reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// `{"error": {"code", "message"}}` of an HTTP answer.
    Http,
    /// `error.code` of a task: FAILED, or PENDING again with its last error.
    Task,
    /// The `code` of a plugin load failure or health answer: `failures` of `GET /api/plugins`,
    /// `plugin_failures` and `plugins.{name}` of `GET /api/status`, `failed` of
    /// `POST /api/plugins/reload`.
    PluginReport,
    /// `[code]` at the end of a refusal of the `aihost` command (exit status not 0).
    Cli,
    /// `StorageError::code()` of the library's public `aihost::storage` module.
    Library,
}

impl Surface {
    /// The name `/openapi.json` and `README.md` use.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Surface::Http => "http",
            Surface::Task => "task",
            Surface::PluginReport => "plugin_report",
            Surface::Cli => "cli",
            Surface::Library => "library",
        }
    }
}

/// One entry of [`ALL`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode {
    /// The code, as clients see it.
    pub code: &'static str,
    /// Where it appears.
    pub surfaces: &'static [Surface],
    /// The HTTP status it is answered with, when [`Surface::Http`] is one of `surfaces`.
    pub status: Option<u16>,
    /// One line: what it means.
    pub meaning: &'static str,
}

impl ErrorCode {
    /// Whether the code can be the `code` of an HTTP error body.
    pub(crate) fn is_http(&self) -> bool {
        self.surfaces.contains(&Surface::Http)
    }
}

/// `-` is no HTTP status; a number is one.
macro_rules! status {
    (-) => {
        None
    };
    ($status:literal) => {
        Some($status)
    };
}

/// `NAME = "code", [Surface, ...] STATUS, "meaning";` defines `pub(crate) const NAME` and its
/// entry of [`ALL`], in the order written.
macro_rules! error_codes {
    ($(
        $name:ident = $code:expr, [$($surface:ident),+] $status:tt, $meaning:literal;
    )*) => {
        $(
            #[doc = $meaning]
            pub(crate) const $name: &str = $code;
        )*

        /// Every error code the host can produce, with where it appears, its HTTP status and
        /// its meaning.
        pub(crate) const ALL: &[ErrorCode] = &[$(
            ErrorCode {
                code: $name,
                surfaces: &[$(Surface::$surface),+],
                status: status!($status),
                meaning: $meaning,
            },
        )*];
    };
}

error_codes! {
    // The HTTP API itself: routing, parsing, keys and limits (api/mod.rs, api/error.rs).
    BAD_REQUEST = "bad_request", [Http] 400,
        "The request was refused while being read, for a reason without a code of its own.";
    UNAUTHORIZED = "unauthorized", [Http] 401,
        "The API key is missing or is not one of `server.api_keys`.";
    CORS_REFUSED = "cors_refused", [Http] 403,
        "A browser request from an origin not in `server.cors_origins`, or a preflight asking for a method or header the API does not accept.";
    NOT_READY = "not_ready", [Http] 503,
        "`GET /api/ready`: the store or storage is failing, or more tasks are pending than `server.max_queue_depth` (the message says which).";
    ROUTE_NOT_FOUND = "not_found", [Http] 404,
        "No route has this path.";
    METHOD_NOT_ALLOWED = "method_not_allowed", [Http] 405,
        "The route exists, but not with this method.";
    INVALID_BODY = "invalid_body", [Http] 400,
        "The body is not valid JSON or not of the expected shape (the message names the field).";
    INVALID_PARAMETER = "invalid_parameter", [Http] 400,
        "A query, path or header parameter has the wrong type or is out of range.";
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type", [Http] 400,
        "The body's Content-Type is not one the route accepts.";
    BODY_TOO_LARGE = "body_too_large", [Http] 413,
        "The body is over `server.max_body_bytes` (an upload: over `server.max_upload_bytes`).";

    // Tasks (api/tasks.rs, api/events.rs, api/ids.rs).
    TASK_NOT_FOUND = "task_not_found", [Http] 404,
        "No task has this id (or the id is not a UUID).";
    TASK_FINISHED = "task_finished", [Http] 409,
        "The task has already finished, so it cannot be cancelled.";
    TASK_LIVE = "task_live", [Http] 409,
        "The task is PENDING or PROCESSING, so it cannot be deleted (cancel it first).";
    TASK_NOT_RETRYABLE = "task_not_retryable", [Http] 409,
        "Only a FAILED or CANCELLED task can be retried (this one is PENDING, PROCESSING or COMPLETED).";
    UNKNOWN_TASK_TYPE = "unknown_task_type", [Http] 422,
        "No loaded plugin registers this task type (the message lists those that are).";
    INVALID_WEBHOOK_URL = "invalid_webhook_url", [Http] 422,
        "`webhook_url` is not an http or https URL.";
    QUEUE_FULL = "queue_full", [Http] 429,
        "`queue.max_pending` tasks are pending already; retry after `Retry-After` seconds.";
    WEBHOOK_URL_BLOCKED = "webhook_url_blocked", [Http] 422,
        "`webhook_url` names a loopback, private, link-local or otherwise refused address (the fetcher's SSRF rules; `fetch.allow_hosts` lets a host through).";
    IDEMPOTENCY_CONFLICT = "idempotency_conflict", [Http] 409,
        "The `Idempotency-Key` is held by a task created by another request (another type, input, priority, max_attempts, webhook_url or timeout_secs).";
    IDEMPOTENCY_KEY_TOO_LONG = "idempotency_key_too_long", [Http] 400,
        "The `Idempotency-Key` (header or field) is longer than 255 bytes.";
    TOO_MANY_STREAMS = "too_many_streams", [Http] 503,
        "`server.max_streams` SSE and WebSocket subscribers are open in this process already; retry later.";

    // Uploads and stored files (api/files.rs).
    UPLOAD_MISSING_FILE = "missing_file", [Http] 400,
        "The multipart upload has no file field (send the file as a field named `file`).";
    UPLOAD_INVALID_MULTIPART = "invalid_multipart", [Http] 400,
        "The upload body is not valid multipart/form-data.";
    UPLOAD_INCOMPLETE = "upload_incomplete", [Http] 400,
        "The upload body ended before its multipart end (a cut connection or a truncated body); nothing was stored.";
    TOO_MANY_UPLOADS = "too_many_uploads", [Http] 503,
        "`server.max_concurrent_uploads` uploads are being streamed already; retry after `Retry-After` seconds.";
    FILES_INVALID_KEY = "invalid_key", [Http] 400,
        "The key in a `/files/` path has a malformed %-escape or is not UTF-8.";
    FILES_RANGE_NOT_SATISFIABLE = "range_not_satisfiable", [Http] 416,
        "The Range of a `/files/` request starts past the end of the file.";

    // The seed-compatible ComfyUI routes (api/seed/comfyui.rs).
    COMFYUI_NOT_LOADED = "comfyui_not_loaded", [Http] 503,
        "A ComfyUI route was called, but the comfyui plugin is not loaded.";
    COMFYUI_WORKFLOW_NOT_FOUND = "workflow_not_found", [Http] 404,
        "No installed workflow template has this name (`GET /api/workflows` lists them).";

    // The ComfyUI-compatible gateway (api/comfy/).
    COMFY_CROSS_ORIGIN = "cross_origin_refused", [Http] 403,
        "ComfyUI gateway: a request whose `Origin` header names another host than its `Host` header (and is not in `server.cors_origins`) is refused, as ComfyUI refuses it: a web page cannot drive the gateway from another site.";
    COMFY_INVALID_PROMPT = "invalid_prompt", [Http] 400,
        "ComfyUI gateway: the body of `POST /comfy/prompt` is not JSON or has no API-format graph under `prompt`, the graph fails the task type's schema, its `prompt_id` is used by another prompt, or a `/comfy/view` query is malformed (ComfyUI's error shape, with this code beside its `type`).";

    // The task store (store/mod.rs `StoreError`).
    INVALID_CURSOR = "invalid_cursor", [Http] 400,
        "The `cursor` of a task list was not produced by this store.";
    STORE_UNAVAILABLE = "store_unavailable", [Http, Cli] 503,
        "The task store (SQLite file or PostgreSQL) cannot be reached or answered an error.";
    STORE_MIGRATION_FAILED = "store_migration_failed", [Cli] -,
        "The task store's schema could not be migrated when it was opened.";
    STORE_CORRUPT = "store_corrupt", [Http] 500,
        "A stored task could not be decoded (a bug or a foreign write).";

    // Storage (storage/error.rs `StorageError`; statuses from api/error.rs `storage_status`).
    STORAGE_NOT_FOUND = "storage_not_found", [Http, Library] 404,
        "No stored object has this key.";
    STORAGE_INVALID_KEY = "storage_invalid_key", [Http, Task, Library] 400,
        "The storage key is not acceptable (empty, too long, `..`, control characters, reserved).";
    STORAGE_TOO_LARGE = "storage_too_large", [Http, Task, Library] 413,
        "The object is over the size limit; nothing was stored.";
    STORAGE_RANGE_NOT_SATISFIABLE = "storage_range_not_satisfiable", [Library] -,
        "A byte range starts past the end of the object (`/files/` answers `range_not_satisfiable`).";
    STORAGE_UNAVAILABLE = "storage_unavailable", [Http, Task, Cli, Library] 503,
        "The storage backend cannot be reached or answered a server error; a retry may help.";
    STORAGE_DENIED = "storage_denied", [Http, Task, Cli, Library] 500,
        "The storage backend refused the credentials (wrong key or signature, missing permission).";
    STORAGE_REJECTED = "storage_rejected", [Http, Task, Cli, Library] 422,
        "The storage backend refused the object (Cloudflare Images: not an image, too large, ...).";
    STORAGE_UNSUPPORTED = "storage_unsupported", [Http, Task, Library] 500,
        "The storage backend cannot do this operation.";
    STORAGE_MISCONFIGURED = "storage_misconfigured", [Http, Cli, Library] 500,
        "The `[storage]` settings are incomplete or contradictory.";
    STORAGE_IO = "storage_io", [Http, Task, Cli, Library] 503,
        "Any other failure of the storage backend or of a local file.";

    // Running tasks (dispatcher.rs, the stores' lease rescue).
    WORK_DIR_FAILED = "work_dir_failed", [Task] -,
        "The task's work folder could not be created; the attempt is retried.";
    LEASE_EXPIRED = "lease_expired", [Task] -,
        "The consumer running the task stopped renewing its lease (crash, hang, lost store).";

    // The codes plugins share (plugin-api `codes`), also written by the host and the SDK.
    INVALID_INPUT = codes::INVALID_INPUT, [Http, Task] 422,
        "The task input is wrong: it fails the task type's schema (HTTP) or the plugin's checks.";
    INVALID_WORKFLOW = "invalid_workflow", [Http, Task] 422,
        "comfyui: the graph is not an API-format ComfyUI graph (at submit, from the schema's `x-error-code`, naming the bad node; a UI-format export is told how to export the API format) or ComfyUI refused it.";
    INVALID_CONFIG = codes::INVALID_CONFIG, [Task] -,
        "The plugin's configuration is wrong.";
    ENGINE_UNAVAILABLE = codes::ENGINE_UNAVAILABLE, [Http, Task, PluginReport] 503,
        "The engine cannot be reached (or its plugin is not loaded); a retry may help.";
    ENGINE_ERROR = codes::ENGINE_ERROR, [Http, Task, PluginReport] 503,
        "The engine ran and failed.";
    TIMEOUT = codes::TIMEOUT, [Task, PluginReport] -,
        "The task (or a plugin's health check) ran out of time.";
    CANCELLED = codes::CANCELLED, [Task] -,
        "The task was cancelled while the plugin ran it.";
    PLUGIN_PANIC = codes::PLUGIN_PANIC, [Http, Task, PluginReport] 500,
        "The plugin panicked; the panic was caught at the plugin boundary.";
    NOT_INITIALIZED = codes::NOT_INITIALIZED, [Http, Task] 503,
        "A call reached a plugin that was not initialised.";
    UNKNOWN_OP = codes::UNKNOWN_OP, [Http] 500,
        "An engine operation the plugin does not offer was called.";
    INTERNAL = codes::INTERNAL, [Http, Task, PluginReport, Cli] 500,
        "An internal error of the host or of a plugin (a bug).";
    PLUGIN_ERROR = "plugin_error", [Http, Task, PluginReport] 503,
        "A plugin answered an error code that is not `[a-z0-9_]{1,64}`; the message starts with the original code (cleaned, cut).";
    FETCH_FAILED = codes::FETCH_FAILED, [Task, Cli] -,
        "An input could not be fetched (network, HTTP status, local I/O); retried when it may help.";
    FETCH_TIMEOUT = codes::FETCH_TIMEOUT, [Task] -,
        "Connecting to or downloading an input took longer than the fetcher's timeouts.";
    FETCH_NOT_FOUND = codes::FETCH_NOT_FOUND, [Task] -,
        "An input does not exist (HTTP 404 or 410, or a storage key with no object).";
    FETCH_TOO_LARGE = codes::FETCH_TOO_LARGE, [Task] -,
        "An input is larger than `fetch.max_bytes`.";
    FETCH_BLOCKED = codes::FETCH_BLOCKED, [Task] -,
        "The fetcher refused an input URL or a redirect (SSRF guard, scheme, too many redirects).";
    FETCH_INVALID_URL = codes::FETCH_INVALID_URL, [Task] -,
        "An input is neither an http(s) URL nor a key of this service's storage.";

    // Loading plugin libraries (plugins/library.rs `LoadError`).
    PLUGIN_MISSING_FILE = "plugin_missing_file", [PluginReport, Cli] -,
        "No file at the plugin library's path.";
    PLUGIN_NOT_A_LIBRARY = "plugin_not_a_library", [PluginReport, Cli] -,
        "The file is not a loadable shared library.";
    PLUGIN_INVALID_LIBRARY = "plugin_invalid_library", [PluginReport, Cli] -,
        "The file is not a complete shared library for this machine (truncated: a header, segment or section past its end; or another class, byte order or architecture); it was not opened.";
    PLUGIN_COPY_FAILED = "plugin_copy_failed", [PluginReport, Cli] -,
        "The private copy of the library that the host opens could not be made (temporary folder not writable, disk full).";
    PLUGIN_NOT_A_PLUGIN = "plugin_not_a_plugin", [PluginReport, Cli] -,
        "The shared library is not an aihost plugin (no plugin header, or another program's).";
    PLUGIN_WRONG_INTERFACE = "plugin_wrong_interface", [PluginReport, Cli] -,
        "The plugin was built against a plugin-api version this host does not accept.";
    PLUGIN_LAYOUT_MISMATCH = "plugin_layout_mismatch", [PluginReport, Cli] -,
        "The plugin interface's layout does not match this host's; rebuild the plugin.";
    PLUGIN_DESCRIBE_FAILED = "plugin_describe_failed", [PluginReport, Cli] -,
        "The plugin failed to describe itself.";
    PLUGIN_VERSION_MISMATCH = "plugin_version_mismatch", [PluginReport, Cli] -,
        "The plugin's version does not meet the requirement of its `plugins.toml` entry.";
    PLUGIN_NAME_MISMATCH = "plugin_name_mismatch", [PluginReport, Cli] -,
        "The `plugins.toml` entry names another plugin than the library holds.";
    PLUGIN_INIT_FAILED = "plugin_init_failed", [PluginReport, Cli] -,
        "The plugin failed to initialise (its configuration, its engine).";
    PLUGIN_DUPLICATE_TASK_TYPE = "plugin_duplicate_task_type", [PluginReport, Cli] -,
        "The plugin registers a task type another loaded plugin registers already.";
    PLUGIN_DUPLICATE_NAME = "plugin_duplicate_name", [PluginReport, Cli] -,
        "A plugin of the same name is loaded already.";
    PLUGIN_NEEDS_RESTART = "plugin_needs_restart", [PluginReport, Cli] -,
        "A loaded library changed on disk; restart to load it (libraries are never unloaded).";
    PLUGIN_INVALID_SCHEMA = "plugin_invalid_schema", [PluginReport, Cli] -,
        "A task type's input schema is not a valid JSON Schema.";

    // Settings: aihost.toml, AIHOST_* variables and plugins.toml (config/error.rs `ConfigError`).
    CONFIG_UNKNOWN_KEY = "unknown_key", [Cli] -,
        "A settings key or `AIHOST_*` variable that means nothing (a typo, usually).";
    CONFIG_INVALID_TYPE = "invalid_type", [Cli] -,
        "A setting has the wrong TOML type (a string where a number belongs, ...).";
    CONFIG_INVALID_VALUE = "invalid_value", [Cli] -,
        "A setting has the right type but an unacceptable value.";
    CONFIG_MISSING_VALUE = "missing_value", [Cli] -,
        "A setting another one makes necessary is absent (`queue.url` for postgres, ...).";
    CONFIG_DUPLICATE = "duplicate", [Cli] -,
        "A name that must be unique is given twice (plugin names in `plugins.toml`).";
    CONFIG_UNREADABLE_FILE = "unreadable_file", [Cli] -,
        "A settings file cannot be read (missing when named, permissions, not UTF-8).";
    HEALTH_CHECK_FAILED = "health_check_failed", [Cli] -,
        "`aihost health`: the service did not answer `GET /api/health` with 200 within 5 s.";
    CLIENT_USAGE = "client_usage", [Cli] -,
        "The client commands (`aihost submit`, `run`, `tasks`): a bad argument, an unreadable input file, input that is not JSON (exit 2).";
    CLIENT_UNREACHABLE = "client_unreachable", [Cli] -,
        "The client commands: the service could not be reached, or its answer could not be read (exit 5).";
    CLIENT_REFUSED = "client_refused", [Cli] -,
        "The client commands: the service refused the request (its own code and message are printed too; exit 6).";
    DOTENV_INVALID = "dotenv_invalid", [Cli] -,
        "The `.env` file of the working directory cannot be read or has a line that is not `NAME=value`.";
    CONFIG_TOML_SYNTAX = "toml_syntax", [Cli] -,
        "A settings file is not valid TOML.";

    // Starting the service (service.rs `StartError`; it passes store, storage and fetch codes on).
    CONFIG_INVALID = "config_invalid", [Cli] -,
        "The service cannot start: the settings have errors (each listed with its own code).";
    PLUGIN_REQUIRED_FAILED = "plugin_required_failed", [Cli] -,
        "The service cannot start: a plugin marked `required` in `plugins.toml` failed to load.";
    UNSUPPORTED_BACKEND = "unsupported_backend", [Cli] -,
        "The service cannot start: the settings name a backend it cannot use as given.";
    STORE_MODE_UNSUPPORTED = "store_mode_unsupported", [Cli] -,
        "The service cannot start in this role: the task store cannot be shared as configured (`aihost api` or `aihost consumer` on a SQLite file on a network file system).";
    BIND_FAILED = "bind_failed", [Cli] -,
        "The service cannot start: listening on `server.bind` failed.";
    TLS_ROOTS_MISSING = "tls_roots_missing", [Cli] -,
        "The service cannot start: the system has no CA certificates (install `ca-certificates`).";
    WORKER_ID_IN_USE = "worker_id_in_use", [Cli] -,
        "The consumer cannot start: another running consumer of the task store holds its `dispatcher.worker_id`.";

    // Task codes of the comfyui plugin (plugins/comfyui: routing.rs, models.rs).
    MODEL_UNAVAILABLE = "model_unavailable", [Task] -,
        "No ComfyUI instance of the pool has a model the task's graph names (the message names it).";
    MODEL_URL_REFUSED = "model_url_refused", [Task] -,
        "A per-task model URL is not allowed by the comfyui plugin's `model_url_hosts`, is too large, or names a bad folder.";

    // Webhooks (api/webhooks.rs, webhooks/).
    INVALID_WEBHOOK_EVENTS = "invalid_webhook_events", [Http] 422,
        "`webhook_events` names an event other than `task.started`, `task.progress`, `task.completed`, `task.failed`, `task.cancelled`.";
    DELIVERY_NOT_FOUND = "delivery_not_found", [Http] 404,
        "The task has no webhook delivery with this id.";

    // Base64 outputs (api/tasks.rs).
    INLINE_OUTPUTS_TOO_LARGE = "inline_outputs_too_large", [Http] 413,
        "`outputs=base64` was asked, but the task's outputs are over `server.max_inline_output_bytes` in all; the message gives the task id and the body the output URLs.";
}

/// The entry of `code`.
#[cfg(test)]
pub(crate) fn find(code: &str) -> Option<&'static ErrorCode> {
    ALL.iter().find(|e| e.code == code)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn is_code(s: &str) -> bool {
        (1..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    #[test]
    fn codes_are_unique_snake_case_and_described() {
        for (i, e) in ALL.iter().enumerate() {
            assert!(
                is_code(e.code),
                "{:?} is not [a-z][a-z0-9_]{{0,63}}",
                e.code
            );
            assert!(
                ALL[..i].iter().all(|other| other.code != e.code),
                "{:?} is listed twice",
                e.code
            );
            assert!(!e.surfaces.is_empty(), "{}: no surface", e.code);
            assert_eq!(
                e.is_http(),
                e.status.is_some(),
                "{}: an HTTP status exactly when it is an HTTP answer",
                e.code
            );
            if let Some(status) = e.status {
                assert!((400..600).contains(&status), "{}: {status}", e.code);
            }
            assert!(
                !e.meaning.is_empty() && !e.meaning.contains('\n') && e.meaning.ends_with('.'),
                "{}: the meaning is one sentence",
                e.code
            );
            assert!(
                !e.meaning.contains('|'),
                "{}: a `|` would break the tables",
                e.code
            );
        }
    }

    /// Every code `plugin-api` shares (`pub const NAME: &str = "..."` in its `codes` module) is
    /// listed, so a code added there cannot be missed here.
    #[test]
    fn every_shared_plugin_code_is_listed() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api/src/lib.rs");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text
            .find("pub mod codes {")
            .expect("plugin-api has `codes`");
        let end = start + text[start..].find("\n}").expect("end of `codes`");
        let shared: Vec<&str> = text[start..end]
            .lines()
            .filter(|l| l.trim_start().starts_with("pub const "))
            .map(|l| l.split('"').nth(1).expect("a quoted code"))
            .collect();
        assert!(shared.len() >= 16, "{shared:?}");
        for code in shared {
            assert!(find(code).is_some(), "plugin-api's {code:?} is not in ALL");
        }
    }

    /// Literals that are spelled like a code but are not used as one: (file under `host/src`,
    /// the literal, why).
    const NOT_CODES: &[(&str, &str, &str)] = &[
        (
            "manifest.rs",
            "\"timeout\"",
            "a key of a plugin's `config` table in a plugins.toml test",
        ),
        (
            "metrics.rs",
            "\"cancelled\"",
            "a value of the `outcome` label of the run-time histogram and of rescues",
        ),
        (
            "store/postgres/claim.rs",
            "'cancelled'",
            "the event kind (`EventKind::Cancelled`) the rescue statement reports to listeners",
        ),
        (
            "store/postgres/finish.rs",
            "'cancelled'",
            "the event kind (`EventKind::Cancelled`) the cancel statements report to listeners",
        ),
    ];

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The tidy check: outside this file no code of [`ALL`] is spelled as a string literal
    /// (`"code"` in Rust, `'code'` in SQL); modules use the constants.
    #[test]
    fn no_code_is_spelled_outside_this_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        files.sort();
        assert!(
            files.len() > 50,
            "{} files under {}",
            files.len(),
            root.display()
        );
        let mut found = Vec::new();
        let mut allowed_seen = vec![false; NOT_CODES.len()];
        for file in &files {
            let rel = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel == "error_codes.rs" {
                continue;
            }
            let text = std::fs::read_to_string(file).unwrap();
            for e in ALL {
                for literal in [format!("\"{}\"", e.code), format!("'{}'", e.code)] {
                    let hits = text.matches(literal.as_str()).count();
                    if hits == 0 {
                        continue;
                    }
                    match NOT_CODES
                        .iter()
                        .position(|(f, l, _)| *f == rel && *l == literal)
                    {
                        Some(i) => allowed_seen[i] = true,
                        None => found.push(format!("{rel}: {literal} ({hits}x)")),
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "error codes spelled outside error_codes.rs (use the constants):\n{}",
            found.join("\n")
        );
        for ((file, literal, _), seen) in NOT_CODES.iter().zip(allowed_seen) {
            assert!(
                seen,
                "allow-list entry {file} {literal} is stale: remove it"
            );
        }
    }

    /// `README.md` lists every code, with its surfaces, status and meaning as here, so the user
    /// docs cannot drift from [`ALL`].
    #[test]
    fn readme_lists_every_code() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("Error codes"))
            .expect("README.md has an `## Error codes` section");
        let rows = readme_rows();
        let missing: Vec<&str> = rows
            .lines()
            .filter(|row| !section.lines().any(|l| l == *row))
            .collect();
        assert!(
            missing.is_empty(),
            "README.md's error code table lacks or differs in\n{}\n\nits rows are\n{rows}",
            missing.join("\n")
        );
    }

    /// The README table's rows, as the failing test prints them.
    fn readme_rows() -> String {
        ALL.iter()
            .map(|e| {
                let surfaces: Vec<&str> = e.surfaces.iter().map(|s| s.as_str()).collect();
                let status = e.status.map_or("".to_owned(), |s| s.to_string());
                format!(
                    "| `{}` | {} | {} | {} |\n",
                    e.code,
                    surfaces.join(", "),
                    status,
                    e.meaning
                )
            })
            .collect()
    }
}
