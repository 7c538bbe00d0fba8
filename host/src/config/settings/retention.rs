//! `[retention]`: how long finished tasks, their files and unreferenced uploads are kept, and
//! how the background pruner works through them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Seconds in a day: the default [`RetentionConfig::day_secs`].
const DAY_SECS: u64 = 86_400;

/// `[retention]`: what is deleted, and when. A period of 0 days keeps forever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RetentionConfig {
    /// Days a COMPLETED task is kept after it finished. Default 7; 0 keeps forever.
    pub completed_days: u64,
    /// Days a FAILED task is kept after it finished. Default 30; 0 keeps forever.
    pub failed_days: u64,
    /// Days a CANCELLED task is kept after it finished. Default 30; 0 keeps forever.
    pub cancelled_days: u64,
    /// Days an upload is kept once no PENDING or PROCESSING task's input names it. Default 1;
    /// 0 keeps forever.
    pub uploads_days: u64,
    /// Delete a task's output files (`outputs/{task_id}/`) with the task. Default true.
    pub delete_files: bool,
    /// Most tasks of each status deleted by one statement. Default 500.
    pub batch: u32,
    /// Seconds between background pruning passes. Default 300.
    pub interval_secs: u64,
    /// Length in seconds of the "day" of the `*_days` keys. Default 86400; lower it only for
    /// trials and tests (e.g. 1 makes every period a number of seconds).
    pub day_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            completed_days: 7,
            failed_days: 30,
            cancelled_days: 30,
            uploads_days: 1,
            delete_files: true,
            batch: 500,
            interval_secs: 300,
            day_secs: DAY_SECS,
        }
    }
}

impl RetentionConfig {
    /// A period of `days` as a duration; `None` for 0 (keep forever).
    pub(crate) fn period(&self, days: u64) -> Option<Duration> {
        (days > 0).then(|| Duration::from_secs(days.saturating_mul(self.day_secs)))
    }
}
