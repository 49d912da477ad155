//! What a task is to the server: the validated job stored as the task's spec, the record of its
//! result files, and the task object clients and callbacks see.

use outpaint_canvas::{CanvasError, Expansion, Sides};
use outpaint_engine::{ExpandOptions, OutputFormat, seed};
use outpaint_queue::Task;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::wire::{
    OfficialCreate, ResultImage, SimpleCreate, TaskInfo, TaskObject, TaskResult, WatermarkInfo,
};

/// Longest accepted external_task_id, in bytes.
const MAX_EXTERNAL_ID_BYTES: usize = 256;

/// A create request after parsing, before its image is read: what is stored and what is
/// checked.
#[derive(Debug)]
pub struct CreateRequest {
    /// The `image` field: a URL or base64.
    pub image: String,
    pub job: JobSpec,
    pub callback_url: Option<String>,
    pub external_task_id: Option<String>,
}

/// The task's spec, as stored: everything the worker needs besides the image. The seed is
/// fixed at create time, so that a task run again after a crash gives the same pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub expansion: ExpansionSpec,
    pub n: u32,
    pub seed: u64,
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    /// The backend or model; `None` is the server's default at run time.
    pub model: Option<String>,
    /// `png`, `jpeg` or `webp`.
    pub output_format: String,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub watermark: bool,
}

/// The geometry, in whichever form the request used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "snake_case")]
pub enum ExpansionSpec {
    Uniform {
        direction: String,
        ratio: f64,
    },
    PerSide {
        up: f64,
        down: f64,
        left: f64,
        right: f64,
    },
}

impl ExpansionSpec {
    pub fn expansion(&self) -> Result<Expansion, CanvasError> {
        match self {
            ExpansionSpec::Uniform { direction, ratio } => {
                Expansion::uniform(direction.parse::<Sides>()?, *ratio)
            }
            ExpansionSpec::PerSide {
                up,
                down,
                left,
                right,
            } => Expansion::per_side(*up, *down, *left, *right),
        }
    }
}

impl JobSpec {
    /// The engine options of this job, with `default_model` when the request named none.
    pub fn options(&self, default_model: &str) -> ExpandOptions {
        ExpandOptions {
            n: self.n,
            seed: Some(self.seed),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            backend: Some(
                self.model
                    .clone()
                    .unwrap_or_else(|| default_model.to_string()),
            ),
            output_format: self.format(),
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            watermark: self.watermark,
        }
    }

    pub fn format(&self) -> OutputFormat {
        OutputFormat::from_extension(&self.output_format).unwrap_or_default()
    }
}

/// The fields both create forms share, gathered so that both go through one conversion.
struct Common {
    prompt: Option<String>,
    n: Option<u32>,
    watermark_info: Option<WatermarkInfo>,
    callback_url: Option<String>,
    external_task_id: Option<String>,
    negative_prompt: Option<String>,
    seed: Option<u64>,
    steps: Option<u32>,
    guidance_scale: Option<f32>,
    model: Option<String>,
    output_format: Option<String>,
}

macro_rules! common {
    ($body:ident) => {
        Common {
            prompt: $body.prompt,
            n: $body.n,
            watermark_info: $body.watermark_info,
            callback_url: $body.callback_url,
            external_task_id: $body.external_task_id,
            negative_prompt: $body.negative_prompt,
            seed: $body.seed,
            steps: $body.steps,
            guidance_scale: $body.guidance_scale,
            model: $body.model,
            output_format: $body.output_format,
        }
    };
}

impl TryFrom<SimpleCreate> for CreateRequest {
    type Error = ApiError;

    fn try_from(body: SimpleCreate) -> Result<Self, ApiError> {
        let expansion = ExpansionSpec::Uniform {
            direction: body.direction.clone(),
            ratio: body.expansion_ratio.unwrap_or(1.5),
        };
        let image = body.image.clone();
        build(image, expansion, common!(body))
    }
}

impl TryFrom<OfficialCreate> for CreateRequest {
    type Error = ApiError;

    fn try_from(body: OfficialCreate) -> Result<Self, ApiError> {
        let expansion = ExpansionSpec::PerSide {
            up: body.up_expansion_ratio,
            down: body.down_expansion_ratio,
            left: body.left_expansion_ratio,
            right: body.right_expansion_ratio,
        };
        let image = body.image.clone();
        build(image, expansion, common!(body))
    }
}

