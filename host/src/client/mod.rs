//! The command-line client of a running aihost (`aihost submit`, `aihost run`, `aihost tasks
//! ...`): it speaks only the public HTTP API, like any other client. `mod.rs` holds the
//! arguments, the HTTP calls and the error type with its exit codes; `follow.rs` follows a
//! task's SSE events and draws its progress; `commands.rs` runs each command.
//!
//! Exit codes (stable, for scripts): 0 the task COMPLETED (or, without `--wait`, the request
//! succeeded); 1 the task FAILED; 2 bad usage or input; 3 the task was CANCELLED; 5 the service
//! could not be reached or its answer read; 6 the service refused the request (its
//! `{"error": {"code", "message"}}` is printed).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use serde_json::Value;

mod commands;
mod follow;

pub(crate) use commands::{Request, run};

/// Exit code of a task that FAILED.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit code of bad arguments or input (clap's own usage errors also exit 2).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code of a task that was CANCELLED.
pub(crate) const EXIT_CANCELLED: u8 = 3;
/// Exit code when the service cannot be reached or its answer cannot be read.
pub(crate) const EXIT_UNREACHABLE: u8 = 5;
/// Exit code when the service refuses the request (an HTTP error answer).
pub(crate) const EXIT_REFUSED: u8 = 6;

/// Where the service is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnArgs {
    /// Base URL of the service (default: `server.public_url` of the local config, else
    /// `server.bind` with a wildcard address replaced by the loopback one).
    #[arg(long)]
    pub url: Option<String>,
    /// API key, sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "AIHOST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// What to do once a task is submitted.
