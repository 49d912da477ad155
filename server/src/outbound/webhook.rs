//! Calling a callback URL, signed the Standard Webhooks way (<https://www.standardwebhooks.com/>).
//!
//! A signed POST carries three headers: `webhook-id` (the delivery's id, the same on every
//! retry, so that a receiver can drop duplicates), `webhook-timestamp` (Unix seconds of this
//! attempt) and `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
//! Any Standard Webhooks library verifies it with the same secret.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use sha2::Sha256;
use thiserror::Error;

use super::error::shown_url;
use super::{Outbound, OutboundError};

/// The field callback errors name.
const FIELD: &str = "callback URL";

/// Signs callback bodies with the operator's webhook secret.
///
/// The HMAC key is the secret's UTF-8 bytes, except for a secret that starts with `whsec_`:
/// by the Standard Webhooks convention the rest is the key in base64, so a secret made by
/// any Standard Webhooks tool (`whsec_` + base64 of 24 to 64 random bytes) works as it is,
/// and receivers configure the very same string.
#[derive(Clone)]
pub struct WebhookSigner {
    key: Vec<u8>,
}

/// Why a webhook secret is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WebhookSecretError {
    /// Occurs when the secret is empty (or `whsec_` alone).
    #[error("the webhook secret is empty")]
    Empty,
    /// Occurs when a `whsec_` secret is not followed by valid base64.
    #[error("the webhook secret starts with whsec_ but the rest is not valid base64: {0}")]
    NotBase64(String),
}

impl WebhookSigner {
    /// A signer for `secret`; see the type's documentation for how it becomes a key.
    pub fn new(secret: &str) -> Result<Self, WebhookSecretError> {
        let key = match secret.strip_prefix("whsec_") {
            Some(encoded) => BASE64
                .decode(encoded)
                .map_err(|err| WebhookSecretError::NotBase64(err.to_string()))?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(WebhookSecretError::Empty);
        }
        Ok(WebhookSigner { key })
    }

