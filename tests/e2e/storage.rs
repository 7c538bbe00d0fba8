//! Storage backends on real local servers.
//!
//! - One conformance suite (put, stat, ranged reads, overwrite, copy, delete, URLs fetched over
//!   plain HTTP without credentials, the probe check) run against `fs`, `memory`, `s3`
//!   (s3s-fs, which checks SigV4), `r2` (s3s-fs with the R2 settings) and `gcs`
//!   (fake-gcs-server); `cf_images` against a stand-in following Cloudflare's recorded shapes.
//! - The same imageops task, run through the real binary once per backend, lands its output
//!   where that backend's URL serves it.
//! - `aihost storage check` against s3s-fs, with good and wrong credentials.
//!
//! The servers are started by the tests from the binaries `tests/run` installs; a missing binary
//! fails the test with how to install it.

#[path = "storage/cf_stand_in.rs"]
mod cf_stand_in;
#[path = "storage/servers.rs"]
mod servers;

use std::{path::Path, process::Command, time::Duration};

use aihost::storage::{
    CfImagesSettings, GcsSettings, S3Settings, Secret, Storage, StorageKind, StorageSettings,
};
use aihost_tests::{Options, Server, aihost_bin, write_png};
use bytes::Bytes;
use cf_stand_in::CfImagesStandIn;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use servers::{ACCESS_KEY, BUCKET, Running, SECRET_KEY};

const FILES_BASE: &str = "http://127.0.0.1:9/files";
const PREFIX: &str = "tenant-a";

fn settings(kind: StorageKind, root: &Path) -> StorageSettings {
    StorageSettings {
        kind,
        root: root.to_path_buf(),
        prefix: PREFIX.to_owned(),
        public_base_url: FILES_BASE.to_owned(),
    }
}

fn s3_settings(server: &Running, public_base_url: Option<String>) -> S3Settings {
    S3Settings {
        bucket: BUCKET.to_owned(),
        endpoint: Some(server.endpoint.clone()),
        region: None,
        access_key_id: Some(ACCESS_KEY.to_owned()),
        secret_access_key: Some(Secret(SECRET_KEY.to_owned())),
        account_id: None,
        public_base_url,
        presign_secs: 600,
    }
}

