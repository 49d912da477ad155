//! DDIM (Song et al. 2020) with eta = 0, after diffusers' `DDIMScheduler`.

use candle_core::Tensor;

use super::{PredictionType, Scheduler, SchedulerConfig, TimestepSpacing, spaced_timesteps};
use crate::Result;

/// Deterministic DDIM sampling.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    step_ratio: usize,
    config: SchedulerConfig,
}

impl DdimScheduler {
    /// A DDIM schedule of `steps` inference steps.
    pub fn new(steps: usize, config: SchedulerConfig) -> Self {
        let alphas_cumprod = config.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let mut timesteps = spaced_timesteps(&config, steps);
        if config.timestep_spacing == TimestepSpacing::Linspace {
            // diffusers rounds DDIM's linspace timesteps to integers.
            timesteps.iter_mut().for_each(|t| *t = t.round());
        }
        DdimScheduler {
            timesteps,
            alphas_cumprod,
            final_alpha_cumprod,
            step_ratio: config.num_train_timesteps / steps,
            config,
        }
    }
}

impl Scheduler for DdimScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor, _step_index: usize) -> Result<Tensor> {
        Ok(sample)
    }

    fn step(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = self.timesteps[step_index] as usize;
        let prev_t = t as i64 - self.step_ratio as i64;
        let alpha_prod_t = self.alphas_cumprod[t];
        let alpha_prod_t_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (pred_original_sample, pred_epsilon) = match self.config.prediction_type {
            PredictionType::Epsilon => {
                let x0 = ((sample - (model_output * beta_prod_t.sqrt())?)? / alpha_prod_t.sqrt())?;
                (x0, model_output.clone())
            }
            PredictionType::VPrediction => {
                let x0 = ((sample * alpha_prod_t.sqrt())? - (model_output * beta_prod_t.sqrt())?)?;
                let eps = ((model_output * alpha_prod_t.sqrt())? + (sample * beta_prod_t.sqrt())?)?;
                (x0, eps)
            }
        };
        let pred_original_sample = if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            pred_original_sample.clamp(-r, r)?
        } else {
            pred_original_sample
        };
        let direction = (pred_epsilon * (1.0 - alpha_prod_t_prev).sqrt())?;
        Ok(((pred_original_sample * alpha_prod_t_prev.sqrt())? + direction)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        let a = self.alphas_cumprod[self.timesteps[step_index] as usize];
        Ok(((original * a.sqrt())? + (noise * (1.0 - a).sqrt())?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_timesteps_match_diffusers() {
        let s = DdimScheduler::new(4, SchedulerConfig::default());
        assert_eq!(s.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
        let s = DdimScheduler::new(30, SchedulerConfig::default());
        assert_eq!(s.timesteps()[0], 958.0); // 29 * (1000 // 30) + 1
        assert_eq!(*s.timesteps().last().unwrap(), 1.0);
    }
}
