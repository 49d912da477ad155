//! Prometheus metrics, all prefixed `outpaint_`: requests by route and status, their latency,
//! tasks by status and the queue depth (read from the store at each scrape), time per stage of
//! a task, and finished tasks by outcome.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use outpaint_queue::{QueueStats, TaskStatus};

/// The process's metrics recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the global recorder. Once per process.
    pub fn install() -> anyhow::Result<Self> {
        let handle = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 120.0,
            ])?
            .install_recorder()?;
        Ok(Metrics { handle })
    }

    /// Prometheus text of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    pub fn record_request(&self, method: &Method, route: &str, status: StatusCode, took: Duration) {
        let labels = [
            ("method", method.to_string()),
            ("route", route.to_string()),
            ("status", status.as_u16().to_string()),
        ];
        metrics::counter!("outpaint_http_requests_total", &labels).increment(1);
        metrics::histogram!("outpaint_http_request_duration_seconds", "route" => route.to_string())
            .record(took.as_secs_f64());
    }

    pub fn record_queue(&self, stats: &QueueStats) {
        for status in TaskStatus::ALL {
            metrics::gauge!("outpaint_tasks", "status" => status.as_str())
                .set(stats.get(status) as f64);
        }
        metrics::gauge!("outpaint_queue_depth").set(stats.submitted as f64);
    }

    /// Time spent in one stage of a task: at create, decode_wait (for a decoding slot), decode
    /// (the image check) and enqueue (committing the task); in a worker, generate, composite,
    /// encode and store (writing results).
    pub fn record_stage(&self, stage: &'static str, took: Duration) {
        metrics::histogram!("outpaint_stage_duration_seconds", "stage" => stage)
            .record(took.as_secs_f64());
    }

    /// A task ended (succeed, failed) or was handed back (released).
    pub fn record_outcome(&self, outcome: &'static str) {
        metrics::counter!("outpaint_tasks_finished_total", "outcome" => outcome).increment(1);
    }
}