/// A plain HTTP client: no credentials of any kind.
fn anonymous() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn read_all(storage: &Storage, key: &str, range: Option<(u64, Option<u64>)>) -> Vec<u8> {
    let (_, stream) = storage.read_range(key, range).await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

/// Deterministic bytes that differ from chunk to chunk.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn small_png(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("in.png");
    write_png(&path, 6, 4);
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// The conformance suite. `public` says whether object URLs are reachable over HTTP here (not
/// for `fs`/`memory`, whose `/files` URLs need the running service: see the end-to-end tests).
async fn conformance(storage: &Storage, public: bool) {
    let backend = storage.settings().kind.name();
    let dir = tempfile::tempdir().unwrap();
    let run = uuid_like();
    let http = anonymous();

    // put_file with a guessed content type, stat, URL.
    let (png_path, png) = small_png(dir.path());
    let key = format!("outputs/{run}/image.png");
    let stored = storage.put_file(&key, &png_path, "").await.unwrap();
    assert_eq!(stored.key, key, "{backend}");
    assert_eq!(stored.size, png.len() as u64, "{backend}");
    assert_eq!(stored.content_type, "image/png", "{backend}");
    let meta = storage.stat(&key).await.unwrap();
    assert_eq!(meta.size, png.len() as u64, "{backend}");
    assert_eq!(meta.content_type, "image/png", "{backend}");
    assert_eq!(
        storage.key_from_url(&stored.url).as_deref(),
        Some(key.as_str()),
        "{backend}: {} names the object",
        stored.url
    );
    assert_eq!(
        storage.key_from_url(&storage.public_url(&key)).as_deref(),
        Some(key.as_str())
    );
    if public {
        let r = http.get(&stored.url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{backend}: GET {}", stored.url);
        assert_eq!(r.bytes().await.unwrap(), png, "{backend}");
        // A URL asked for later serves the object too.
        let again = storage.url(&key).await.unwrap();
        let r = http.get(&again).send().await.unwrap();
        assert_eq!(r.status(), 200, "{backend}: GET {again}");
    } else {
        assert_eq!(stored.url, storage.public_url(&key));
        assert!(stored.url.starts_with(FILES_BASE), "{}", stored.url);
    }

    // Ranged reads of a streamed object.
    let text_key = format!("outputs/{run}/digits.txt");
    let digits = futures_util::stream::iter([
        Ok::<_, std::io::Error>(Bytes::from_static(b"01234")),
        Ok(Bytes::from_static(b"56789")),
    ]);
    let stored = storage
        .put_stream(&text_key, digits, "", 1 << 20)
        .await
        .unwrap();
    assert_eq!(stored.content_type, "text/plain", "{backend}");
    assert_eq!(read_all(storage, &text_key, None).await, b"0123456789");
    assert_eq!(
        read_all(storage, &text_key, Some((4, None))).await,
        b"456789"
    );
    assert_eq!(
        read_all(storage, &text_key, Some((2, Some(3)))).await,
        b"234"
    );
    assert_eq!(
        read_all(storage, &text_key, Some((8, Some(100)))).await,
        b"89"
    );
    let err = storage
        .read_range(&text_key, Some((10, None)))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "storage_range_not_satisfiable", "{backend}");

    // Overwrite: the second write wins.
    let stream =
        futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"replaced"))]);
    storage
        .put_stream(&text_key, stream, "", 1 << 20)
        .await
        .unwrap();
    assert_eq!(read_all(storage, &text_key, None).await, b"replaced");

    // A multi-part object (several 8 MiB parts), streamed in and out.
    let big = pattern(17 * 1024 * 1024 + 123, 7);
    let big_key = format!("outputs/{run}/big.bin");
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .chunks(1024 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stored = storage
        .put_stream(&big_key, futures_util::stream::iter(chunks), "", u64::MAX)
        .await
        .unwrap();
    assert_eq!(stored.size, big.len() as u64);
    assert_eq!(
        storage.stat(&big_key).await.unwrap().content_type,
        "application/octet-stream"
    );
    assert!(read_all(storage, &big_key, None).await == big, "{backend}");
    let start = 9 * 1024 * 1024 - 5;
    assert!(
        read_all(storage, &big_key, Some((start as u64, Some(100)))).await
            == big[start..start + 100],
        "{backend}"
    );
    let local = dir.path().join("big.out");
    assert_eq!(
        storage.copy_to_file(&big_key, &local).await.unwrap(),
        big.len() as u64
    );
    assert!(std::fs::read(&local).unwrap() == big);

    // Copy inside the backend.
    let copy_key = format!("outputs/{run}/copy/image.png");
    let copied = storage.copy(&key, &copy_key).await.unwrap();
    assert_eq!(copied.size, png.len() as u64);
    assert_eq!(read_all(storage, &copy_key, None).await, png);
    if public {
        let r = http.get(&copied.url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{backend}: GET {}", copied.url);
        assert_eq!(r.bytes().await.unwrap(), png);
    }

    // Too large: refused, nothing left.
    let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 1000])));
    let tl_key = format!("outputs/{run}/too-large.bin");
    let err = storage
        .put_stream(&tl_key, futures_util::stream::iter(chunks), "", 3000)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_too_large");
    assert!(storage.stat(&tl_key).await.unwrap_err().is_not_found());

    // Bad keys never reach the backend.
    for bad in ["", "../x", "a//b", "/abs"] {
        assert_eq!(
            storage.stat(bad).await.unwrap_err().code(),
            "storage_invalid_key"
        );
    }

    // Folders (retention): list finds every object under one, delete_folder removes them all
    // and nothing beside them.
    let folder = format!("outputs/{run}-folder");
    for name in ["a.txt", "sub/b.txt"] {
        let one = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"x"))]);
        storage
            .put_stream(&format!("{folder}/{name}"), one, "", u64::MAX)
            .await
            .unwrap();
    }
    let mut listed: Vec<String> = storage
        .list(&folder)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    listed.sort();
    let expected = [format!("{folder}/a.txt"), format!("{folder}/sub/b.txt")];
    assert_eq!(listed, expected, "{backend}");
    assert_eq!(
        storage.delete_folder(&folder).await.unwrap(),
        2,
        "{backend}"
    );
    assert!(storage.list(&folder).await.unwrap().is_empty(), "{backend}");
    assert_eq!(
        storage.delete_folder(&folder).await.unwrap(),
        0,
        "{backend}"
    );
    assert!(
        storage.stat(&key).await.is_ok(),
        "{backend}: its neighbours stay"
    );

    // Delete: gone, and deleting again is fine.
    for k in [&key, &text_key, &big_key, &copy_key] {
        storage.delete(k).await.unwrap();
        let err = storage.stat(k).await.unwrap_err();
        assert_eq!(err.code(), "storage_not_found", "{backend} {k}");
        storage.delete(k).await.unwrap();
        assert_eq!(
            storage.read_range(k, None).await.err().unwrap().code(),
            "storage_not_found"
        );
    }

    // The probe check (used by /api/status).
    storage.check().await.unwrap();
    if public {
        let report = storage.check_public().await.unwrap();
        assert_eq!(report.public_get, Ok(200), "{backend}: {report:?}");
        assert_eq!(report.backend, backend);
    }
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Every object of the conformance run was deleted again (and the probe too).
fn assert_empty_tree(root: &Path) {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    let files: Vec<_> = files
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains(".aihost-tmp"))
        .collect();
    assert!(files.is_empty(), "left behind: {files:?}");
}

