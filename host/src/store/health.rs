//! Write health of a task store: whether its last writes reached the database, and if not why.
//!
//! Both stores report the outcome of each write transaction here (from their group committer,
//! the one path of writes). A failed write marks the store
//! unhealthy until a write that changed something succeeds: a write that matched no row (a
//! claim round on an empty queue) proves nothing, since SQLite commits it without touching the
//! disk. The change of state is logged once: one ERROR line when writes start failing, naming
//! the cause (disk full, permission denied, ...), one WARN line when they succeed again; the
//! failures in between are counted, not logged (another ERROR only if the cause changes).
//! `GET /api/status` and `GET /api/ready` read [`StoreHealth::fault`].
//!
//! Separate from the stores because the rule, the causes and the log lines are the same for
//! both; only the database's error codes differ ([`Cause::of_rusqlite`], [`Cause::of_postgres`]).

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use chrono::{DateTime, Utc};

/// Why writes fail, as far as the database error tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// No space left on the device (SQLite `SQLITE_FULL`, `ENOSPC`, PostgreSQL `53100`).
    DiskFull,
    /// The process may not write the database (`EACCES`, PostgreSQL `42501`).
    PermissionDenied,
    /// The database or its file system is read-only (`SQLITE_READONLY`, `EROFS`, PostgreSQL
    /// `25006`): often file permissions too.
    ReadOnly,
    /// Another writer held the lock longer than the busy timeout (SQLite `SQLITE_BUSY`).
    Busy,
    /// The operating system reported an I/O error.
    Io,
    /// The database server cannot be reached or dropped the connection (PostgreSQL).
    Connection,
    /// The database file is damaged or not a database.
    Corrupt,
    /// Any other database error.
    Other,
}

impl Cause {
    /// The wire form (`store_error.cause` of `GET /api/status`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::DiskFull => "disk_full",
            Cause::PermissionDenied => "permission_denied",
            Cause::ReadOnly => "read_only",
            Cause::Busy => "busy",
            Cause::Io => "io_error",
            Cause::Connection => "connection_lost",
            Cause::Corrupt => "corrupt",
            Cause::Other => "database_error",
        }
    }

    /// Words for the log line.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Cause::DiskFull => "disk full",
            Cause::PermissionDenied => "permission denied",
            Cause::ReadOnly => "read-only database (file permissions or a read-only file system)",
            Cause::Busy => "database locked by another writer for longer than the busy timeout",
            Cause::Io => "I/O error",
            Cause::Connection => "database connection lost",
            Cause::Corrupt => "database file corrupt",
            Cause::Other => "database error",
        }
    }

    /// The cause of a failed SQLite write (by the primary result code of its error; the
    /// store writes through rusqlite).
    pub(crate) fn of_rusqlite(e: &rusqlite::Error) -> Cause {
        match e {
            rusqlite::Error::SqliteFailure(f, _) => Cause::of_sqlite_code(f.extended_code),
            _ => Cause::Other,
        }
    }

    /// The cause of an SQLite result code (primary or extended).
    fn of_sqlite_code(code: i32) -> Cause {
        match code & 0xff {
            13 => Cause::DiskFull,             // SQLITE_FULL
            8 => Cause::ReadOnly,              // SQLITE_READONLY
            3 | 23 => Cause::PermissionDenied, // SQLITE_PERM, SQLITE_AUTH
            5 | 6 => Cause::Busy,              // SQLITE_BUSY, SQLITE_LOCKED
            10 | 14 | 15 => Cause::Io,         // SQLITE_IOERR, _CANTOPEN, _PROTOCOL
            11 | 26 => Cause::Corrupt,         // SQLITE_CORRUPT, SQLITE_NOTADB
            _ => Cause::Other,
        }
    }

    /// The cause of a failed PostgreSQL write (by SQLSTATE).
    pub(crate) fn of_postgres(e: &sqlx::Error) -> Cause {
        Cause::of_sqlx(e, |code| match code {
            "53100" => Cause::DiskFull,
            "42501" => Cause::PermissionDenied,
            "25006" => Cause::ReadOnly,
            "55P03" | "40P01" => Cause::Busy,
            "58030" => Cause::Io,
            "XX001" | "XX002" => Cause::Corrupt,
            c if c.starts_with("08") || c.starts_with("57P") => Cause::Connection,
            _ => Cause::Other,
        })
    }

    fn of_sqlx(e: &sqlx::Error, database: impl Fn(&str) -> Cause) -> Cause {
        match e {
            sqlx::Error::Database(db) => db.code().map_or(Cause::Other, |c| database(&c)),
            sqlx::Error::Io(io) => Cause::of_io(io),
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => Cause::Connection,
            _ => Cause::Other,
        }
    }

    /// The cause of an operating-system error, by errno.
    pub(crate) fn of_io(e: &std::io::Error) -> Cause {
        match e.raw_os_error() {
            Some(ENOSPC | EDQUOT) => Cause::DiskFull,
            Some(EACCES | EPERM) => Cause::PermissionDenied,
            Some(EROFS) => Cause::ReadOnly,
            _ => match e.kind() {
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::NotConnected
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::UnexpectedEof => Cause::Connection,
                _ => Cause::Io,
            },
        }
    }
}

