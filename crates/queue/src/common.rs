//! What both backends decide alike: conversions of stored values, the reasons a task ends
//! without a worker, and the one-delivery-per-task rule of a claim.

use std::collections::HashSet;
use std::time::Duration;

use crate::{Delivery, Lease, StoreError, now_ms};

/// An attempt count read from the database; negative is corrupt data, not a panic.
pub(crate) fn attempts_from(value: i64) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::Database(format!("attempt count {value} out of range")))
}

/// A `COUNT(*)` as u64 (it is never negative).
pub(crate) fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A limit as a bound parameter; `u64::MAX` (no limit) saturates.
pub(crate) fn limit(max: u64) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

/// A reported progress in [0, 1]; anything not finite is dropped.
pub(crate) fn clamp_progress(progress: Option<f32>) -> Option<f32> {
    progress
        .filter(|p| p.is_finite())
        .map(|p| p.clamp(0.0, 1.0))
}

pub(crate) fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        task_id: lease.task_id.clone(),
    }
}

/// The `status_msg` of a task claimed `attempts` times without finishing.
pub(crate) fn gave_up_reason(attempts: i64, lease_expired: bool) -> String {
    let why = if lease_expired {
        "the worker stopped before finishing each time"
    } else {
        "each attempt ended without a result"
    };
    format!("gave up after {attempts} attempts: {why}")
}

/// The first delivery of each task among `due` (oldest first): a task's callbacks go out one
/// at a time, in order.
pub(crate) fn one_per_task(
    due: impl IntoIterator<Item = Result<Delivery, StoreError>>,
) -> Result<Vec<Delivery>, StoreError> {
    let mut tasks = HashSet::new();
    let mut deliveries = Vec::new();
    for delivery in due {
        let delivery = delivery?;
        if tasks.insert(delivery.task_id.clone()) {
            deliveries.push(delivery);
        }
    }
    Ok(deliveries)
}

/// Logs a delivery given up after its last attempt.
pub(crate) fn log_abandoned(
    delivery_id: &str,
    task_id: String,
    url: String,
    attempts: i64,
    created_at: i64,
    error: &str,
) {
    tracing::warn!(
        delivery_id,
        task_id,
        url,
        attempts,
        age_s = now_ms().saturating_sub(created_at) / 1000,
        error,
        "callback delivery abandoned"
    );
}
