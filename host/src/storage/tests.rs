//! Unit tests of the storage facade, run against the `fs` and `memory` backends (the remote
//! ones are covered by the `storage` integration test against local stand-ins).
//!
//! A file of its own because the facade's file should hold the facade only.

use crate::error_codes;
use std::path::PathBuf;

use super::key::FS_TMP_DIR;
use super::*;
use futures_util::TryStreamExt;
use tempfile::TempDir;

pub(super) const BASE: &str = "http://127.0.0.1:8000/files";

/// A storage of each kind, with the tempdir that must outlive the fs one.
fn backends(prefix: &str) -> Vec<(Storage, TempDir)> {
    [StorageKind::Fs, StorageKind::Memory]
        .into_iter()
        .map(|kind| {
            let dir = tempfile::tempdir().unwrap();
            let storage = Storage::new(StorageSettings {
                kind,
                root: dir.path().join("objects"),
                prefix: prefix.to_owned(),
                public_base_url: BASE.to_owned(),
            })
            .unwrap();
            (storage, dir)
        })
        .collect()
}

async fn read_all(
    storage: &Storage,
    key: &str,
    range: Option<(u64, Option<u64>)>,
) -> (ObjectMeta, Vec<u8>) {
    let (meta, stream) = storage.read_range(key, range).await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    (meta, chunks.concat())
}

async fn round_trip(storage: &Storage, dir: &Path) {
    let src = dir.join("src.png");
    tokio::fs::write(&src, b"0123456789").await.unwrap();
    let key = "outputs/task-1/image.png";
    let stored = storage.put_file(key, &src, "").await.unwrap();
    assert_eq!(stored.key, key);
    assert_eq!(stored.size, 10);
    assert_eq!(stored.content_type, "image/png");
    assert_eq!(stored.url, format!("{BASE}/outputs/task-1/image.png"));

    let meta = storage.stat(key).await.unwrap();
    assert_eq!(meta.size, 10);
    assert_eq!(meta.content_type, "image/png");

    let (meta, all) = read_all(storage, key, None).await;
    assert_eq!(meta.size, 10);
    assert_eq!(all, b"0123456789");
    assert_eq!(read_all(storage, key, Some((4, None))).await.1, b"456789");
    assert_eq!(read_all(storage, key, Some((2, Some(3)))).await.1, b"234");
    assert_eq!(read_all(storage, key, Some((8, Some(100)))).await.1, b"89");
    let err = storage
        .read_range(key, Some((10, None)))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), error_codes::STORAGE_RANGE_NOT_SATISFIABLE);

    let dest = dir.join("copy.bin");
    assert_eq!(storage.copy_to_file(key, &dest).await.unwrap(), 10);
    assert_eq!(tokio::fs::read(&dest).await.unwrap(), b"0123456789");

    // An explicit content type is kept.
    let stored = storage
        .put_file("outputs/task-1/raw", &src, "image/webp")
        .await
        .unwrap();
    assert_eq!(stored.content_type, "image/webp");

    storage.delete(key).await.unwrap();
    let err = storage.stat(key).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.code(), error_codes::STORAGE_NOT_FOUND);
    assert!(
        storage
            .read_range(key, None)
            .await
            .err()
            .unwrap()
            .is_not_found()
    );
    let err = storage
        .copy_to_file(key, &dir.join("missing.bin"))
        .await
        .unwrap_err();
    assert!(err.is_not_found());
    // Deleting again is fine.
    storage.delete(key).await.unwrap();
    storage.check().await.unwrap();
}

#[tokio::test]
async fn storage_round_trip() {
    for (storage, dir) in backends("") {
        round_trip(&storage, dir.path()).await;
    }
}

async fn big_file(storage: &Storage, dir: &Path) {
    let len = 20 * 1024 * 1024 + 12345;
    let data: Vec<u8> = (0..len)
        .map(|i| u8::try_from(i * 7 % 251).unwrap())
        .collect();
    let src = dir.join("big.bin");
    tokio::fs::write(&src, &data).await.unwrap();
    let stored = storage
        .put_file("uploads/u1/big.bin", &src, "")
        .await
        .unwrap();
    assert_eq!(stored.size, len as u64);
    assert_eq!(stored.content_type, "application/octet-stream");
    let dest = dir.join("big.out");
    let n = storage
        .copy_to_file("uploads/u1/big.bin", &dest)
        .await
        .unwrap();
    assert_eq!(n, len as u64);
    assert!(tokio::fs::read(&dest).await.unwrap() == data);
    let (_, tail) = read_all(storage, "uploads/u1/big.bin", Some((len as u64 - 10, None))).await;
    assert_eq!(tail, &data[len - 10..]);
}

