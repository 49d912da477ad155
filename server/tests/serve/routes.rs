//! Every route answers as SPEC 1–2 say; a task created through one family is visible through
//! the other; results are served at absolute URLs, pixel-exact inside the original's box.

use std::time::Duration;

use image::ImageFormat;
use serde_json::{Value, json};

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(30);

fn edge() -> ServerBuilder {
    server().args(["--backend", "edge", "--workers", "2"])
}

#[tokio::test]
async fn health_ready_metrics_and_openapi() {
    let server = edge().start();
    let api = server.api();
    let http = client();
    for path in ["/health", "/ready"] {
        let response = http
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
    }

    // Some traffic first, so that the metrics have something to show.
    let (_, image) = png_base64(400, 300);
    api.create(&json!({"image": image, "direction": "right"}))
        .await;
    api.get(&format!("{SIMPLE}?pageNum=1&pageSize=5"))
        .await
        .ok();
    let response = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let metrics = response.text().await.unwrap();
    assert!(
        metrics.contains("# TYPE "),
        "Prometheus text format:\n{metrics}"
    );

    let response = http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "OpenAPI 3: {}",
        doc["openapi"]
    );
    let paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
    for family in [SIMPLE, OFFICIAL] {
        assert!(paths.iter().any(|p| *p == family), "{family} in {paths:?}");
        assert!(
            paths.iter().any(|p| p.starts_with(&format!("{family}/{{"))),
            "{family}/{{id}} in {paths:?}"
        );
    }
}

#[tokio::test]
async fn simple_family_create_query_list_and_result() {
    let server = edge().start();
    let api = server.api();
    let (original, image) = png_base64(400, 300);
    let before = now_ms();
    let reply = api
        .post(
            SIMPLE,
            &json!({"image": image, "direction": "right", "external_task_id": "ext-simple-1",
                "prompt": "more of the same"}),
        )
        .await;
    let created = reply.ok();
    assert_eq!(created["task_status"], "submitted");
    assert_eq!(created["task_info"]["external_task_id"], "ext-simple-1");
    let created_at = created["created_at"].as_i64().expect("created_at");
    assert!(
        (before - 5_000..now_ms() + 5_000).contains(&created_at),
        "created_at is Unix milliseconds: {created_at}"
    );
    assert!(created["updated_at"].as_i64().is_some(), "{created:#}");
    let id = task_id(&created);

    let task = api.wait_succeed(&id, WAIT).await;
    assert_eq!(task["task_id"], id.as_str());
    assert_eq!(task["task_info"]["external_task_id"], "ext-simple-1");
    assert_eq!(task["watermark_info"]["enabled"], false, "{task:#}");
    assert_eq!(task["created_at"], created_at);
    assert!(task["updated_at"].as_i64().unwrap() >= created_at);
    let images = task["task_result"]["images"].as_array().expect("images");
    assert_eq!(images.len(), 1, "n defaults to 1");

    // Result URLs are absolute, based on the listening address by default, and need no token.
    let url = result_url(&task, 0);
    assert!(url.starts_with(&server.url), "{url} under {}", server.url);
    let (content_type, bytes) = api.download(&url).await;
    assert_eq!(content_type, "image/png");
    assert_eq!(image::guess_format(&bytes).unwrap(), ImageFormat::Png);
    let result = decode(&bytes).to_rgb8();
    assert_eq!(result.dimensions(), (600, 300), "SPEC 1.1: 400 × 1.5 = 600");
    assert_box_exact(&result, &original, 0, 0);

    // The same task by external_task_id, and through the official family.
    assert_eq!(api.task("ext-simple-1").await["task_id"], id.as_str());
    for path in [
        format!("{OFFICIAL}/{id}"),
        format!("{OFFICIAL}/ext-simple-1"),
    ] {
        let other = api.get(&path).await.ok();
        assert_eq!(other["task_id"], id.as_str(), "{path}");
        assert_eq!(other["task_status"], "succeed", "{path}");
    }
    for family in [SIMPLE, OFFICIAL] {
        let list = api.get(family).await.ok();
        let list = list.as_array().expect("list data is an array of tasks");
        assert_eq!(list.len(), 1, "{family}: {list:?}");
        assert_eq!(list[0]["task_id"], id.as_str());
    }

    // Each response has its own request id.
    let a = api.get(&format!("{SIMPLE}/{id}")).await;
    let b = api.get(&format!("{SIMPLE}/{id}")).await;
    assert_ne!(a.body["request_id"], b.body["request_id"]);
}

#[tokio::test]
async fn official_family_with_variations_and_watermark() {
    let server = edge().start();
    let api = server.api();
    let (original, image) = png_base64(400, 300);
    let id = api
        .create_official(&json!({
            "image": image,
            "up_expansion_ratio": 0.1,
            "down_expansion_ratio": 0.2,
            "left_expansion_ratio": 0.25,
            "right_expansion_ratio": 0,
            "n": 2,
            "watermark_info": {"enabled": true},
            "external_task_id": "ext-official-1",
        }))
        .await;
    api.wait_succeed(&id, WAIT).await;
    let task = api.get(&format!("{OFFICIAL}/{id}")).await.ok();
    assert_eq!(task["watermark_info"]["enabled"], true, "{task:#}");
    let images = task["task_result"]["images"].as_array().expect("images");
    assert_eq!(images.len(), 2, "n = 2: {task:#}");
    for (index, listed) in images.iter().enumerate() {
        let clean = api.result_image(&task, index).await.to_rgb8();
        // 300 × 0.1 = 30 up, 300 × 0.2 = 60 down, 400 × 0.25 = 100 left.
        assert_eq!(clean.dimensions(), (500, 390));
        assert_box_exact(&clean, &original, 100, 30);
        let watermark_url = listed["watermark_url"]
            .as_str()
            .unwrap_or_else(|| panic!("images[{index}].watermark_url: {task:#}"));
        let (_, bytes) = api.download(watermark_url).await;
        let marked = decode(&bytes).to_rgb8();
        assert_eq!(marked.dimensions(), clean.dimensions());
        assert_ne!(marked, clean, "the watermark is visible");
    }
    // And through the simple family.
    assert_eq!(api.task(&id).await["task_status"], "succeed");
}

