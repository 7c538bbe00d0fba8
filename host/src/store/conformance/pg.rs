//! Temporary PostgreSQL databases for tests: each [`PgHarness`] creates a database of its own
//! on the machine's server and drops it when dropped. Separate so the conformance suite and the
//! PostgreSQL store's own tests share one copy of it.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::store::postgres::{PostgresSettings, PostgresStore};

/// Server and maintenance database the tests create their databases from; override with
/// `AIHOST_TEST_POSTGRES_URL`.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn admin_url() -> String {
    std::env::var("AIHOST_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A database of its own on the machine's PostgreSQL, dropped with the harness.
pub(crate) struct PgHarness {
    name: String,
    url: String,
}

impl PgHarness {
    pub(crate) async fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "aihost_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} (set AIHOST_TEST_POSTGRES_URL): {e}")
        });
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .expect("drop stale test database");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin).expect("admin URL");
        url.set_path(&name);
        PgHarness {
            name,
            url: url.to_string(),
        }
    }

    pub(crate) async fn store(&self) -> PostgresStore {
        let mut settings = PostgresSettings::new(self.url.clone());
        settings.max_connections = 10;
        PostgresStore::open(&settings)
            .await
            .expect("open postgres store")
    }
}

impl Drop for PgHarness {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a runtime of its own on another thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}