#[tokio::test]
async fn storage_conformance_fs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(settings(StorageKind::Fs, &dir.path().join("objects"))).unwrap();
    conformance(&storage, false).await;
    assert_empty_tree(&dir.path().join("objects"));
}

#[tokio::test]
async fn storage_conformance_memory() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(settings(StorageKind::Memory, dir.path())).unwrap();
    conformance(&storage, false).await;
}

#[tokio::test]
async fn storage_conformance_s3_presigned() {
    let s3 = servers::s3s_fs();
    let storage = Storage::new(settings(
        StorageKind::S3(s3_settings(&s3, None)),
        Path::new(""),
    ))
    .unwrap();
    conformance(&storage, true).await;
    assert_empty_tree(&s3.root().join(BUCKET));

    // Objects live under the prefix in the bucket (s3s-fs keeps them as plain files).
    let src = tempfile::tempdir().unwrap();
    let (png_path, png) = small_png(src.path());
    let stored = storage
        .put_file("outputs/t1/a.png", &png_path, "")
        .await
        .unwrap();
    let on_disk = s3.root().join(BUCKET).join(PREFIX).join("outputs/t1/a.png");
    assert_eq!(std::fs::read(&on_disk).unwrap(), png);

    // The URL is a SigV4 presigned GET with the configured lifetime; s3s-fs checks it.
    assert!(stored.url.contains("X-Amz-Signature="), "{}", stored.url);
    assert!(stored.url.contains("X-Amz-Expires=600"), "{}", stored.url);
    let http = anonymous();
    let tampered = stored.url.replace("X-Amz-Expires=600", "X-Amz-Expires=601");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);
    let unsigned = stored.url.split('?').next().unwrap().to_owned();
    assert_eq!(http.get(&unsigned).send().await.unwrap().status(), 403);
    assert_eq!(http.get(&stored.url).send().await.unwrap().status(), 200);

    // A wrong secret is refused with a clear code.
    let mut wrong = s3_settings(&s3, None);
    wrong.secret_access_key = Some(Secret("not-the-secret".into()));
    let bad = Storage::new(settings(StorageKind::S3(wrong), Path::new(""))).unwrap();
    let err = bad
        .put_file("outputs/t1/b.png", &png_path, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_denied", "{err}");
    assert_eq!(bad.check().await.unwrap_err().code(), "storage_denied");
    assert!(!format!("{bad:?}").contains("not-the-secret"));
}

#[tokio::test]
async fn storage_conformance_s3_public_base() {
    let s3 = servers::s3s_fs();
    let public = servers::s3s_fs_public(&s3);
    let base = format!("{}/{BUCKET}", public.endpoint);
    let storage = Storage::new(settings(
        StorageKind::S3(s3_settings(&s3, Some(base.clone()))),
        Path::new(""),
    ))
    .unwrap();
    conformance(&storage, true).await;
    let src = tempfile::tempdir().unwrap();
    let (png_path, _) = small_png(src.path());
    let stored = storage
        .put_file("outputs/t1/a b.png", &png_path, "")
        .await
        .unwrap();
    assert_eq!(stored.url, format!("{base}/{PREFIX}/outputs/t1/a%20b.png"));
}

