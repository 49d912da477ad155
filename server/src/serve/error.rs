//! [`ApiError`]: every way a request can fail, and the one place where each becomes an HTTP
//! status and a Kling error code (SPEC 3).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use outpaint_engine::{EngineError, ErrorKind};
use outpaint_queue::StoreError;
use thiserror::Error;

use super::wire::Envelope;

/// A failed request. Client errors carry a message the client can act on; internal ones are
/// logged in full and answered with a generic message.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Unknown access key or bad signature.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// No Authorization header, or an empty one.
    #[error("the Authorization header is missing: send `Authorization: Bearer <JWT>`")]
    AuthMissing,
    /// The Authorization value is not a well-formed bearer JWT.
    #[error("the Authorization value is malformed: {0}")]
    AuthMalformed(String),
    /// The token's nbf is in the future.
    #[error("the token is not valid yet (nbf is in the future)")]
    TokenNotYetValid,
    /// The token's exp has passed.
    #[error("the token has expired (exp is in the past)")]
    TokenExpired,
    /// The body is not acceptable as a whole: malformed JSON, wrong content type, too large.
    #[error("{0}")]
    BadRequest(String),
    /// One parameter is invalid; the message names it.
    #[error("{0}")]
    InvalidParameter(String),
    /// The path exists but not with this method.
    #[error("method {method} is not valid for {path}")]
    MethodNotAllowed { method: String, path: String },
    /// Unknown route, unknown task, or another account's task.
    #[error("{0}")]
    NotFound(String),
    /// The account sends requests faster than allowed.
    #[error("rate limit exceeded: at most {per_second} requests per second; retry later")]
    RateLimited { per_second: f64 },
    /// The queue or the account's share of it is full.
    #[error("{0}")]
    Busy(String),
    /// The server is shutting down or its store is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// The request took longer than allowed.
    #[error("the request took longer than {0} s")]
    Timeout(u64),
    /// Anything else: a bug or a broken disk.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and the Kling code: the one mapping of the server.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            ApiError::AuthFailed(_) => (StatusCode::UNAUTHORIZED, 1000),
            ApiError::AuthMissing => (StatusCode::UNAUTHORIZED, 1001),
            ApiError::AuthMalformed(_) => (StatusCode::UNAUTHORIZED, 1002),
            ApiError::TokenNotYetValid => (StatusCode::UNAUTHORIZED, 1003),
            ApiError::TokenExpired => (StatusCode::UNAUTHORIZED, 1004),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, 1200),
            ApiError::InvalidParameter(_) => (StatusCode::BAD_REQUEST, 1201),
            ApiError::MethodNotAllowed { .. } => (StatusCode::NOT_FOUND, 1202),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, 1203),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, 1302),
            ApiError::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, 1303),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 5000),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, 5001),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, 5002),
        }
    }

    /// The message sent to the client: internal details stay in the log.
    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error; the server log has the details".to_string(),
            other => other.to_string(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err.kind() {
            ErrorKind::InvalidInput => ApiError::InvalidParameter(err.to_string()),
            ErrorKind::Cancelled | ErrorKind::Internal => ApiError::Internal(err.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::ExternalIdTaken(_) => ApiError::InvalidParameter(err.to_string()),
            StoreError::QueueFull { .. } | StoreError::AccountBusy { .. } => {
                ApiError::Busy(err.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::outbound::OutboundError> for ApiError {
    fn from(err: crate::outbound::OutboundError) -> Self {
        ApiError::InvalidParameter(err.to_string())
    }
}

/// The message of an internal error, kept in the response's extensions for the logging
/// middleware (the conversion itself has no side effects).
#[derive(Debug, Clone)]
pub struct InternalErrorMessage(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut response = (status, Envelope::error(code, self.public_message())).into_response();
        if let ApiError::Internal(message) = &self {
            response
                .extensions_mut()
                .insert(InternalErrorMessage(message.clone()));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec_table() {
        let cases = [
            (ApiError::AuthFailed("x".into()), 401, 1000),
            (ApiError::AuthMissing, 401, 1001),
            (ApiError::AuthMalformed("x".into()), 401, 1002),
            (ApiError::TokenNotYetValid, 401, 1003),
            (ApiError::TokenExpired, 401, 1004),
            (ApiError::BadRequest("x".into()), 400, 1200),
            (ApiError::InvalidParameter("x".into()), 400, 1201),
            (ApiError::NotFound("x".into()), 404, 1203),
            (ApiError::RateLimited { per_second: 1.0 }, 429, 1302),
            (ApiError::Busy("x".into()), 429, 1303),
            (ApiError::Internal("x".into()), 500, 5000),
            (ApiError::Unavailable("x".into()), 503, 5001),
            (ApiError::Timeout(1), 504, 5002),
        ];
        for (error, status, code) in cases {
            assert_eq!(
                error.status_and_code(),
                (StatusCode::from_u16(status).unwrap(), code)
            );
        }
    }

    #[test]
    fn store_admission_errors_are_1303_and_internal_details_stay_private() {
        let full: ApiError = StoreError::QueueFull { max: 3 }.into();
        assert_eq!(full.status_and_code().1, 1303);
        let db: ApiError = StoreError::Database("disk I/O error at /secret/path".into()).into();
        assert!(!db.public_message().contains("/secret"));
    }
}
