//! SPEC 5: an acknowledged task is never lost. The server is killed with SIGKILL while one
//! task runs and others wait, restarted on the same data folder and port, and every task must
//! end `succeed` exactly once, with a valid result and one `succeed` callback.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

const KEY: &[u8] = b"durability-key-0123456789abcdef!";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_tasks_queued_and_running_loses_nothing() {
    let receiver = Local::start().await;
    // One worker and the real `infill` backend on a ~1 MP image with `all`: each task takes a
    // while, so the kill finds one running and the rest waiting. A short lease gets the
    // running one taken again soon after the restart.
    let mut server = server()
        .args([
            "--workers",
            "1",
            "--lease-secs",
            "2",
            "--allow-private-urls",
        ])
        .args(["--webhook-secret", &format!("whsec_{}", base64(KEY))])
        .start();
    let api = server.api();
    let original = textured(1000, 700);
    let image = base64(&png(&original));
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            api.create(&json!({"image": image, "direction": "all", "seed": i,
                "callback_url": format!("{}/hook", receiver.url),
                "external_task_id": format!("durable-{i}")}))
                .await,
        );
    }

    // Wait until a task is running, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = api.get(SIMPLE).await.ok();
        let statuses: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task_status"].as_str().unwrap())
            .collect();
        if statuses.contains(&"processing") {
            assert!(
                statuses.contains(&"submitted"),
                "the kill should find tasks waiting too: {statuses:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no task started: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    server.restart();
    let api = server.api();

    for (i, id) in ids.iter().enumerate() {
        // A deadline, not a timing: four infill runs on a loaded 2-core CI machine can be slow.
        let task = api.wait(id, Duration::from_secs(240)).await;
        assert_eq!(task["task_status"], "succeed", "{task:#}");
        assert_eq!(
            task["task_info"]["external_task_id"],
            format!("durable-{i}")
        );
        let images = task["task_result"]["images"].as_array().unwrap();
        assert_eq!(images.len(), 1, "one result, not one per attempt: {task:#}");
        let result = api.result_image(&task, 0).await.to_rgb8();
        // 1000 × 1.5 = 1500 (250 each side), 700 × 1.5 = 1050 (175 each side).
        assert_eq!(result.dimensions(), (1500, 1050));
        assert_box_exact(&result, &original, 250, 175);
    }
    assert_eq!(api.get(SIMPLE).await.ok().as_array().unwrap().len(), 4);

    // Every task's `succeed` callback arrives exactly once (a `processing` one may come twice:
    // the restart claims the interrupted task again). A short grace catches late duplicates.
    for id in &ids {
        receiver
            .wait_status(id, "succeed", Duration::from_secs(60))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut succeed: HashMap<String, usize> = HashMap::new();
    for callback in receiver.received() {
        callback.verify(KEY).unwrap();
        let task = callback.task();
        if task["task_status"] == "succeed" {
            *succeed
                .entry(task["task_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(
            succeed.get(id),
            Some(&1),
            "succeed callbacks for {id}: {succeed:?}"
        );
    }
}

#[tokio::test]
async fn sigterm_then_restart_keeps_queued_tasks() {
    let mut server = server()
        .args(["--backend", "edge", "--workers", "0"])
        .start();
    let api = server.api();
    let (original, image) = png_base64(300, 300);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            api.create(&json!({"image": image, "direction": "top"}))
                .await,
        );
    }
    let status = server.sigterm(Duration::from_secs(15));
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");

    server.restart_with(["--backend", "edge", "--workers", "1"]);
    let api = server.api();
    for id in &ids {
        let task = api.wait_succeed(id, Duration::from_secs(30)).await;
        let result = api.result_image(&task, 0).await.to_rgb8();
        assert_eq!(result.dimensions(), (300, 450));
        assert_box_exact(&result, &original, 0, 150);
    }
}
