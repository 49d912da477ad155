//! Per-account request rate limit (429 / 1302): a token bucket per account, refilled at the
//! configured rate, holding at most one second's worth of requests (and at least one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::error::ApiError;

/// The buckets of every account that made a request.
pub struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_second` requests per second per account; 0 (or less) is no limit.
    pub fn new(per_second: f64) -> Self {
        RateLimiter {
            per_second,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's token from `account`'s bucket, or says the limit is reached.
    pub fn check(&self, account: &str) -> Result<(), ApiError> {
        self.check_at(account, Instant::now())
    }

    fn check_at(&self, account: &str, now: Instant) -> Result<(), ApiError> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let burst = self.per_second.max(1.0);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(account.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(ApiError::RateLimited {
                per_second: self.per_second,
            });
        }
        bucket.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_is_allowed_then_refused_then_refilled() {
        let limiter = RateLimiter::new(2.0);
        let t = Instant::now();
        assert!(limiter.check_at("a", t).is_ok());
        assert!(limiter.check_at("a", t).is_ok());
        assert!(limiter.check_at("a", t).is_err());
        // Another account has its own bucket.
        assert!(limiter.check_at("b", t).is_ok());
        assert!(
            limiter
                .check_at("a", t + Duration::from_millis(500))
                .is_ok()
        );
    }

    #[test]
    fn zero_is_no_limit() {
        let limiter = RateLimiter::new(0.0);
        let t = Instant::now();
        assert!((0..1000).all(|_| limiter.check_at("a", t).is_ok()));
    }
}
