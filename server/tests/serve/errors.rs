//! Every error of SPEC 3 that a client can cause (authentication codes are in `auth`, 1303 in
//! `limits`), each in the envelope with a message that names what to fix; and bad input of
//! any kind is a 4xx, never a 5xx (SPEC 5).
//!
//! The servers here run `--workers 0`: validation happens at create time, so nothing needs
//! processing.

use std::io::{Read, Write};
use std::net::TcpStream;

use axum::http::Method;
use image::ImageFormat;
use serde_json::{Value, json};

use crate::harness::*;

fn validating() -> Server {
    server()
        .args(["--backend", "edge", "--workers", "0"])
        .start()
}

/// Sends `body` as-is with `content_type`.
async fn post_raw(api: &Api, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    api.send(Method::POST, path, None, content_type, Some(body.to_vec()))
        .await
}

#[tokio::test]
async fn malformed_requests_are_1200() {
    let server = validating();
    let api = server.api().fresh_connections();
    let (_, image) = png_base64(300, 300);
    let good = serde_json::to_vec(&json!({"image": image, "direction": "right"})).unwrap();
    for family in [SIMPLE, OFFICIAL] {
        for (case, content_type, body) in [
            (
                "broken JSON",
                Some("application/json"),
                b"{\"image\": ".to_vec(),
            ),
            ("not JSON", Some("application/json"), b"image=abc".to_vec()),
            ("an empty body", Some("application/json"), Vec::new()),
            ("a text/plain body", Some("text/plain"), good.clone()),
            (
                "a form body",
                Some("application/x-www-form-urlencoded"),
                good.clone(),
            ),
            ("no content type", None, good.clone()),
        ] {
            let reply = post_raw(&api, family, content_type, &body).await;
            assert!(
                reply.status == 400 && reply.code() == 1200,
                "{family}, {case}: expected 400 / 1200, got HTTP {} {:#}",
                reply.status,
                reply.body
            );
        }
        // Valid JSON of the wrong shape: a request or a parameter error, never a 5xx.
        for body in [&b"[]"[..], b"null", b"42", b"\"image\""] {
            post_raw(&api, family, Some("application/json"), body)
                .await
                .error_in(400, &[1200, 1201]);
        }
    }
}

#[tokio::test]
async fn body_too_large_is_1200() {
    // Larger than any body limit a server should accept by default (16 MB is plenty for a
    // 10 MB image in base64).
    let server = validating();
    let api = server.api().fresh_connections();
    let huge = format!(
        "{{\"direction\": \"right\", \"image\": \"{}\"}}",
        "A".repeat(24 << 20)
    );
    post_raw(&api, SIMPLE, Some("application/json"), huge.as_bytes())
        .await
        .error(400, 1200);
    // The server is still fine afterwards.
    api.get(SIMPLE).await.ok();
}

/// Each case: a body, and what the message must name (the field, or the rule's number). All
/// must be 400 / 1201.
async fn assert_invalid(api: &Api, path: &str, cases: Vec<(Value, &str)>) {
    assert_rejected(api, path, cases, &[1201]).await;
}

/// As [`assert_invalid`], for a missing field or one of the wrong JSON type, which a server
/// may report as a malformed request (1200) as well as an invalid parameter (1201).
async fn assert_mistyped(api: &Api, path: &str, cases: Vec<(Value, &str)>) {
    assert_rejected(api, path, cases, &[1200, 1201]).await;
}

