//! Model files: the manifest every supervised instance downloads into its ComfyUI folder
//! (`models/{folder}/{name}`) before it takes tasks, and the per-task model URLs (a LoRA from
//! a URL) fetched through the host's fetcher into a hashed cache in that folder.
//!
//! Manifest downloads are resumable (the bytes go to `{name}.part`; a retry asks for the rest
//! with an HTTP `Range`) and verified: a file whose sha256 differs from the manifest's is
//! refused, its part deleted, and the error shown in health; the instance still takes the tasks
//! that do not need it (routing, `routing.rs`, sees the file missing).
//!
//! Separate from the supervisor (`supervise.rs`): files, not processes.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use aihost_plugin_api::{PluginError, codes, sdk::Context};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::fatal;

/// Error code of a per-task model URL the config does not allow (non-retryable).
pub const MODEL_URL_REFUSED: &str = "model_url_refused";

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Where to download it from (http or https).
    pub url: String,
    /// Its sha256, 64 hex digits.
    pub sha256: String,
    /// The models subfolder: `checkpoints`, `loras`, `vae`, ...
    pub folder: String,
    /// The file name; empty = the last segment of the URL's path.
    #[serde(default)]
    pub name: String,
}

/// The `models_file`: `[[models]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[serde(default)]
    models: Vec<ModelSpec>,
}

/// A file or folder name segment is safe: not empty, no `..`, no separators, no leading dot.
fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ' | '+'))
}

/// A models subfolder (`checkpoints`, `loras/sdxl`) is safe.
pub(crate) fn safe_folder(f: &str) -> bool {
    f.split('/').all(safe_segment)
}

impl ModelSpec {
    /// The file name (given, or from the URL).
    pub(crate) fn file_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        url::Url::parse(&self.url)
            .ok()
            .and_then(|u| {
                u.path_segments()
                    .and_then(|mut s| s.next_back().map(str::to_owned))
            })
            .unwrap_or_default()
    }

    /// `invalid_config` for a bad URL, checksum, folder or name.
    fn check(&self) -> Result<(), PluginError> {
        let bad =
            |what: String| fatal(codes::INVALID_CONFIG, format!("model {}: {what}", self.url));
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(bad("url must start with http:// or https://".into()));
        }
        if self.sha256.len() != 64 || !self.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("sha256 must be 64 hex digits".into()));
        }
        if !safe_folder(&self.folder) {
            return Err(bad(format!(
                "folder {:?} is not a plain folder name",
                self.folder
            )));
        }
        if !safe_segment(&self.file_name()) {
            return Err(bad(format!(
                "file name {:?} is not a plain file name (set `name`)",
                self.file_name()
            )));
        }
        Ok(())
    }
}

/// The manifest: `models` of the config plus the `models_file`, checked.
pub(crate) fn manifest(
    models: &[ModelSpec],
    models_file: &str,
) -> Result<Vec<ModelSpec>, PluginError> {
    let mut all = models.to_vec();
    if !models_file.is_empty() {
        let text = std::fs::read_to_string(models_file).map_err(|e| {
            fatal(
                codes::INVALID_CONFIG,
                format!("cannot read models_file {models_file}: {e}"),
            )
        })?;
        let f: ModelsFile = toml::from_str(&text).map_err(|e| {
            fatal(
                codes::INVALID_CONFIG,
                format!("models_file {models_file}: {e}"),
            )
        })?;
        all.extend(f.models);
    }
    for m in &all {
        m.check()?;
    }
    Ok(all)
}

/// One manifest file's state, as health shows it.
#[derive(Debug, Clone, Serialize)]
struct FileState {
    folder: String,
    name: String,
    /// `pending`, `downloading`, `ready` or `failed`.
    status: &'static str,
    bytes: u64,
    total: Option<u64>,
    error: Option<String>,
}

/// The manifest's progress on one instance.
#[derive(Default)]
pub(crate) struct Provision {
    files: Mutex<Vec<FileState>>,
    done: std::sync::atomic::AtomicBool,
}

