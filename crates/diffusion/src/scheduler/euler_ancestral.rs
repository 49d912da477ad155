//! Euler ancestral sampling (Karras et al. 2022, k-diffusion), after diffusers'
//! `EulerAncestralDiscreteScheduler`.

use candle_core::Tensor;

use super::{PredictionType, Scheduler, SchedulerConfig, TimestepSpacing, spaced_timesteps};
use crate::Result;

/// Euler steps in sigma space with fresh noise added at each step.
#[derive(Debug, Clone)]
pub struct EulerAncestralScheduler {
    timesteps: Vec<f64>,
    /// One sigma per step, then a final 0.
    sigmas: Vec<f64>,
    config: SchedulerConfig,
}

impl EulerAncestralScheduler {
    /// An Euler-ancestral schedule of `steps` inference steps.
    pub fn new(steps: usize, config: SchedulerConfig) -> Self {
        let alphas_cumprod = config.alphas_cumprod();
        let train_sigmas: Vec<f64> = alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect();
        let timesteps = spaced_timesteps(&config, steps);
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| interp(t, &train_sigmas))
            .collect();
        sigmas.push(0.0);
        EulerAncestralScheduler {
            timesteps,
            sigmas,
            config,
        }
    }
}

/// numpy's `interp(t, arange(len(ys)), ys)`.
fn interp(t: f64, ys: &[f64]) -> f64 {
    if t <= 0.0 {
        return ys[0];
    }
    let last = ys.len() - 1;
    if t >= last as f64 {
        return ys[last];
    }
    let i = t.floor() as usize;
    let f = t - i as f64;
    ys[i] * (1.0 - f) + ys[i + 1] * f
}

impl Scheduler for EulerAncestralScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().cloned().fold(0.0, f64::max);
        match self.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    fn scale_model_input(&self, sample: Tensor, step_index: usize) -> Result<Tensor> {
        let sigma = self.sigmas[step_index];
        Ok((sample / (sigma * sigma + 1.0).sqrt())?)
    }

    fn step(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[step_index];
        let pred_original_sample = match self.config.prediction_type {
            PredictionType::Epsilon => (sample - (model_output * sigma)?)?,
            PredictionType::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                ((model_output * (-sigma / s2.sqrt()))? + (sample / s2)?)?
            }
        };
        let sigma_from = sigma;
        let sigma_to = self.sigmas[step_index + 1];
        let sigma_up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let derivative = ((sample - pred_original_sample)? / sigma)?;
        let dt = sigma_down - sigma;
        let prev_sample = (sample + (derivative * dt)?)?;
        match noise {
            Some(noise) if sigma_up > 0.0 => Ok((prev_sample + (noise * sigma_up)?)?),
            _ => Ok(prev_sample),
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        Ok((original + (noise * self.sigmas[step_index])?)?)
    }

    fn needs_noise(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmas_match_diffusers() {
        let s = EulerAncestralScheduler::new(4, SchedulerConfig::default());
        assert_eq!(s.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
        assert_eq!(s.sigmas.len(), 5);
        // diffusers: EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear", ...).sigmas[0]
        assert!((s.sigmas[0] - 4.1167).abs() < 1e-3, "{}", s.sigmas[0]);
        assert!(s.init_noise_sigma() > s.sigmas[0]);
    }
}
