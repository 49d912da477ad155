//! Black-box tests of `outpaint serve`: each test starts the built binary on an ephemeral
//! loopback port with a fresh data folder and talks to it over HTTP only, as a Kling client
//! would. `shared/SPEC.md` is the contract; "SPEC 1.1" in a comment points into it.
//!
//! Where new tests go:
//! - `harness`: starting, killing and restarting the server; the client; JWTs; images; the
//!   local callback receiver and image host (and two checks of the harness itself);
//! - `routes`: every route answers, both families share one store, results are served (also
//!   over TLS);
//! - `auth`: tokens (missing, malformed, wrong key, nbf, exp) and accounts seeing only their own;
//! - `errors`: every SPEC 3 code a client can cause, and never a 5xx for bad input;
//! - `geometry`: canvas size and pixel-exact originals for every direction form;
//! - `paging`: list order, pages and their bounds;
//! - `callbacks`: deliveries, Standard Webhooks signatures, retries, a receiver that is down;
//! - `durability`: kill -9 and SIGTERM with tasks queued and running, then a restart;
//! - `limits`: a full queue and a full account answer 429 / 1303, a rate limit 429 / 1302;
//! - `browser`: the web page at `/` in a real headless Chromium (WebDriver).
//!
//! Codes of SPEC 3 that no client can cause on purpose are not tested here: 1103 (nothing in
//! SPEC grants per-resource permissions) and 5000–5002.

mod harness;

mod auth;
mod browser;
mod callbacks;
mod durability;
mod errors;
mod geometry;
mod limits;
mod paging;
mod routes;
