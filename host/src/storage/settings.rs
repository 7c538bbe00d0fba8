//! The settings of the storage facade: [`StorageSettings`], the backend choice
//! ([`StorageKind`], each remote variant carrying its backend's own settings type), [`Secret`],
//! and the translation of the `[storage]` config section into them
//! ([`StorageSettings::from_config`]).
//!
//! Separate from the facade so the config shape lives next to the settings it becomes; each
//! backend's own settings type and its config translation live in that backend's file.

use std::fmt;
use std::path::PathBuf;

use super::{CfImagesSettings, GcsSettings, S3Settings};
use crate::config::{StorageConfig, StorageType};

/// Which backend holds the objects, with the settings of the remote ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageKind {
    /// Files under a local folder (`root`).
    Fs,
    /// In-process memory: lost on restart; for tests and throwaway runs.
    Memory,
    /// Any S3-compatible service (AWS, MinIO, R2 with an explicit endpoint, ...).
    S3(S3Settings),
    /// Cloudflare R2: S3 with the account endpoint and region `auto`.
    R2(S3Settings),
    /// Google Cloud Storage (JSON API; resumable uploads).
    Gcs(GcsSettings),
    /// Cloudflare Images (upload API; images only).
    CfImages(CfImagesSettings),
}

impl StorageKind {
    /// The name used in `storage.type`: `fs`, `memory`, `s3`, `r2`, `gcs`, `cf_images`.
    pub fn name(&self) -> &'static str {
        match self {
            StorageKind::Fs => "fs",
            StorageKind::Memory => "memory",
            StorageKind::S3(_) => "s3",
            StorageKind::R2(_) => "r2",
            StorageKind::Gcs(_) => "gcs",
            StorageKind::CfImages(_) => "cf_images",
        }
    }
}

/// A secret string: shown as `***` by `Debug`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Settings of the storage facade.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Which backend holds the objects.
    pub kind: StorageKind,
    /// Root folder of the `fs` backend (created when missing); ignored by the others.
    pub root: PathBuf,
    /// Prepended to every logical key inside the backend (e.g. `aihost/`); may be empty.
    pub prefix: String,
    /// Base of the service's own `GET /files/{key}` route: `public_url(key)` is this + `/` +
    /// the percent-encoded key, e.g. `http://127.0.0.1:8000/files`. It is the public URL of
    /// `fs` and `memory` objects; URLs under it name stored objects of every backend.
    pub public_base_url: String,
}

impl StorageSettings {
    /// The settings the `[storage]` config section describes. `files_base` is the URL of the
    /// service's own `GET /files` route (`{server.public_url}/files`): the public base of `fs`
    /// and `memory` objects unless `storage.public_base_url` replaces it, and the base of the
    /// `/files` URLs of every backend. Blank strings count as absent.
    pub fn from_config(config: &StorageConfig, files_base: String) -> StorageSettings {
        let c = config;
        let (kind, public_base_url) = match c.kind {
            StorageType::Fs => (
                StorageKind::Fs,
                nonempty(&c.public_base_url).unwrap_or(files_base),
            ),
            StorageType::Memory => (
                StorageKind::Memory,
                nonempty(&c.public_base_url).unwrap_or(files_base),
            ),
            StorageType::S3 => (StorageKind::S3(S3Settings::from_config(c)), files_base),
            StorageType::R2 => (StorageKind::R2(S3Settings::from_config(c)), files_base),
            StorageType::Gcs => (StorageKind::Gcs(GcsSettings::from_config(c)), files_base),
            StorageType::CfImages => (
                StorageKind::CfImages(CfImagesSettings::from_config(c)),
                files_base,
            ),
        };
        StorageSettings {
            kind,
            root: c.root.clone(),
            prefix: c.prefix.clone(),
            public_base_url,
        }
    }
}

/// A config string, trimmed; `None` when absent or blank.
pub(super) fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILES: &str = "http://127.0.0.1:8000/files";

    #[test]
    fn storage_settings_from_config() {
        // fs and memory: the /files route unless a public base replaces it.
        let fs = StorageSettings::from_config(&StorageConfig::default(), FILES.to_owned());
        assert_eq!(fs.kind, StorageKind::Fs);
        assert_eq!(fs.root, PathBuf::from("data/outputs"));
        assert_eq!(fs.public_base_url, FILES);
        let memory = StorageConfig {
            kind: StorageType::Memory,
            public_base_url: Some(" https://cdn.example.com ".into()),
            prefix: "p/".into(),
            ..StorageConfig::default()
        };
        let memory = StorageSettings::from_config(&memory, FILES.to_owned());
        assert_eq!(memory.kind, StorageKind::Memory);
        assert_eq!(memory.public_base_url, "https://cdn.example.com");
        assert_eq!(memory.prefix, "p/");

        // Remote backends: their public base goes to their own settings, blanks are absent.
        let r2 = StorageConfig {
            kind: StorageType::R2,
            bucket: Some(" media ".into()),
            endpoint: Some("".into()),
            account_id: Some("acc".into()),
            secret_access_key: Some("  ".into()),
            public_base_url: Some("https://cdn.example.com".into()),
            presign_secs: 60,
            ..StorageConfig::default()
        };
        let r2 = StorageSettings::from_config(&r2, FILES.to_owned());
        assert_eq!(r2.public_base_url, FILES);
        assert_eq!(
            r2.kind,
            StorageKind::R2(S3Settings {
                bucket: "media".into(),
                account_id: Some("acc".into()),
                public_base_url: Some("https://cdn.example.com".into()),
                presign_secs: 60,
                ..S3Settings::default()
            })
        );
        let cf = StorageConfig {
            kind: StorageType::CfImages,
            account_id: Some("acc".into()),
            api_token: Some("tok".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            ..StorageConfig::default()
        };
        let StorageKind::CfImages(cf) = StorageSettings::from_config(&cf, FILES.to_owned()).kind
        else {
            panic!("cf_images");
        };
        assert_eq!(cf.api_token, Secret("tok".into()));
        assert_eq!(cf.api_base.as_deref(), Some("http://127.0.0.1:9"));
    }
}
