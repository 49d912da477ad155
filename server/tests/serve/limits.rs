//! SPEC 5: when the engine is full it says so, 429 / 1303, instead of queueing without end.
//! `--workers 0` keeps every task waiting, so the queue fills deterministically.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn a_full_queue_answers_1303() {
    let mut server = server()
        .args(["--backend", "edge", "--workers", "0", "--max-queued", "3"])
        .start();
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    let simple = json!({"image": image, "direction": "right"});
    let official = json!({"image": image, "up_expansion_ratio": 0, "down_expansion_ratio": 0,
        "left_expansion_ratio": 0.5, "right_expansion_ratio": 0});
    let mut ids = vec![
        api.create(&simple).await,
        api.create_official(&official).await,
        api.create(&simple).await,
    ];
    api.post(SIMPLE, &simple).await.error(429, 1303);
    api.post(OFFICIAL, &official).await.error(429, 1303);
    // Refused tasks were not stored.
    assert_eq!(api.get(SIMPLE).await.ok().as_array().unwrap().len(), 3);
    // Queries still work while full.
    api.task(&ids[0]).await;

    // Once the queue drains, tasks are accepted again.
    server.restart_with(["--backend", "edge", "--workers", "1", "--max-queued", "3"]);
    let api = server.api();
    for id in &ids {
        api.wait_succeed(id, Duration::from_secs(30)).await;
    }
    ids.push(api.create(&simple).await);
    api.wait_succeed(&ids[3], Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_full_account_answers_1303_and_others_go_on() {
    let server = server()
        .args(["--backend", "edge", "--workers", "0"])
        .args(["--max-queued", "10", "--max-tasks-per-account", "2"])
        .key("ak-one", "sk-one-0123456789")
        .key("ak-two", "sk-two-0123456789")
        .start();
    let one = server.api_as("ak-one", "sk-one-0123456789");
    let two = server.api_as("ak-two", "sk-two-0123456789");
    let (_, image) = png_base64(300, 300);
    let body = json!({"image": image, "direction": "right"});
    one.create(&body).await;
    one.create(&body).await;
    one.post(SIMPLE, &body).await.error(429, 1303);
    two.create(&body).await;
    two.create(&body).await;
    two.post(SIMPLE, &body).await.error(429, 1303);
    one.post(SIMPLE, &body).await.error(429, 1303);
}

#[tokio::test]
async fn a_rate_limit_answers_1302() {
    // Two requests per second per account, in bursts of at most two.
    let server = server()
        .args(["--backend", "edge", "--workers", "0", "--rate-limit", "2"])
        .key("ak-one", "sk-one-0123456789")
        .key("ak-two", "sk-two-0123456789")
        .start();
    let one = server.api_as("ak-one", "sk-one-0123456789");
    let two = server.api_as("ak-two", "sk-two-0123456789");
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(one.get(SIMPLE).await);
    }
    let limited = codes.iter().filter(|r| r.status == 429).count();
    assert!(limited >= 3, "6 quick requests at 2/s: {codes:?}");
    for reply in codes.iter().filter(|r| r.status == 429) {
        reply.error(429, 1302);
    }
    // Another account has its own allowance; and the first one's comes back with time.
    two.get(SIMPLE).await.ok();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    one.get(SIMPLE).await.ok();
}
