//! What can go wrong fetching an image URL or calling a callback URL, in words a client can
//! act on.

use std::error::Error as _;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use reqwest::StatusCode;
use thiserror::Error;
use url::Url;

use super::guard::Refusal;

/// Why an outbound request failed. Every message starts with the field it concerns
/// (`image URL: ...`) and is safe to show the client: URLs are shown without their query
/// string, which often holds a signature or token. The server answers the image-URL ones
/// with 400 / 1201.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum OutboundError {
    /// Occurs when the URL does not parse, is not http or https, has no host, or carries a
    /// user name or password.
    #[error("{field}: {reason}")]
    InvalidUrl { field: &'static str, reason: String },
    /// Occurs when the host is, or resolves only to, an internal address and private URLs
    /// are not allowed.
    #[error(
        "{field}: {url} resolves to {ip} ({range}), an address this server does not connect to \
         (internal addresses are refused unless the server runs with --allow-private-urls)"
    )]
    Blocked {
        field: &'static str,
        url: String,
        ip: IpAddr,
        range: &'static str,
    },
    /// Occurs when the server redirects more often than allowed.
    #[error("{field}: {url} redirected more than {max} times")]
    TooManyRedirects {
        field: &'static str,
        url: String,
        max: usize,
    },
    /// Occurs when the server answers with a status other than 2xx (after redirects).
    #[error("{field}: {url} answered {status}")]
    Status {
        field: &'static str,
        url: String,
        status: StatusCode,
    },
    /// Occurs when the response body is larger than the cap, by its Content-Length or once
    /// that many bytes have arrived.
    #[error("{field}: the file is larger than {max} bytes")]
    TooLarge { field: &'static str, max: u64 },
    /// Occurs when connecting, or the whole exchange, takes longer than allowed.
    #[error("{field}: {url} timed out after {}", Secs(*.after))]
    Timeout {
        field: &'static str,
        url: String,
        after: Duration,
    },
    /// Occurs when the host does not resolve, refuses the connection, fails TLS or breaks
    /// off mid-answer.
    #[error("{field}: could not reach {url}: {detail}")]
    Unreachable {
        field: &'static str,
        url: String,
        detail: String,
    },
}

impl OutboundError {
    /// Whether trying again later cannot help (the URL itself is unusable). A blocked
    /// address is not permanent: the name may resolve elsewhere later.
    pub fn is_permanent(&self) -> bool {
        matches!(self, OutboundError::InvalidUrl { .. })
    }

    /// The error for a refused URL; `url` is the URL the refusal concerns.
    pub(crate) fn refused(field: &'static str, url: &Url, refusal: Refusal) -> Self {
        let shown = shown_url(url);
        match refusal {
            Refusal::NotHttp { scheme } => OutboundError::InvalidUrl {
                field,
                reason: format!("{shown} is a {scheme}: URL; only http and https are accepted"),
            },
            Refusal::NoHost => OutboundError::InvalidUrl {
                field,
                reason: format!("{shown} has no host"),
            },
            Refusal::UserInfo => OutboundError::InvalidUrl {
                field,
                reason: format!("{shown} carries a user name or password, which is not accepted"),
            },
            Refusal::Blocked { ip, range } => OutboundError::Blocked {
                field,
                url: shown,
                ip,
                range,
            },
            Refusal::TooManyRedirects { max } => OutboundError::TooManyRedirects {
                field,
                url: shown,
                max,
            },
            Refusal::Redirect { to, refusal } => Self::refused(field, &to, *refusal),
        }
    }

    /// Converts reqwest's error for a request to `url`, finding the guard's [`Refusal`] in
    /// its source chain when the resolver or the redirect policy refused.
    pub(crate) fn from_reqwest(
        field: &'static str,
        url: &Url,
        err: &reqwest::Error,
        timeouts: (Duration, Duration),
    ) -> Self {
        // The URL being requested when it failed: a redirect target, or the original.
        let url = err.url().unwrap_or(url);
        let mut source = err.source();
        let mut innermost = None;
        while let Some(cause) = source {
            if let Some(refusal) = cause.downcast_ref::<Refusal>() {
                return Self::refused(field, url, refusal.clone());
            }
            innermost = Some(cause);
            source = cause.source();
        }
        let (connect_timeout, total_timeout) = timeouts;
        if err.is_timeout() {
            let after = if err.is_connect() {
                connect_timeout
            } else {
                total_timeout
            };
            return OutboundError::Timeout {
                field,
                url: shown_url(url),
                after,
            };
        }
        let detail = innermost.map_or_else(|| err.to_string(), ToString::to_string);
        OutboundError::Unreachable {
            field,
            url: shown_url(url),
            detail,
        }
    }
}

/// A URL as shown in messages and logs: without user info, query or fragment (`?…` marks a
/// dropped query), and at most 200 characters.
pub(crate) fn shown_url(url: &Url) -> String {
    const MAX_CHARS: usize = 200;
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    let mut text: String = shown.as_str().chars().take(MAX_CHARS).collect();
    if text.len() < shown.as_str().len() {
        text.push('…');
    } else if had_query {
        text.push_str("?…");
    }
    text
}

/// A duration in seconds as people write it: "20 s", "0.25 s".
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_nanos() == 0 {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{} s", self.0.as_secs_f64())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_url_hides_query_and_credentials() {
        let url = Url::parse("https://u:p@bucket.example.com/a.png?X-Amz-Signature=abc#f").unwrap();
        assert_eq!(shown_url(&url), "https://bucket.example.com/a.png?…");
        let url = Url::parse("http://example.com/a.png").unwrap();
        assert_eq!(shown_url(&url), "http://example.com/a.png");
        let long = Url::parse(&format!("http://example.com/{}", "a".repeat(500))).unwrap();
        assert_eq!(shown_url(&long).chars().count(), 201);
    }

    #[test]
    fn messages_read_well() {
        let err = OutboundError::Timeout {
            field: "image URL",
            url: "http://example.com/a.png".into(),
            after: Duration::from_secs(20),
        };
        assert_eq!(
            err.to_string(),
            "image URL: http://example.com/a.png timed out after 20 s"
        );
        let err = OutboundError::Status {
            field: "image URL",
            url: "http://example.com/a.png".into(),
            status: StatusCode::NOT_FOUND,
        };
        assert_eq!(
            err.to_string(),
            "image URL: http://example.com/a.png answered 404 Not Found"
        );
        let err = OutboundError::TooLarge {
            field: "image URL",
            max: 10_485_760,
        };
        assert_eq!(
            err.to_string(),
            "image URL: the file is larger than 10485760 bytes"
        );
        assert_eq!(Secs(Duration::from_millis(250)).to_string(), "0.25 s");
    }
}
