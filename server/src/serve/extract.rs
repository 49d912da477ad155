//! Request plumbing shared by every route: the JSON body extractor that answers in the Kling
//! envelope, and the request id every envelope carries.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;

use super::error::ApiError;

tokio::task_local! {
    /// The id of the request being handled, for [`super::wire::Envelope`]s built anywhere in it.
    static REQUEST_ID: String;
}

/// The current request's id, or a fresh one outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string())
}

/// Middleware: gives the request an id (the client's `X-Request-Id` when it sent a sane one),
/// makes it available to [`request_id`] and echoes it in the `X-Request-Id` response header.
pub async fn with_request_id(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// A JSON body, rejected in the API's own terms: a wrong content type, a body over the limit
/// or malformed JSON is 400 / 1200; a field of the wrong type or a missing field is 400 / 1201
/// naming the field.
pub struct AppJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::BadRequest(format!(
                "Content-Type must be application/json, got \"{content_type}\""
            )));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(_) => ApiError::BadRequest(
                    "the request body is larger than this server accepts (see --max-body-mb), or was cut off"
                        .to_string(),
                ),
                other => ApiError::BadRequest(other.body_text()),
            })?;
        parse_json(&bytes).map(AppJson)
    }
}

/// Parses a JSON body: syntax errors are 1200, type errors 1201 naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would also read a struct from an array; a body must be an object.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".to_string(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path != "." => {
                ApiError::InvalidParameter(format!("{path}: {}", strip_position(&inner)))
            }
            serde_json::error::Category::Data => {
                let message = strip_position(&inner);
                if message.starts_with("missing field") {
                    ApiError::InvalidParameter(message)
                } else {
                    ApiError::BadRequest(format!(
                        "the request body must be a JSON object: {message}"
                    ))
                }
            }
            _ => ApiError::BadRequest(format!("malformed JSON: {inner}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|err| ApiError::BadRequest(format!("malformed JSON: {err}")))?;
    Ok(value)
}

/// serde_json's message without " at line 1 column 42", which means nothing next to a field name.
fn strip_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::wire::SimpleCreate;

    fn code(body: &str) -> (u32, String) {
        let err = parse_json::<SimpleCreate>(body.as_bytes()).unwrap_err();
        (err.status_and_code().1, err.to_string())
    }

    #[test]
    fn syntax_errors_are_1200_and_type_errors_name_the_field() {
        assert_eq!(code("{").0, 1200);
        assert_eq!(code("not json").0, 1200);
        assert_eq!(code("[1]").0, 1200);
        assert_eq!(code(r#"{"image":"x","direction":"left"} trailing"#).0, 1200);
        let (c, message) = code(r#"{"image":"x","direction":"left","n":"three"}"#);
        assert_eq!(c, 1201);
        assert!(message.starts_with("n: invalid type"), "{message}");
        let (c, message) = code(r#"{"direction":"left"}"#);
        assert_eq!(c, 1201);
        assert!(message.contains("image"), "{message}");
        let (c, message) =
            code(r#"{"image":"x","direction":"left","watermark_info":{"enabled":1}}"#);
        assert_eq!(c, 1201);
        assert!(message.starts_with("watermark_info.enabled"), "{message}");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = r#"{"image":"x","direction":"left","model_name":"kling-v1","aspect":1}"#;
        assert!(parse_json::<SimpleCreate>(body.as_bytes()).is_ok());
    }

    mod fuzz {
        //! Request parsing under arbitrary input: never a panic, only 1200 or 1201.

        use proptest::prelude::*;

        use crate::serve::tasks::CreateRequest;
        use crate::serve::wire::{OfficialCreate, SimpleCreate};

        use super::super::parse_json;

        const FIELDS: [&str; 16] = [
            "image",
            "direction",
            "expansion_ratio",
            "prompt",
            "n",
            "watermark_info",
            "callback_url",
            "external_task_id",
            "negative_prompt",
            "seed",
            "steps",
            "guidance_scale",
            "model",
            "output_format",
            "up_expansion_ratio",
            "left_expansion_ratio",
        ];

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(|f| serde_json::json!(f)),
                "[a-z, ]{0,12}".prop_map(serde_json::Value::from),
                Just(serde_json::Value::from("left,right")),
                Just(serde_json::Value::from("https://example.com/a.png")),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn body() -> impl Strategy<Value = serde_json::Value> {
            prop::collection::btree_map(prop::sample::select(FIELDS.to_vec()), json_value(), 0..10)
                .prop_map(|m| {
                    serde_json::Value::Object(
                        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    )
                })
        }

        fn client_error(err: &crate::serve::error::ApiError) -> bool {
            matches!(err.status_and_code().1, 1200 | 1201)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_bytes_are_rejected_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                if let Err(err) = parse_json::<SimpleCreate>(&bytes) {
                    prop_assert!(client_error(&err), "{err}");
                }
            }

            #[test]
            fn arbitrary_json_bodies_parse_or_name_the_problem(body in body()) {
                let bytes = serde_json::to_vec(&body).unwrap();
                match parse_json::<SimpleCreate>(&bytes) {
                    Ok(simple) => {
                        if let Err(err) = CreateRequest::try_from(simple) {
                            prop_assert!(client_error(&err), "{err}");
                        }
                    }
                    Err(err) => prop_assert!(client_error(&err), "{err}"),
                }
                match parse_json::<OfficialCreate>(&bytes) {
                    Ok(official) => {
                        if let Err(err) = CreateRequest::try_from(official) {
                            prop_assert!(client_error(&err), "{err}");
                        }
                    }
                    Err(err) => prop_assert!(client_error(&err), "{err}"),
                }
            }
        }
    }
}
