//! The HTTP surface: both route families over one store, result files, health, metrics and
//! the OpenAPI document. Handlers stay short; what they share lives in functions here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use outpaint_engine::Engine;
use outpaint_queue::{Admission, NewTask, Store};
use tokio::sync::{Notify, Semaphore};
use tracing::{Instrument, error, info_span};

use super::auth::{self, Account, Accounts};
use super::error::{ApiError, InternalErrorMessage};
use super::extract::{self, AppJson};
use super::metrics::Metrics;
use super::ratelimit::RateLimiter;
use super::results::ResultFiles;
use super::tasks::{CreateRequest, task_object};
use super::wire::{Envelope, ErrorResponse, OfficialCreate, PageQuery, SimpleCreate, TaskObject};
use crate::outbound::Outbound;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub outbound: Outbound,
    pub accounts: Arc<Accounts>,
    pub rate_limiter: Arc<RateLimiter>,
    pub results: ResultFiles,
    pub admission: Admission,
    /// Base of result URLs, without a trailing slash.
    pub public_url: Arc<str>,
    /// The backend used when a request names no `model`.
    pub default_model: Arc<str>,
    /// Woken when a task is created, so an idle worker starts at once.
    pub work_available: Arc<Notify>,
    /// Set when shutting down: creates are refused with 503 / 5001.
    pub draining: Arc<AtomicBool>,
    /// Bounds the images being decoded at once (CPU and memory), whatever the client count.
    pub decode_permits: Arc<Semaphore>,
    pub metrics: Metrics,
    pub request_timeout: Duration,
}

/// The router with every route and layer.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/images/expand", get(list_simple).post(create_simple))
        .route("/v1/images/expand/{id}", get(get_simple))
        .route(
            "/v1/images/editing/expand",
            get(list_official).post(create_official),
        )
        .route("/v1/images/editing/expand/{id}", get(get_official))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_account,
        ));
    Router::new()
        .merge(v1)
        .route("/results/{task_id}/{file}", get(result_file))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(super::web::routes(&state.engine, &state.public_url))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(move |request, next| {
            refuse_oversized(max_body_bytes, request, next)
        }))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn(extract::with_request_id))
        .with_state(state)
}

/// Declared bodies up to this size that are over the limit are read and dropped before the
/// refusal is sent (see [`refuse_oversized`]); larger ones are refused without reading.
const DRAIN_MAX_BYTES: u64 = 64 << 20;
/// The most time spent dropping such a body.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Middleware: a body whose Content-Length is over the limit is refused (400 / 1200) before
/// any handler runs. Up to [`DRAIN_MAX_BYTES`] of it are read and dropped first: a server that
/// closes a connection with unread data resets it, and a client still sending would then see
/// the reset instead of the answer.
async fn refuse_oversized(max_body_bytes: usize, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max_body_bytes as u64 => {
            if length <= DRAIN_MAX_BYTES {
                let mut body = request.into_body();
                let drain = async {
                    while let Some(Ok(_)) =
                        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx))
                            .await
                    {}
                };
                let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            }
            ApiError::BadRequest(format!(
                "the request body is {length} bytes; this server accepts at most {max_body_bytes} (see --max-body-mb)"
            ))
            .into_response()
        }
        _ => next.run(request).await,
    }
}

/// Middleware: the request's span, its timeout (504 / 5002), metrics, and the log line of an
/// internal error.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // An HTTP/1 request refused before its body was read leaves that body in the connection;
    // such a connection must close, and the client must be told (`Connection: close`), or its
    // next request on it fails.
    let unread_body_possible = request.version() < Version::HTTP_2
        && (request.headers().contains_key(header::TRANSFER_ENCODING)
            || request
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|length| length != "0"));
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let span = info_span!("request", %method, route, request_id = %extract::request_id());
    let timeout = state.request_timeout;
    let mut response =
        match tokio::time::timeout(timeout, next.run(request).instrument(span.clone())).await {
            Ok(response) => response,
            Err(_) => ApiError::Timeout(timeout.as_secs()).into_response(),
        };
    if unread_body_possible && !response.status().is_success() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(InternalErrorMessage(message)) = response.extensions().get() {
        span.in_scope(|| error!(status = response.status().as_u16(), "{message}"));
    }
    state
        .metrics
        .record_request(&method, &route, response.status(), started.elapsed());
    response
}

/// `POST /v1/images/expand`.
#[utoipa::path(post, path = "/v1/images/expand", request_body = SimpleCreate,
    responses((status = 200, description = "Task created", body = Envelope<TaskObject>),
              (status = 400, description = "1200/1201", body = ErrorResponse),
              (status = 401, description = "1000-1004", body = ErrorResponse),
              (status = 429, description = "1302/1303", body = ErrorResponse)),
    security(("jwt" = [])), tag = "simple")]