#[derive(Debug, Clone, Args)]
pub(crate) struct WaitArgs {
    /// Follow the task until it finishes (progress on stderr), print it on stdout, and exit
    /// with its status's code.
    #[arg(long)]
    pub wait: bool,
    /// Download the outputs into this folder (implies `--wait`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `aihost submit`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SubmitArgs {
    /// Task type, e.g. `imageops.transform`.
    #[arg(value_name = "TYPE")]
    pub task_type: String,
    /// The input: JSON, or `@file.json` to read it from a file (default `{}`).
    #[arg(long, value_name = "JSON|@FILE")]
    pub input: Option<String>,
    /// Upload a local file and put its storage key at NAME in the input (a dotted path names
    /// a nested field: `a.b`). Repeatable.
    #[arg(long, value_name = "NAME=PATH")]
    pub upload: Vec<String>,
    /// Priority (higher runs first).
    #[arg(long)]
    pub priority: Option<i32>,
    /// Attempts allowed (1 to 100).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `aihost run`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Workflow template name (`GET /api/workflows`).
    #[arg(value_name = "WORKFLOW")]
    pub workflow: String,
    /// A template parameter: the value is read as JSON when it is JSON (`steps=20`,
    /// `flag=true`), else as a string (`prompt=a red fox`). Repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub param: Vec<String>,
    /// Upload a local file and pass its storage key as the parameter NAME. Repeatable.
    #[arg(long, value_name = "NAME=PATH")]
    pub upload: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `aihost tasks ...`.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum TasksCommand {
    /// List tasks, newest first (one line each; `--json` for the page as JSON).
    List {
        /// Only this status (PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED).
        #[arg(long)]
        status: Option<String>,
        /// Only this task type.
        #[arg(long = "type", value_name = "TYPE")]
        task_type: Option<String>,
        /// Page size (1 to 1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Print the page as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print one task as JSON.
    Show {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Cancel a task (print it as JSON).
    Cancel {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Retry a FAILED or CANCELLED task as a new attempt (print it as JSON).
    Retry {
        /// Task id.
        id: String,
        /// Attempts it may make from now (default `queue.default_max_attempts` of the service).
        #[arg(long)]
        max_attempts: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete a finished task and its files.
    Delete {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Follow a task until it finishes (progress on stderr, the task on stdout), exiting with
    /// its status's code.
    Watch {
        /// Task id.
        id: String,
        /// Download the outputs into this folder.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Why a client command did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// Bad arguments or input.
    #[error("{0}")]
    Usage(String),
    /// The service could not be reached or answered something unreadable.
    #[error("{0}")]
    Unreachable(String),
    /// The service answered with an error.
    #[error("{method} {path}: HTTP {status}: {message} [{code}]")]
    Refused {
        /// Method.
        method: String,
        /// Path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The service's error code.
        code: String,
        /// The service's message.
        message: String,
    },
}

impl ClientError {
    /// The client's code of this error (see `error_codes`).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ClientError::Usage(_) => crate::error_codes::CLIENT_USAGE,
            ClientError::Unreachable(_) => crate::error_codes::CLIENT_UNREACHABLE,
            ClientError::Refused { .. } => crate::error_codes::CLIENT_REFUSED,
        }
    }

    /// The process exit code.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => EXIT_USAGE,
            ClientError::Unreachable(_) => EXIT_UNREACHABLE,
            ClientError::Refused { .. } => EXIT_REFUSED,
        }
    }
}

/// Result alias of this module.
pub(crate) type ClientResult<T> = Result<T, ClientError>;

/// The HTTP side: base URL, key, one reqwest client.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    /// A client of `base` with an optional API key.
    pub(crate) fn new(base: &str, key: Option<String>) -> ClientResult<Client> {
        let base = base.trim_end_matches('/').to_owned();
        let ok = url::Url::parse(&base).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !ok {
            return Err(ClientError::Usage(format!(
                "--url must be an http(s) URL, got {base:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Unreachable(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            key: key.filter(|k| !k.is_empty()),
        })
    }

    /// The base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// Sends a request and reads a JSON answer (null for an empty one); an HTTP error answer
    /// becomes [`ClientError::Refused`].
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: RequestBody,
    ) -> ClientResult<Value> {
        let mut rb = self
            .request(method.clone(), path)
            .timeout(Duration::from_secs(120));
        rb = match body {
            RequestBody::None => rb,
            RequestBody::Json(v) => rb.json(&v),
            RequestBody::Form(f) => rb.multipart(f),
        };
        let resp = rb.send().await.map_err(|e| self.unreachable(path, &e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unreachable(path, &e))?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let code = value
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("http_error")
            .to_owned();
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string().chars().take(300).collect());
        Err(ClientError::Refused {
            method: method.to_string(),
            path: path.to_owned(),
            status: status.as_u16(),
            code,
            message,
        })
    }

    fn unreachable(&self, path: &str, e: &reqwest::Error) -> ClientError {
        use std::error::Error as _;
        let mut msg = format!("{}{path}: {e}", self.base);
        let mut source = e.source();
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        ClientError::Unreachable(msg)
    }

    /// GET a JSON answer.
    pub(crate) async fn get(&self, path: &str) -> ClientResult<Value> {
        self.send(reqwest::Method::GET, path, RequestBody::None)
            .await
    }

    /// POST JSON (or nothing), read a JSON answer.
    pub(crate) async fn post(&self, path: &str, body: Option<Value>) -> ClientResult<Value> {
        let body = body.map_or(RequestBody::None, RequestBody::Json);
        self.send(reqwest::Method::POST, path, body).await
    }

    /// DELETE.
    pub(crate) async fn delete(&self, path: &str) -> ClientResult<Value> {
        self.send(reqwest::Method::DELETE, path, RequestBody::None)
            .await
    }

    /// Uploads a local file (`POST /api/uploads`) and answers its storage key.
    pub(crate) async fn upload(&self, path: &std::path::Path) -> ClientResult<String> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".into());
        let mut part = reqwest::multipart::Part::bytes(bytes).file_name(name.clone());
        let mime = mime_guess::from_path(path).first_or_octet_stream();
        part = part
            .mime_str(mime.essence_str())
            .map_err(|e| ClientError::Usage(format!("{name}: {e}")))?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let answer = self
            .send(
                reqwest::Method::POST,
                "/api/uploads",
                RequestBody::Form(form),
            )
            .await?;
        answer["key"].as_str().map(str::to_owned).ok_or_else(|| {
            ClientError::Unreachable(format!("the upload answer has no key: {answer}"))
        })
    }

    /// Opens a task's event stream (`GET /api/tasks/{id}/events`).
    pub(crate) async fn events(&self, id: &str) -> ClientResult<reqwest::Response> {
        let path = format!("/api/tasks/{id}/events");
        let resp = self
            .request(reqwest::Method::GET, &path)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(&path, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        Err(ClientError::Refused {
            method: "GET".into(),
            path,
            status,
            code: value
                .pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("http_error")
                .to_owned(),
            message: value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        })
    }

    /// Downloads `url` (absolute, or a path on the service) into `file`. No API key is sent:
    /// output URLs are public or presigned, and may be on another host.
    pub(crate) async fn download(&self, url: &str, file: &std::path::Path) -> ClientResult<u64> {
        use futures_util::StreamExt as _;
        use tokio::io::AsyncWriteExt as _;
        let full = if url.starts_with('/') {
            format!("{}{url}", self.base)
        } else {
            url.to_owned()
        };
        let resp = self
            .http
            .get(&full)
            .send()
            .await
            .map_err(|e| self.unreachable(url, &e))?;
        if !resp.status().is_success() {
            return Err(ClientError::Refused {
                method: "GET".into(),
                path: full,
                status: resp.status().as_u16(),
                code: "http_error".into(),
                message: "the output could not be downloaded".into(),
            });
        }
        let mut out = tokio::fs::File::create(file)
            .await
            .map_err(|e| ClientError::Usage(format!("cannot write {}: {e}", file.display())))?;
        let mut n = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(url, &e))?;
            n += chunk.len() as u64;
            out.write_all(&chunk)
                .await
                .map_err(|e| ClientError::Usage(format!("cannot write {}: {e}", file.display())))?;
        }
        out.flush()
            .await
            .map_err(|e| ClientError::Usage(format!("cannot write {}: {e}", file.display())))?;
        Ok(n)
    }
}

enum RequestBody {
    None,
    Json(Value),
    Form(reqwest::multipart::Form),
}
