//! Authentication (SPEC 3): Kling's HS256 JWT, its failure codes, and accounts that see only
//! their own tasks. The server gets two accounts from the environment (comma-separated lists)
//! and a third from a `--config` TOML file, so all three ways of configuring keys are used.

use std::time::Duration;

use axum::http::Method;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use crate::harness::*;

const ALPHA: (&str, &str) = ("ak-alpha", "sk-alpha-0123456789");
const BETA: (&str, &str) = ("ak-beta", "sk-beta-0123456789");
const GAMMA: (&str, &str) = ("ak-gamma", "sk-gamma-0123456789");

/// The server, and the folder holding its config file (removed when dropped).
fn auth_server() -> (Server, tempfile::TempDir) {
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("accounts.toml");
    std::fs::write(
        &config,
        format!(
            "[[account]]\naccess_key = \"{}\"\nsecret_key = \"{}\"\n",
            GAMMA.0, GAMMA.1
        ),
    )
    .unwrap();
    let server = server()
        .env("OUTPAINT_ACCESS_KEY", &format!("{},{}", ALPHA.0, BETA.0))
        .env("OUTPAINT_SECRET_KEY", &format!("{},{}", ALPHA.1, BETA.1))
        .args(["--config", config.to_str().unwrap()])
        .args(["--backend", "edge"])
        .start();
    (server, folder)
}

fn body() -> serde_json::Value {
    let (_, image) = png_base64(300, 300);
    json!({"image": image, "direction": "right"})
}

/// Sends a create, a query and a list with this exact `Authorization` value (None: no header).
async fn every_route_with(server: &Server, authorization: Option<&str>) -> Vec<Reply> {
    let api = server.api().fresh_connections();
    let body = serde_json::to_vec(&body()).unwrap();
    let mut replies = Vec::new();
    for family in [SIMPLE, OFFICIAL] {
        for (method, path, body) in [
            (Method::POST, family.to_string(), Some(body.clone())),
            (Method::GET, format!("{family}/some-task"), None),
            (Method::GET, format!("{family}?pageNum=1&pageSize=30"), None),
        ] {
            let content_type = body.as_ref().map(|_| "application/json");
            // `server.api()` has no account: `None` sends no header at all.
            replies.push(
                api.send(method, &path, authorization, content_type, body)
                    .await,
            );
        }
    }
    replies
}

#[track_caller]
fn all_are(replies: &[Reply], code: i64, case: &str) {
    for reply in replies {
        assert!(
            reply.status == 401 && reply.code() == code,
            "{case}: expected 401 / {code}, got HTTP {} {:#}",
            reply.status,
            reply.body
        );
        assert!(!reply.message().is_empty(), "{case}: {:#}", reply.body);
    }
}

#[tokio::test]
async fn missing_or_empty_authorization_is_1001() {
    let (server, _config) = auth_server();
    all_are(&every_route_with(&server, None).await, 1001, "no header");
    all_are(
        &every_route_with(&server, Some("")).await,
        1001,
        "empty header",
    );
}

#[tokio::test]
async fn malformed_authorization_is_1002() {
    let (server, _config) = auth_server();
    let token = jwt(ALPHA.0, ALPHA.1);
    for value in [
        format!("Basic {}", base64(b"ak-alpha:sk-alpha")),
        "Bearer abc".to_string(),
        "Bearer a.b".to_string(),
        "Bearer !!!.@@@.###".to_string(),
        format!("Token {token}"),
        token.clone(),
    ] {
        all_are(
            &every_route_with(&server, Some(&value)).await,
            1002,
            &format!("Authorization: {value}"),
        );
    }
}

