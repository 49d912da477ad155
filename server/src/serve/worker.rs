//! Workers: take a task from the store, keep its lease alive, run the engine on a blocking
//! thread, store the results, and record the outcome. A task the worker cannot finish (lease
//! lost, shutdown) is left to the store to hand out again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use outpaint_engine::{Engine, EngineError, ErrorKind, ExpandRequest, JobControl};
use outpaint_queue::{Claimed, Lease, Models, Store, StoreError};
use tokio::sync::{Notify, watch};
use tracing::{Instrument, error, info, info_span, warn};

use super::metrics::Metrics;
use super::results::ResultFiles;
use super::tasks::{JobSpec, ResultRecord};

/// What every worker shares.
pub struct WorkerContext {
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub results: ResultFiles,
    pub metrics: Metrics,
    pub default_model: String,
    pub lease: Duration,
    pub max_attempts: u32,
    /// Notified when a task is created.
    pub work_available: Arc<Notify>,
    /// Notified after each status change, so callbacks go out at once.
    pub deliveries_due: Arc<Notify>,
}

/// How a run of the engine ended.
enum Outcome {
    Done(ResultRecord),
    /// The engine refused the input (it cannot succeed on another try).
    Invalid(String),
    /// Stopped early: shutdown, or the lease was lost.
    Cancelled,
    /// An internal failure; another try may succeed.
    Failed(String),
}