impl Provision {
    /// Done (every file ready or failed): the instance may take tasks.
    pub(crate) fn done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks it done without files (no manifest, or not a supervised instance).
    pub(crate) fn skip(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The health entry: `{ready, files: [...]}`.
    pub(crate) fn report(&self) -> Value {
        let files = self.files.lock().unwrap();
        json!({"ready": self.done(), "failed": files.iter().filter(|f| f.status == "failed").count(), "files": *files})
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut FileState)) {
        if let Some(s) = self.files.lock().unwrap().get_mut(i) {
            f(s);
        }
    }

    /// Downloads every file of `specs` missing from `{dir}/models`, then marks it done.
    pub(crate) async fn run(&self, dir: &Path, specs: &[ModelSpec], instance: &str) {
        *self.files.lock().unwrap() = specs
            .iter()
            .map(|s| FileState {
                folder: s.folder.clone(),
                name: s.file_name(),
                status: "pending",
                bytes: 0,
                total: None,
                error: None,
            })
            .collect();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        for (i, spec) in specs.iter().enumerate() {
            let target = dir.join("models").join(&spec.folder).join(spec.file_name());
            self.update(i, |s| s.status = "downloading");
            match self.fetch(&http, i, spec, &target).await {
                Ok(()) => {
                    tracing::info!(target: "comfyui::models", instance, file = %target.display(), "model ready");
                    self.update(i, |s| s.status = "ready");
                }
                Err(e) => {
                    tracing::error!(target: "comfyui::models", instance, file = %target.display(), error = %e, "model refused");
                    self.update(i, |s| {
                        s.status = "failed";
                        s.error = Some(e);
                    });
                }
            }
        }
        self.skip();
    }

    /// One file: kept when present with the right checksum; else downloaded (resuming a
    /// part, up to 5 attempts), verified, and moved into place.
    async fn fetch(
        &self,
        http: &reqwest::Client,
        i: usize,
        spec: &ModelSpec,
        target: &Path,
    ) -> Result<(), String> {
        let want = spec.sha256.to_ascii_lowercase();
        if target.is_file() {
            let t = target.to_path_buf();
            let have = tokio::task::spawn_blocking(move || hash_file(&t))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if have == want {
                let len = std::fs::metadata(target).map(|m| m.len()).unwrap_or(0);
                self.update(i, |s| {
                    s.bytes = len;
                    s.total = Some(len);
                });
                return Ok(());
            }
            return Err(format!(
                "{} exists with another sha256 ({have}, the manifest says {want}); remove it to download again",
                target.display()
            ));
        }
        let folder = target.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(folder)
            .await
            .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
        let part = PathBuf::from(format!("{}.part", target.display()));
        let mut last = String::new();
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt.min(5))).await;
            }
            match self.download(http, i, &spec.url, &part).await {
                Ok(()) => {
                    let p = part.clone();
                    let have = tokio::task::spawn_blocking(move || hash_file(&p))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                    if have != want {
                        let _ = tokio::fs::remove_file(&part).await;
                        return Err(format!(
                            "sha256 mismatch for {}: got {have}, the manifest says {want}; the file was refused",
                            spec.url
                        ));
                    }
                    return tokio::fs::rename(&part, target)
                        .await
                        .map_err(|e| format!("cannot move into {}: {e}", target.display()));
                }
                Err(e) => last = e,
            }
        }
        Err(format!("download of {} failed: {last}", spec.url))
    }

    /// Appends the rest of `url` to `part` (asking with `Range` when a part exists).
    async fn download(
        &self,
        http: &reqwest::Client,
        i: usize,
        url: &str,
        part: &Path,
    ) -> Result<(), String> {
        let have = tokio::fs::metadata(part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let mut req = http.get(url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let r = req.send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT && have > 0;
        if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            // The part is complete already (or longer than the file): verify it.
            return Ok(());
        }
        if !status.is_success() {
            return Err(format!("the server answered {status}"));
        }
        let start = if resumed { have } else { 0 };
        let total = r.content_length().map(|n| n + start);
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(part)
            .await
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        let mut done = start;
        self.update(i, |s| {
            s.bytes = done;
            s.total = total;
        });
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            out.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
            done += chunk.len() as u64;
            self.update(i, |s| s.bytes = done);
        }
        out.flush().await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The sha256 of a file, lower-case hex.
fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A per-task model: the file at `url` goes to `{folder}/aihost-cache/` and its name is set
/// at `node`/`input` of the graph.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskModel {
    pub(crate) url: String,
    pub(crate) folder: String,
    pub(crate) node: String,
    pub(crate) input: String,
}