#[tokio::test]
async fn storage_big_file_round_trip() {
    for (storage, dir) in backends("") {
        big_file(&storage, dir.path()).await;
    }
}

async fn too_large(storage: &Storage) {
    let chunks = (0..10).map(|_| Ok::<_, io::Error>(Bytes::from(vec![1u8; 1000])));
    let err = storage
        .put_stream(
            "uploads/u2/x.bin",
            futures_util::stream::iter(chunks),
            "",
            5000,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::STORAGE_TOO_LARGE);
    assert!(
        storage
            .stat("uploads/u2/x.bin")
            .await
            .unwrap_err()
            .is_not_found()
    );

    // At the limit is fine.
    let chunks = (0..5).map(|_| Ok::<_, io::Error>(Bytes::from(vec![1u8; 1000])));
    let stored = storage
        .put_stream(
            "uploads/u2/y.txt",
            futures_util::stream::iter(chunks),
            "",
            5000,
        )
        .await
        .unwrap();
    assert_eq!(stored.size, 5000);
    assert_eq!(stored.content_type, "text/plain");
    assert_eq!(storage.stat("uploads/u2/y.txt").await.unwrap().size, 5000);

    // A failing stream leaves nothing behind either.
    let chunks = vec![
        Ok(Bytes::from_static(b"abc")),
        Err(io::Error::other("client went away")),
    ];
    let err = storage
        .put_stream(
            "uploads/u2/z.bin",
            futures_util::stream::iter(chunks),
            "",
            5000,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), error_codes::STORAGE_IO);
    assert!(
        storage
            .stat("uploads/u2/z.bin")
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn storage_put_stream_too_large() {
    for (storage, dir) in backends("") {
        too_large(&storage).await;
        if storage.settings().kind == StorageKind::Fs {
            // No half-written temporary file is left behind either.
            let tmp = dir.path().join("objects").join(FS_TMP_DIR);
            assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
        }
    }
}

async fn invalid_keys(storage: &Storage, dir: &Path) {
    let src = dir.join("f.txt");
    tokio::fs::write(&src, b"x").await.unwrap();
    let long = "a".repeat(MAX_KEY_LEN + 1);
    for key in [
        "",
        "/abs/x",
        "a/../b",
        "..",
        "a/./b",
        "a//b",
        "dir/",
        "a\\b",
        "a\nb",
        "a\u{0}b",
        ".aihost-tmp/x",
        long.as_str(),
    ] {
        let err = storage.put_file(key, &src, "").await.unwrap_err();
        assert_eq!(err.code(), error_codes::STORAGE_INVALID_KEY, "{key:?}");
        assert_eq!(
            storage.stat(key).await.unwrap_err().code(),
            error_codes::STORAGE_INVALID_KEY
        );
        assert_eq!(
            storage.delete(key).await.unwrap_err().code(),
            error_codes::STORAGE_INVALID_KEY
        );
    }
    assert!(validate_key(&"a".repeat(MAX_KEY_LEN)).is_ok());
    assert!(validate_key("uploads/0190/my photo (1).png").is_ok());
}

#[tokio::test]
async fn storage_invalid_keys_refused() {
    for (storage, dir) in backends("") {
        invalid_keys(&storage, dir.path()).await;
    }
}

fn urls(storage: &Storage) {
    let key = "uploads/0190a/my photo #1?.png";
    let url = storage.public_url(key);
    assert_eq!(
        url,
        format!("{BASE}/uploads/0190a/my%20photo%20%231%3F.png")
    );
    assert_eq!(storage.key_from_url(&url).as_deref(), Some(key));
    let unicode = "outputs/t/résumé.png";
    assert_eq!(
        storage
            .key_from_url(&storage.public_url(unicode))
            .as_deref(),
        Some(unicode)
    );
    // Query and fragment are ignored; default ports and host case are normalised.
    assert_eq!(
        storage
            .key_from_url("HTTP://127.0.0.1:8000/files/a/b.png?x=1#y")
            .as_deref(),
        Some("a/b.png")
    );
    for other in [
        "http://127.0.0.1:8001/files/a.png",
        "https://127.0.0.1:8000/files/a.png",
        "http://localhost:8000/files/a.png",
        "http://127.0.0.1:8000/filesx/a.png",
        "http://127.0.0.1:8000/files",
        "http://127.0.0.1:8000/files/",
        "http://127.0.0.1:8000/other/a.png",
        "http://127.0.0.1:8000/files/../etc/passwd",
        "http://127.0.0.1:8000/files/%2e%2e/etc/passwd",
        "uploads/a.png",
        "not a url",
    ] {
        assert_eq!(storage.key_from_url(other), None, "{other}");
    }
}

#[tokio::test]
async fn storage_public_url_round_trip() {
    for (storage, _dir) in backends("") {
        urls(&storage);
    }
    for (storage, _dir) in backends("tenant-a") {
        // Public URLs use logical keys: the prefix never shows.
        assert_eq!(storage.public_url("a/b.png"), format!("{BASE}/a/b.png"));
        urls(&storage);
    }
}

/// A storage of `kind` with prefix `p`, for the backends' own tests.
pub(super) fn remote(kind: StorageKind) -> Result<Storage, StorageError> {
    Storage::new(StorageSettings {
        kind,
        root: PathBuf::new(),
        prefix: "p".to_owned(),
        public_base_url: BASE.to_owned(),
    })
}

#[test]
fn storage_public_url_with_relative_base() {
    let storage = Storage::new(StorageSettings {
        kind: StorageKind::Memory,
        root: PathBuf::new(),
        prefix: String::new(),
        public_base_url: "/files/".to_owned(),
    })
    .unwrap();
    assert_eq!(storage.public_url("a b/c.png"), "/files/a%20b/c.png");
    assert_eq!(
        storage.key_from_url("/files/a%20b/c.png").as_deref(),
        Some("a b/c.png")
    );
    assert_eq!(storage.key_from_url("/other/c.png"), None);
}

#[tokio::test]
async fn storage_prefix_applied() {
    for (storage, dir) in backends("/tenant-a/") {
        let src = dir.path().join("p.txt");
        tokio::fs::write(&src, b"prefixed").await.unwrap();
        storage
            .put_file("outputs/t1/p.txt", &src, "")
            .await
            .unwrap();
        assert_eq!(storage.stat("outputs/t1/p.txt").await.unwrap().size, 8);
        // The backend holds it under the prefix, not at the bare key.
        let Backend::Op(b) = &storage.inner.backend else {
            unreachable!("fs and memory use opendal")
        };
        let op = &b.op;
        assert!(op.exists("tenant-a/outputs/t1/p.txt").await.unwrap());
        assert!(!op.exists("outputs/t1/p.txt").await.unwrap());
        if storage.settings().kind == StorageKind::Fs {
            let on_disk = dir.path().join("objects/tenant-a/outputs/t1/p.txt");
            assert_eq!(std::fs::read(on_disk).unwrap(), b"prefixed");
        }
    }
}

/// `list` finds every object under a folder (logical keys, prefix stripped) and
/// `delete_folder` removes them all, leaving neighbours alone.
#[tokio::test]
async fn list_and_delete_folder() {
    for (storage, dir) in backends("pre/") {
        let src = dir.path().join("x.txt");
        tokio::fs::write(&src, b"x").await.unwrap();
        for key in [
            "outputs/t1/a.png",
            "outputs/t1/sub/b.png",
            "outputs/t10/c.png",
            "uploads/u1/d.png",
        ] {
            storage.put_file(key, &src, "").await.unwrap();
        }
        let mut keys: Vec<String> = storage
            .list("outputs/t1")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        assert_eq!(keys, ["outputs/t1/a.png", "outputs/t1/sub/b.png"]);
        let uploads = storage.list("uploads").await.unwrap();
        assert_eq!(uploads.len(), 1);
        if matches!(storage.settings().kind, StorageKind::Fs) {
            assert!(uploads[0].last_modified.is_some(), "{uploads:?}");
        }
        assert_eq!(storage.delete_folder("outputs/t1").await.unwrap(), 2);
        if matches!(storage.settings().kind, StorageKind::Fs) {
            let folder = dir.path().join("objects/pre/outputs/t1");
            assert!(!folder.exists(), "no empty folders left behind");
        }
        assert!(storage.list("outputs/t1").await.unwrap().is_empty());
        assert_eq!(storage.delete_folder("outputs/t1").await.unwrap(), 0);
        assert_eq!(storage.delete_folder("outputs/none").await.unwrap(), 0);
        assert!(storage.stat("outputs/t10/c.png").await.is_ok());
    }
}
