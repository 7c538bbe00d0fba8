//! Status reads of single tasks, batched: concurrent `get`s share one query.
//!
//! Clients poll `GET /api/tasks/{id}`; under load many such reads arrive at once. Alone, each
//! one costs a pool acquire (with its liveness check, a round trip of its own), a statement
//! and a round trip, and PostgreSQL's per-statement work dwarfs the index lookup. Here a read
//! is queued and answered by a batch query `WHERE id = ANY($1)` that takes every read waiting
//! when it starts (at most [`MAX_BATCH`]). At most `in_flight_limit` such queries run at a time
//! (half the pool, so writes keep the rest):
//! - at light load a read finds a free slot and its query starts at once, alone: it waits for
//!   nothing it would not have waited for without batching;
//! - under load reads that arrive while every slot is busy wait for the next batch, which
//!   answers them all with one round trip.
//!
//! A batch starts after each of its reads was asked, so every answer is a state committed after
//! the request arrived, exactly as a query of its own would be. Nothing is cached.
//!
//! If a batch's task is gone before answering (the runtime shutting down, a panic), its slot is
//! freed and the reads it held or left waiting fall back to a query of their own: no read waits
//! for a batch that will not come.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use sqlx::{Row as _, postgres::PgPool};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{read::get_task, schema::task_from_row};
use crate::store::{StoreResult, Task, sql::db_err};

/// Most reads one batch query answers.
pub(super) const MAX_BATCH: usize = 256;

const SQL_GET_MANY: &str = "SELECT id, row_to_json(tasks)::text AS j FROM tasks WHERE id = ANY($1)";

type Reply = oneshot::Sender<StoreResult<Option<Task>>>;

/// Queue of single-task reads and the batch queries that answer them. Shared by the clones of
/// one store.
pub(super) struct ReadBatcher {
    pool: PgPool,
    /// Most batch queries running at once.
    in_flight_limit: usize,
    state: Mutex<State>,
    /// Batch queries run so far.
    queries: AtomicU64,
}

#[derive(Default)]
struct State {
    waiting: Vec<(Uuid, Reply)>,
    in_flight: usize,
}

impl ReadBatcher {
    /// A batcher whose queries use at most half of a pool of `max_connections` (at least one).
    pub(super) fn new(pool: PgPool, max_connections: u32) -> Arc<ReadBatcher> {
        Arc::new(ReadBatcher {
            pool,
            in_flight_limit: (max_connections as usize / 2).max(1),
            state: Mutex::default(),
            queries: AtomicU64::new(0),
        })
    }

    /// The task `id`, as a query started after this call would read it.
    pub(super) async fn get(self: &Arc<Self>, id: Uuid) -> StoreResult<Option<Task>> {
        let (reply, answer) = oneshot::channel();
        let start_batch = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.waiting.push((id, reply));
            let start = state.in_flight < self.in_flight_limit;
            if start {
                state.in_flight += 1;
            }
            start
        };
        if start_batch {
            tokio::spawn(self.clone().run());
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => get_task(&self.pool, id).await,
        }
    }

    /// Batch queries run so far (tests see batching with it).
    #[cfg(test)]
    pub(super) fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// One batch slot: answers batches while reads wait, then frees the slot.
    async fn run(self: Arc<Self>) {
        let mut slot = Slot {
            batcher: &self,
            freed: false,
        };
        loop {
            let batch = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.waiting.is_empty() {
                    state.in_flight -= 1;
                    slot.freed = true;
                    return;
                }
                let n = state.waiting.len().min(MAX_BATCH);
                state.waiting.drain(..n).collect::<Vec<_>>()
            };
            self.answer(batch).await;
        }
    }

    /// Reads the tasks of `batch` in one query and answers each read.
    async fn answer(&self, batch: Vec<(Uuid, Reply)>) {
        let found = match self.fetch(&batch).await {
            Ok(found) => found,
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        };
        for (id, reply) in batch {
            let answer = match found.get(&id) {
                None => Ok(None),
                Some(Ok(task)) => Ok(Some(task.clone())),
                Some(Err(e)) => Err(e.clone()),
            };
            let _ = reply.send(answer);
        }
    }

    /// The tasks of `batch` that exist, each decoded on its own (a row that cannot be decoded
    /// fails only its reads). A failed query, or a row without its id (which answers nobody,
    /// and must not become a wrong "not found"), fails the whole batch.
    async fn fetch(
        &self,
        batch: &[(Uuid, Reply)],
    ) -> StoreResult<HashMap<Uuid, StoreResult<Task>>> {
        let mut ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        self.queries.fetch_add(1, Ordering::Relaxed);
        let rows = sqlx::query(SQL_GET_MANY)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<Uuid, _>("id").map_err(db_err)?,
                    task_from_row(row),
                ))
            })
            .collect()
    }
}

/// A running batch slot. Dropped without being freed (its task aborted or panicked), it frees
/// the slot and drops every waiting read's reply, so those reads query on their own.
struct Slot<'a> {
    batcher: &'a ReadBatcher,
    freed: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.freed {
            return;
        }
        let mut state = self.batcher.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_flight -= 1;
        state.waiting.clear();
    }
}
