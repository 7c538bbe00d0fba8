//! `[storage]`: where outputs and uploads go, and their defaults. Only the settings live here;
//! [`crate::storage`] turns them into a backend.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Storage backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageType {
    /// Local filesystem under `storage.root`, served at `/files`.
    #[default]
    Fs,
    /// In memory (tests): lost at exit.
    Memory,
    /// Any S3-compatible service (AWS, MinIO, R2 with an explicit endpoint).
    S3,
    /// Cloudflare R2: S3 with the account endpoint and region `auto`.
    R2,
    /// Google Cloud Storage.
    Gcs,
    /// Cloudflare Images (upload API; images only).
    CfImages,
}

/// `[storage]`: where outputs and uploads go. Which keys matter depends on `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Backend (TOML key `type`): `fs` (default), `memory`, `s3`, `r2`, `gcs`, `cf_images`.
    #[serde(rename = "type")]
    pub kind: StorageType,
    /// Directory for `fs`. Default `data/outputs`.
    pub root: PathBuf,
    /// Prefix put before every object key (e.g. `aihost/`). Default empty.
    pub prefix: String,
    /// Bucket name (`s3`, `r2`, `gcs`).
    pub bucket: Option<String>,
    /// Service endpoint URL (`s3`: MinIO, R2, ...; `gcs`: a local fake server).
    pub endpoint: Option<String>,
    /// Region (`s3`; `r2` uses `auto`).
    pub region: Option<String>,
    /// Access key id (`s3`, `r2`).
    pub access_key_id: Option<String>,
    /// Secret access key (`s3`, `r2`). Secret: redacted when printed.
    pub secret_access_key: Option<String>,
    /// Public base URL of the bucket (`https://cdn.example.com`): output URLs become
    /// base + key instead of presigned links.
    pub public_base_url: Option<String>,
    /// Cloudflare account id (`r2`, `cf_images`).
    pub account_id: Option<String>,
    /// Cloudflare API token (`cf_images`). Secret: redacted when printed.
    pub api_token: Option<String>,
    /// Service-account JSON file (`gcs`).
    pub credential_path: Option<PathBuf>,
    /// Cloudflare Images delivery domain (`cf_images`), e.g. `imagedelivery.net`.
    pub delivery_domain: Option<String>,
    /// Lifetime of presigned GET URLs, in seconds. Default 3600.
    pub presign_secs: u64,
    /// `cf_images` only: where objects that are not images (videos, text; by their key's
    /// extension) go, since Cloudflare Images holds images only. `fs` (default): an `fs`
    /// backend under `storage.root`, served by `GET /files/{key}`; `none`: refused with
    /// `storage_unsupported`.
    pub fallback: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageType::Fs,
            root: PathBuf::from("data/outputs"),
            prefix: String::new(),
            bucket: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            public_base_url: None,
            account_id: None,
            api_token: None,
            credential_path: None,
            delivery_domain: None,
            presign_secs: 3600,
            fallback: "fs".to_owned(),
        }
    }
}