/// errno values (Linux; the same on the BSDs and macOS except `EDQUOT`, which only widens
/// "disk full").
const EPERM: i32 = 1;
const EACCES: i32 = 13;
const ENOSPC: i32 = 28;
const EROFS: i32 = 30;
const EDQUOT: i32 = 122;

/// Why the store is unhealthy, for `GET /api/status`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoreFault {
    /// What failing writes mean.
    pub cause: Cause,
    /// The database's message of the last failure.
    pub message: String,
    /// When writes started failing.
    pub since: DateTime<Utc>,
    /// Writes failed since then.
    pub failed_writes: u64,
}

/// The write health of one store. Reporting a success while healthy costs one atomic load.
#[derive(Debug)]
pub(crate) struct StoreHealth {
    /// `store` field of the log lines: `sqlite` or `postgres`.
    store: &'static str,
    /// Whether a fault is recorded (read without the lock on the hot path).
    failing: AtomicBool,
    fault: Mutex<Option<(StoreFault, Instant)>>,
}

impl StoreHealth {
    /// A healthy tracker for the store named `store`.
    pub(crate) fn new(store: &'static str) -> StoreHealth {
        StoreHealth {
            store,
            failing: AtomicBool::new(false),
            fault: Mutex::new(None),
        }
    }

    /// A write transaction committed; `changed` says whether it changed any row (only those
    /// prove the database takes writes).
    pub(crate) fn write_succeeded(&self, changed: bool) {
        if !changed || !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut fault = self.fault.lock().expect("store health lock");
        if let Some((f, began)) = fault.take() {
            tracing::warn!(
                store = self.store,
                cause = f.cause.as_str(),
                failed_writes = f.failed_writes,
                failing_secs = began.elapsed().as_secs_f64(),
                "task store writes succeed again"
            );
        }
        self.failing.store(false, Ordering::Release);
    }

    /// A write failed with `cause`; `message` is the database's error.
    pub(crate) fn write_failed(&self, cause: Cause, message: &str) {
        let mut fault = self.fault.lock().expect("store health lock");
        match fault.as_mut() {
            Some((f, _)) if f.cause == cause => {
                f.failed_writes += 1;
                f.message = message.to_owned();
                tracing::debug!(store = self.store, cause = cause.as_str(), error = %message, "task store write failed");
            }
            _ => {
                let failed_writes = fault.as_ref().map_or(0, |(f, _)| f.failed_writes) + 1;
                tracing::error!(
                    store = self.store,
                    cause = cause.as_str(),
                    error = %message,
                    "task store writes failing: {}; submits answer 503 until a write succeeds",
                    cause.describe()
                );
                let since = fault.as_ref().map_or_else(Utc::now, |(f, _)| f.since);
                let began = fault.as_ref().map_or_else(Instant::now, |(_, b)| *b);
                *fault = Some((
                    StoreFault {
                        cause,
                        message: message.to_owned(),
                        since,
                        failed_writes,
                    },
                    began,
                ));
                self.failing.store(true, Ordering::Release);
            }
        }
    }

    /// The current fault, or none while writes succeed.
    pub(crate) fn fault(&self) -> Option<StoreFault> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.fault
            .lock()
            .expect("store health lock")
            .as_ref()
            .map(|(f, _)| f.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_holds_until_a_write_that_changed_something() {
        let h = StoreHealth::new("test");
        assert_eq!(h.fault(), None);
        h.write_failed(Cause::DiskFull, "database or disk is full");
        h.write_failed(Cause::DiskFull, "database or disk is full (again)");
        let f = h.fault().expect("unhealthy");
        assert_eq!(
            (f.cause, f.failed_writes, f.message.as_str()),
            (Cause::DiskFull, 2, "database or disk is full (again)")
        );
        // A commit that changed nothing proves nothing.
        h.write_succeeded(false);
        assert!(h.fault().is_some());
        h.write_succeeded(true);
        assert_eq!(h.fault(), None);
    }

    #[test]
    fn a_new_cause_keeps_the_start_and_the_count() {
        let h = StoreHealth::new("test");
        h.write_failed(Cause::DiskFull, "full");
        let since = h.fault().unwrap().since;
        h.write_failed(Cause::ReadOnly, "readonly");
        let f = h.fault().unwrap();
        assert_eq!(
            (f.cause, f.failed_writes, f.since),
            (Cause::ReadOnly, 2, since)
        );
    }

    #[test]
    fn causes_of_os_errors() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert_eq!(Cause::of_io(&e(ENOSPC)), Cause::DiskFull);
        assert_eq!(Cause::of_io(&e(EACCES)), Cause::PermissionDenied);
        assert_eq!(Cause::of_io(&e(EROFS)), Cause::ReadOnly);
        assert_eq!(
            Cause::of_io(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            Cause::Connection
        );
        assert_eq!(Cause::of_io(&e(5)), Cause::Io);
    }
}
