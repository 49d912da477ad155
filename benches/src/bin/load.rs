//! Load benchmark of `outpaint serve` over loopback HTTP; its figures go in benches/RESULTS.md.
//!
//! Two modes:
//! - `run` (default): `--clients` concurrent clients, for `--duration` seconds, each creating
//!   a task with a 1-megapixel JPEG sent as base64 and polling it (GET by id, back to back)
//!   until it finishes, then again. Reports 5xx, create latency percentiles, query throughput
//!   and the server's peak RSS.
//! - `fill`: starts the server with `--workers 0`, creates `--tasks` tasks (they all wait in the
//!   queue) and reports the server's peak RSS.
//!
//! By default it starts the release binary itself (`--backend edge --max-queued 100000
//! --max-tasks-per-account 100000`, in a temporary data folder), optionally pinned to some
//! CPUs with `taskset`; `--url` (and `--pid` for the memory figures) uses a running server.
//!
//! ```sh
//! cargo build --release -p outpaint -p outpaint-benches
//! target/release/load --cpus 0,1                 # 64 clients, 60 s
//! target/release/load --mode fill --tasks 1000
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Cursor};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::{Parser, ValueEnum};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Mode {
    /// Clients create and poll tasks for `--duration` seconds.
    Run,
    /// Fill the queue of a server with no workers and measure its memory.
    Fill,
}

/// Load benchmark of `outpaint serve` (see the module documentation).
#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum, default_value = "run")]
    mode: Mode,
    /// Base URL of a running server; without it the benchmark starts one.
    #[arg(long)]
    url: Option<String>,
    /// Process id of the server given with `--url`, for the memory figures.
    #[arg(long)]
    pid: Option<u32>,
    /// The `outpaint` binary to start.
    #[arg(long, env = "OUTPAINT_BIN", default_value = default_binary())]
    bin: PathBuf,
    /// Pin the started server to these CPUs (`taskset -c`), e.g. `0,1`.
    #[arg(long)]
    cpus: Option<String>,
    /// More arguments for the started server (repeatable), e.g. `--server-arg=--workers=2`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Concurrent clients (run mode).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of load (run mode).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Milliseconds a client waits between two polls of its task (0: back to back, the most
    /// query load).
    #[arg(long, default_value_t = 0)]
    poll_ms: u64,
    /// Tasks to queue (fill mode).
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    /// Side of the square test image, in pixels (1000: one megapixel).
    #[arg(long, default_value_t = 1000)]
    side: u32,
}

const fn default_binary() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/outpaint")
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match args.mode {
            Mode::Run => run(&args).await,
            Mode::Fill => fill(&args).await,
        }
    })
}

/// A server this benchmark started; killed when dropped.
struct Started {
    child: Child,
    _data_dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `outpaint serve` with the benchmark's flags and `extra`; returns it, its URL and pid.
fn start_server(args: &Args, extra: &[&str]) -> Result<(Started, String, u32)> {
    let data_dir = tempfile::tempdir()?;
    let log = std::fs::File::create(data_dir.path().join("server.log"))?;
    let mut command = match &args.cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.args(["-c", cpus]).arg(&args.bin);
            command
        }
        None => Command::new(&args.bin),
    };
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .args(["--backend", "edge", "--max-queued", "100000"])
        .args(["--max-tasks-per-account", "100000", "--log-format", "json"])
        .args(extra)
        .args(&args.server_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {}", args.bin.display()))?;
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first)?;
    let Some(address) = first.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        let log = std::fs::read_to_string(data_dir.path().join("server.log"))?;
        bail!("the server printed {first:?}; its log:\n{log}");
    };
    let url = address.to_string();
    let pid = child.id();
    Ok((
        Started {
            child,
            _data_dir: data_dir,
        },
        url,
        pid,
    ))
}

/// VmHWM (peak) and VmRSS (now) of `pid`, in MiB.
fn memory(pid: Option<u32>) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn mib(value: Option<(f64, f64)>, peak: bool) -> String {
    match value {
        Some((hwm, rss)) => format!("{:.1} MiB", if peak { hwm } else { rss }),
        None => "n/a (no pid)".into(),
    }
}