#[tokio::test]
async fn storage_conformance_r2() {
    let s3 = servers::s3s_fs();
    let public = servers::s3s_fs_public(&s3);
    // R2 settings: region `auto` (the default for r2), account id, equal-size parts.
    let mut r2 = s3_settings(&s3, None);
    r2.account_id = Some("0123456789abcdef0123456789abcdef".into());
    let storage = Storage::new(settings(StorageKind::R2(r2.clone()), Path::new(""))).unwrap();
    conformance(&storage, true).await;

    // With a public domain (R2's r2.dev or custom domain) URLs are plain.
    r2.public_base_url = Some(format!("{}/{BUCKET}", public.endpoint));
    let storage = Storage::new(settings(StorageKind::R2(r2), Path::new(""))).unwrap();
    conformance(&storage, true).await;
    assert_empty_tree(&s3.root().join(BUCKET));

    // Without an endpoint or account id, r2 cannot be set up.
    let err = Storage::new(settings(
        StorageKind::R2(S3Settings {
            bucket: "b".into(),
            ..S3Settings::default()
        }),
        Path::new(""),
    ))
    .unwrap_err();
    assert_eq!(err.code(), "storage_misconfigured");
}

#[tokio::test]
async fn storage_conformance_gcs() {
    let gcs = servers::fake_gcs();
    let gcs_settings = |public_base_url| GcsSettings {
        bucket: BUCKET.to_owned(),
        endpoint: Some(gcs.endpoint.clone()),
        credential_path: None,
        public_base_url,
        presign_secs: 600,
    };
    let storage = Storage::new(settings(
        StorageKind::Gcs(gcs_settings(None)),
        Path::new(""),
    ))
    .unwrap();
    conformance(&storage, true).await;
    let storage = Storage::new(settings(
        StorageKind::Gcs(gcs_settings(Some(format!("{}/{BUCKET}", gcs.endpoint)))),
        Path::new(""),
    ))
    .unwrap();
    conformance(&storage, true).await;
}

fn cf_settings(stand_in: &CfImagesStandIn, token: &str) -> StorageSettings {
    settings(
        StorageKind::CfImages(CfImagesSettings {
            account_id: cf_stand_in::ACCOUNT_ID.to_owned(),
            api_token: Secret(token.to_owned()),
            api_base: Some(stand_in.api_base()),
            delivery_domain: None,
            fallback_fs: false,
        }),
        Path::new(""),
    )
}

