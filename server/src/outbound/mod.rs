//! Outbound HTTP: fetching image URLs and delivering callbacks, without becoming a way into
//! the network the server runs in (SPEC 1.3 and 4).
//!
//! - [`Outbound`] is the one handle for both: [`Outbound::fetch_image`] downloads a client's
//!   image URL with a size cap, a timeout and a redirect limit; [`Outbound::post_callback`]
//!   POSTs a callback body, signed the Standard Webhooks way by a [`WebhookSigner`].
//! - [`guard`] keeps both off loopback, private, link-local and other internal addresses
//!   unless [`OutboundConfig::allow_private`] (`--allow-private-urls`) is set. It is enforced
//!   where connections are made (resolver, IP literals, each redirect), not by a look-up
//!   beforehand, so DNS rebinding cannot get round it.
//! - [`run_deliveries`] drains the store's callback outbox, retrying with exponential backoff
//!   ([`RetryPolicy`]).
//!
//! Errors are [`OutboundError`]s whose messages name the field and say what to fix.

mod deliveries;
mod error;
mod fetch;
mod guard;
#[cfg(test)]
mod test_server;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use url::Url;

pub use deliveries::{RetryPolicy, run_deliveries};
pub use error::OutboundError;
pub use webhook::WebhookSigner;

use guard::GuardedResolver;

/// How outbound requests are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundConfig {
    /// Lets image and callback URLs reach loopback, private and other internal addresses
    /// (on-prem setups whose images live on the LAN). Off by default: a public server would
    /// otherwise fetch its own metadata service or admin ports on a client's behalf.
    pub allow_private: bool,
    /// The most an image download may take, connecting and reading included.
    pub fetch_timeout: Duration,
    /// The most establishing a connection may take (for images and callbacks).
    pub connect_timeout: Duration,
    /// The most redirects an image URL may go through.
    pub max_redirects: usize,
    /// The largest image accepted, in bytes.
    pub max_image_bytes: u64,
    /// The most a callback POST may take before it counts as failed.
    pub callback_timeout: Duration,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            allow_private: false,
            fetch_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            max_redirects: 5,
            // SPEC 1.3: images up to 10 MB.
            max_image_bytes: 10 * 1024 * 1024,
            callback_timeout: Duration::from_secs(10),
        }
    }
}

/// Makes outbound requests: a cheap `Clone` handle shared by request handlers and the
/// delivery task.
///
/// Two reqwest clients live inside (each an `Arc` around a connection pool), because the
/// two kinds of request differ in redirect policy: image URLs follow up to
/// [`OutboundConfig::max_redirects`] checked redirects, while callbacks follow none (a 3xx
/// is a failed delivery, as with GitHub's or Stripe's webhooks: a redirected POST turns into
/// a GET or re-sends the body elsewhere, neither of which the receiver asked for).
#[derive(Debug, Clone)]
pub struct Outbound {
    fetch_client: reqwest::Client,
    callback_client: reqwest::Client,
    config: Arc<OutboundConfig>,
}

impl Outbound {
    /// Builds the clients. Fails only if the TLS backend cannot be set up.
    pub fn new(config: OutboundConfig) -> Result<Self, reqwest::Error> {
        let max = config.max_redirects;
        let allow_private = config.allow_private;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let previous = attempt.previous().len();
            match guard::check_hop(attempt.url(), previous, max, allow_private) {
                Ok(()) => attempt.follow(),
                Err(refusal) => attempt.error(refusal),
            }
        });
        let fetch_client = client_builder(&config).redirect(redirects).build()?;
        let callback_client = client_builder(&config)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Outbound {
            fetch_client,
            callback_client,
            config: Arc::new(config),
        })
    }

    /// Checks a URL without connecting: it parses, is http or https, has a host and no user
    /// name or password, and an IP-literal host is allowed by the guard. For validating a
    /// `callback_url` when a task is created; a host name is checked when it is called.
    /// `field` names the URL in the error (`"callback_url"`).
    pub fn check_url(&self, field: &'static str, url: &str) -> Result<Url, OutboundError> {
        let parsed = Url::parse(url).map_err(|err| OutboundError::InvalidUrl {
            field,
            reason: format!("not a valid absolute http(s) URL ({err})"),
        })?;
        guard::check_target(&parsed, self.config.allow_private)
            .map_err(|refusal| OutboundError::refused(field, &parsed, refusal))?;
        Ok(parsed)
    }

    /// The timeouts reqwest errors are measured against: (connect, whole exchange).
    fn fetch_timeouts(&self) -> (Duration, Duration) {
        (self.config.connect_timeout, self.config.fetch_timeout)
    }

    fn callback_timeouts(&self) -> (Duration, Duration) {
        (self.config.connect_timeout, self.config.callback_timeout)
    }
}

/// What both clients share: the guarded resolver, no proxy, the connect timeout.
fn client_builder(config: &OutboundConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: config.allow_private,
        }))
        // A proxy taken from HTTP_PROXY would do the connecting, and the resolver would
        // only ever check the proxy's own address.
        .no_proxy()
        .connect_timeout(config.connect_timeout)
        .referer(false)
        .user_agent(concat!("outpaint/", env!("CARGO_PKG_VERSION")))
}