/// Empty strings count as absent: Kling clients send `"callback_url": ""`.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn build(image: String, expansion: ExpansionSpec, c: Common) -> Result<CreateRequest, ApiError> {
    // The geometry's own rules (names, ranges) are checked now; the image-dependent ones when
    // the image is read.
    expansion
        .expansion()
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let output_format = match non_empty(c.output_format) {
        None => OutputFormat::default(),
        Some(name) => OutputFormat::from_extension(name.trim()).ok_or_else(|| {
            ApiError::InvalidParameter(format!(
                "output_format must be png, jpeg or webp, got \"{name}\""
            ))
        })?,
    };
    let external_task_id = non_empty(c.external_task_id);
    if let Some(id) = &external_task_id {
        if id.len() > MAX_EXTERNAL_ID_BYTES {
            return Err(ApiError::InvalidParameter(format!(
                "external_task_id must be at most {MAX_EXTERNAL_ID_BYTES} bytes, got {}",
                id.len()
            )));
        }
    }
    Ok(CreateRequest {
        image,
        job: JobSpec {
            expansion,
            n: c.n.unwrap_or(1),
            seed: c.seed.unwrap_or_else(seed::random_seed),
            prompt: non_empty(c.prompt),
            negative_prompt: non_empty(c.negative_prompt),
            model: non_empty(c.model).map(|m| m.trim().to_string()),
            output_format: output_format.name().to_string(),
            steps: c.steps,
            guidance_scale: c.guidance_scale,
            watermark: c.watermark_info.is_some_and(|w| w.enabled),
        },
        callback_url: non_empty(c.callback_url).map(|u| u.trim().to_string()),
        external_task_id,
    })
}

/// The result of a succeeded task, as stored: file names under the results folder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub images: Vec<StoredImage>,
}

/// One variation's files, relative to the results folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredImage {
    pub file: String,
    pub watermark_file: Option<String>,
}

/// The task object of SPEC 2, with result URLs under `public_url`.
pub fn task_object(task: &Task, public_url: &str, default_model: &str) -> TaskObject {
    // The spec and result were written by this server; should they ever fail to parse, the
    // task is still shown, without the details.
    let spec: Option<JobSpec> = serde_json::from_str(&task.spec).ok();
    let result: ResultRecord = task
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    let url = |file: &str| format!("{public_url}/results/{file}");
    let images: Vec<ResultImage> = (0..)
        .zip(&result.images)
        .map(|(index, image)| ResultImage {
            index,
            url: url(&image.file),
            watermark_url: image.watermark_file.as_deref().map(url),
        })
        .collect();
    TaskObject {
        task_id: task.id.clone(),
        task_status: task.status.as_str().to_string(),
        task_status_msg: task.status_msg.clone().unwrap_or_default(),
        task_info: TaskInfo {
            external_task_id: task.external_task_id.clone(),
            model: spec
                .as_ref()
                .map(|s| s.model.clone().unwrap_or_else(|| default_model.to_string())),
            progress: task.progress,
            seed: spec.as_ref().map(|s| s.seed),
        },
        final_unit_deduction: images.len().to_string(),
        watermark_info: WatermarkInfo {
            enabled: spec.as_ref().is_some_and(|s| s.watermark),
        },
        created_at: task.created_at,
        updated_at: task.updated_at,
        task_result: TaskResult { images },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(json: &str) -> Result<CreateRequest, ApiError> {
        CreateRequest::try_from(serde_json::from_str::<SimpleCreate>(json).unwrap())
    }

    #[test]
    fn defaults_follow_the_spec_and_a_seed_is_fixed_at_create() {
        let request = simple(r#"{"image": "x", "direction": "right"}"#).unwrap();
        assert_eq!(
            request.job.expansion,
            ExpansionSpec::Uniform {
                direction: "right".into(),
                ratio: 1.5
            }
        );
        assert_eq!(request.job.n, 1);
        assert_eq!(request.job.output_format, "png");
        assert!(!request.job.watermark);
        let again = simple(r#"{"image": "x", "direction": "right", "seed": 5}"#).unwrap();
        assert_eq!(again.job.seed, 5);
    }

    #[test]
    fn bad_geometry_and_formats_name_the_parameter() {
        for (json, needle) in [
            (r#"{"image":"x","direction":"sideways"}"#, "direction"),
            (r#"{"image":"x","direction":"left,left"}"#, "direction"),
            (
                r#"{"image":"x","direction":"left","expansion_ratio":3.5}"#,
                "expansion_ratio",
            ),
            (
                r#"{"image":"x","direction":"left","output_format":"gif"}"#,
                "output_format",
            ),
        ] {
            let err = simple(json).unwrap_err();
            assert!(matches!(err, ApiError::InvalidParameter(_)), "{json}");
            assert!(err.to_string().contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn empty_strings_count_as_absent() {
        let request = simple(
            r#"{"image":"x","direction":"top","callback_url":"","external_task_id":"","prompt":""}"#,
        )
        .unwrap();
        assert_eq!(request.callback_url, None);
        assert_eq!(request.external_task_id, None);
        assert_eq!(request.job.prompt, None);
    }

    #[test]
    fn the_official_form_keeps_per_side_ratios_and_the_watermark() {
        let body: OfficialCreate = serde_json::from_str(
            r#"{"image":"x","up_expansion_ratio":0.1,"down_expansion_ratio":0,
                "left_expansion_ratio":0.25,"right_expansion_ratio":0,
                "watermark_info":{"enabled":true},"n":3}"#,
        )
        .unwrap();
        let request = CreateRequest::try_from(body).unwrap();
        assert!(request.job.watermark);
        assert_eq!(request.job.n, 3);
        assert!(
            matches!(request.job.expansion, ExpansionSpec::PerSide { left, .. } if left == 0.25)
        );
    }
}
