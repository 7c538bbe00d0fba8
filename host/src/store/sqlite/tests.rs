//! Tests of what only the SQLite store does: its pragmas, its query plans, its percentiles and
//! cursors. What every store does is in the conformance suite.

use uuid::Uuid;

use super::{
    SqliteStore,
    claim::{SQL_CLAIM, SQL_RESCUE},
    group_commit::{WriteQuery, no_row, send_write},
    read::{SQL_PENDING_BY_TYPE, percentile},
    schema::task_columns,
};
use crate::store::{
    NewTask, StoreError, StoreResult, TaskStore,
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

/// A pragma's value on the writer connection (read through the writer thread, in a durable
/// batch).
async fn writer_pragma(store: &SqliteStore, name: &str) -> i64 {
    let query = WriteQuery::new(format!("PRAGMA {name}"));
    send_write(&store.writes, query, true, |r| {
        r.get::<_, i64>(0)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    })
    .await
    .unwrap()
    .rows[0]
}

#[tokio::test]
async fn durable_pragmas() {
    let (_dir, store) = open().await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.reader)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(
        writer_pragma(&store, "synchronous").await,
        2,
        "synchronous = FULL"
    );
    assert_eq!(writer_pragma(&store, "foreign_keys").await, 1);
    // Readers are read-only.
    let write = sqlx::query("DELETE FROM tasks")
        .execute(&store.reader)
        .await;
    assert!(write.is_err());
}

/// Writes after `close` answer that the store is closed, and nothing waits for ever.
#[tokio::test]
async fn writes_after_close_are_refused() {
    let (_dir, store) = open().await;
    store.close().await;
    let r = store.insert(new_task()).await;
    assert!(
        matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("closed") || m.contains("stopped")),
        "{r:?}"
    );
}

/// A batch of concurrent writes in which one statement fails: that one answers its error,
/// the others commit.
#[tokio::test]
async fn a_failing_statement_fails_alone_in_its_batch() {
    let (_dir, store) = open().await;
    let mut writes = Vec::new();
    for i in 0..20 {
        let sql = if i == 7 {
            "INSERT INTO no_such_table VALUES (1)"
        } else {
            "INSERT INTO task_changes (change_task, change_kind, change_origin) VALUES ('x', 'created', 1)"
        };
        writes.push(send_write(
            &store.writes,
            WriteQuery::new(sql),
            true,
            no_row,
        ));
    }
    let answers = futures_util::future::join_all(writes).await;
    for (i, a) in answers.iter().enumerate() {
        if i == 7 {
            assert!(
                a.is_err(),
                "the bad statement answered {:?}",
                a.as_ref().map(|w| w.changes)
            );
        } else {
            assert_eq!(a.as_ref().map(|w| w.changes).ok(), Some(1), "statement {i}");
        }
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM task_changes WHERE change_task = 'x'")
        .fetch_one(&store.reader)
        .await
        .unwrap();
    assert_eq!(n, 19);
}

/// A row decoder that panics makes its own write answer an error; the writer thread lives on
/// and the next write succeeds.
#[tokio::test]
async fn a_panicking_decoder_does_not_stop_the_writer() {
    let (_dir, store) = open().await;
    let query = WriteQuery::new("UPDATE tasks SET priority = priority RETURNING id");
    store.insert(new_task()).await.unwrap();
    let r = send_write(&store.writes, query, true, |_| -> StoreResult<()> {
        panic!("a decoder bug")
    })
    .await;
    assert!(
        matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("could not be decoded")),
        "{:?}",
        r.as_ref().map(|w| w.changes)
    );
    let (task, created) = store.insert(new_task()).await.unwrap();
    assert!(created);
    assert_eq!(
        store.get(task.id).await.unwrap().map(|t| t.id),
        Some(task.id)
    );
}

fn new_task() -> NewTask {
    crate::store::conformance::new_task("bench", 0)
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
        assert_eq!(super::schema::column_index(name), Some(i), "{name}");
    }
    assert_eq!(super::schema::column_index("nope"), None);
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
    let (dir, store) = open().await;
    drop(store);
    let db = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let plan = |sql: &'static str| {
        let sql = format!("EXPLAIN QUERY PLAN {}", super::schema::limited(sql, 8).0);
        let mut stmt = db.prepare(&sql).unwrap();
        let nulls = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(nulls), |r| {
            r.get::<_, String>("detail")
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .join(" | ")
    };
    let claim = plan(SQL_CLAIM);
    assert!(claim.contains("tasks_claim"), "{claim}");
    assert!(!claim.contains("TEMP B-TREE"), "{claim}");
    let rescue = plan(SQL_RESCUE);
    assert!(rescue.contains("tasks_status_id"), "{rescue}");
    let list = plan(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE status = ? AND id < ? ORDER BY id DESC LIMIT ?"
    ));
    assert!(
        list.contains("tasks_status_id") && !list.contains("TEMP B-TREE"),
        "{list}"
    );
    let list = plan(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE task_type = ? ORDER BY id DESC LIMIT ?"
    ));
    assert!(
        list.contains("tasks_type_id") && !list.contains("TEMP B-TREE"),
        "{list}"
    );
    let pending = plan(SQL_PENDING_BY_TYPE);
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
        store.insert(new_task()).await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{n} inserts in {secs:.3}s: {:.0}/s", f64::from(n) / secs);
}
