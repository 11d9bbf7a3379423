//! RMSprop with Keras semantics.
//!
//! candle-nn has no RMSprop, and PyTorch's differs (epsilon outside the square root,
//! alpha 0.99). Keras: `v ← ρ·v + (1−ρ)·g²`, `θ ← θ − lr_t·g / √(v + ε)`, with
//! `lr_t = lr / (1 + decay·iterations)` and optional element-wise gradient clipping.
//! The state (velocities, iteration count) is public so checkpoints can hold it.

use candle_core::{Result, Tensor, Var, backprop::GradStore};

#[derive(Clone, Debug, PartialEq)]
pub struct RmsPropConfig {
    pub learning_rate: f64,
    pub rho: f64,
    pub epsilon: f64,
    /// Clip every gradient element to `[-c, c]` before the update (Keras `clipvalue`).
    pub clip_value: Option<f64>,
    /// Keras' legacy time decay of the learning rate.
    pub decay: f64,
}

impl Default for RmsPropConfig {
    /// Keras' defaults: lr 0.001, rho 0.9, epsilon 1e-7.
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            rho: 0.9,
            epsilon: 1e-7,
            clip_value: None,
            decay: 0.0,
        }
    }
}

pub struct RmsProp {
    pub config: RmsPropConfig,
    params: Vec<Var>,
    /// One running mean of squared gradients per parameter, same shape.
    pub velocity: Vec<Tensor>,
    /// Updates applied so far.
    pub iterations: u64,
}

impl RmsProp {
    pub fn new(params: Vec<Var>, config: RmsPropConfig) -> Result<Self> {
        let velocity = params
            .iter()
            .map(|p| p.zeros_like())
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            params,
            velocity,
            iterations: 0,
        })
    }

    /// Restores saved state (from a checkpoint); shapes must match the parameters.
    pub fn set_state(&mut self, velocity: Vec<Tensor>, iterations: u64) -> Result<()> {
        if velocity.len() != self.params.len() {
            candle_core::bail!(
                "rmsprop: {} velocities for {} parameters",
                velocity.len(),
                self.params.len()
            )
        }
        for (v, p) in velocity.iter().zip(&self.params) {
            if v.shape() != p.shape() {
                candle_core::bail!(
                    "rmsprop: velocity {:?} for a parameter {:?}",
                    v.shape(),
                    p.shape()
                )
            }
        }
        self.velocity = velocity
            .into_iter()
            .zip(&self.params)
            .map(|(v, p)| v.to_device(p.device())?.to_dtype(p.dtype()))
            .collect::<Result<_>>()?;
        self.iterations = iterations;
        Ok(())
    }

    pub fn learning_rate(&self) -> f64 {
        self.config.learning_rate / (1.0 + self.config.decay * self.iterations as f64)
    }

    /// One update from the gradients of a `backward()`; parameters without a gradient
    /// are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let lr = self.learning_rate();
        let c = &self.config;
        for (p, v) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(g) = grads.get(p) else { continue };
            let g = match c.clip_value {
                Some(clip) => g.clamp(-clip, clip)?,
                None => g.clone(),
            };
            let new_v = ((&*v * c.rho)? + (g.sqr()? * (1.0 - c.rho))?)?;
            let update = ((g * lr)? / (&new_v + c.epsilon)?.sqrt()?)?;
            p.set(&p.sub(&update)?)?;
            *v = new_v;
        }
        self.iterations += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn two_updates_match_hand_computed_keras_numbers() -> Result<()> {
        // θ = [1, -2], loss = 3·θ0 + θ1² ⇒ g = [3, 2θ1].
        let p = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
        let mut opt = RmsProp::new(
            vec![p.clone()],
            RmsPropConfig {
                learning_rate: 0.01,
                ..Default::default()
            },
        )?;
        let loss = |p: &Var| -> Result<Tensor> {
            let w = Tensor::new(&[3.0f64, 0.0], &Device::Cpu)?;
            (p.as_tensor() * &w)?.sum_all()? + p.narrow(0, 1, 1)?.sqr()?.sum_all()?
        };
        opt.step(&loss(&p)?.backward()?)?;
        // v = 0.1·g² = [0.9, 1.6]; θ -= 0.01·g/√(v+1e-7)
        let e0 = [
            1.0 - 0.01 * 3.0 / (0.9f64 + 1e-7).sqrt(),
            -2.0 + 0.01 * 4.0 / (1.6f64 + 1e-7).sqrt(),
        ];
        let got = p.to_vec1::<f64>()?;
        assert!(
            (got[0] - e0[0]).abs() < 1e-12 && (got[1] - e0[1]).abs() < 1e-12,
            "{got:?} vs {e0:?}"
        );
        opt.step(&loss(&p)?.backward()?)?;
        let g1 = 2.0 * e0[1];
        let v = [0.9 * 0.9 + 0.1 * 9.0, 0.9 * 1.6 + 0.1 * g1 * g1];
        let e1 = [
            e0[0] - 0.01 * 3.0 / (v[0] + 1e-7).sqrt(),
            e0[1] - 0.01 * g1 / (v[1] + 1e-7).sqrt(),
        ];
        let got = p.to_vec1::<f64>()?;
        assert!(
            (got[0] - e1[0]).abs() < 1e-12 && (got[1] - e1[1]).abs() < 1e-12,
            "{got:?} vs {e1:?}"
        );
        assert_eq!(opt.iterations, 2);
        Ok(())
    }

    #[test]
    fn clipping_and_decay_follow_keras() -> Result<()> {
        let p = Var::new(&[0.0f64], &Device::Cpu)?;
        let cfg = RmsPropConfig {
            learning_rate: 0.1,
            clip_value: Some(1.0),
            decay: 0.5,
            ..Default::default()
        };
        let mut opt = RmsProp::new(vec![p.clone()], cfg)?;
        opt.iterations = 2; // lr_t = 0.1 / (1 + 0.5·2) = 0.05
        let grads = (p.as_tensor() * 100.0)?.sum_all()?.backward()?; // g = 100 → clipped to 1
        opt.step(&grads)?;
        let expected = -0.05 * 1.0 / (0.1f64 + 1e-7).sqrt();
        assert!((p.to_vec1::<f64>()?[0] - expected).abs() < 1e-12);
        Ok(())
    }
}
