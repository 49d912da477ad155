//! Downloading a client's image URL.

use reqwest::header::{ACCEPT, HeaderValue};
use url::Url;

use super::error::shown_url;
use super::{Outbound, OutboundError};

/// The field image-URL errors name.
const FIELD: &str = "image URL";

impl Outbound {
    /// Downloads `url` and returns its bytes: GET, at most
    /// [`max_redirects`](super::OutboundConfig::max_redirects) redirects, each hop and each
    /// resolved address checked by the guard, everything within
    /// [`fetch_timeout`](super::OutboundConfig::fetch_timeout), and no more than
    /// [`max_image_bytes`](super::OutboundConfig::max_image_bytes) read, whether or not the
    /// server sent a Content-Length. A status other than 2xx is an error naming it.
    pub async fn fetch_image(&self, url: &str) -> Result<Vec<u8>, OutboundError> {
        let url = self.check_url(FIELD, url)?;
        let after = self.config.fetch_timeout;
        match tokio::time::timeout(after, self.fetch_capped(&url)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(OutboundError::Timeout {
                field: FIELD,
                url: shown_url(&url),
                after,
            }),
        }
    }

    async fn fetch_capped(&self, url: &Url) -> Result<Vec<u8>, OutboundError> {
        let max = self.config.max_image_bytes;
        let too_large = || OutboundError::TooLarge { field: FIELD, max };
        let reqwest_error = |err: reqwest::Error| {
            OutboundError::from_reqwest(FIELD, url, &err, self.fetch_timeouts())
        };

        let mut response = self
            .fetch_client
            .get(url.clone())
            .header(
                ACCEPT,
                HeaderValue::from_static("image/png,image/jpeg,image/webp,image/*;q=0.8,*/*;q=0.5"),
            )
            .send()
            .await
            .map_err(reqwest_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(OutboundError::Status {
                field: FIELD,
                url: shown_url(response.url()),
                status,
            });
        }
        let announced = response.content_length();
        if announced.is_some_and(|len| len > max) {
            return Err(too_large());
        }
        // Trust the announced length for the first allocation only, and never beyond the cap.
        let capacity = announced.unwrap_or(0).min(max);
        let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        while let Some(chunk) = response.chunk().await.map_err(reqwest_error)? {
            // Checked before appending, so the buffer never holds more than the cap.
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::test_server::{Reply, TestServer};
    use super::super::{OutboundConfig, OutboundError};
    use super::*;

    fn outbound(allow_private: bool) -> Outbound {
        Outbound::new(OutboundConfig {
            allow_private,
            fetch_timeout: Duration::from_secs(5),
            max_image_bytes: 64 * 1024,
            ..OutboundConfig::default()
        })
        .unwrap()
    }

    /// Answers `/ok` with a small body, `/r/N` with a redirect to `/r/N-1` (`/r/0` to `/ok`),
    /// `/missing` with 404, `/big` with a Content-Length over the cap, `/chunked` with an
    /// endless chunked body, `/hang` never.
    async fn server() -> TestServer {
        TestServer::start(|request| match request.path.as_str() {
            "/ok" => Reply::ok("image/png", b"PNG bytes".to_vec()),
            "/missing" => Reply::status(404, "Not Found"),
            "/big" => Reply::ok("image/png", vec![0; 64 * 1024 + 1]),
            "/exact" => Reply::ok("image/png", vec![7; 64 * 1024]),
            "/chunked" => Reply::Chunked {
                chunk: 4096,
                count: usize::MAX,
            },
            "/chunked-small" => Reply::Chunked {
                chunk: 1000,
                count: 3,
            },
            "/hang" => Reply::Hang,
            "/r/0" => Reply::redirect("/ok"),
            path => match path.strip_prefix("/r/").and_then(|n| n.parse::<u32>().ok()) {
                Some(n) => Reply::redirect(&format!("/r/{}", n - 1)),
                None => Reply::status(404, "Not Found"),
            },
        })
        .await
    }

    #[tokio::test]
    async fn fetches_when_private_allowed() {
        let server = server().await;
        let bytes = outbound(true)
            .fetch_image(&server.url("/ok"))
            .await
            .unwrap();
        assert_eq!(bytes, b"PNG bytes");
        let via_name = format!("http://localhost:{}/ok", server.addr.port());
        assert_eq!(
            outbound(true).fetch_image(&via_name).await.unwrap(),
            b"PNG bytes"
        );
    }

    #[tokio::test]
    async fn refuses_loopback_by_ip_literal() {
        let server = server().await;
        let err = outbound(false)
            .fetch_image(&server.url("/ok"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                OutboundError::Blocked {
                    range: "loopback",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("image URL: http://127.0.0.1:"),
            "{err}"
        );
        for url in [
            "http://[::1]:9/x.png",
            "http://[::ffff:127.0.0.1]:9/x.png",
            "http://0x7f000001/x.png",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/x.png",
        ] {
            let err = outbound(false).fetch_image(url).await.unwrap_err();
            assert!(matches!(err, OutboundError::Blocked { .. }), "{url}: {err}");
        }
        assert_eq!(server.requests().len(), 0, "nothing may reach the server");
    }

    #[tokio::test]
    async fn refuses_loopback_by_host_name() {
        let server = server().await;
        let url = format!("http://localhost:{}/ok", server.addr.port());
        let err = outbound(false).fetch_image(&url).await.unwrap_err();
        assert!(
            matches!(
                err,
                OutboundError::Blocked {
                    range: "loopback",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("localhost"), "{err}");
        assert_eq!(server.requests().len(), 0, "nothing may reach the server");
    }

    #[tokio::test]
    async fn ipv6_loopback_with_private_allowed() {
        let Some(server) = TestServer::start_v6(|_| Reply::ok("image/png", b"six".to_vec())).await
        else {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        };
        let bytes = outbound(true)
            .fetch_image(&server.url("/ok"))
            .await
            .unwrap();
        assert_eq!(bytes, b"six");
        assert!(
            outbound(false)
                .fetch_image(&server.url("/ok"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn follows_redirects_up_to_the_limit() {
        let server = server().await;
        // /r/4 → /r/3 → … → /r/0 → /ok: five redirects, the default limit.
        let bytes = outbound(true)
            .fetch_image(&server.url("/r/4"))
            .await
            .unwrap();
        assert_eq!(bytes, b"PNG bytes");
        let err = outbound(true)
            .fetch_image(&server.url("/r/5"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, OutboundError::TooManyRedirects { max: 5, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn redirect_to_other_scheme_is_refused() {
        let server = TestServer::start(|request| match request.path.as_str() {
            "/ftp" => Reply::redirect("ftp://example.com/x.png"),
            _ => Reply::redirect("file:///etc/passwd"),
        })
        .await;
        let err = outbound(true)
            .fetch_image(&server.url("/ftp"))
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::InvalidUrl { .. }), "{err}");
        assert!(err.to_string().contains("ftp://example.com/x.png"), "{err}");
        // A Location that is no http URI at all is not followed: the 302 is the answer.
        let err = outbound(true)
            .fetch_image(&server.url("/file"))
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::Status { .. }), "{err}");
    }

    #[tokio::test]
    async fn non_2xx_names_the_status() {
        let server = server().await;
        let err = outbound(true)
            .fetch_image(&server.url("/missing"))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "image URL: {} answered 404 Not Found",
                server.url("/missing")
            )
        );
    }

    #[tokio::test]
    async fn size_cap_by_content_length() {
        let server = server().await;
        let err = outbound(true)
            .fetch_image(&server.url("/big"))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "image URL: the file is larger than 65536 bytes"
        );
        let exact = outbound(true)
            .fetch_image(&server.url("/exact"))
            .await
            .unwrap();
        assert_eq!(exact.len(), 64 * 1024);
    }

    #[tokio::test]
    async fn size_cap_while_streaming() {
        let server = server().await;
        let started = Instant::now();
        let err = outbound(true)
            .fetch_image(&server.url("/chunked"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, OutboundError::TooLarge { max: 65536, .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let small = outbound(true)
            .fetch_image(&server.url("/chunked-small"))
            .await
            .unwrap();
        assert_eq!(small.len(), 3000);
    }

    #[tokio::test]
    async fn times_out() {
        let server = server().await;
        let outbound = Outbound::new(OutboundConfig {
            allow_private: true,
            fetch_timeout: Duration::from_millis(300),
            ..OutboundConfig::default()
        })
        .unwrap();
        let started = Instant::now();
        let err = outbound
            .fetch_image(&server.url("/hang"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, OutboundError::Timeout { after, .. } if after == Duration::from_millis(300)),
            "{err}"
        );
        assert!(err.to_string().ends_with("timed out after 0.3 s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn connection_refused_is_unreachable() {
        // Bind then drop, so that the port is (very likely) closed.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = outbound(true)
            .fetch_image(&format!("http://127.0.0.1:{port}/x.png"))
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::Unreachable { .. }), "{err}");
    }

    #[tokio::test]
    async fn bad_urls() {
        for url in [
            "not a url",
            "ftp://example.com/x.png",
            "http://user:pw@example.com/x.png",
            "/x.png",
        ] {
            let err = outbound(true).fetch_image(url).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    OutboundError::InvalidUrl {
                        field: "image URL",
                        ..
                    }
                ),
                "{url}: {err}"
            );
        }
    }
}