pub async fn create_simple(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    AppJson(body): AppJson<SimpleCreate>,
) -> Result<Envelope<TaskObject>, ApiError> {
    create(&state, account, CreateRequest::try_from(body)?).await
}

/// `POST /v1/images/editing/expand`.
#[utoipa::path(post, path = "/v1/images/editing/expand", request_body = OfficialCreate,
    responses((status = 200, description = "Task created", body = Envelope<TaskObject>),
              (status = 400, description = "1200/1201", body = ErrorResponse),
              (status = 401, description = "1000-1004", body = ErrorResponse),
              (status = 429, description = "1302/1303", body = ErrorResponse)),
    security(("jwt" = [])), tag = "official")]
pub async fn create_official(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    AppJson(body): AppJson<OfficialCreate>,
) -> Result<Envelope<TaskObject>, ApiError> {
    create(&state, account, CreateRequest::try_from(body)?).await
}

/// `GET /v1/images/expand/{id}`.
#[utoipa::path(get, path = "/v1/images/expand/{id}",
    params(("id" = String, Path, description = "task_id or external_task_id")),
    responses((status = 200, body = Envelope<TaskObject>), (status = 404, description = "1203", body = ErrorResponse)),
    security(("jwt" = [])), tag = "simple")]
pub async fn get_simple(
    state: State<AppState>,
    account: Extension<Account>,
    id: Path<String>,
) -> Result<Envelope<TaskObject>, ApiError> {
    get_task(state, account, id).await
}

/// `GET /v1/images/editing/expand/{id}`.
#[utoipa::path(get, path = "/v1/images/editing/expand/{id}",
    params(("id" = String, Path, description = "task_id or external_task_id")),
    responses((status = 200, body = Envelope<TaskObject>), (status = 404, description = "1203", body = ErrorResponse)),
    security(("jwt" = [])), tag = "official")]
pub async fn get_official(
    state: State<AppState>,
    account: Extension<Account>,
    id: Path<String>,
) -> Result<Envelope<TaskObject>, ApiError> {
    get_task(state, account, id).await
}

/// `GET /v1/images/expand?pageNum=&pageSize=`.
#[utoipa::path(get, path = "/v1/images/expand", params(PageQuery),
    responses((status = 200, body = Envelope<Vec<TaskObject>>), (status = 400, description = "1201", body = ErrorResponse)),
    security(("jwt" = [])), tag = "simple")]
pub async fn list_simple(
    state: State<AppState>,
    account: Extension<Account>,
    query: Query<PageQuery>,
) -> Result<Envelope<Vec<TaskObject>>, ApiError> {
    list_tasks(state, account, query).await
}

/// `GET /v1/images/editing/expand?pageNum=&pageSize=`.
#[utoipa::path(get, path = "/v1/images/editing/expand", params(PageQuery),
    responses((status = 200, body = Envelope<Vec<TaskObject>>), (status = 400, description = "1201", body = ErrorResponse)),
    security(("jwt" = [])), tag = "official")]
pub async fn list_official(
    state: State<AppState>,
    account: Extension<Account>,
    query: Query<PageQuery>,
) -> Result<Envelope<Vec<TaskObject>>, ApiError> {
    list_tasks(state, account, query).await
}

/// Validates everything, reads the image, commits the task, wakes a worker.
async fn create(
    state: &AppState,
    account: Account,
    request: CreateRequest,
) -> Result<Envelope<TaskObject>, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable(
            "the server is shutting down; retry on another instance or in a moment".to_string(),
        ));
    }
    let options = request.job.options(&state.default_model);
    state.engine.validate(&options)?;
    if let Some(url) = &request.callback_url {
        state.outbound.check_url("callback_url", url)?;
    }
    let bytes = image_bytes(state, &request.image).await?;
    let expansion = request
        .job
        .expansion
        .expansion()
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let bytes = {
        let waited = Instant::now();
        let permit = Arc::clone(&state.decode_permits)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down".to_string()))?;
        state.metrics.record_stage("decode_wait", waited.elapsed());
        let engine = Arc::clone(&state.engine);
        let (metrics, started) = (state.metrics.clone(), Instant::now());
        tokio::task::spawn_blocking(move || {
            let image = engine.decode(&bytes)?;
            engine.plan(&image, &expansion)?;
            // Released here, not when this request's task is polled again: on a busy server
            // that can be much later, and the next create would wait for nothing.
            drop(permit);
            metrics.record_stage("decode", started.elapsed());
            Ok::<_, ApiError>(bytes)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("image check panicked: {e}")))??
    };
    let spec = serde_json::to_string(&request.job)
        .map_err(|e| ApiError::Internal(format!("cannot serialise the job: {e}")))?;
    let started = Instant::now();
    let task = state
        .store
        .create(
            NewTask {
                id: uuid::Uuid::new_v4().simple().to_string(),
                account: account.0,
                external_task_id: request.external_task_id,
                callback_url: request.callback_url,
                model: request
                    .job
                    .model
                    .clone()
                    .unwrap_or_else(|| state.default_model.to_string()),
                spec,
                input: bytes,
            },
            state.admission,
        )
        .await?;
    state.metrics.record_stage("enqueue", started.elapsed());
    state.work_available.notify_one();
    Ok(Envelope::ok(task_object(
        &task,
        &state.public_url,
        &state.default_model,
    )))
}