/// Whether `host` matches one of the patterns (`example.com`, `*.example.com`).
fn host_allowed(host: &str, patterns: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == p,
        }
    })
}

/// Refuses a per-task model URL outside the allow-list (or with a bad folder), at once.
pub(crate) fn check_task_model(m: &TaskModel, hosts: &[String]) -> Result<(), PluginError> {
    if !safe_folder(&m.folder) {
        return Err(fatal(
            MODEL_URL_REFUSED,
            format!("model folder {:?} is not a plain folder name", m.folder),
        ));
    }
    let host = url::Url::parse(&m.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .and_then(|u| u.host_str().map(str::to_owned));
    match host {
        Some(h) if host_allowed(&h, hosts) => Ok(()),
        Some(h) => Err(fatal(
            MODEL_URL_REFUSED,
            format!(
                "model URL host {h:?} is not in the comfyui plugin's model_url_hosts ({})",
                if hosts.is_empty() {
                    "empty: per-task model URLs are off".to_owned()
                } else {
                    hosts.join(", ")
                }
            ),
        )),
        None => Err(fatal(
            MODEL_URL_REFUSED,
            format!("model URL {:?} is not an http(s) URL", m.url),
        )),
    }
}

/// Fetches a per-task model through the host's fetcher into
/// `{dir}/models/{folder}/aihost-cache/{sha256 of the url}{ext}` unless cached; answers the
/// name to put in the graph (`aihost-cache/...`).
pub(crate) async fn fetch_task_model(
    ctx: &Context,
    m: &TaskModel,
    dir: &Path,
    max_bytes: u64,
) -> Result<String, PluginError> {
    let key = hex(&Sha256::digest(m.url.as_bytes()));
    let ext = url::Url::parse(&m.url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next_back().map(str::to_owned))
        })
        .and_then(|n| n.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()))
        .filter(|e| !e.is_empty() && e.len() <= 16 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "safetensors".into());
    let name = format!("aihost-cache/{key}.{ext}");
    let target = dir.join("models").join(&m.folder).join(&name);
    if target.is_file() {
        return Ok(name);
    }
    let local = ctx.fetch(&m.url).await?;
    let io = |e: std::io::Error| {
        fatal(
            codes::INTERNAL,
            format!("cannot place the model in {}: {e}", target.display()),
        )
    };
    let len = tokio::fs::metadata(&local).await.map_err(io)?.len();
    if len > max_bytes {
        let _ = tokio::fs::remove_file(&local).await;
        return Err(fatal(
            MODEL_URL_REFUSED,
            format!(
                "model at {} is {len} bytes, over model_url_max_bytes ({max_bytes})",
                m.url
            ),
        ));
    }
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    let part = PathBuf::from(format!("{}.part", target.display()));
    if tokio::fs::rename(&local, &part).await.is_err() {
        tokio::fs::copy(&local, &part).await.map_err(io)?;
        let _ = tokio::fs::remove_file(&local).await;
    }
    tokio::fs::rename(&part, &target).await.map_err(io)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hosts_and_folders() {
        let m = ModelSpec {
            url: "https://h.example/a/b/model.safetensors?x=1".into(),
            sha256: "0".repeat(64),
            folder: "checkpoints".into(),
            name: String::new(),
        };
        assert_eq!(m.file_name(), "model.safetensors");
        assert!(m.check().is_ok());
        let bad = ModelSpec {
            folder: "../etc".into(),
            ..m.clone()
        };
        assert!(bad.check().is_err());
        assert!(host_allowed("cdn.hf.co", &["*.hf.co".into()]));
        assert!(!host_allowed("hf.co.evil", &["*.hf.co".into()]));
        assert!(host_allowed("civitai.com", &["civitai.com".into()]));
        assert!(!safe_folder("loras/../x"));
        assert!(safe_folder("loras/sdxl"));
    }
}
