//! Point reads of one task on the calling thread, without a thread hand-off.
//!
//! sqlx's SQLite driver runs every connection on a thread of its own: each query is sent to
//! that thread and its rows sent back, two wake-ups across threads per read. For the hottest
//! read of all (`GET /api/tasks/{id}`, polled by clients and by `?wait`), a profile showed
//! those hand-offs, not SQLite, as most of the cost. So `get` first tries a read-only
//! connection owned by the calling thread (one per runtime worker thread and database, opened
//! on first use, its statement prepared once): a primary-key lookup in WAL mode takes
//! microseconds and never waits for the writer. It reads the same committed state as the
//! pool's readers, so nothing is cached and nothing can be stale. Whatever goes wrong here
//! (no connection, `SQLITE_BUSY`, any error) answers `None` and the caller reads through the
//! pool as before, which reports errors the usual way.

use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _};
use uuid::Uuid;

use super::schema::{TaskColumns, task_columns, task_from_row};
use crate::store::{StoreResult, Task};

/// Connections one thread keeps (one per open store it read from; tests open many stores).
const PER_THREAD: usize = 4;

pub(super) const SQL_GET: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1");

/// Gives each [`InlineReader`] an identity, so a thread's connections are told apart by store
/// (two stores may be opened on one path one after the other).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's connections, most recently used last.
    static CONNECTIONS: RefCell<Vec<(u64, Connection)>> = const { RefCell::new(Vec::new()) };
}

/// The inline reader of one store: its database file and identity.
#[derive(Debug, Clone)]
pub(super) struct InlineReader {
    id: u64,
    path: PathBuf,
}

impl InlineReader {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            path: path.to_owned(),
        }
    }

    /// The task `id` read on this thread: `Some(answer)`, or `None` when the read could not
    /// be made here (the caller then reads through the pool).
    pub(super) fn get(&self, id: Uuid) -> Option<StoreResult<Option<Task>>> {
        CONNECTIONS.with(|cell| {
            let Ok(mut conns) = cell.try_borrow_mut() else {
                return None;
            };
            let pos = match conns.iter().position(|(k, _)| *k == self.id) {
                Some(p) => p,
                None => {
                    let conn = self.open()?;
                    if conns.len() >= PER_THREAD {
                        conns.remove(0);
                    }
                    conns.push((self.id, conn));
                    conns.len() - 1
                }
            };
            let answer = read(&conns[pos].1, id);
            if answer.is_none() {
                // A failing connection is not kept: the next read opens a fresh one.
                conns.remove(pos);
            }
            answer
        })
    }

    fn open(&self) -> Option<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        // Never wait on this thread: a busy database is read through the pool instead.
        conn.busy_timeout(std::time::Duration::ZERO).ok()?;
        Some(conn)
    }
}

fn read(conn: &Connection, id: Uuid) -> Option<StoreResult<Option<Task>>> {
    let mut stmt = conn.prepare_cached(SQL_GET).ok()?;
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let key = id.hyphenated().encode_lower(&mut buf);
    let row = stmt
        .query_row([&*key], |row| Ok(task_from_row(&TaskColumns(row))))
        .optional()
        .ok()?;
    Some(row.transpose())
}