    /// The `webhook-signature` value for a delivery: `v1,` and the base64 HMAC-SHA256 of
    /// `"{id}.{timestamp}.{body}"`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length. This is a bug.");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body.as_bytes());
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSigner")
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Outbound {
    /// POSTs `body` (JSON) to the callback `url`, signed by `signer` when there is one, with
    /// `delivery_id` as the `webhook-id`. Succeeds on a 2xx answer; a connection error, a
    /// timeout ([`callback_timeout`](super::OutboundConfig::callback_timeout)), a refused
    /// address or any other status (redirects are not followed) is an error.
    pub async fn post_callback(
        &self,
        url: &str,
        body: &str,
        delivery_id: &str,
        signer: Option<&WebhookSigner>,
    ) -> Result<(), OutboundError> {
        let url = self.check_url(FIELD, url)?;
        let mut request = self
            .callback_client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body.to_owned());
        if let Some(signer) = signer {
            let timestamp = unix_seconds();
            request = request
                .header("webhook-id", delivery_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    signer.sign(delivery_id, timestamp, body),
                );
        }
        let after = self.config.callback_timeout;
        let response = match tokio::time::timeout(after, request.send()).await {
            Err(_elapsed) => {
                return Err(OutboundError::Timeout {
                    field: FIELD,
                    url: shown_url(&url),
                    after,
                });
            }
            Ok(Err(err)) => {
                return Err(OutboundError::from_reqwest(
                    FIELD,
                    &url,
                    &err,
                    self.callback_timeouts(),
                ));
            }
            Ok(Ok(response)) => response,
        };
        // The receiver's body is not read: only the status counts.
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(OutboundError::Status {
                field: FIELD,
                url: shown_url(&url),
                status,
            })
        }
    }
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::OutboundConfig;
    use super::super::test_server::{Reply, TestServer};
    use super::*;

    fn outbound(allow_private: bool) -> Outbound {
        Outbound::new(OutboundConfig {
            allow_private,
            callback_timeout: Duration::from_secs(2),
            ..OutboundConfig::default()
        })
        .unwrap()
    }

    /// The example of the Standard Webhooks specification and its reference libraries.
    #[test]
    fn standard_webhooks_vector() {
        let signer = WebhookSigner::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signer.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// A plain secret is used as raw bytes. Expected value computed with Python:
    /// `base64.b64encode(hmac.new(b"my secret", b'd1.1700000000.{"a":1}', hashlib.sha256).digest())`.
    #[test]
    fn plain_secret_matches_independent_hmac() {
        let signer = WebhookSigner::new("my secret").unwrap();
        assert_eq!(
            signer.sign("d1", 1_700_000_000, r#"{"a":1}"#),
            "v1,69qT3+WOqB5Kv4T0L8rIW9lOezj0tKJ6LP0wyLCMdEM="
        );
    }

    #[test]
    fn bad_secrets() {
        assert_eq!(
            WebhookSigner::new("").unwrap_err(),
            WebhookSecretError::Empty
        );
        assert_eq!(
            WebhookSigner::new("whsec_").unwrap_err(),
            WebhookSecretError::Empty
        );
        assert!(matches!(
            WebhookSigner::new("whsec_not base64!"),
            Err(WebhookSecretError::NotBase64(_))
        ));
    }

    #[test]
    fn debug_redacts_the_key() {
        let signer = WebhookSigner::new("hunter2").unwrap();
        let shown = format!("{signer:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("104"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn posts_signed_json() {
        let server = TestServer::start(|_| Reply::status(204, "No Content")).await;
        let signer = WebhookSigner::new("my secret").unwrap();
        let body = r#"{"task_id":"t1","task_status":"succeed"}"#;
        outbound(true)
            .post_callback(&server.url("/hook?token=abc"), body, "d1", Some(&signer))
            .await
            .unwrap();
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hook?token=abc");
        assert_eq!(request.body, body.as_bytes());
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(request.headers["webhook-id"], "d1");
        let timestamp: i64 = request.headers["webhook-timestamp"].parse().unwrap();
        assert!((timestamp - unix_seconds()).abs() < 60);
        // Verified independently of `sign`: HMAC over the received bytes.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"my secret").unwrap();
        mac.update(format!("d1.{timestamp}.").as_bytes());
        mac.update(&request.body);
        let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
        assert_eq!(request.headers["webhook-signature"], expected);
    }

    #[tokio::test]
    async fn unsigned_without_a_signer() {
        let server = TestServer::start(|_| Reply::status(200, "OK")).await;
        outbound(true)
            .post_callback(&server.url("/hook"), "{}", "d1", None)
            .await
            .unwrap();
        let request = &server.requests()[0];
        assert!(!request.headers.contains_key("webhook-signature"));
    }

    #[tokio::test]
    async fn non_2xx_is_an_error() {
        let server = TestServer::start(|request| match request.path.as_str() {
            "/500" => Reply::status(500, "Internal Server Error"),
            _ => Reply::redirect("/elsewhere"),
        })
        .await;
        let err = outbound(true)
            .post_callback(&server.url("/500"), "{}", "d1", None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "callback URL: {} answered 500 Internal Server Error",
                server.url("/500")
            )
        );
        // Redirects are not followed: the 302 itself is the answer.
        let err = outbound(true)
            .post_callback(&server.url("/302"), "{}", "d1", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, OutboundError::Status { status, .. } if status == 302),
            "{err}"
        );
        assert_eq!(server.requests().len(), 2);
    }

    #[tokio::test]
    async fn timeout_and_refused_addresses() {
        let server = TestServer::start(|_| Reply::Hang).await;
        let outbound_fast = Outbound::new(OutboundConfig {
            allow_private: true,
            callback_timeout: Duration::from_millis(200),
            ..OutboundConfig::default()
        })
        .unwrap();
        let err = outbound_fast
            .post_callback(&server.url("/hook"), "{}", "d1", None)
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::Timeout { .. }), "{err}");

        // The guard applies at send time, for literals and names.
        for url in [
            server.url("/hook"),
            format!("http://localhost:{}/hook", server.addr.port()),
        ] {
            let err = outbound(false)
                .post_callback(&url, "{}", "d1", None)
                .await
                .unwrap_err();
            assert!(matches!(err, OutboundError::Blocked { .. }), "{url}: {err}");
            assert!(err.to_string().starts_with("callback URL: "), "{err}");
        }
        assert_eq!(server.requests().len(), 1, "only the allowed call arrives");
    }
}