/// The `image` field's bytes: downloaded when it is an http(s) URL, else base64-decoded (a
/// `data:...;base64,` prefix and whitespace are tolerated). Oversized data is refused before
/// it is decoded.
async fn image_bytes(state: &AppState, field: &str) -> Result<Vec<u8>, ApiError> {
    let field = field.trim();
    if field.is_empty() {
        return Err(ApiError::InvalidParameter(
            "image is empty: give an http(s) URL or base64 image data".to_string(),
        ));
    }
    let lower = field.get(..8).unwrap_or(field).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(state.outbound.fetch_image(field).await?);
    }
    let data = match field.strip_prefix("data:") {
        Some(rest) => match rest.split_once(',') {
            Some((meta, data)) if meta.ends_with(";base64") => data,
            _ => {
                return Err(ApiError::InvalidParameter(
                    "image: a data: URL must be base64 (data:image/png;base64,...)".to_string(),
                ));
            }
        },
        None => field,
    };
    let estimated = (data.len() as u64 / 4) * 3;
    state
        .engine
        .limits()
        .check_file_size(estimated)
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let compact: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_slice())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(compact.as_slice()))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(compact.as_slice()))
        .map_err(|_| {
            ApiError::InvalidParameter(
                "image is neither an http(s) URL nor valid base64 image data".to_string(),
            )
        })
}

async fn get_task(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    Path(id): Path<String>,
) -> Result<Envelope<TaskObject>, ApiError> {
    let task = state
        .store
        .find(&account.0, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {id} does not exist")))?;
    Ok(Envelope::ok(task_object(
        &task,
        &state.public_url,
        &state.default_model,
    )))
}

async fn list_tasks(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    Query(query): Query<PageQuery>,
) -> Result<Envelope<Vec<TaskObject>>, ApiError> {
    let page = page_param("pageNum", query.page_num.as_deref(), 1, 1000)?;
    let size = page_param("pageSize", query.page_size.as_deref(), 30, 500)?;
    let tasks = state.store.list(&account.0, page, size).await?;
    Ok(Envelope::ok(
        tasks
            .iter()
            .map(|task| task_object(task, &state.public_url, &state.default_model))
            .collect(),
    ))
}

fn page_param(name: &str, value: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    value
        .parse::<u32>()
        .ok()
        .filter(|v| (1..=max).contains(v))
        .ok_or_else(|| {
            ApiError::InvalidParameter(format!(
                "{name} must be an integer in [1, {max}], got {value}"
            ))
        })
}

/// `GET /results/{task_id}/{file}`: a result image. The name holds an unguessable token, so the
/// URL itself is the credential, as with the hosted API's CDN links.
async fn result_file(
    State(state): State<AppState>,
    Path((task_id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound("no such result (it may have expired)".to_string());
    let path = state.results.path(&task_id, &file).ok_or_else(not_found)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| not_found())?;
    let mime = outpaint_engine::OutputFormat::from_path(&path)
        .map_or("application/octet-stream", |f| f.mime_type());
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=86400, immutable"),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// `GET /health`: the process is up.
async fn health() -> Envelope<&'static str> {
    Envelope::ok("ok")
}

/// `GET /ready`: the store answers, and the server is not shutting down.
async fn ready(State(state): State<AppState>) -> Result<Envelope<&'static str>, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable("shutting down".to_string()));
    }
    state
        .store
        .stats()
        .await
        .map_err(|e| ApiError::Unavailable(format!("the task store is unavailable: {e}")))?;
    Ok(Envelope::ok("ready"))
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<AppState>) -> Response {
    if let Ok(stats) = state.store.stats().await {
        state.metrics.record_queue(&stats);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /openapi.json`.
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi::document())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("no route {}", request.uri().path()))
}

async fn method_not_allowed(method: Method, request: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: request.uri().path().to_string(),
    }
}
