//! Waking sleepers in `wait_for_work` and `wait_for_deliveries` without polling: a `Notify`
//! per concern, raised after each commit that may have made something claimable (by this
//! process, or by another node through PostgreSQL's `NOTIFY`), plus a timer for what falls due
//! by itself (a lease or a retry delay running out).

use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// The two things one can wait for.
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    /// A task may have become claimable.
    pub work: Notify,
    /// A delivery may have become claimable.
    pub deliveries: Notify,
}

/// Sleeps until `notified` fires, `due_in` passes (`None`: nothing falls due by itself), or
/// `timeout` passes. `notified` must have been created before the store was asked what is
/// due, so that a change committed in between is not missed (`notify_waiters` reaches every
/// `Notified` created before it, polled or not).
pub(crate) async fn sleep_until_woken(
    notified: Notified<'_>,
    due_in: Option<Duration>,
    timeout: Duration,
) {
    let sleep_for = due_in.map_or(timeout, |due_in| due_in.min(timeout));
    if sleep_for.is_zero() {
        return;
    }
    tokio::select! {
        () = notified => {}
        () = tokio::time::sleep(sleep_for) => {}
    }
}

/// How long from `now_ms` until `due_ms` (both Unix ms); zero when past, `None` when nothing
/// is due.
pub(crate) fn due_in(due_ms: Option<i64>, now_ms: i64) -> Option<Duration> {
    due_ms.map(|due| Duration::from_millis(u64::try_from(due.saturating_sub(now_ms)).unwrap_or(0)))
}