/// The create body: a textured `side × side` JPEG as base64, direction `right`.
fn create_body(side: u32) -> Result<Vec<u8>> {
    let image = RgbImage::from_fn(side, side, |x, y| {
        let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 27;
        Rgb([
            (x * 200 / side + noise) as u8,
            (y * 200 / side + noise) as u8,
            ((x + y) % 64 + noise * 2) as u8,
        ])
    });
    let mut jpeg = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image).write_to(&mut jpeg, ImageFormat::Jpeg)?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(jpeg.get_ref());
    Ok(serde_json::to_vec(
        &json!({"image": encoded, "direction": "right"}),
    )?)
}

fn client(connections: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(60))
        .build()?)
}

#[derive(Default)]
struct Counters {
    creates: AtomicU64,
    creates_ok: AtomicU64,
    creates_429: AtomicU64,
    queries: AtomicU64,
    server_errors: AtomicU64,
    other_errors: AtomicU64,
    transport_errors: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

struct Shared {
    http: reqwest::Client,
    base: String,
    body: Vec<u8>,
    counters: Counters,
    create_latencies: Mutex<Vec<Duration>>,
    query_latencies: Mutex<Vec<Duration>>,
}

/// Sends one request; counts 5xx and transport errors; returns the status and JSON body.
async fn send(shared: &Shared, request: reqwest::RequestBuilder) -> Option<(u16, Value)> {
    let counters = &shared.counters;
    let response = match request.send().await {
        Ok(response) => response,
        Err(_) => {
            counters.transport_errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let status = response.status().as_u16();
    if status >= 500 {
        counters.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(_) => {
            counters.transport_errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    Some((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// One client: create, poll until finished, repeat until `end`.
async fn client_loop(shared: Arc<Shared>, end: Instant, poll: Duration) {
    let counters = &shared.counters;
    let mut creates = Vec::new();
    let mut queries = Vec::new();
    while Instant::now() < end {
        let request = shared
            .http
            .post(format!("{}/v1/images/expand", shared.base))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(shared.body.clone());
        let started = Instant::now();
        let reply = send(&shared, request).await;
        creates.push(started.elapsed());
        counters.creates.fetch_add(1, Ordering::Relaxed);
        let Some((status, body)) = reply else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let id = match (status, body["data"]["task_id"].as_str()) {
            (200, Some(id)) => {
                counters.creates_ok.fetch_add(1, Ordering::Relaxed);
                id.to_string()
            }
            (429, _) => {
                counters.creates_429.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            _ => {
                if status < 500 {
                    counters.other_errors.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let url = format!("{}/v1/images/expand/{id}", shared.base);
        while Instant::now() < end {
            if !poll.is_zero() {
                tokio::time::sleep(poll).await;
            }
            let started = Instant::now();
            let reply = send(&shared, shared.http.get(&url)).await;
            queries.push(started.elapsed());
            counters.queries.fetch_add(1, Ordering::Relaxed);
            match reply {
                Some((200, body)) => match body["data"]["task_status"].as_str() {
                    Some("succeed") => {
                        counters.succeeded.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Some("failed") => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    _ => {}
                },
                Some((status, _)) if status < 500 => {
                    counters.other_errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
    shared.create_latencies.lock().await.extend(creates);
    shared.query_latencies.lock().await.extend(queries);
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

async fn run(args: &Args) -> Result<()> {
    let (started, base, pid) = match &args.url {
        Some(url) => (None, url.trim_end_matches('/').to_string(), args.pid),
        None => {
            let (started, url, pid) = start_server(args, &[])?;
            (Some(started), url, Some(pid))
        }
    };
    let body = create_body(args.side)?;
    let body_len = body.len();
    let shared = Arc::new(Shared {
        http: client(args.clients)?,
        base: base.clone(),
        body,
        counters: Counters::default(),
        create_latencies: Mutex::new(Vec::new()),
        query_latencies: Mutex::new(Vec::new()),
    });
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration);
    let clients: Vec<_> = (0..args.clients)
        .map(|_| {
            let poll = Duration::from_millis(args.poll_ms);
            tokio::spawn(client_loop(shared.clone(), end, poll))
        })
        .collect();
    for client in clients {
        client.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let memory = memory(pid);
    let server_view = server_timings(&shared.http, &base).await;
    drop(started);

    let c = &shared.counters;
    let mut creates = shared.create_latencies.lock().await.clone();
    let mut queries = shared.query_latencies.lock().await.clone();
    creates.sort();
    queries.sort();
    let queries_n = c.queries.load(Ordering::Relaxed);
    let creates_n = c.creates.load(Ordering::Relaxed);
    println!(
        "load: {} clients, {:.1} s, polls {}, 1 create body = {:.0} KiB ({}×{} JPEG, base64), server {base}",
        args.clients,
        elapsed,
        if args.poll_ms == 0 {
            "back to back".to_string()
        } else {
            format!("every {} ms", args.poll_ms)
        },
        body_len as f64 / 1024.0,
        args.side,
        args.side
    );
    println!();
    println!("| metric | value |");
    println!("| --- | --- |");
    println!(
        "| requests | {} ({} creates, {} queries) |",
        creates_n + queries_n,
        creates_n,
        queries_n
    );
    println!(
        "| 5xx responses | {} |",
        c.server_errors.load(Ordering::Relaxed)
    );
    println!(
        "| transport errors | {} |",
        c.transport_errors.load(Ordering::Relaxed)
    );
    println!(
        "| creates accepted / 429 / other 4xx | {} / {} / {} |",
        c.creates_ok.load(Ordering::Relaxed),
        c.creates_429.load(Ordering::Relaxed),
        c.other_errors.load(Ordering::Relaxed)
    );
    println!(
        "| tasks finished (succeed / failed) | {} / {} |",
        c.succeeded.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed)
    );
    println!(
        "| create latency p50 / p90 / p99 / max | {:.1} / {:.1} / {:.1} / {:.1} ms |",
        percentile(&creates, 50.0),
        percentile(&creates, 90.0),
        percentile(&creates, 99.0),
        percentile(&creates, 100.0)
    );
    println!(
        "| query latency p50 / p99 | {:.2} / {:.2} ms |",
        percentile(&queries, 50.0),
        percentile(&queries, 99.0)
    );
    println!(
        "| query throughput | {:.0} requests/s |",
        queries_n as f64 / elapsed
    );
    println!("| server peak RSS (VmHWM) | {} |", mib(memory, true));
    if !server_view.is_empty() {
        println!();
        println!("The server's own timings (its /metrics histograms, seconds; the route");
        println!("`/v1/images/expand` is the creates here, `/{{id}}` the queries):");
        println!();
        println!("```");
        println!("{server_view}");
        println!("```");
    }
    Ok(())
}

/// One Prometheus histogram series.
#[derive(Default)]
struct Histogram {
    /// Upper bounds with cumulative counts.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// The server's view of the same run, from its `/metrics` histograms: per request route and
/// per stage, the count, the mean and the bucket bounds of p50 and p99. Tells time spent in
/// the server from time spent on the way (or in the client).
async fn server_timings(http: &reqwest::Client, base: &str) -> String {
    let Ok(response) = http.get(format!("{base}/metrics")).send().await else {
        return String::new();
    };
    let text = response.text().await.unwrap_or_default();
    // Per series, named by its labels without `le`.
    let mut series: BTreeMap<String, Histogram> = BTreeMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        for metric in [
            "outpaint_http_request_duration_seconds",
            "outpaint_stage_duration_seconds",
        ] {
            let Some(rest) = key.strip_prefix(metric) else {
                continue;
            };
            if let Some(labels) = rest.strip_prefix("_bucket{") {
                let labels = labels.trim_end_matches('}');
                let Some((others, le)) = labels.rsplit_once(",le=\"") else {
                    continue;
                };
                let le = le.trim_end_matches('"');
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                series
                    .entry(others.to_string())
                    .or_default()
                    .buckets
                    .push((bound, value));
            } else if let Some(labels) = rest.strip_prefix("_sum{") {
                series
                    .entry(labels.trim_end_matches('}').to_string())
                    .or_default()
                    .sum = value;
            } else if let Some(labels) = rest.strip_prefix("_count{") {
                series
                    .entry(labels.trim_end_matches('}').to_string())
                    .or_default()
                    .count = value;
            }
        }
    }
    let bound = |buckets: &[(f64, f64)], count: f64, q: f64| -> String {
        buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= q * count)
            .map_or("?".into(), |(le, _)| format!("≤ {le}"))
    };
    series
        .iter()
        .filter(|(name, h)| {
            h.count > 0.0 && (name.starts_with("stage=") || name.contains("/v1/images/expand"))
        })
        .map(|(name, h)| {
            format!(
                "{name}: n {}, mean {:.4}, p50 {}, p99 {}",
                h.count,
                h.sum / h.count,
                bound(&h.buckets, h.count, 0.5),
                bound(&h.buckets, h.count, 0.99)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn fill(args: &Args) -> Result<()> {
    let (started, base, pid) = match &args.url {
        Some(url) => (None, url.trim_end_matches('/').to_string(), args.pid),
        None => {
            let (started, url, pid) = start_server(args, &["--workers", "0"])?;
            (Some(started), url, Some(pid))
        }
    };
    let at_start = memory(pid);
    let body = create_body(args.side)?;
    let body_len = body.len();
    let concurrency = 16;
    let shared = Arc::new(Shared {
        http: client(concurrency)?,
        base: base.clone(),
        body,
        counters: Counters::default(),
        create_latencies: Mutex::new(Vec::new()),
        query_latencies: Mutex::new(Vec::new()),
    });
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let shared = shared.clone();
            let next = next.clone();
            let total = args.tasks as u64;
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let request = shared
                        .http
                        .post(format!("{}/v1/images/expand", shared.base))
                        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                        .body(shared.body.clone());
                    let started = Instant::now();
                    let reply = send(&shared, request).await;
                    shared.create_latencies.lock().await.push(started.elapsed());
                    let counters = &shared.counters;
                    counters.creates.fetch_add(1, Ordering::Relaxed);
                    match reply {
                        Some((200, _)) => counters.creates_ok.fetch_add(1, Ordering::Relaxed),
                        Some((429, _)) => counters.creates_429.fetch_add(1, Ordering::Relaxed),
                        _ => counters.other_errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let filled = memory(pid);
    // Listing the queue too: the server must not load every image to answer.
    let list = shared
        .http
        .get(format!("{base}/v1/images/expand?pageNum=1&pageSize=500"))
        .send()
        .await?
        .status();
    let after_list = memory(pid);
    drop(started);

    let c = &shared.counters;
    let mut creates = shared.create_latencies.lock().await.clone();
    creates.sort();
    println!(
        "fill: {} tasks of {:.0} KiB each ({}×{} JPEG, base64), {concurrency} at a time, server {base}",
        args.tasks,
        body_len as f64 / 1024.0,
        args.side,
        args.side
    );
    println!();
    println!("| metric | value |");
    println!("| --- | --- |");
    println!(
        "| creates accepted / 429 / other | {} / {} / {} |",
        c.creates_ok.load(Ordering::Relaxed),
        c.creates_429.load(Ordering::Relaxed),
        c.other_errors.load(Ordering::Relaxed)
    );
    println!(
        "| 5xx responses | {} |",
        c.server_errors.load(Ordering::Relaxed)
    );
    println!(
        "| time to queue them | {elapsed:.1} s ({:.0} creates/s) |",
        args.tasks as f64 / elapsed
    );
    println!(
        "| create latency p50 / p99 | {:.1} / {:.1} ms |",
        percentile(&creates, 50.0),
        percentile(&creates, 99.0)
    );
    println!("| server RSS at start | {} |", mib(at_start, false));
    println!(
        "| server RSS with the queue full | {} |",
        mib(filled, false)
    );
    println!("| server peak RSS (VmHWM) | {} |", mib(filled, true));
    println!(
        "| peak RSS after listing 500 of them (HTTP {list}) | {} |",
        mib(after_list, true)
    );
    Ok(())
}