async fn assert_rejected(api: &Api, path: &str, cases: Vec<(Value, &str)>, codes: &[i64]) {
    let mut failures = Vec::new();
    for (body, field) in cases {
        let reply = api.post(path, &body).await;
        let named = reply
            .message()
            .to_lowercase()
            .contains(&field.to_lowercase());
        let expected = reply.status == 400 && codes.contains(&reply.code());
        if !expected || !named || reply.body["request_id"].is_null() {
            let mut shown = body.clone();
            if let Some(image) = shown
                .get_mut("image")
                .filter(|i| i.as_str().is_some_and(|s| s.len() > 80))
            {
                *image = json!("<base64>");
            }
            failures.push(format!(
                "{shown}: expected 400 / {codes:?} naming {field:?}, got HTTP {} {}",
                reply.status, reply.body
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn simple_parameters_are_1201() {
    let server = validating();
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    let with = |extra: Value| {
        let mut body = json!({"image": image, "direction": "right"});
        for (key, value) in extra.as_object().unwrap() {
            if value.is_null() {
                body.as_object_mut().unwrap().remove(key);
            } else {
                body[key] = value.clone();
            }
        }
        body
    };
    let mistyped = vec![
        (with(json!({"image": null})), "image"),
        (with(json!({"direction": null})), "direction"),
        (with(json!({"direction": 3})), "direction"),
        (with(json!({"expansion_ratio": "wide"})), "expansion_ratio"),
        (with(json!({"n": 1.5})), "n"),
        (with(json!({"seed": -1})), "seed"),
        (with(json!({"seed": "lucky"})), "seed"),
        (with(json!({"external_task_id": 12})), "external_task_id"),
    ];
    assert_mistyped(&api, SIMPLE, mistyped).await;
    let cases = vec![
        (with(json!({"direction": ""})), "direction"),
        (with(json!({"direction": "up"})), "direction"),
        (with(json!({"direction": "left,left"})), "direction"),
        (with(json!({"direction": "left,middle"})), "direction"),
        (with(json!({"direction": "all,left"})), "direction"),
        (with(json!({"expansion_ratio": 1.0})), "expansion_ratio"),
        (with(json!({"expansion_ratio": 0.5})), "expansion_ratio"),
        (with(json!({"expansion_ratio": 3.01})), "expansion_ratio"),
        (with(json!({"expansion_ratio": -2})), "expansion_ratio"),
        (with(json!({"n": 0})), "n"),
        (with(json!({"n": 10})), "n"),
        (with(json!({"prompt": "x".repeat(2501)})), "prompt"),
        (with(json!({"callback_url": "not a url"})), "callback_url"),
        (
            with(json!({"callback_url": "ftp://example.com/hook"})),
            "callback_url",
        ),
        (with(json!({"output_format": "gif"})), "output_format"),
        (with(json!({"model": "no-such-model"})), "model"),
        // SPEC 1.3: the address checks of image and callback URLs, by default.
        (
            with(json!({"callback_url": "http://127.0.0.1:9/hook"})),
            "callback_url",
        ),
        (
            with(json!({"callback_url": "http://10.1.2.3/hook"})),
            "callback_url",
        ),
        (
            with(json!({"callback_url": "http://[::1]:9/hook"})),
            "callback_url",
        ),
        (
            with(json!({"image": "http://127.0.0.1:9/photo.png"})),
            "image",
        ),
        (
            with(json!({"image": "http://localhost:9/photo.png"})),
            "image",
        ),
        (
            with(json!({"image": "http://169.254.169.254/latest/meta-data"})),
            "image",
        ),
        (
            with(json!({"image": "http://192.168.0.1/photo.png"})),
            "image",
        ),
        (with(json!({"image": "file:///etc/passwd"})), "image"),
    ];
    assert_invalid(&api, SIMPLE, cases).await;

    // The area rule (3× by default): `all` at 1.8 is 3.24×; right at 3 is exactly 3×, allowed.
    assert_invalid(
        &api,
        SIMPLE,
        vec![(
            with(json!({"direction": "all", "expansion_ratio": 1.8})),
            "3",
        )],
    )
    .await;
    api.create(&with(json!({"expansion_ratio": 3}))).await;
}

#[tokio::test]
async fn official_parameters_are_1201() {
    let server = validating();
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    let with = |extra: Value| {
        let mut body = json!({"image": image, "up_expansion_ratio": 0.1,
            "down_expansion_ratio": 0.1, "left_expansion_ratio": 0.1, "right_expansion_ratio": 0.1});
        for (key, value) in extra.as_object().unwrap() {
            if value.is_null() {
                body.as_object_mut().unwrap().remove(key);
            } else {
                body[key] = value.clone();
            }
        }
        body
    };
    let mut cases = Vec::new();
    let mut mistyped = vec![
        (with(json!({"image": null})), "image"),
        (
            with(json!({"watermark_info": {"enabled": "yes"}})),
            "watermark",
        ),
    ];
    for side in ["up", "down", "left", "right"] {
        let field = format!("{side}_expansion_ratio");
        for bad in [json!(-0.1), json!(2.01)] {
            cases.push((with(json!({field.clone(): bad})), side));
        }
        for bad in [json!(null), json!("much")] {
            mistyped.push((with(json!({field.clone(): bad})), side));
        }
    }
    assert_mistyped(&api, OFFICIAL, mistyped).await;
    cases.extend([
        // Nothing grows: the message may word that as it likes.
        (
            with(json!({"up_expansion_ratio": 0, "down_expansion_ratio": 0,
            "left_expansion_ratio": 0, "right_expansion_ratio": 0})),
            "",
        ),
        (with(json!({"n": 10})), "n"),
        (with(json!({"prompt": "x".repeat(2501)})), "prompt"),
        // 0.5 on every side doubles both axes: 4× the area.
        (
            with(
                json!({"up_expansion_ratio": 0.5, "down_expansion_ratio": 0.5,
            "left_expansion_ratio": 0.5, "right_expansion_ratio": 0.5}),
            ),
            "3",
        ),
    ]);
    assert_invalid(&api, OFFICIAL, cases).await;
}

#[tokio::test]
async fn images_that_break_a_rule_are_1201() {
    let server = validating();
    let api = server.api();
    let png_of = |w, h| base64(&png(&textured(w, h)));
    let truncated = {
        let bytes = png(&textured(300, 300));
        base64(&bytes[..bytes.len() / 2])
    };
    let body = |image: String| json!({"image": image, "direction": "right"});
    let cases = vec![
        (body(String::new()), "image"),
        (body("!!! not base64 !!!".into()), "image"),
        (body(base64(b"just some notes\n")), "image"),
        (body(base64(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")), "gif"),
        (body(png_of(200, 500)), "300"),
        (body(png_of(800, 300)), "aspect"),
        (body(truncated), "png"),
        // A decompression bomb: the header declares 10 gigapixels.
        (body(base64(&png_declaring(100_000, 100_000))), "megapixels"),
        // 4000×3000 expanded right by 1.5 is an 18-megapixel canvas (or, decoded first, a
        // truncated PNG: either message will do).
        (body(base64(&png_declaring(4000, 3000))), ""),
        (body("data:image/png;base64,".into()), "image"),
    ];
    assert_invalid(&api, SIMPLE, cases).await;
}

#[tokio::test]
async fn operator_limits_are_1201() {
    let server = server_with(&["--max-file-mb", "0.01"]);
    let api = server.api();
    let big = png(&textured(400, 400));
    assert!(big.len() > 10_486, "the test image must exceed 0.01 MB");
    let cases = vec![(
        json!({"image": base64(&big), "direction": "right"}),
        "bytes",
    )];
    assert_invalid(&api, SIMPLE, cases).await;

    let server = server_with(&["--min-side", "310", "--max-canvas-megapixels", "0.15"]);
    let api = server.api();
    let (_, image) = png_base64(310, 310);
    let cases = vec![
        // Each side at least 310 px.
        (
            json!({"image": base64(&png(&textured(300, 400))), "direction": "right"}),
            "310",
        ),
        // 310×310 → 620×310 = 0.19 MP.
        (
            json!({"image": image, "direction": "right", "expansion_ratio": 2}),
            "pixels",
        ),
    ];
    assert_invalid(&api, SIMPLE, cases).await;
    // 310×310 → 465×310 = 0.14 MP.
    api.create(&json!({"image": image, "direction": "right"}))
        .await;

    let server = server_with(&["--max-area-ratio", "2"]);
    let api = server.api();
    let cases = vec![
        // 310×310 → 930×310 = 3× the area.
        (
            json!({"image": image, "direction": "right", "expansion_ratio": 3}),
            "2",
        ),
    ];
    assert_invalid(&api, SIMPLE, cases).await;
    // 310×310 → 620×310: 2×, within.
    api.create(&json!({"image": image, "direction": "right", "expansion_ratio": 2}))
        .await;
}

/// Reads one HTTP/1.1 response (with a Content-Length) from `stream`: its head and body.
fn read_response(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok((head, buffer[head_end..].to_vec()))
}

#[test]
fn an_early_rejection_does_not_break_the_next_request() {
    // A request refused before its body is read (here 401, no token) must not leave the
    // client's keep-alive connection dead: the server either reads the body, or answers with
    // `Connection: close` so that the client does not reuse the connection. Otherwise a
    // client's next request on it fails ("connection closed before message completed"),
    // depending on timing, as happens to the official SDKs' HTTP clients.
    let server = server()
        .args(["--backend", "edge", "--workers", "0"])
        .key("ak", "sk-0123456789")
        .start();
    let (_, image) = png_base64(400, 300);
    let body = serde_json::to_vec(&json!({"image": image, "direction": "right"})).unwrap();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "POST {SIMPLE} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let (head, _) = read_response(&mut stream).unwrap();
    assert!(head.starts_with("http/1.1 401"), "{head}");
    if head.contains("\r\nconnection: close") {
        return;
    }
    let next = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    let answer = stream
        .write_all(next.as_bytes())
        .and_then(|()| read_response(&mut stream));
    match answer {
        Ok((head, _)) => assert!(head.starts_with("http/1.1 200"), "{head}"),
        Err(e) => panic!(
            "the 401 kept the connection open (no `Connection: close`), but the next request \
             on it got no answer: {e}"
        ),
    }
}

fn server_with(flags: &[&str]) -> Server {
    server()
        .args(["--backend", "edge", "--workers", "0"])
        .args(flags.iter().copied())
        .start()
}

#[tokio::test]
async fn unknown_tasks_are_1203() {
    let server = validating();
    let api = server.api();
    for family in [SIMPLE, OFFICIAL] {
        for id in [
            "no-such-task",
            "00000000-0000-0000-0000-000000000000",
            "%20",
        ] {
            api.get(&format!("{family}/{id}")).await.error(404, 1203);
        }
    }
}

#[tokio::test]
async fn wrong_methods_are_1202() {
    let server = validating();
    let api = server.api();
    let (_, image) = png_base64(300, 300);
    let id = api
        .create(&json!({"image": image, "direction": "right"}))
        .await;
    for family in [SIMPLE, OFFICIAL] {
        let one = format!("{family}/{id}");
        for (method, path) in [
            (Method::PUT, family),
            (Method::DELETE, family),
            (Method::PATCH, family),
            (Method::POST, one.as_str()),
            (Method::PUT, one.as_str()),
            (Method::DELETE, one.as_str()),
        ] {
            let reply = api.send(method.clone(), path, None, None, None).await;
            assert!(
                reply.status == 404 && reply.code() == 1202,
                "{method} {path}: expected 404 / 1202, got HTTP {} {:#}",
                reply.status,
                reply.body
            );
        }
    }
    // The task is still there.
    assert_eq!(api.task(&id).await["task_status"], "submitted");
}

#[tokio::test]
async fn garbage_never_gets_a_5xx() {
    let server = validating();
    let api = server.api();
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut noise = vec![0u8; 64 << 10];
    for (i, byte) in noise.iter_mut().enumerate() {
        *byte = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let mut jpeg_cut = encoded(&textured(400, 400), ImageFormat::Jpeg);
    jpeg_cut.truncate(jpeg_cut.len() / 3);
    let bodies: Vec<Vec<u8>> = vec![
        nested.into_bytes(),
        noise.clone(),
        serde_json::to_vec(&json!({"image": base64(&noise), "direction": "right"})).unwrap(),
        serde_json::to_vec(&json!({"image": base64(&jpeg_cut), "direction": "right"})).unwrap(),
        serde_json::to_vec(&json!({"image": "data:image/png;base64,@@@", "direction": "all"}))
            .unwrap(),
        serde_json::to_vec(&json!({"image": {"nested": true}, "direction": ["left"]})).unwrap(),
        serde_json::to_vec(&json!({"image": "x", "direction": "right", "n": 1e300})).unwrap(),
        serde_json::to_vec(&json!({"image": "x", "direction": "right", "expansion_ratio": 1e308}))
            .unwrap(),
        b"{\"image\": \"\\ud800\", \"direction\": \"right\"}".to_vec(),
    ];
    for family in [SIMPLE, OFFICIAL] {
        for body in &bodies {
            let reply = post_raw(&api, family, Some("application/json"), body).await;
            assert!(
                reply.status == 400 && [1200, 1201].contains(&reply.code()),
                "{family} {:?}: expected 400 / 1200 or 1201, got HTTP {} {:#}",
                String::from_utf8_lossy(&body[..body.len().min(60)]),
                reply.status,
                reply.body
            );
        }
    }
    // Still up and well.
    api.get(SIMPLE).await.ok();
}
