//! Worker identities on PostgreSQL: a consumer's identity is held with a session advisory lock
//! (`pg_try_advisory_lock`) on a connection taken out of the pool for the life of the process;
//! PostgreSQL releases it when that session ends, which it does when the process dies however it
//! dies. And the leases of an identity's earlier runs are ended at once when it starts again.

use sqlx::Connection as _;

use super::PostgresStore;
use crate::store::{StoreResult, sql::db_err};

/// Ends the leases of the PROCESSING tasks of an identity's earlier runs (worker ids
/// `{identity}#...` other than this run's); the next rescue puts them back in the queue.
const SQL_EXPIRE_PREVIOUS: &str = "UPDATE tasks SET lease_until = statement_timestamp() - \
     interval '1 millisecond' \
     WHERE status = 'PROCESSING' AND starts_with(worker, $1) AND worker <> $2";

/// The advisory-lock key of an identity: FNV-1a (64 bits) of `aihost.worker:` and the identity,
/// stable across builds and machines (std's hasher is not).
fn lock_key(identity: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "aihost.worker:".bytes().chain(identity.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

/// [`TaskStore::hold_worker_identity`](crate::store::TaskStore::hold_worker_identity).
pub(super) async fn hold_identity(store: &PostgresStore, identity: &str) -> StoreResult<bool> {
    let mut conn = store.inner.pool.acquire().await.map_err(db_err)?.detach();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(identity))
        .fetch_one(&mut conn)
        .await
        .map_err(db_err)?;
    if held {
        store.inner.held.lock().expect("held locks").push(conn);
    } else {
        let _ = conn.close().await;
    }
    Ok(held)
}

/// [`TaskStore::expire_previous_runs`](crate::store::TaskStore::expire_previous_runs).
pub(super) async fn expire_previous_runs(
    store: &PostgresStore,
    identity: &str,
    current: &str,
) -> StoreResult<u64> {
    let done = sqlx::query(SQL_EXPIRE_PREVIOUS)
        .bind(format!("{identity}#"))
        .bind(current)
        .execute(&store.inner.pool)
        .await
        .map_err(db_err)?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::lock_key;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("host-0"), lock_key("host-0"));
        assert_ne!(lock_key("host-0"), lock_key("host-1"));
    }
}
