//! Kling's authentication (SPEC 3): `Authorization: Bearer <JWT>`, HS256, signed with the
//! account's secret key, `iss` = the access key. Each access key is an account.

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::api::AppState;
use super::error::ApiError;

/// Seconds of clock difference tolerated on `exp` and `nbf`.
pub const CLOCK_SKEW_SECS: u64 = 5;

/// The account a request acts for: its access key, or "" when authentication is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account(pub String);

/// The configured accounts. With none, authentication is off.
pub struct Accounts {
    keys: BTreeMap<String, DecodingKey>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Access keys are not secret; the secrets are left out.
        f.debug_struct("Accounts")
            .field("access_keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<serde_json::Value>,
}

impl Accounts {
    /// From access key → secret key pairs.
    pub fn new(pairs: &BTreeMap<String, String>) -> Self {
        let keys = pairs
            .iter()
            .map(|(access, secret)| (access.clone(), DecodingKey::from_secret(secret.as_bytes())))
            .collect();
        Accounts { keys }
    }

    /// Whether requests must authenticate.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The account an Authorization header value proves, or why it proves none.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Account, ApiError> {
        if !self.enabled() {
            return Ok(Account(String::new()));
        }
        let value = header.map(str::trim).unwrap_or_default();
        if value.is_empty() {
            return Err(ApiError::AuthMissing);
        }
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::AuthMalformed(
                    "expected `Bearer <JWT>`".to_string(),
                ));
            }
        };
        let access_key = issuer(token)?;
        let key = self
            .keys
            .get(&access_key)
            .ok_or_else(|| ApiError::AuthFailed(format!("unknown access key \"{access_key}\"")))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_SKEW_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss"]);
        jsonwebtoken::decode::<serde_json::Value>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            JwtErrorKind::ExpiredSignature => ApiError::TokenExpired,
            JwtErrorKind::ImmatureSignature => ApiError::TokenNotYetValid,
            JwtErrorKind::InvalidSignature => {
                ApiError::AuthFailed("the token's signature does not match".to_string())
            }
            JwtErrorKind::InvalidAlgorithm => {
                ApiError::AuthMalformed("the token must be signed with HS256".to_string())
            }
            JwtErrorKind::MissingRequiredClaim(claim) => {
                ApiError::AuthMalformed(format!("the token has no \"{claim}\" claim"))
            }
            other => ApiError::AuthMalformed(format!("not a valid JWT ({other:?})")),
        })?;
        Ok(Account(access_key))
    }
}

/// The token's `iss`, read before verification to find whose secret verifies it.
fn issuer(token: &str) -> Result<String, ApiError> {
    let malformed = |why: &str| ApiError::AuthMalformed(format!("not a valid JWT: {why}"));
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| malformed("the payload is not base64url"))?;
    let claims: Claims = serde_json::from_slice(&bytes)
        .map_err(|_| malformed("the payload is not a JSON object"))?;
    match claims.iss {
        Some(serde_json::Value::String(iss)) if !iss.is_empty() => Ok(iss),
        _ => Err(ApiError::AuthMalformed(
            "the token has no \"iss\" claim (the access key)".to_string(),
        )),
    }
}

/// Middleware: authenticates, applies the account's rate limit, and puts the [`Account`] in
/// the request's extensions.
pub async fn require_account(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let account = state.accounts.authenticate(header)?;
    state.rate_limiter.check(&account.0)?;
    request.extensions_mut().insert(account);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn now() -> i64 {
        outpaint_queue::now_ms() / 1000
    }

    fn accounts() -> Accounts {
        Accounts::new(&BTreeMap::from([
            ("ak1".to_string(), "sk1".to_string()),
            ("ak2".to_string(), "sk2".to_string()),
        ]))
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        let jwt = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        );
        format!("Bearer {}", jwt.unwrap())
    }

    fn code(result: Result<Account, ApiError>) -> u32 {
        result.unwrap_err().status_and_code().1
    }

    #[test]
    fn a_valid_token_names_its_account() {
        let t = token(
            json!({"iss": "ak2", "exp": now() + 60, "nbf": now() - 5}),
            "sk2",
        );
        assert_eq!(
            accounts().authenticate(Some(&t)).unwrap(),
            Account("ak2".into())
        );
    }

    #[test]
    fn each_failure_has_its_code() {
        let a = accounts();
        assert_eq!(code(a.authenticate(None)), 1001);
        assert_eq!(code(a.authenticate(Some("  "))), 1001);
        assert_eq!(code(a.authenticate(Some("Basic abc"))), 1002);
        assert_eq!(code(a.authenticate(Some("Bearer not.a.jwt"))), 1002);
        assert_eq!(code(a.authenticate(Some("Bearer abc"))), 1002);
        let wrong_key = token(json!({"iss": "ak1", "exp": now() + 60}), "sk2");
        assert_eq!(code(a.authenticate(Some(&wrong_key))), 1000);
        let unknown = token(json!({"iss": "nobody", "exp": now() + 60}), "sk1");
        assert_eq!(code(a.authenticate(Some(&unknown))), 1000);
        let early = token(
            json!({"iss": "ak1", "exp": now() + 600, "nbf": now() + 300}),
            "sk1",
        );
        assert_eq!(code(a.authenticate(Some(&early))), 1003);
        let late = token(json!({"iss": "ak1", "exp": now() - 300}), "sk1");
        assert_eq!(code(a.authenticate(Some(&late))), 1004);
        let no_exp = token(json!({"iss": "ak1"}), "sk1");
        assert_eq!(code(a.authenticate(Some(&no_exp))), 1002);
    }

    #[test]
    fn small_clock_skew_is_tolerated() {
        let t = token(
            json!({"iss": "ak1", "exp": now() - 2, "nbf": now() + 2}),
            "sk1",
        );
        assert!(accounts().authenticate(Some(&t)).is_ok());
    }

    #[test]
    fn without_accounts_everyone_is_the_anonymous_account() {
        let off = Accounts::new(&BTreeMap::new());
        assert_eq!(off.authenticate(None).unwrap(), Account(String::new()));
    }
}
