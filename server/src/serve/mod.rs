//! `outpaint serve`: the Kling-compatible HTTP API over a durable task queue.
//!
//! - [`config`]: the flags;
//! - [`api`]: routes and handlers (both route families), with [`wire`] (the JSON), [`extract`]
//!   (body parsing, request ids), [`auth`] (Kling JWTs), [`ratelimit`] and [`error`] (the one
//!   mapping of failures to HTTP statuses and Kling codes);
//! - [`tasks`]: the job stored with each task and the task object clients see;
//! - [`worker`]: workers that take tasks from the store and run the engine;
//! - [`results`]: result files; [`metrics`]; [`openapi`]; [`web`]: the page at `/`;
//! - callbacks and image downloads are `crate::outbound`.
//!
//! Start-up: open the store, start workers, the callback sender and the retention sweeper,
//! then listen. Shutdown (SIGTERM, Ctrl-C): refuse new tasks (503 / 5001), stop taking tasks,
//! give running ones `--shutdown-grace-secs` to finish, hand back what is still running, close.

mod api;
mod auth;
pub mod config;
mod error;
mod extract;
mod metrics;
mod openapi;
mod ratelimit;
mod results;
mod tasks;
mod web;
mod wire;
mod worker;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use outpaint_canvas::Limits;
use outpaint_engine::Engine;
use outpaint_queue::{Admission, CallbackRenderer, SqliteOptions, SqliteStore, Store, now_ms};
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{error, info, warn};

use self::api::AppState;
use self::auth::Accounts;
use self::config::ServeArgs;
use self::ratelimit::RateLimiter;
use self::results::ResultFiles;
use crate::outbound::{Outbound, OutboundConfig, RetryPolicy, WebhookSigner};