/// Takes and runs tasks until `stop` turns true; a running task is cancelled (and handed back)
/// when `abort` turns true.
pub async fn run(
    context: Arc<WorkerContext>,
    index: usize,
    mut stop: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        match context
            .store
            .claim(&Models::Any, context.lease, context.max_attempts)
            .await
        {
            Ok(Some(claimed)) => {
                let span = info_span!(
                    "task",
                    worker = index,
                    task_id = %claimed.task.id,
                    attempt = claimed.task.attempts
                );
                process(&context, claimed, abort.clone())
                    .instrument(span)
                    .await;
                context.deliveries_due.notify_one();
            }
            Ok(None) => {
                // Claiming may have ended tasks that ran out of attempts.
                context.deliveries_due.notify_one();
                tokio::select! {
                    () = context.work_available.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(err) => {
                error!(worker = index, "cannot take a task: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn process(context: &Arc<WorkerContext>, claimed: Claimed, mut abort: watch::Receiver<bool>) {
    let Claimed { task, input, lease } = claimed;
    context.deliveries_due.notify_one(); // the `processing` callback
    let spec: JobSpec = match serde_json::from_str(&task.spec) {
        Ok(spec) => spec,
        Err(err) => {
            finish_failed(
                context,
                &lease,
                format!("the stored task is unreadable: {err}"),
            )
            .await;
            return;
        }
    };
    info!(
        model = spec.model.as_deref().unwrap_or(&context.default_model),
        n = spec.n,
        "started"
    );

    let cancel = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU32::new(0f32.to_bits()));
    let lease_lost = Arc::new(AtomicBool::new(false));
    let heartbeat = tokio::spawn(keep_lease(
        Arc::clone(context),
        lease.clone(),
        Arc::clone(&progress),
        Arc::clone(&cancel),
        Arc::clone(&lease_lost),
    ));
    let aborted = Arc::clone(&cancel);
    let abort_watch = tokio::spawn(async move {
        if abort.wait_for(|aborting| *aborting).await.is_ok() {
            aborted.store(true, Ordering::Relaxed);
        }
    });

    let started = Instant::now();
    let job = {
        let context = Arc::clone(context);
        let (cancel, progress) = (Arc::clone(&cancel), Arc::clone(&progress));
        let task_id = task.id.clone();
        tokio::task::spawn_blocking(move || {
            run_engine(&context, &task_id, &spec, &input, &cancel, &progress)
        })
    };
    let outcome = job
        .await
        .unwrap_or_else(|panic| Outcome::Failed(format!("the generation panicked: {panic}")));
    heartbeat.abort();
    abort_watch.abort();
    let took = started.elapsed();

    if lease_lost.load(Ordering::Relaxed) {
        warn!("lease lost while generating; another worker has the task");
        if let Outcome::Done(record) = &outcome {
            context.results.remove(record);
        }
        return;
    }
    match outcome {
        Outcome::Done(record) => {
            let result = serde_json::to_string(&record).unwrap_or_default();
            match context.store.succeed(&lease, result).await {
                Ok(_) => {
                    info!(seconds = took.as_secs_f64(), "succeeded");
                    context.metrics.record_outcome("succeed");
                }
                Err(err) => {
                    warn!("cannot record the success: {err}");
                    context.results.remove(&record);
                }
            }
        }
        Outcome::Invalid(reason) => finish_failed(context, &lease, reason).await,
        Outcome::Cancelled => {
            // Shutdown: hand the task back without counting the attempt.
            match context.store.release(&lease, Duration::ZERO, false).await {
                Ok(()) => {
                    info!("handed back for another run");
                    context.metrics.record_outcome("released");
                }
                Err(err) => warn!("cannot hand the task back: {err}"),
            }
        }
        Outcome::Failed(reason) if task.attempts < context.max_attempts => {
            let delay = Duration::from_secs(2u64.saturating_pow(task.attempts).min(300));
            warn!(retry_in = ?delay, "attempt failed: {reason}");
            if let Err(err) = context.store.release(&lease, delay, true).await {
                warn!("cannot hand the task back: {err}");
            }
            context.metrics.record_outcome("retried");
        }
        Outcome::Failed(reason) => {
            let reason = format!("internal error after {} attempts: {reason}", task.attempts);
            finish_failed(context, &lease, reason).await;
        }
    }
}

async fn finish_failed(context: &WorkerContext, lease: &Lease, reason: String) {
    warn!("failed: {reason}");
    match context.store.fail(lease, reason).await {
        Ok(_) => context.metrics.record_outcome("failed"),
        Err(err) => warn!("cannot record the failure: {err}"),
    }
}

/// Renews the lease at a third of its length, with the progress; raises `cancel` when the
/// lease is lost (the store gave the task to another worker).
async fn keep_lease(
    context: Arc<WorkerContext>,
    lease: Lease,
    progress: Arc<AtomicU32>,
    cancel: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
) {
    let mut ticks = tokio::time::interval(context.lease / 3);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let done = f32::from_bits(progress.load(Ordering::Relaxed));
        match context
            .store
            .heartbeat(&lease, context.lease, Some(done))
            .await
        {
            Ok(()) => {}
            Err(StoreError::LeaseLost { .. }) => {
                lost.store(true, Ordering::Relaxed);
                cancel.store(true, Ordering::Relaxed);
                return;
            }
            Err(err) => warn!("heartbeat failed: {err}"),
        }
    }
}

/// Decodes, expands and writes the results. Blocking.
fn run_engine(
    context: &WorkerContext,
    task_id: &str,
    spec: &JobSpec,
    input: &[u8],
    cancel: &AtomicBool,
    progress: &AtomicU32,
) -> Outcome {
    let classify = |err: EngineError| match err.kind() {
        ErrorKind::InvalidInput => Outcome::Invalid(err.to_string()),
        ErrorKind::Cancelled => Outcome::Cancelled,
        ErrorKind::Internal => Outcome::Failed(err.to_string()),
    };
    let engine: &Engine = &context.engine;
    let image = match engine.decode(input) {
        Ok(image) => image,
        Err(err) => return classify(err),
    };
    let expansion = match spec.expansion.expansion() {
        Ok(expansion) => expansion,
        Err(err) => return Outcome::Invalid(err.to_string()),
    };
    let report = |p: outpaint_engine::Progress| {
        let done = p.completed as f32 / p.total.max(1) as f32;
        progress.store(done.to_bits(), Ordering::Relaxed);
    };
    let control = JobControl {
        progress: &report,
        cancel,
    };
    let request = ExpandRequest {
        image,
        expansion,
        options: spec.options(&context.default_model),
    };
    let expanded = match engine.expand_with(&request, &control) {
        Ok(expanded) => expanded,
        Err(err) => return classify(err),
    };
    let metrics = &context.metrics;
    metrics.record_stage("generate", expanded.timings.generate);
    metrics.record_stage("composite", expanded.timings.composite);
    metrics.record_stage("encode", expanded.timings.encode);
    let started = Instant::now();
    let written = context.results.write(task_id, &expanded);
    metrics.record_stage("store", started.elapsed());
    match written {
        Ok(record) => Outcome::Done(record),
        Err(err) => Outcome::Failed(format!("cannot write the results: {err}")),
    }
}
