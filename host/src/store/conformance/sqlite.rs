//! The conformance suite on the SQLite store, each check on a fresh database file, plus what
//! only a file-backed store can show (an explicit close and reopen).

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;

use super::Harness;
use crate::store::{TaskStore, sqlite::SqliteStore};

/// A fresh database file in a temporary directory.
struct SqliteHarness {
    dir: tempfile::TempDir,
}

impl SqliteHarness {
    fn new() -> Self {
        SqliteHarness {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("nested/dirs/tasks.db")
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    async fn open(&self) -> Arc<dyn TaskStore> {
        Arc::new(
            SqliteStore::open(&self.path())
                .await
                .expect("open sqlite store"),
        )
    }
}

super::conformance_suite!(SqliteHarness::new());

/// Closing explicitly and reopening the file keeps the data; migrations run once.
#[tokio::test]
async fn reopen_after_close() {
    let harness = SqliteHarness::new();
    let store = SqliteStore::open(&harness.path()).await.unwrap();
    let (task, _) = store.insert(super::new_task("close", 0)).await.unwrap();
    store.close().await;
    let store = SqliteStore::open(&harness.path()).await.unwrap();
    assert_eq!(store.get(task.id).await.unwrap(), Some(task));
}
