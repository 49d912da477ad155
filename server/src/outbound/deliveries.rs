//! The callback delivery task: drains the store's outbox of [`Delivery`]s (written in the same
//! transaction as each status change, so none is lost across a crash), POSTs each one, and
//! records the outcome.
//!
//! Delivery is at least once: a receiver that answered 2xx just before a crash or shutdown
//! may get the same delivery again after the restart, with the same `webhook-id` to
//! recognise it by.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outpaint_queue::{Delivery, Store, now_ms};
use tokio::sync::{Notify, watch};
use tokio::task::{Id, JoinSet};

use super::{Outbound, WebhookSigner};

/// How often the store is asked for due deliveries when nobody calls `wake`.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The most deliveries sent at once. A slow receiver holds one slot for up to the callback
/// timeout, so this bounds both the sockets held and how far one bad receiver delays others.
const MAX_IN_FLIGHT: usize = 16;

/// How long a claimed delivery is this process's to send, on every node sharing the store:
/// well over a send's timeout. Once it runs out (the process died), another sends it.
const DELIVERY_LEASE: Duration = Duration::from_secs(120);

/// When a failed delivery is tried again: exponential backoff from its failure count, until
/// `give_up_after` has passed since it was first due.
///
/// SPEC 4 asks for retries over at least an hour; the default keeps trying for a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub first: Duration,
    /// Each further failure multiplies the wait by this.
    pub factor: u32,
    /// The longest wait between two attempts.
    pub max_interval: Duration,
    /// No attempt is made later than this after the delivery was created.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    /// 1 s, 2 s, 4 s, … 8.5 min, then every 10 min, for 24 h: about 150 attempts.
    fn default() -> Self {
        RetryPolicy {
            first: Duration::from_secs(1),
            factor: 2,
            max_interval: Duration::from_secs(10 * 60),
            give_up_after: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed attempt (counting from 1):
    /// `first × factor^(failures − 1)`, at most `max_interval`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1);
        let multiplier = self.factor.max(1).saturating_pow(exponent);
        self.first.saturating_mul(multiplier).min(self.max_interval)
    }

    /// When a delivery created at `created_at_ms` that has now failed `failures` times
    /// (this attempt included) is due again, in Unix ms; `None` when that would be past
    /// `give_up_after`, and the delivery should be abandoned.
    pub fn next_attempt_at(&self, created_at_ms: i64, failures: u32, now_ms: i64) -> Option<i64> {
        let next = now_ms.saturating_add(millis(self.backoff(failures)));
        let deadline = created_at_ms.saturating_add(millis(self.give_up_after));
        (next <= deadline).then_some(next)
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Sends callback deliveries until `shutdown` turns `true` (or its sender is dropped).
///
/// Every 500 ms, or at once when `wake` is notified (the server does so after a status
/// change with a callback URL), it takes the store's due deliveries and POSTs up to 16 at a
/// time with [`Outbound::post_callback`], which applies the address guard again at send
/// time. A 2xx answer marks the delivery `delivered`; any failure schedules a retry after
/// [`RetryPolicy::backoff`], or abandons the delivery once [`RetryPolicy::give_up_after`]
/// has passed since it was created, or at once when its URL is unusable.
///
/// A delivery is never sent twice at once: one still in flight is skipped when the store
/// hands it out again, and only one delivery per task is in flight at a time, so that a
/// task's callbacks usually arrive in order. This holds within one process; run one
/// delivery task per store.
///
/// On shutdown, sends still in flight are abandoned where they stand (at least once: they
/// are still due in the store and go out again after the restart).
///
/// Shutdown is a `watch::Receiver<bool>` rather than a cancellation token, like the health
/// flag elsewhere in the server: no further dependency, and several tasks can watch the
/// same sender.
pub async fn run_deliveries(
    store: Arc<dyn Store>,
    outbound: Outbound,
    signer: Option<WebhookSigner>,
    policy: RetryPolicy,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let signer = signer.map(Arc::new);
    let mut sends: JoinSet<()> = JoinSet::new();
    // Task id of each send → (delivery id, task id).
    let mut in_flight: HashMap<Id, (String, String)> = HashMap::new();
    tracing::info!("callback delivery task started");
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        while let Some(done) = sends.try_join_next_with_id() {
            finish(&mut in_flight, done);
        }
        if in_flight.len() < MAX_IN_FLIGHT {
            // No more than the free slots: what is claimed and not sent waits for its lease.
            let free = u32::try_from(MAX_IN_FLIGHT - in_flight.len()).unwrap_or(u32::MAX);
            match store.claim_deliveries(DELIVERY_LEASE, free).await {
                Ok(due) => {
                    for delivery in due {
                        if in_flight.len() >= MAX_IN_FLIGHT {
                            break;
                        }
                        let busy = in_flight.values().any(|(delivery_id, task_id)| {
                            *delivery_id == delivery.id || *task_id == delivery.task_id
                        });
                        if busy {
                            continue;
                        }
                        let ids = (delivery.id.clone(), delivery.task_id.clone());
                        let handle = sends.spawn(deliver(
                            Arc::clone(&store),
                            outbound.clone(),
                            signer.clone(),
                            policy,
                            delivery,
                        ));
                        in_flight.insert(handle.id(), ids);
                    }
                }
                Err(err) => tracing::warn!(%err, "could not read due callback deliveries"),
            }
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(done) = sends.join_next_with_id(), if !sends.is_empty() => {
                finish(&mut in_flight, done);
            }
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
    let abandoned = sends.len();
    sends.shutdown().await;
    tracing::info!(
        in_flight = abandoned,
        "callback delivery task stopped; unfinished deliveries are resent after restart"
    );
}

/// Forgets a finished send.
fn finish(
    in_flight: &mut HashMap<Id, (String, String)>,
    done: Result<(Id, ()), tokio::task::JoinError>,
) {
    let id = match done {
        Ok((id, ())) => id,
        Err(err) => {
            // It stays due in the store and is picked up again.
            tracing::error!(%err, "a callback delivery panicked. This is a bug.");
            err.id()
        }
    };
    in_flight.remove(&id);
}

/// Sends one delivery and records the outcome in the store.
async fn deliver(
    store: Arc<dyn Store>,
    outbound: Outbound,
    signer: Option<Arc<WebhookSigner>>,
    policy: RetryPolicy,
    delivery: Delivery,
) {
    let Delivery {
        id,
        task_id,
        url,
        body,
        attempts,
        created_at,
    } = delivery;
    let sent = outbound
        .post_callback(&url, &body, &id, signer.as_deref())
        .await;
    let recorded = match sent {
        Ok(()) => {
            tracing::info!(delivery = %id, task = %task_id, attempts = attempts + 1, "callback delivered");
            store.delivered(&id).await
        }
        Err(err) => {
            let failures = attempts.saturating_add(1);
            let next_at = if err.is_permanent() {
                None
            } else {
                policy.next_attempt_at(created_at, failures, now_ms())
            };
            let message = err.to_string();
            match next_at {
                Some(next_at) => {
                    tracing::warn!(
                        delivery = %id, task = %task_id, failures,
                        retry_in_ms = next_at - now_ms(), error = %message,
                        "callback failed; will retry"
                    );
                    store.retry_delivery(&id, next_at, &message).await
                }
                None => {
                    tracing::error!(
                        delivery = %id, task = %task_id, failures, error = %message,
                        "callback failed; giving up"
                    );
                    store.abandon_delivery(&id, &message).await
                }
            }
        }
    };
    if let Err(err) = recorded {
        // Still due in the store: it is sent again at the next poll.
        tracing::warn!(delivery = %id, %err, "could not record a callback delivery's outcome");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use async_trait::async_trait;
    use outpaint_queue::{
        Admission, CallbackOutbox, Claimed, Lease, Models, NewTask, QueueStats, StoreError, Task,
        TaskStore, WorkerRegistry,
    };

    use super::super::OutboundConfig;
    use super::super::test_server::{Reply, TestServer};
    use super::*;

    #[test]
    fn default_backoff_schedule() {
        let policy = RetryPolicy::default();
        let secs: Vec<u64> = (1..=12).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(policy.backoff(0), Duration::from_secs(1));
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn gives_up_after_the_deadline_only() {
        let policy = RetryPolicy::default();
        let day_ms = 24 * 3600 * 1000;
        assert_eq!(policy.next_attempt_at(0, 1, 0), Some(1000));
        assert_eq!(
            policy.next_attempt_at(0, 40, day_ms - 600_000),
            Some(day_ms)
        );
        assert_eq!(policy.next_attempt_at(0, 40, day_ms - 599_999), None);
    }

    /// SPEC 4: retries go on for at least an hour. Simulates a receiver that is always down.
    #[test]
    fn default_policy_retries_for_at_least_an_hour() {
        let policy = RetryPolicy::default();
        let (mut now, mut failures, mut last) = (0_i64, 0_u32, 0_i64);
        while let Some(next) = policy.next_attempt_at(0, failures + 1, now) {
            failures += 1;
            last = next;
            now = next;
        }
        assert!(last >= 3600 * 1000, "last attempt at {last} ms");
        assert!(last <= 24 * 3600 * 1000);
        assert!((100..200).contains(&failures), "{failures} attempts");
    }

    /// A store that keeps deliveries in memory, for the loop alone.
    #[derive(Default)]
    struct MemStore {
        inner: Mutex<MemState>,
    }

    #[derive(Default)]
    struct MemState {
        /// Pending deliveries with the time they are due.
        pending: Vec<(Delivery, i64)>,
        delivered: Vec<String>,
        retried: Vec<(String, i64, String)>,
        abandoned: Vec<(String, String)>,
    }

    impl MemStore {
        fn with(deliveries: Vec<Delivery>) -> Arc<MemStore> {
            let store = MemStore::default();
            store.inner.lock().unwrap().pending = deliveries.into_iter().map(|d| (d, 0)).collect();
            Arc::new(store)
        }

        fn state<T>(&self, f: impl FnOnce(&MemState) -> T) -> T {
            f(&self.inner.lock().unwrap())
        }

        fn remove(&self, id: &str) {
            self.inner
                .lock()
                .unwrap()
                .pending
                .retain(|(d, _)| d.id != id);
        }
    }

    #[async_trait]
    impl TaskStore for MemStore {
        async fn create(&self, _: NewTask, _: Admission) -> Result<Task, StoreError> {
            unreachable!()
        }
        async fn find(&self, _: &str, _: &str) -> Result<Option<Task>, StoreError> {
            unreachable!()
        }
        async fn list(&self, _: &str, _: u32, _: u32) -> Result<Vec<Task>, StoreError> {
            unreachable!()
        }
        async fn claim(
            &self,
            _: &Models,
            _: Duration,
            _: u32,
        ) -> Result<Option<Claimed>, StoreError> {
            unreachable!()
        }
        async fn wait_for_work(&self, _: &Models, _: Duration) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn heartbeat(
            &self,
            _: &Lease,
            _: Duration,
            _: Option<f32>,
        ) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn succeed(&self, _: &Lease, _: String) -> Result<Task, StoreError> {
            unreachable!()
        }
        async fn fail(&self, _: &Lease, _: String) -> Result<Task, StoreError> {
            unreachable!()
        }
        async fn release(&self, _: &Lease, _: Duration, _: bool) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn stats(&self) -> Result<QueueStats, StoreError> {
            unreachable!()
        }
        async fn purge_finished(&self, _: i64) -> Result<Vec<String>, StoreError> {
            unreachable!()
        }
    }

    #[async_trait]
    impl WorkerRegistry for MemStore {
        async fn register_worker(
            &self,
            _: &str,
            _: &Models,
            _: Duration,
        ) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn deregister_worker(&self, _: &str) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn unserved(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
            unreachable!()
        }
    }

    /// Hands due deliveries out again while they are in flight (no claim), so that the loop's
    /// own in-flight check is what is tested.
    #[async_trait]
    impl CallbackOutbox for MemStore {
        async fn claim_deliveries(
            &self,
            _: Duration,
            limit: u32,
        ) -> Result<Vec<Delivery>, StoreError> {
            let now_ms = now_ms();
            Ok(self.state(|state| {
                state
                    .pending
                    .iter()
                    .filter(|(_, due)| *due <= now_ms)
                    .take(limit as usize)
                    .map(|(d, _)| d.clone())
                    .collect()
            }))
        }

        async fn wait_for_deliveries(&self, _: Duration) -> Result<(), StoreError> {
            unreachable!()
        }

        async fn delivered(&self, delivery_id: &str) -> Result<(), StoreError> {
            self.remove(delivery_id);
            self.inner
                .lock()
                .unwrap()
                .delivered
                .push(delivery_id.to_owned());
            Ok(())
        }

        async fn retry_delivery(
            &self,
            id: &str,
            next_at_ms: i64,
            error: &str,
        ) -> Result<(), StoreError> {
            let mut state = self.inner.lock().unwrap();
            for (delivery, due) in &mut state.pending {
                if delivery.id == id {
                    delivery.attempts += 1;
                    *due = next_at_ms;
                }
            }
            state
                .retried
                .push((id.to_owned(), next_at_ms, error.to_owned()));
            Ok(())
        }

        async fn abandon_delivery(&self, id: &str, error: &str) -> Result<(), StoreError> {
            self.remove(id);
            self.inner
                .lock()
                .unwrap()
                .abandoned
                .push((id.to_owned(), error.to_owned()));
            Ok(())
        }
    }

    fn delivery(id: &str, task_id: &str, url: String) -> Delivery {
        Delivery {
            id: id.into(),
            task_id: task_id.into(),
            url,
            body: format!(r#"{{"task_id":"{task_id}"}}"#),
            attempts: 0,
            created_at: now_ms(),
        }
    }

    fn fast_policy() -> RetryPolicy {
        RetryPolicy {
            first: Duration::from_millis(50),
            factor: 2,
            max_interval: Duration::from_millis(200),
            give_up_after: Duration::from_secs(60),
        }
    }

    /// Runs the loop until `done` holds for the store (or 10 s pass), then stops it and
    /// checks it stopped promptly.
    async fn run_until(
        store: Arc<MemStore>,
        policy: RetryPolicy,
        signer: Option<WebhookSigner>,
        done: impl Fn(&MemState) -> bool,
    ) {
        let outbound = Outbound::new(OutboundConfig {
            allow_private: true,
            callback_timeout: Duration::from_secs(5),
            ..OutboundConfig::default()
        })
        .unwrap();
        let wake = Arc::new(Notify::new());
        let (shutdown_sender, shutdown) = watch::channel(false);
        let task = tokio::spawn(run_deliveries(
            store.clone(),
            outbound,
            signer,
            policy,
            Arc::clone(&wake),
            shutdown,
        ));
        let started = Instant::now();
        while !store.state(&done) {
            assert!(started.elapsed() < Duration::from_secs(10), "timed out");
            // Wakes it far more often than it polls: must not cause duplicate sends.
            wake.notify_one();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown_sender.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stops promptly")
            .unwrap();
    }

    #[tokio::test]
    async fn delivers_signed_and_marks_delivered() {
        let server = TestServer::start(|_| Reply::status(200, "OK")).await;
        let store = MemStore::with(vec![
            delivery("d1", "t1", server.url("/a")),
            delivery("d2", "t2", server.url("/b")),
        ]);
        let signer = WebhookSigner::new("s3cret").unwrap();
        run_until(store.clone(), fast_policy(), Some(signer), |s| {
            s.delivered.len() == 2
        })
        .await;
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        for request in &requests {
            assert!(request.headers["webhook-signature"].starts_with("v1,"));
        }
        store.state(|s| assert!(s.pending.is_empty() && s.retried.is_empty()));
    }

    #[tokio::test]
    async fn retries_after_failure_then_delivers() {
        let calls = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&calls);
        let server = TestServer::start(move |_| {
            let mut calls = counter.lock().unwrap();
            *calls += 1;
            if *calls <= 2 {
                Reply::status(503, "Service Unavailable")
            } else {
                Reply::status(200, "OK")
            }
        })
        .await;
        let store = MemStore::with(vec![delivery("d1", "t1", server.url("/hook"))]);
        let started = now_ms();
        run_until(store.clone(), fast_policy(), None, |s| {
            s.delivered.len() == 1
        })
        .await;
        assert_eq!(*calls.lock().unwrap(), 3);
        let retried = store.state(|s| s.retried.clone());
        assert_eq!(retried.len(), 2);
        assert!(retried[0].2.contains("503"), "{}", retried[0].2);
        // The second retry waits twice as long as the first (50 ms, then 100 ms).
        assert!(retried[0].1 >= started + 50);
        assert!(retried[1].1 - retried[0].1 >= 100);
    }

    #[tokio::test]
    async fn abandons_after_give_up_after() {
        let server = TestServer::start(|_| Reply::status(500, "Internal Server Error")).await;
        let mut old = delivery("d1", "t1", server.url("/hook"));
        old.created_at = now_ms() - 3_600_000;
        let bad_url = delivery("d2", "t2", "ftp://example.com/hook".into());
        let store = MemStore::with(vec![old, bad_url]);
        let policy = RetryPolicy {
            give_up_after: Duration::from_secs(60),
            ..fast_policy()
        };
        run_until(store.clone(), policy, None, |s| s.abandoned.len() == 2).await;
        store.state(|s| {
            assert!(s.retried.is_empty());
            assert!(
                s.abandoned
                    .iter()
                    .any(|(id, e)| id == "d1" && e.contains("500"))
            );
            assert!(
                s.abandoned
                    .iter()
                    .any(|(id, e)| id == "d2" && e.contains("ftp"))
            );
        });
    }

    #[tokio::test]
    async fn never_sends_the_same_delivery_twice_at_once() {
        // The receiver takes 400 ms; meanwhile the store keeps handing the delivery out.
        let server = TestServer::start(|_| {
            Reply::Delayed(
                Duration::from_millis(400),
                Box::new(Reply::status(200, "OK")),
            )
        })
        .await;
        let store = MemStore::with(vec![
            delivery("d1", "t1", server.url("/hook")),
            delivery("d2", "t1", server.url("/hook")),
        ]);
        run_until(store.clone(), fast_policy(), None, |s| {
            s.delivered.len() == 2
        })
        .await;
        assert_eq!(server.requests().len(), 2);
        // Same task: one after the other, in order.
        store.state(|s| assert_eq!(s.delivered, ["d1", "d2"]));
    }

    #[tokio::test]
    async fn stops_promptly_with_a_hanging_receiver() {
        let server = TestServer::start(|_| Reply::Hang).await;
        let store = MemStore::with(vec![delivery("d1", "t1", server.url("/hook"))]);
        let wait_for_request = {
            let requests = server.requests.clone();
            move |_: &MemState| !requests.lock().unwrap().is_empty()
        };
        run_until(store.clone(), fast_policy(), None, wait_for_request).await;
        // Still pending: sent again after a restart.
        store.state(|s| assert_eq!(s.pending.len(), 1));
    }

    #[tokio::test]
    async fn stops_when_the_sender_is_dropped() {
        let store = MemStore::with(Vec::new());
        let outbound = Outbound::new(OutboundConfig::default()).unwrap();
        let (shutdown_sender, shutdown) = watch::channel(false);
        let task = tokio::spawn(run_deliveries(
            store,
            outbound,
            None,
            RetryPolicy::default(),
            Arc::new(Notify::new()),
            shutdown,
        ));
        drop(shutdown_sender);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stops promptly")
            .unwrap();
    }
}