#[tokio::test]
async fn image_by_url_by_data_url_and_as_jpeg() {
    let server = edge().args(["--allow-private-urls"]).start();
    let api = server.api();
    let host = Local::start().await;
    let original = textured(400, 300);
    let url = host.put("/photo.png", "image/png", png(&original));
    let data_url = format!("data:image/png;base64,{}", base64(&png(&original)));
    let jpeg = encoded(&original, ImageFormat::Jpeg);
    let jpeg_pixels = decode(&jpeg).to_rgb8();

    let by_url = api
        .create(&json!({"image": url, "direction": "left"}))
        .await;
    let by_data_url = api
        .create(&json!({"image": data_url, "direction": "left"}))
        .await;
    let as_jpeg = api
        .create(&json!({"image": base64(&jpeg), "direction": "left"}))
        .await;
    for (id, expected) in [
        (by_url, &original),
        (by_data_url, &original),
        (as_jpeg, &jpeg_pixels),
    ] {
        let task = api.wait_succeed(&id, WAIT).await;
        let result = api.result_image(&task, 0).await.to_rgb8();
        assert_eq!(result.dimensions(), (600, 300));
        assert_box_exact(&result, expected, 200, 0);
    }
}

#[tokio::test]
async fn seed_extensions_and_output_formats() {
    let server = edge().start();
    let api = server.api();
    let (_, image) = png_base64(320, 300);
    let body = |extra: Value| {
        let mut body = json!({"image": image, "direction": "all", "expansion_ratio": 1.4,
            "prompt": "a meadow", "negative_prompt": "people", "seed": 7, "model": "edge",
            "some_unknown_field": {"ignored": true}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let first = api.create(&body(json!({}))).await;
    let second = api.create(&body(json!({}))).await;
    let jpeg = api.create(&body(json!({"output_format": "jpeg"}))).await;
    let webp = api.create(&body(json!({"output_format": "webp"}))).await;

    let first = api.wait_succeed(&first, WAIT).await;
    let second = api.wait_succeed(&second, WAIT).await;
    let a = api.result_image(&first, 0).await.to_rgb8();
    let b = api.result_image(&second, 0).await.to_rgb8();
    assert_eq!(a.dimensions(), (448, 420));
    assert!(
        a == b,
        "SPEC 5: the same request and seed give the same pixels"
    );

    for (id, format) in [(jpeg, ImageFormat::Jpeg), (webp, ImageFormat::WebP)] {
        let task = api.wait_succeed(&id, WAIT).await;
        let (_, bytes) = api.download(&result_url(&task, 0)).await;
        assert_eq!(image::guess_format(&bytes).unwrap(), format);
        assert_eq!(decode(&bytes).to_rgb8().dimensions(), (448, 420));
    }
}

#[tokio::test]
async fn public_url_is_the_base_of_result_urls() {
    let server = edge()
        .args(["--public-url", "https://images.example.test/outpaint"])
        .start();
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    let id = api
        .create(&json!({"image": image, "direction": "top"}))
        .await;
    let task = api.wait_succeed(&id, WAIT).await;
    let url = result_url(&task, 0);
    assert!(
        url.starts_with("https://images.example.test/outpaint/"),
        "{url}"
    );
    // The same path is served locally.
    let path = url.trim_start_matches("https://images.example.test/outpaint");
    let (_, bytes) = api.download(&format!("{}{path}", server.url)).await;
    assert_eq!(decode(&bytes).to_rgb8().dimensions(), (300, 450));
}

#[tokio::test]
async fn tls_serves_the_api_and_the_results() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let server = edge()
        .args(["--tls-cert", &format!("{fixtures}/tls-cert.pem")])
        .args(["--tls-key", &format!("{fixtures}/tls-key.pem")])
        .start();
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let certificate = std::fs::read(format!("{fixtures}/tls-cert.pem")).unwrap();
    let mut api = server.api();
    api.http = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&certificate).unwrap())
        .build()
        .unwrap();
    let (original, image) = png_base64(300, 300);
    let id = api
        .create(&json!({"image": image, "direction": "left"}))
        .await;
    let task = api.wait_succeed(&id, WAIT).await;
    let url = result_url(&task, 0);
    assert!(url.starts_with(&server.url), "{url}");
    let result = api.result_image(&task, 0).await.to_rgb8();
    assert_eq!(result.dimensions(), (450, 300));
    assert_box_exact(&result, &original, 150, 0);
    // Plain HTTP on the TLS port gets no API answer.
    let plain = client()
        .get(format!("http://{}{SIMPLE}", server.addr))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| r.status() != 200),
        "plain HTTP must not be served on the TLS port"
    );
}
