//! The JSON on the wire: Kling's envelope, the two create bodies, the task object. One type per
//! schema; the OpenAPI document is generated from them.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every response, success or error: `{"code", "message", "request_id", "data"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Envelope<T> {
    /// 0 on success, else the error code (SPEC 3).
    pub code: u32,
    /// `SUCCEED`, or what went wrong.
    pub message: String,
    /// Unique per request (also the `X-Request-Id` header); quote it when reporting a problem.
    pub request_id: String,
    /// The payload; absent on errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
}

impl<T: Serialize> Envelope<T> {
    /// A success carrying `data`.
    pub fn ok(data: T) -> Self {
        Envelope {
            code: 0,
            message: "SUCCEED".to_string(),
            request_id: super::extract::request_id(),
            data: Some(data),
        }
    }
}

impl Envelope<()> {
    /// An error with its code and message.
    pub fn error(code: u32, message: String) -> Self {
        Envelope {
            code,
            message,
            request_id: super::extract::request_id(),
            data: None,
        }
    }
}

/// The envelope of an error, for the OpenAPI document (the server answers with
/// `Envelope::error`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"code": 1201, "message": "n must be in 1..=9, got 12", "request_id": "0d6c…"}))]
pub struct ErrorResponse {
    /// The error code (SPEC 3).
    pub code: u32,
    /// What went wrong, for a person.
    pub message: String,
    pub request_id: String,
}

impl<T: Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        Json(self).into_response()
    }
}

// The two create bodies repeat their common fields instead of `#[serde(flatten)]`ing them:
// flattening loses the field name in type errors ("invalid type: string, expected u32"), and
// SPEC 3 wants the message to name the parameter.

/// `POST /v1/images/expand`: the simple form (SPEC 1.1). Unknown fields are ignored, as Kling
/// does.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SimpleCreate {
    /// Source image: http(s) URL, or base64 (a `data:image/...;base64,` prefix is tolerated).
    pub image: String,
    /// Sides to grow: `left`, `right`, `top`, `bottom`, `all`, or a comma list such as `left,right`.
    #[schema(example = "left,right")]
    pub direction: String,
    /// Final size ÷ original size along each expanded axis, in (1, 3].
    #[schema(default = 1.5, example = 1.5)]
    pub expansion_ratio: Option<f64>,
    /// What the new area should show (at most 2500 characters).
    pub prompt: Option<String>,
    /// Number of variations, 1..9.
    #[schema(default = 1, minimum = 1, maximum = 9)]
    pub n: Option<u32>,
    /// `{"enabled": true}` also produces a visibly watermarked copy of each result.
    pub watermark_info: Option<WatermarkInfo>,
    /// Where each status change is POSTed (SPEC 4).
    pub callback_url: Option<String>,
    /// The caller's own id, unique within the account; usable in place of task_id.
    pub external_task_id: Option<String>,
    /// Extension: what the new area should not show.
    pub negative_prompt: Option<String>,
    /// Extension: the same request and seed on the same backend give the same pixels.
    pub seed: Option<u64>,
    /// Extension: denoising steps, for diffusion models.
    pub steps: Option<u32>,
    /// Extension: classifier-free guidance scale, for diffusion models.
    pub guidance_scale: Option<f32>,
    /// Extension: the backend or installed model to use (`infill`, `edge`, ...).
    pub model: Option<String>,
    /// Extension: `png` (default), `jpeg` or `webp`.
    pub output_format: Option<String>,
}

/// `POST /v1/images/editing/expand`: Kling's official form (SPEC 1.2). Unknown fields are
/// ignored, as Kling does.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OfficialCreate {
    /// Source image: http(s) URL, or base64 (a `data:image/...;base64,` prefix is tolerated).
    pub image: String,
    /// Pixels added on top = round(height × ratio); ratio in [0, 2].
    pub up_expansion_ratio: f64,
    /// Pixels added at the bottom = round(height × ratio); ratio in [0, 2].
    pub down_expansion_ratio: f64,
    /// Pixels added on the left = round(width × ratio); ratio in [0, 2].
    pub left_expansion_ratio: f64,
    /// Pixels added on the right = round(width × ratio); ratio in [0, 2].
    pub right_expansion_ratio: f64,
    /// What the new area should show (at most 2500 characters).
    pub prompt: Option<String>,
    /// Number of variations, 1..9.
    #[schema(default = 1, minimum = 1, maximum = 9)]
    pub n: Option<u32>,
    /// `{"enabled": true}` also produces a visibly watermarked copy of each result.
    pub watermark_info: Option<WatermarkInfo>,
    /// Where each status change is POSTed (SPEC 4).
    pub callback_url: Option<String>,
    /// The caller's own id, unique within the account; usable in place of task_id.
    pub external_task_id: Option<String>,
    /// Extension: what the new area should not show.
    pub negative_prompt: Option<String>,
    /// Extension: the same request and seed on the same backend give the same pixels.
    pub seed: Option<u64>,
    /// Extension: denoising steps, for diffusion models.
    pub steps: Option<u32>,
    /// Extension: classifier-free guidance scale, for diffusion models.
    pub guidance_scale: Option<f32>,
    /// Extension: the backend or installed model to use (`infill`, `edge`, ...).
    pub model: Option<String>,
    /// Extension: `png` (default), `jpeg` or `webp`.
    pub output_format: Option<String>,
}

/// Whether a watermarked copy is made.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
pub struct WatermarkInfo {
    pub enabled: bool,
}

/// A task as clients see it (SPEC 2); also the body of callbacks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskObject {
    pub task_id: String,
    /// `submitted`, `processing`, `succeed` or `failed`.
    pub task_status: String,
    /// Why the task failed; empty otherwise.
    pub task_status_msg: String,
    pub task_info: TaskInfo,
    /// Units charged: the number of images once the task succeeded, else 0.
    pub final_unit_deduction: String,
    pub watermark_info: WatermarkInfo,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the last status change.
    pub updated_at: i64,
    pub task_result: TaskResult,
}

/// What the task was asked, as echoed back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TaskInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_task_id: Option<String>,
    /// Extension: the backend or model that generates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Extension: progress of a `processing` task in [0, 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<f32>,
    /// Extension: the seed (the request's, or the one picked for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The images of a succeeded task.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TaskResult {
    pub images: Vec<ResultImage>,
}

/// One variation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResultImage {
    /// 0..n-1.
    pub index: u32,
    /// Absolute, unguessable, valid for the retention period.
    pub url: String,
    /// The watermarked copy, when watermark_info.enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark_url: Option<String>,
}

/// `?pageNum=&pageSize=` of the list routes, as strings so that a bad value is a 1201 that
/// names the parameter rather than a generic rejection.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number from 1, at most 1000.
    #[serde(rename = "pageNum")]
    #[param(default = 1, minimum = 1, maximum = 1000)]
    pub page_num: Option<String>,
    /// Tasks per page, 1..500.
    #[serde(rename = "pageSize")]
    #[param(default = 30, minimum = 1, maximum = 500)]
    pub page_size: Option<String>,
}
