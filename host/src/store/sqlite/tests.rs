//! Tests of what only the SQLite store does: its pragmas, its query plans, its percentiles and
//! cursors. What every store does is in the conformance suite.

use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::{
    SqliteStore,
    claim::{SQL_CLAIM, SQL_RESCUE},
    read::{SQL_PENDING_BY_TYPE, percentile},
    schema::task_columns,
};
use crate::store::{
    NewTask, StoreError, TaskStore,
    sql::{decode_cursor, encode_cursor},
};

#[test]
fn nearest_rank_percentiles() {
    assert_eq!(percentile(&[], 50.0), None);
    assert_eq!(percentile(&[7], 99.0), Some(7.0));
    let v: Vec<i64> = (1..=100).collect();
    assert_eq!(percentile(&v, 50.0), Some(50.0));
    assert_eq!(percentile(&v, 95.0), Some(95.0));
    assert_eq!(percentile(&v, 99.0), Some(99.0));
    assert_eq!(percentile(&[1, 2], 50.0), Some(1.0));
    assert_eq!(percentile(&[1, 2], 95.0), Some(2.0));
}

#[test]
fn cursors() {
    let id = Uuid::now_v7();
    assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
    assert!(matches!(decode_cursor("x"), Err(StoreError::InvalidCursor)));
}

async fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn durable_pragmas() {
    let (_dir, store) = open().await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.writer)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&store.writer)
        .await
        .unwrap();
    assert_eq!(sync, 2, "synchronous = FULL");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&store.writer)
        .await
        .unwrap();
    assert_eq!(fk, 1);
    // Readers are read-only.
    let write = sqlx::query("DELETE FROM tasks")
        .execute(&store.reader)
        .await;
    assert!(write.is_err());
}

/// The inline reader reads columns by place: each name's place is the column SQLite names
/// there, and an unknown name has none.
#[tokio::test]
async fn inline_reads_find_each_column_by_place() {
    let (dir, store) = open().await;
    drop(store);
    let db = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let stmt = db.prepare(super::inline_read::SQL_GET).unwrap();
    let names = stmt.column_names();
    assert_eq!(names.len(), task_columns!().split(',').count());
    for (i, name) in names.iter().enumerate() {
        assert_eq!(super::inline_read::column_index(name), Some(i), "{name}");
    }
    assert_eq!(super::inline_read::column_index("nope"), None);
}

/// The hot statements use their indexes (no full scan, no sort).
#[tokio::test]
async fn the_claim_is_not_prepared_again_on_every_run() {
    // SQLite 3.51 re-prepares a statement with a bound LIMIT on every run once it was
    // re-prepared for any reason (here: a schema change); a written LIMIT runs as prepared.
    let (dir, store) = open().await;
    drop(store);
    let db = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let run = |sql: &str, bound_limit: bool| {
        let mut stmt = db.prepare(sql).unwrap();
        for i in 0..10i64 {
            if i == 1 {
                db.execute_batch(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS t{} (a)",
                    sql.len()
                ))
                .unwrap();
            }
            let mut rows = if bound_limit {
                stmt.query(rusqlite::params![i, "w", i + 1, "t", 1 + i % 3])
            } else {
                stmt.query(rusqlite::params![i, "w", i + 1, "t"])
            }
            .unwrap();
            while rows.next().unwrap().is_some() {}
        }
        stmt.get_status(rusqlite::StatementStatus::RePrepare)
    };
    let written = run(&super::schema::limited(SQL_CLAIM, 4).0, false);
    assert!(written <= 1, "{written} re-prepares with a written LIMIT");
    let bound = run(&SQL_CLAIM.replace("{limit}", "?5"), true);
    assert!(
        bound > 5,
        "{bound} re-prepares with a bound LIMIT (why the limit is written)"
    );
}

#[tokio::test]
async fn query_plans_use_indexes() {
    let (_dir, store) = open().await;
    let plan = |sql: &'static str| {
        let store = store.clone();
        async move {
            let sql = super::schema::limited(sql, 8).0;
            let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .fetch_all(&store.writer)
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.try_get::<String, _>("detail").unwrap())
                .collect::<Vec<_>>()
                .join(" | ")
        }
    };
    let claim = plan(SQL_CLAIM).await;
    assert!(claim.contains("tasks_claim"), "{claim}");
    assert!(!claim.contains("TEMP B-TREE"), "{claim}");
    let rescue = plan(SQL_RESCUE).await;
    assert!(rescue.contains("tasks_status_id"), "{rescue}");
    let list = plan(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE status = ? AND id < ? ORDER BY id DESC LIMIT ?"
    ))
    .await;
    assert!(
        list.contains("tasks_status_id") && !list.contains("TEMP B-TREE"),
        "{list}"
    );
    let list = plan(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE task_type = ? ORDER BY id DESC LIMIT ?"
    ))
    .await;
    assert!(
        list.contains("tasks_type_id") && !list.contains("TEMP B-TREE"),
        "{list}"
    );
    let pending = plan(SQL_PENDING_BY_TYPE).await;
    assert!(
        pending.contains("tasks_claim") && !pending.contains("TEMP B-TREE"),
        "{pending}"
    );
}

/// Rough figure of single durable inserts (one fsync each): `cargo test -- --ignored`.
#[tokio::test]
#[ignore]
async fn insert_throughput() {
    let (_dir, store) = open().await;
    let n = 2000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        store
            .insert(NewTask {
                id: Uuid::now_v7(),
                task_type: "bench".into(),
                input: serde_json::json!({ "x": 1 }),
                priority: 0,
                max_attempts: 3,
                idempotency_key: None,
                webhook_url: None,
                trace_parent: None,
                timeout_secs: None,
                request_hash: None,
                webhook_events: None,
            })
            .await
            .unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{n} inserts in {secs:.3}s: {:.0}/s", f64::from(n) / secs);
}