/// How often finished tasks past the retention period are looked for.
const RETENTION_SWEEP: Duration = Duration::from_secs(600);

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(args: &ServeArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outpaint-serve")
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: &ServeArgs) -> Result<()> {
    let accounts = Accounts::new(&args.accounts()?);
    if !accounts.enabled() {
        warn!(
            "no access keys configured: authentication is off, every request is one anonymous account"
        );
    }
    let limits = Limits::from(&args.limits);
    let max_file_bytes = limits.max_file_bytes;
    let mut engine = Engine::new(limits);
    crate::models::register_model(&mut engine, &args.backend, None, 1.0)?;
    let default = args.backend.name();
    engine
        .set_default_backend(&default)
        .with_context(|| format!("--backend {default}"))?;
    let engine = Arc::new(engine);
    let signer = args
        .webhook_secret
        .as_deref()
        .map(WebhookSigner::new)
        .transpose()
        .context("--webhook-secret")?;
    let outbound = Outbound::new(OutboundConfig {
        allow_private: args.allow_private_urls,
        fetch_timeout: Duration::from_secs(args.fetch_timeout_secs),
        max_image_bytes: max_file_bytes,
        ..OutboundConfig::default()
    })
    .context("cannot set up the HTTP client")?;

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("{}: cannot create the data folder", args.data_dir.display()))?;
    let listener =
        TcpListener::bind(args.bind).with_context(|| format!("cannot listen on {}", args.bind))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{local}"))
        .trim_end_matches('/')
        .to_string();
    let default_model = engine.default_backend().to_string();

    let renderer: CallbackRenderer = {
        let (public_url, default_model) = (public_url.clone(), default_model.clone());
        Arc::new(move |task| {
            serde_json::to_string(&tasks::task_object(task, &public_url, &default_model))
                .unwrap_or_default()
        })
    };
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            SqliteOptions {
                path: args.data_dir.join("tasks.sqlite"),
                durable_commits: args.durable_commits,
            },
            renderer,
        )
        .await
        .context("cannot open the task store")?,
    );
    let results = ResultFiles::open(args.data_dir.join("results")).with_context(|| {
        format!(
            "{}: cannot create the results folder",
            args.data_dir.display()
        )
    })?;
    let metrics = metrics::Metrics::install()?;
    let work_available = Arc::new(Notify::new());
    let deliveries_due = Arc::new(Notify::new());
    let draining = Arc::new(AtomicBool::new(false));
    let (stop_sender, stop) = watch::channel(false);
    let (abort_sender, abort) = watch::channel(false);

    let deliveries = tokio::spawn(crate::outbound::run_deliveries(
        Arc::clone(&store),
        outbound.clone(),
        signer,
        RetryPolicy::default(),
        Arc::clone(&deliveries_due),
        stop.clone(),
    ));
    let sweeper = tokio::spawn(sweep_expired(
        Arc::clone(&store),
        results.clone(),
        args.retention(),
        stop.clone(),
    ));
    let worker_context = Arc::new(worker::WorkerContext {
        engine: Arc::clone(&engine),
        store: Arc::clone(&store),
        results: results.clone(),
        metrics: metrics.clone(),
        default_model: default_model.clone(),
        lease: args.lease(),
        max_attempts: args.max_attempts,
        work_available: Arc::clone(&work_available),
        deliveries_due: Arc::clone(&deliveries_due),
    });
    let workers: Vec<_> = (0..args.workers)
        .map(|index| {
            tokio::spawn(worker::run(
                Arc::clone(&worker_context),
                index,
                stop.clone(),
                abort.clone(),
            ))
        })
        .collect();

    let state = AppState {
        engine: Arc::clone(&engine),
        store: Arc::clone(&store),
        outbound,
        accounts: Arc::new(accounts),
        rate_limiter: Arc::new(RateLimiter::new(args.rate_limit)),
        results,
        admission: Admission {
            max_queued: args.max_queued,
            max_unfinished_per_account: args.max_tasks_per_account,
        },
        public_url: public_url.clone().into(),
        default_model: default_model.into(),
        work_available,
        draining: Arc::clone(&draining),
        // Twice the cores (at least 4): creates come in bursts, and a decode that waits for a
        // slot waits longer than one that shares a core. Bounds memory: a 16-megapixel image
        // takes about 50 MB to check.
        decode_permits: Arc::new(Semaphore::new(
            (2 * std::thread::available_parallelism().map_or(2, |n| n.get())).max(4),
        )),
        metrics,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
    };
    let app = api::router(state, args.max_body_bytes());
    let handle = axum_server::Handle::new();
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let server = {
        let handle = handle.clone();
        let make_service = app.into_make_service();
        match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .context("cannot load --tls-cert / --tls-key")?;
                tokio::spawn(async move {
                    axum_server::from_tcp_rustls(listener, tls)
                        .handle(handle)
                        .serve(make_service)
                        .await
                })
            }
            _ => tokio::spawn(async move {
                axum_server::from_tcp(listener)
                    .handle(handle)
                    .serve(make_service)
                    .await
            }),
        }
    };
    // The first line on stdout says where to connect (tests and scripts read it).
    println!("listening on {scheme}://{local}");
    info!(%public_url, workers = args.workers, "listening on {scheme}://{local}");

    tokio::select! {
        () = shutdown_signal() => {}
        finished = server => {
            finished.context("the HTTP server stopped")?.context("the HTTP server failed")?;
        }
    }

    info!(
        grace_secs = grace.as_secs(),
        "shutting down: no new tasks; running ones get the grace period"
    );
    draining.store(true, Ordering::Relaxed);
    handle.graceful_shutdown(Some(grace));
    let _ = stop_sender.send(true);
    let mut workers = futures_join(workers);
    if tokio::time::timeout(grace, &mut workers).await.is_err() {
        warn!("grace period over: handing running tasks back to the queue");
        let _ = abort_sender.send(true);
        workers.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), deliveries).await;
    sweeper.abort();
    info!("stopped");
    Ok(())
}

/// Waits for every worker.
fn futures_join(
    workers: Vec<tokio::task::JoinHandle<()>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        for worker in workers {
            if let Err(err) = worker.await {
                error!("a worker panicked: {err}");
            }
        }
    })
}

/// Deletes finished tasks older than the retention period, and their result files.
async fn sweep_expired(
    store: Arc<dyn Store>,
    results: ResultFiles,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let cutoff =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        match store.purge_finished(cutoff).await {
            Ok(ids) => {
                for id in &ids {
                    if let Err(err) = results.remove_task(id) {
                        warn!(task_id = %id, "cannot delete expired results: {err}");
                    }
                }
                if !ids.is_empty() {
                    info!(count = ids.len(), "deleted tasks past the retention period");
                }
            }
            Err(err) => warn!("cannot purge expired tasks: {err}"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETENTION_SWEEP) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            error!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                error!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
