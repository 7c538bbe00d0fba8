//! The conformance suite on the PostgreSQL store, each check on a temporary database of its own
//! (see `pg.rs`).

use std::sync::Arc;

use async_trait::async_trait;

use super::{Harness, pg::PgHarness};
use crate::store::TaskStore;

#[async_trait]
impl Harness for PgHarness {
    async fn open(&self) -> Arc<dyn TaskStore> {
        Arc::new(self.store().await)
    }
}

super::conformance_suite!(PgHarness::new().await);
