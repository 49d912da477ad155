//! Callbacks (SPEC 4): each status change is POSTed to callback_url as the task object, signed
//! the Standard Webhooks way when a secret is configured, and retried until the receiver
//! answers 2xx, even when it is down at first, and across a restart of the server.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// The HMAC key, and `--webhook-secret` in its `whsec_` form (base64 of the key).
const KEY: &[u8] = b"callback-test-key-0123456789abcdef";

fn whsec() -> String {
    format!("whsec_{}", base64(KEY))
}

fn signing_server(secret: &str) -> Server {
    server()
        .args(["--backend", "edge", "--allow-private-urls"])
        .args(["--webhook-secret", secret])
        .start()
}

/// The statuses of `callbacks`, in order of arrival.
fn statuses(callbacks: &[Received]) -> Vec<String> {
    callbacks
        .iter()
        .map(|r| r.task()["task_status"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test]
async fn each_status_change_is_delivered_signed() {
    let receiver = Local::start().await;
    let server = signing_server(&whsec());
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    let id = api
        .create(&json!({"image": image, "direction": "right",
            "callback_url": format!("{}/hooks/kling?x=1", receiver.url),
            "external_task_id": "cb-1"}))
        .await;
    let task = api.wait_succeed(&id, Duration::from_secs(30)).await;
    let callbacks = receiver
        .wait_status(&id, "succeed", Duration::from_secs(30))
        .await;

    assert_eq!(
        statuses(&callbacks),
        ["processing", "succeed"],
        "one delivery per status change, in order"
    );
    let mut ids = HashSet::new();
    for callback in &callbacks {
        assert_eq!(callback.path, "/hooks/kling");
        callback.verify(KEY).unwrap();
        assert!(
            ids.insert(callback.header("webhook-id").to_string()),
            "webhook-id is unique per delivery"
        );
        assert!(
            callback
                .header("content-type")
                .starts_with("application/json"),
            "{:?}",
            callback.headers
        );
        let body = callback.task();
        assert_eq!(body["task_id"], id.as_str());
        assert_eq!(body["task_info"]["external_task_id"], "cb-1");
    }
    // The succeed delivery carries the result, as a query does.
    let delivered = callbacks.last().unwrap().task();
    assert_eq!(
        delivered["task_result"]["images"][0]["url"],
        task["task_result"]["images"][0]["url"]
    );
}

#[tokio::test]
async fn a_plain_secret_signs_with_its_own_bytes() {
    let receiver = Local::start().await;
    let server = signing_server("plain-secret-not-base64");
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    let id = api
        .create_official(&json!({"image": image, "up_expansion_ratio": 0.2,
            "down_expansion_ratio": 0, "left_expansion_ratio": 0, "right_expansion_ratio": 0,
            "callback_url": format!("{}/hook", receiver.url)}))
        .await;
    let callbacks = receiver
        .wait_status(&id, "succeed", Duration::from_secs(30))
        .await;
    for callback in &callbacks {
        callback.verify(b"plain-secret-not-base64").unwrap();
        assert!(callback.verify(KEY).is_err());
    }
}

#[tokio::test]
async fn failed_deliveries_are_retried() {
    let receiver = Local::start().await;
    // The first three deliveries get a 503 whatever they are.
    receiver.fail_next(3);
    let server = signing_server(&whsec());
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    let id = api
        .create(&json!({"image": image, "direction": "left",
            "callback_url": format!("{}/hook", receiver.url)}))
        .await;
    api.wait_succeed(&id, Duration::from_secs(30)).await;
    let callbacks = receiver
        .wait_status(&id, "succeed", Duration::from_secs(60))
        .await;
    for callback in &callbacks {
        callback.verify(KEY).unwrap();
    }
    // Accepted once, so never delivered again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let succeed = statuses(&receiver.callbacks_for(&id))
        .into_iter()
        .filter(|s| s == "succeed")
        .count();
    assert_eq!(succeed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_at_first_gets_the_callback_when_it_comes_back() {
    let port = reserve_port();
    let server = signing_server(&whsec());
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    let id = api
        .create(&json!({"image": image, "direction": "bottom",
            "callback_url": format!("http://127.0.0.1:{port}/hook")}))
        .await;
    api.wait_succeed(&id, Duration::from_secs(30)).await;
    // Deliveries have been refused for a while; now the receiver comes up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let receiver = Local::start_on(port).await;
    let callbacks = receiver
        .wait_status(&id, "succeed", Duration::from_secs(90))
        .await;
    for callback in &callbacks {
        callback.verify(KEY).unwrap();
    }
    assert_eq!(
        statuses(&callbacks)
            .iter()
            .filter(|s| *s == "succeed")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_a_restart() {
    let port = reserve_port();
    let mut server = signing_server(&whsec());
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    let id = api
        .create(&json!({"image": image, "direction": "right",
            "callback_url": format!("http://127.0.0.1:{port}/hook")}))
        .await;
    api.wait_succeed(&id, Duration::from_secs(30)).await;
    // A delivery or two have failed; the server dies with them pending.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    let receiver = Local::start_on(port).await;
    server.restart();
    let callbacks = receiver
        .wait_status(&id, "succeed", Duration::from_secs(90))
        .await;
    for callback in &callbacks {
        callback.verify(KEY).unwrap();
    }
}
