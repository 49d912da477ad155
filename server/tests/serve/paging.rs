//! Listing (SPEC 1): newest first, pageNum in [1, 1000] (default 1), pageSize in [1, 500]
//! (default 30), the same in both families.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

/// A server with `count` queued tasks named `p0`…, created in that order; `--workers 0` keeps
/// them `submitted`, so nothing changes while the test lists them.
async fn server_with_tasks(count: usize) -> (Server, Api) {
    let server = server()
        .args(["--backend", "edge", "--workers", "0"])
        .start();
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    for i in 0..count {
        api.create(
            &json!({"image": image, "direction": "right", "external_task_id": format!("p{i}")}),
        )
        .await;
        // Distinct creation milliseconds, so that "newest first" has one answer.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    (server, api)
}

/// The external ids of one page.
async fn page(api: &Api, family: &str, query: &str) -> Vec<String> {
    let data = api.get(&format!("{family}{query}")).await.ok();
    let tasks = data
        .as_array()
        .unwrap_or_else(|| panic!("{family}{query}: data is an array of tasks: {data:#}"));
    let times: Vec<i64> = tasks
        .iter()
        .map(|t| t["created_at"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    tasks
        .iter()
        .map(|t| {
            t["task_info"]["external_task_id"]
                .as_str()
                .unwrap_or_else(|| panic!("{t:#}"))
                .to_string()
        })
        .collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn pages_are_newest_first_in_both_families() {
    let (_server, api) = server_with_tasks(7).await;
    for family in [SIMPLE, OFFICIAL] {
        assert_eq!(
            page(&api, family, "").await,
            names(&["p6", "p5", "p4", "p3", "p2", "p1", "p0"])
        );
        assert_eq!(
            page(&api, family, "?pageNum=1&pageSize=3").await,
            names(&["p6", "p5", "p4"])
        );
        assert_eq!(
            page(&api, family, "?pageNum=2&pageSize=3").await,
            names(&["p3", "p2", "p1"])
        );
        assert_eq!(
            page(&api, family, "?pageNum=3&pageSize=3").await,
            names(&["p0"])
        );
        assert!(page(&api, family, "?pageNum=4&pageSize=3").await.is_empty());
        // pageNum defaults to 1, pageSize to 30.
        assert_eq!(
            page(&api, family, "?pageSize=2").await,
            names(&["p6", "p5"])
        );
        assert_eq!(page(&api, family, "?pageNum=1").await.len(), 7);
        assert_eq!(
            page(&api, family, "?pageNum=2&pageSize=1").await,
            names(&["p5"])
        );
        // The extremes of the ranges are accepted.
        assert_eq!(page(&api, family, "?pageNum=1&pageSize=500").await.len(), 7);
        assert!(
            page(&api, family, "?pageNum=1000&pageSize=500")
                .await
                .is_empty()
        );
    }
}

#[tokio::test]
async fn default_page_size_is_30() {
    let (_server, api) = server_with_tasks(32).await;
    let first = page(&api, SIMPLE, "").await;
    assert_eq!(first.len(), 30);
    assert_eq!(first[0], "p31");
    assert_eq!(page(&api, SIMPLE, "?pageNum=2").await, names(&["p1", "p0"]));
}

#[tokio::test]
async fn page_bounds_are_1201() {
    let (_server, api) = server_with_tasks(1).await;
    for family in [SIMPLE, OFFICIAL] {
        for (query, field) in [
            ("?pageNum=0", "pageNum"),
            ("?pageNum=1001", "pageNum"),
            ("?pageSize=0", "pageSize"),
            ("?pageSize=501", "pageSize"),
        ] {
            api.get(&format!("{family}{query}"))
                .await
                .error(400, 1201)
                .mentions(field);
        }
        for (query, field) in [
            ("?pageNum=abc", "pageNum"),
            ("?pageNum=-1", "pageNum"),
            ("?pageSize=1.5", "pageSize"),
        ] {
            api.get(&format!("{family}{query}"))
                .await
                .error_in(400, &[1200, 1201])
                .mentions(field);
        }
    }
    let _: Value = api.get(SIMPLE).await.ok();
}
