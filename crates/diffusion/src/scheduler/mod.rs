//! Noise schedulers behind the small object-safe [`Scheduler`] trait, one per file, ported
//! from diffusers so that a scheduler config.json means the same thing here.

mod ddim;
mod euler_ancestral;

pub use ddim::DdimScheduler;
pub use euler_ancestral::EulerAncestralScheduler;

use candle_core::Tensor;
use serde::Deserialize;

use crate::{DiffusionError, Result};

/// A denoising schedule set up for a number of inference steps.
pub trait Scheduler: Send + Sync {
    /// The model timesteps, one per inference step, in the order they are run.
    fn timesteps(&self) -> &[f64];

    /// The standard deviation of the initial noise (the initial latents are scaled by it).
    fn init_noise_sigma(&self) -> f64;

    /// Scales the UNet input at step `step_index` (identity for DDIM).
    fn scale_model_input(&self, sample: Tensor, step_index: usize) -> Result<Tensor>;

    /// One denoising step from `sample` at step `step_index`, given the model's prediction.
    /// `noise` is used by ancestral schedulers (same shape as `sample`), ignored by others.
    fn step(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;

    /// Noises `original` to the level of step `step_index` (for a start part-way, `strength < 1`).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor>;

    /// Whether [`Scheduler::step`] needs fresh noise at each step.
    fn needs_noise(&self) -> bool {
        false
    }
}

/// Which scheduler to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// DDIM, deterministic (eta = 0).
    Ddim,
    /// Euler ancestral discrete.
    EulerAncestral,
}

impl std::str::FromStr for SchedulerKind {
    type Err = DiffusionError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "ddim" => Ok(SchedulerKind::Ddim),
            "euler_ancestral" | "euler_a" => Ok(SchedulerKind::EulerAncestral),
            other => Err(DiffusionError::config(
                "scheduler",
                format!("unknown scheduler {other:?} (ddim, euler_ancestral)"),
            )),
        }
    }
}

/// How the noise levels grow over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Betas evenly spaced from `beta_start` to `beta_end`.
    Linear,
    /// Square roots of the betas evenly spaced (Stable Diffusion's schedule).
    ScaledLinear,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise (SD 1.x, SD 2 inpainting, SDXL).
    Epsilon,
    /// The velocity (SD 2.x 768).
    VPrediction,
}

/// How inference timesteps are spread over the training timesteps (Lin et al. 2023, table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// Evenly from 0 to T-1, both ends included.
    Linspace,
    /// Multiples of T / steps, plus `steps_offset`.
    Leading,
    /// From T-1 down in steps of T / steps.
    Trailing,
}

/// The fields of a diffusers scheduler_config.json that these schedulers use.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Number of diffusion steps the model was trained with.
    pub num_train_timesteps: usize,
    /// First beta.
    pub beta_start: f64,
    /// Last beta.
    pub beta_end: f64,
    /// How the betas grow.
    pub beta_schedule: BetaSchedule,
    /// What the UNet predicts.
    pub prediction_type: PredictionType,
    /// Added to every leading-spaced timestep.
    pub steps_offset: usize,
    /// How the inference timesteps are spaced.
    pub timestep_spacing: TimestepSpacing,
    /// DDIM: the alpha product after the last step is 1 (else that of timestep 0).
    pub set_alpha_to_one: bool,
    /// DDIM: clamp the predicted clean sample to ±`clip_sample_range`.
    pub clip_sample: bool,
    /// DDIM: the clamp range.
    pub clip_sample_range: f64,
}

impl Default for SchedulerConfig {
    /// Stable Diffusion's published schedule, as in
    /// <https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-inpainting/blob/main/scheduler/scheduler_config.json>.
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            prediction_type: PredictionType::Epsilon,
            steps_offset: 1,
            timestep_spacing: TimestepSpacing::Leading,
            set_alpha_to_one: false,
            clip_sample: false,
            clip_sample_range: 1.0,
        }
    }
}

impl SchedulerConfig {
    /// The cumulative products of the alphas, one per training timestep.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let n = self.num_train_timesteps;
        let betas: Vec<f64> = match self.beta_schedule {
            BetaSchedule::Linear => linspace(self.beta_start, self.beta_end, n),
            BetaSchedule::ScaledLinear => linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
        };
        let mut acc = 1.0;
        betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect()
    }

    /// Builds the scheduler of `kind` for `steps` inference steps.
    pub fn build(&self, kind: SchedulerKind, steps: usize) -> Result<Box<dyn Scheduler>> {
        if steps == 0 || steps > self.num_train_timesteps {
            return Err(DiffusionError::Input(format!(
                "steps must be in 1..={}, got {steps}",
                self.num_train_timesteps
            )));
        }
        Ok(match kind {
            SchedulerKind::Ddim => Box::new(DdimScheduler::new(steps, self.clone())),
            SchedulerKind::EulerAncestral => {
                Box::new(EulerAncestralScheduler::new(steps, self.clone()))
            }
        })
    }
}

/// `n` values evenly from `start` to `end`, both included (numpy's `linspace`).
pub(crate) fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| start + step * i as f64).collect()
}

/// Inference timesteps, in run order, as diffusers' DDIM and Euler schedulers lay them out.
pub(crate) fn spaced_timesteps(config: &SchedulerConfig, steps: usize) -> Vec<f64> {
    let t = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => linspace(0.0, (t - 1) as f64, steps)
            .into_iter()
            .rev()
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t as f64 / steps as f64;
            (0..steps)
                .map(|i| (t as f64 - ratio * i as f64).round() - 1.0)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SDXL inpainting ships an `EulerDiscreteScheduler` config: its schedule is read and the
    /// fields these schedulers do not use are ignored.
    #[test]
    fn sdxl_scheduler_config_parses() {
        let c: SchedulerConfig = serde_json::from_str(
            r#"{"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.21.0.dev0",
                "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                "clip_sample": false, "interpolation_type": "linear", "num_train_timesteps": 1000,
                "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": false,
                "skip_prk_steps": true, "steps_offset": 1, "timestep_spacing": "leading",
                "trained_betas": null, "use_karras_sigmas": false}"#,
        )
        .unwrap();
        assert_eq!(c.timestep_spacing, TimestepSpacing::Leading);
        assert_eq!(c.steps_offset, 1);
        for kind in [SchedulerKind::Ddim, SchedulerKind::EulerAncestral] {
            assert_eq!(c.build(kind, 30).unwrap().timesteps().len(), 30);
        }
    }
}
