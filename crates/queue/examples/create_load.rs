//! Measures `Store::create` latency under concurrent clients, as the server sees it.
//!
//! ```text
//! cargo run -p outpaint-queue --release --example create_load -- [CLIENTS] [CREATES_PER_CLIENT] [INPUT_KB] [DIR]
//! ```
//!
//! Each client creates tasks back to back (a closed loop, the worst case for a serialized
//! writer); a worker claims and finishes tasks meanwhile, as in the server. Prints latency
//! percentiles for `durable_commits` on and off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outpaint_queue::{
    Admission, CallbackRenderer, Models, NewTask, SqliteOptions, SqliteStore, TaskStore,
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |a| a.parse().unwrap());
    let clients = arg(0, 64);
    let per_client = arg(1, 20);
    let input_kb = arg(2, 300);
    let dir = match args.get(3) {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    for durable_commits in [true, false] {
        let path = dir.path().join(format!("load-{durable_commits}.sqlite"));
        let renderer: CallbackRenderer = Arc::new(|task| task.id.clone());
        let store = Arc::new(
            SqliteStore::open(
                SqliteOptions {
                    path,
                    durable_commits,
                },
                renderer,
            )
            .await
            .unwrap(),
        );
        let admission = Admission {
            max_queued: u64::MAX,
            max_unfinished_per_account: u64::MAX,
        };
        let worker = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                loop {
                    match store
                        .claim(&Models::Any, Duration::from_secs(60), 3)
                        .await
                        .unwrap()
                    {
                        Some(claimed) => {
                            store.succeed(&claimed.lease, "{}".into()).await.unwrap();
                        }
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            })
        };
        let started = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per_client);
                    for i in 0..per_client {
                        let task = NewTask {
                            id: format!("t-{c}-{i}"),
                            account: format!("account-{}", c % 8),
                            external_task_id: Some(format!("ext-{c}-{i}")),
                            callback_url: Some("https://example.invalid/hook".into()),
                            model: "infill".into(),
                            spec: "{\"prompt\":\"\"}".into(),
                            input: vec![(c + i) as u8; input_kb * 1024],
                        };
                        let t = Instant::now();
                        store.create(task, admission).await.unwrap();
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.await.unwrap());
        }
        let elapsed = started.elapsed();
        worker.abort();
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        println!(
            "durable_commits={durable_commits}: {} creates by {clients} clients, {input_kb} KB: \
             {:.0}/s, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
            all.len(),
            all.len() as f64 / elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            all[all.len() - 1],
        );
        store.close().await;
    }
}