#[tokio::test]
async fn unknown_key_or_bad_signature_is_1000() {
    let (server, _config) = auth_server();
    let cases = [
        ("unknown access key", jwt("ak-nobody", ALPHA.1)),
        ("another account's secret", jwt(ALPHA.0, BETA.1)),
        ("a wrong secret", jwt(ALPHA.0, "sk-alpha-wrong")),
    ];
    for (case, token) in cases {
        all_are(
            &every_route_with(&server, Some(&format!("Bearer {token}"))).await,
            1000,
            case,
        );
    }

    // A signature altered by one character.
    let token = jwt(ALPHA.0, ALPHA.1);
    let (head, signature) = token.rsplit_once('.').unwrap();
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("Bearer {head}.{first}{}", &signature[1..]);
    all_are(
        &every_route_with(&server, Some(&forged)).await,
        1000,
        "a forged signature",
    );

    // `alg: none` must never pass, whatever the code.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        json!({"iss": ALPHA.0, "exp": now() + 1800, "nbf": now() - 5})
            .to_string()
            .as_bytes(),
    );
    let unsigned = format!("Bearer {header}.{claims}.");
    for reply in every_route_with(&server, Some(&unsigned)).await {
        reply.error_in(401, &[1000, 1002]);
    }
}

#[tokio::test]
async fn token_times_nbf_1003_and_exp_1004() {
    let (server, _config) = auth_server();
    let (ak, sk) = ALPHA;
    let early = jwt_with(ak, sk, now() + 1800, now() + 300);
    all_are(
        &every_route_with(&server, Some(&format!("Bearer {early}"))).await,
        1003,
        "nbf in 5 minutes",
    );
    let expired = jwt_with(ak, sk, now() - 300, now() - 1800);
    all_are(
        &every_route_with(&server, Some(&format!("Bearer {expired}"))).await,
        1004,
        "expired 5 minutes ago",
    );

    // A couple of seconds of clock skew either way is tolerated.
    let api = server.api();
    for (case, token) in [
        ("nbf 2 s ahead", jwt_with(ak, sk, now() + 1800, now() + 2)),
        ("exp 2 s ago", jwt_with(ak, sk, now() - 2, now() - 1800)),
    ] {
        let reply = api
            .send(
                Method::GET,
                SIMPLE,
                Some(&format!("Bearer {token}")),
                None,
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{case}: {:#}", reply.body);
    }
}

#[tokio::test]
async fn accounts_see_only_their_own_tasks() {
    let (server, _config) = auth_server();
    let alpha = server.api_as(ALPHA.0, ALPHA.1);
    let beta = server.api_as(BETA.0, BETA.1);
    let gamma = server.api_as(GAMMA.0, GAMMA.1);

    let mut body = body();
    body["external_task_id"] = json!("shared-name");
    let alpha_task = alpha.create(&body).await;

    // Beta can neither see it by task_id nor by external_task_id, in either family.
    for family in [SIMPLE, OFFICIAL] {
        for id in [alpha_task.as_str(), "shared-name"] {
            beta.get(&format!("{family}/{id}")).await.error(404, 1203);
        }
        let list = beta.get(family).await.ok();
        assert_eq!(list.as_array().map(Vec::len), Some(0), "{list:#}");
    }

    // external_task_id is unique per account: beta may reuse it, alpha may not.
    let beta_task = beta.create(&body).await;
    assert_ne!(beta_task, alpha_task);
    alpha
        .post(SIMPLE, &body)
        .await
        .error(400, 1201)
        .mentions("external_task_id");
    assert_eq!(
        beta.task("shared-name").await["task_id"],
        beta_task.as_str()
    );
    assert_eq!(
        alpha.task("shared-name").await["task_id"],
        alpha_task.as_str()
    );

    // The account from the config file works, and sees nothing of the others.
    let gamma_task = gamma.create(&self::body()).await;
    let list = gamma.get(SIMPLE).await.ok();
    let ids: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(gamma_task)]);

    // Results stand on their own: their URLs need no token.
    let task = alpha
        .wait_succeed(&alpha_task, Duration::from_secs(30))
        .await;
    let (_, bytes) = server.api().download(&result_url(&task, 0)).await;
    assert_eq!(decode(&bytes).to_rgb8().dimensions(), (450, 300));
}

#[tokio::test]
async fn health_needs_no_token() {
    let (server, _config) = auth_server();
    for path in ["/health", "/ready"] {
        let response = client()
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path} without a token");
    }
}