#[tokio::test]
async fn storage_cf_images_against_stand_in() {
    let cf = CfImagesStandIn::start().await;
    let storage = Storage::new(cf_settings(&cf, cf_stand_in::TOKEN)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (png_path, png) = small_png(dir.path());
    let http = anonymous();

    // Upload: the image is stored under its custom ID (prefix + key); the URL is the `public`
    // variant, served without credentials.
    let key = "outputs/t1/image.png";
    let stored = storage.put_file(key, &png_path, "").await.unwrap();
    assert_eq!(cf.ids(), vec![format!("{PREFIX}/{key}")]);
    assert_eq!(
        stored.url,
        format!(
            "{}/{}/{PREFIX}/{key}/public",
            cf.base,
            cf_stand_in::ACCOUNT_HASH
        )
    );
    assert_eq!(stored.size, png.len() as u64);
    let r = http.get(&stored.url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), png);
    assert_eq!(storage.url(key).await.unwrap(), stored.url);

    // Read back through the API (blob), with ranges.
    let meta = storage.stat(key).await.unwrap();
    assert_eq!(
        (meta.size, meta.content_type.as_str()),
        (png.len() as u64, "image/png")
    );
    assert_eq!(read_all(&storage, key, None).await, png);
    assert_eq!(
        read_all(&storage, key, Some((1, Some(3)))).await,
        &png[1..4]
    );

    // Uploading the same key again replaces the image (Cloudflare refuses a taken ID).
    write_png(&png_path, 8, 8);
    let png2 = std::fs::read(&png_path).unwrap();
    storage.put_file(key, &png_path, "").await.unwrap();
    assert_eq!(read_all(&storage, key, None).await, png2);

    // Uploads through put_stream too (what POST /api/uploads does).
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(png.clone()))]);
    let up = storage
        .put_stream("uploads/u1/in.png", stream, "", 1 << 20)
        .await
        .unwrap();
    assert!(up.url.ends_with("/uploads/u1/in.png/public"), "{}", up.url);

    // Error bodies map to stable codes.
    let not_image = dir.path().join("x.png");
    std::fs::write(&not_image, b"this is not an image").unwrap();
    let err = storage
        .put_file("outputs/t1/x.png", &not_image, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_rejected", "{err}");
    assert!(err.to_string().contains("5415"), "{err}");

    let big = dir.path().join("big.png");
    std::fs::write(&big, vec![0u8; 10_000_001]).unwrap();
    let err = storage
        .put_file("outputs/t1/big.png", &big, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_too_large");

    let bad = Storage::new(cf_settings(&cf, "wrong-token")).unwrap();
    let err = bad.put_file(key, &png_path, "").await.unwrap_err();
    assert_eq!(err.code(), "storage_denied", "{err}");
    assert!(
        err.to_string().contains("Authentication error (10000)"),
        "{err}"
    );
    assert_eq!(bad.check().await.unwrap_err().code(), "storage_denied");
    assert!(!format!("{bad:?}").contains("wrong-token"));

    cf.fail_next(502, "<html>bad gateway</html>");
    let err = storage.put_file(key, &png_path, "").await.unwrap_err();
    assert_eq!(err.code(), "storage_unavailable", "{err}");
    assert!(err.retryable());
    cf.fail_next(
        429,
        r#"{"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}],"messages":[],"result":null}"#,
    );
    assert_eq!(
        storage.stat(key).await.unwrap_err().code(),
        "storage_unavailable"
    );
    cf.fail_next(200, "not json");
    assert_eq!(
        storage.delete(key).await.unwrap_err().code(),
        "storage_unavailable"
    );
    cf.fail_next(
        200,
        r#"{"success":false,"errors":[{"code":5455,"message":"Unsupported"}],"messages":[],"result":null}"#,
    );
    assert_eq!(
        storage
            .put_file(key, &png_path, "")
            .await
            .unwrap_err()
            .code(),
        "storage_rejected"
    );

    // Copy is not something Images does.
    assert_eq!(
        storage
            .copy(key, "outputs/t1/c.png")
            .await
            .unwrap_err()
            .code(),
        "storage_unsupported"
    );

    // Delete: gone; again is fine.
    storage.delete(key).await.unwrap();
    assert!(storage.stat(key).await.unwrap_err().is_not_found());
    storage.delete(key).await.unwrap();
    assert_eq!(http.get(&stored.url).send().await.unwrap().status(), 404);
    storage.check().await.unwrap();
    let report = storage.check_public().await.unwrap();
    assert_eq!(report.public_get, Ok(200));
    assert_eq!(cf.ids(), vec![format!("{PREFIX}/uploads/u1/in.png")]);
}

// ---------------------------------------------------------------------------------------------
// End to end: the same task through the real binary, once per backend.

/// Uploads a 40×30 PNG, runs imageops (rotate 90°) on its key, fetches the output URL without
/// credentials and checks it is the 30×40 result. Answers (task id, output key, output URL).
async fn run_task(s: &Server) -> (String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("in.png");
    write_png(&png, 40, 30);
    let up = s
        .upload("in.png", std::fs::read(&png).unwrap(), Some("image/png"))
        .await;
    let t = s
        .create(
            "imageops.transform",
            json!({"source": up["key"], "operations": [{"op": "rotate", "degrees": 90}], "format": "png"}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap().to_owned();
    let t = s.wait_done(&id, Duration::from_secs(60)).await;
    assert_eq!(t["status"], "COMPLETED", "{t}\n{}", s.log());
    let out = &t["result"]["outputs"][0];
    let key = out["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("outputs/{id}/")), "{key}");
    assert_eq!(out["content_type"], "image/png");
    let url = out["url"].as_str().unwrap().to_owned();
    let r = anonymous().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (30, 40));
    (id, key, url)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn storage_task_output_fs() {
    let s = Server::start().await;
    let (_, key, url) = run_task(&s).await;
    assert_eq!(url, s.url(&format!("/files/{key}")));
    assert!(s.dir.path().join("data/outputs").join(&key).is_file());
}

#[tokio::test]
async fn storage_task_output_memory() {
    let s = Server::start_with(Options {
        env: env(&[("AIHOST_STORAGE__TYPE", "memory")]),
        ..Options::default()
    })
    .await;
    let (_, key, url) = run_task(&s).await;
    assert_eq!(url, s.url(&format!("/files/{key}")));
}

#[tokio::test]
async fn storage_task_output_s3() {
    let s3 = servers::s3s_fs();
    let s = Server::start_with(Options {
        env: env(&[
            ("AIHOST_STORAGE__TYPE", "s3"),
            ("AIHOST_STORAGE__BUCKET", BUCKET),
            ("AIHOST_STORAGE__ENDPOINT", &s3.endpoint),
            ("AIHOST_STORAGE__ACCESS_KEY_ID", ACCESS_KEY),
            ("AIHOST_STORAGE__SECRET_ACCESS_KEY", SECRET_KEY),
            ("AIHOST_STORAGE__PREFIX", "aihost"),
            ("AIHOST_STORAGE__PRESIGN_SECS", "900"),
        ]),
        ..Options::default()
    })
    .await;
    let (_, key, url) = run_task(&s).await;
    assert!(
        url.starts_with(&format!("{}/{BUCKET}/aihost/{key}?", s3.endpoint)),
        "{url}"
    );
    assert!(url.contains("X-Amz-Expires=900"), "{url}");
    assert!(s3.root().join(BUCKET).join("aihost").join(&key).is_file());
    // The service's own /files route serves it too.
    let r = anonymous()
        .get(s.url(&format!("/files/{key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, status) = s.get("/api/status").await;
    assert_eq!(status["storage_ok"], true, "{status}");
}

#[tokio::test]
async fn storage_task_output_r2_with_seed_variables() {
    let s3 = servers::s3s_fs();
    let public = servers::s3s_fs_public(&s3);
    let domain = format!("{}/{BUCKET}", public.endpoint);
    let s = Server::start_with(Options {
        env: env(&[
            ("STORAGE_PROVIDER", "r2"),
            ("R2_BUCKET_NAME", BUCKET),
            ("R2_ACCOUNT_ID", "0123456789abcdef0123456789abcdef"),
            ("R2_ACCESS_KEY", ACCESS_KEY),
            ("R2_SECRET_KEY", SECRET_KEY),
            ("R2_PUBLIC_DOMAIN", &domain),
            // The account endpoint, here on the local server.
            ("AIHOST_STORAGE__ENDPOINT", &s3.endpoint),
        ]),
        ..Options::default()
    })
    .await;
    let (_, key, url) = run_task(&s).await;
    assert_eq!(url, format!("{domain}/{key}"));
    assert!(s3.root().join(BUCKET).join(&key).is_file());
}

#[tokio::test]
async fn storage_task_output_gcs_with_seed_variables() {
    let gcs = servers::fake_gcs();
    let s = Server::start_with(Options {
        env: env(&[
            ("STORAGE_PROVIDER", "gcs"),
            ("GCS_BUCKET_NAME", BUCKET),
            ("AIHOST_STORAGE__ENDPOINT", &gcs.endpoint),
            ("AIHOST_STORAGE__PREFIX", "aihost"),
        ]),
        ..Options::default()
    })
    .await;
    let (_, key, url) = run_task(&s).await;
    assert!(
        url.starts_with(&format!("{}/{BUCKET}/aihost/{key}", gcs.endpoint)),
        "{url}"
    );
    // The bucket holds it (asked through the GCS JSON API).
    let object = format!("aihost/{key}").replace('/', "%2F");
    let r = anonymous()
        .get(format!("{}/storage/v1/b/{BUCKET}/o/{object}", gcs.endpoint))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let meta: Value = r.json().await.unwrap();
    assert_eq!(meta["contentType"], "image/png", "{meta}");
}

#[tokio::test]
async fn storage_task_output_cf_images_with_seed_variables() {
    let cf = CfImagesStandIn::start().await;
    let s = Server::start_with(Options {
        env: env(&[
            ("STORAGE_PROVIDER", "cf_images"),
            ("CF_IMAGES_ACCOUNT_ID", cf_stand_in::ACCOUNT_ID),
            ("CF_IMAGES_API_TOKEN", cf_stand_in::TOKEN),
            ("AIHOST_STORAGE__ENDPOINT", &cf.api_base()),
        ]),
        ..Options::default()
    })
    .await;
    let (_, key, url) = run_task(&s).await;
    assert_eq!(
        url,
        format!("{}/{}/{key}/public", cf.base, cf_stand_in::ACCOUNT_HASH)
    );
    assert!(cf.ids().contains(&key), "{:?}", cf.ids());
}

// ---------------------------------------------------------------------------------------------
// `aihost storage check`

fn storage_check(envs: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(aihost_bin());
    cmd.args(["storage", "check"]).current_dir(dir.path());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn storage_check_command() {
    let s3 = servers::s3s_fs();
    let ok = [
        ("AIHOST_STORAGE__TYPE", "s3"),
        ("AIHOST_STORAGE__BUCKET", BUCKET),
        ("AIHOST_STORAGE__ENDPOINT", s3.endpoint.as_str()),
        ("AIHOST_STORAGE__ACCESS_KEY_ID", ACCESS_KEY),
        ("AIHOST_STORAGE__SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    let (code, out, err) = storage_check(&ok);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("backend: s3"), "{out}");
    assert!(
        out.contains(&format!(
            "public url: {}/{BUCKET}/storage-check/",
            s3.endpoint
        )),
        "{out}"
    );
    assert!(out.contains("public GET: HTTP 200"), "{out}");
    assert_empty_tree(&s3.root().join(BUCKET));

    let (code, out, err) = storage_check(&[
        ("AIHOST_STORAGE__TYPE", "s3"),
        ("AIHOST_STORAGE__BUCKET", BUCKET),
        ("AIHOST_STORAGE__ENDPOINT", &s3.endpoint),
        ("AIHOST_STORAGE__ACCESS_KEY_ID", ACCESS_KEY),
        ("AIHOST_STORAGE__SECRET_ACCESS_KEY", "wrong"),
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("[storage_denied]"), "{err}");
    assert!(!err.contains("wrong\""), "{err}");
}

/// Keeps the helper used by the conformance suite honest: a stream that is drained fully.
#[tokio::test]
async fn storage_read_range_streams_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(settings(StorageKind::Fs, dir.path())).unwrap();
    let data = pattern(20 * 1024 * 1024, 1);
    let path = dir.path().join("f.bin");
    std::fs::write(&path, &data).unwrap();
    storage.put_file("a/f.bin", &path, "").await.unwrap();
    let (_, stream) = storage.read_range("a/f.bin", None).await.unwrap();
    let sizes: Vec<usize> = stream.map(|c| c.unwrap().len()).collect().await;
    assert!(sizes.len() > 1, "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), data.len());
}

/// `cf_images` holds images only: with `storage.fallback = "fs"` a video goes to an `fs`
/// backend under `storage.root` (read back and served by `/files`), images still go to
/// Cloudflare; with `none` a video is refused with `storage_unsupported`.
#[tokio::test]
async fn cf_images_sends_non_images_to_the_fallback() {
    let cf = CfImagesStandIn::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut with_fallback = cf_settings(&cf, cf_stand_in::TOKEN);
    if let StorageKind::CfImages(s) = &mut with_fallback.kind {
        s.fallback_fs = true;
    }
    with_fallback.root = root.path().to_owned();
    let storage = Storage::new(with_fallback).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.mp4");
    std::fs::write(&video, b"not really an mp4, but bytes").unwrap();
    let key = "outputs/t1/1/clip.mp4";
    let stored = storage.put_file(key, &video, "video/mp4").await.unwrap();
    assert!(cf.ids().is_empty(), "{:?}", cf.ids());
    assert!(
        stored.url.ends_with("/files/outputs/t1/1/clip.mp4"),
        "{}",
        stored.url
    );
    let on_disk = std::fs::read_dir(root.path()).unwrap().count();
    assert!(on_disk > 0, "nothing under the fallback root");
    let (meta, mut stream) = storage.read_range(key, None).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, b"not really an mp4, but bytes");
    assert_eq!(meta.size, got.len() as u64);
    // Images still go to Cloudflare.
    let (png_path, _) = small_png(dir.path());
    storage
        .put_file("outputs/t1/1/frame.png", &png_path, "image/png")
        .await
        .unwrap();
    assert_eq!(cf.ids().len(), 1, "{:?}", cf.ids());
    storage.delete(key).await.unwrap();
    assert!(storage.read_range(key, None).await.is_err());

    // Without a fallback: a clear refusal.
    let storage = Storage::new(cf_settings(&cf, cf_stand_in::TOKEN)).unwrap();
    let err = storage
        .put_file(key, &video, "video/mp4")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage_unsupported", "{err}");
    assert!(err.to_string().contains("storage.fallback"), "{err}");
}
