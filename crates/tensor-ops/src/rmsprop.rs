//! RMSprop with Keras semantics.
//!
//! candle-nn has no RMSprop, and PyTorch's differs (epsilon outside the square root,
//! alpha 0.99). Keras: `v ← ρ·v + (1−ρ)·g²`, `θ ← θ − lr_t·g / √(v + ε)`, with
//! `lr_t = lr / (1 + decay·iterations)` and optional element-wise gradient clipping.
//! The state (velocities, iteration count) is public so checkpoints can hold it.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, Var, backprop::GradStore};

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
            *v = match step_cpu_f32(c, lr, p, v, g)? {
                Some(new_v) => new_v,
                None => step_composed(c, lr, p, v, g)?,
            };
        }
        self.iterations += 1;
        Ok(())
    }
}

/// The update as candle ops (any device and dtype); returns the new velocity.
fn step_composed(c: &RmsPropConfig, lr: f64, p: &Var, v: &Tensor, g: &Tensor) -> Result<Tensor> {
    let g = match c.clip_value {
        Some(clip) => g.clamp(-clip, clip)?,
        None => g.clone(),
    };
    let new_v = ((v * c.rho)? + (g.sqr()? * (1.0 - c.rho))?)?;
    let update = ((g * lr)? / (&new_v + c.epsilon)?.sqrt()?)?;
    p.set(&p.sub(&update)?)?;
    Ok(new_v)
}

/// The update of [`step_composed`] as one loop, for contiguous `f32` tensors on the CPU;
/// `None` (nothing done) for anything else.
///
/// Why: the composition is nine element-wise ops, each allocating its result, and
/// candle runs those of 64 Ki elements or more (the LSTM's `W_hh` at H = 128) on its
/// own thread pool, whose worker then spins for a while after every op, competing with
/// the next step's LSTM threads for the cores. One pass does the same arithmetic.
///
/// It is bit-for-bit the composition: the same `f32` operations in the same order,
/// including candle's `affine` form `x · mul + add` for the scalar products and sums
/// (with its `+ 0.0`), its `maximum`/`minimum` for the clamp, and constants rounded from
/// `f64` as candle rounds them.
fn step_cpu_f32(
    c: &RmsPropConfig,
    lr: f64,
    p: &Var,
    v: &Tensor,
    g: &Tensor,
) -> Result<Option<Tensor>> {
    if !p.device().is_cpu() || [p.dtype(), v.dtype(), g.dtype()] != [DType::F32; 3] {
        return Ok(None);
    }
    if v.shape() != p.shape() || g.shape() != p.shape() {
        return Ok(None);
    }
    let (new_p, new_v) = {
        let (ps, pl) = p.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(ps)), Some((p0, p1))) = (&*ps, pl.contiguous_offsets())
        else {
            return Ok(None);
        };
        let (Storage::Cpu(CpuStorage::F32(vs)), Some((v0, v1))) = (&*vs, vl.contiguous_offsets())
        else {
            return Ok(None);
        };
        let (Storage::Cpu(CpuStorage::F32(gs)), Some((g0, g1))) = (&*gs, gl.contiguous_offsets())
        else {
            return Ok(None);
        };
        let (ps, vs, gs) = (&ps[p0..p1], &vs[v0..v1], &gs[g0..g1]);
        let rho = c.rho as f32;
        let one_minus_rho = (1.0 - c.rho) as f32;
        let lr = lr as f32;
        let eps = c.epsilon as f32;
        let clip = c.clip_value.map(|x| (-x as f32, x as f32));
        // Over the threads: one thread updating the GAN generator's 6.3 M parameters left
        // the other core idle for ~1% of a step. Each element's arithmetic is unchanged.
        let update = |((&p, &v), &g): ((&f32, &f32), &f32)| {
            let g = match clip {
                // maximum(g, lo), then minimum(·, hi), as candle compares.
                Some((lo, hi)) => {
                    let g = if g < lo { lo } else { g };
                    if g > hi { hi } else { g }
                }
                None => g,
            };
            let nv = (v * rho + 0.0) + ((g * g) * one_minus_rho + 0.0);
            let update = (g * lr + 0.0) / (nv * 1.0 + eps).sqrt();
            (p - update, nv)
        };
        const CHUNK: usize = 1 << 14;
        let n = ps.len();
        let (mut new_p, mut new_v) = (Vec::with_capacity(n), Vec::with_capacity(n));
        crate::par::for_chunks_mut2(
            &mut new_p.spare_capacity_mut()[..n],
            &mut new_v.spare_capacity_mut()[..n],
            CHUNK,
            |k, op, ov| {
                let r = k * CHUNK..k * CHUNK + op.len();
                let xs = ps[r.clone()].iter().zip(&vs[r.clone()]).zip(&gs[r]);
                for ((op, ov), x) in op.iter_mut().zip(ov.iter_mut()).zip(xs) {
                    let (p, v) = update(x);
                    op.write(p);
                    ov.write(v);
                }
            },
        );
        // SAFETY: every element of both was written above.
        unsafe {
            new_p.set_len(n);
            new_v.set_len(n);
        }
        (new_p, new_v)
    };
    p.set(&Tensor::from_vec(new_p, p.shape(), p.device())?)?;
    Ok(Some(Tensor::from_vec(new_v, p.shape(), p.device())?))
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

    /// The fused `f32` loop against the candle composition: the same bits, over a few
    /// steps, with and without clipping, on a parameter large enough for candle to run
    /// its ops on its thread pool.
    #[test]
    fn the_fused_cpu_update_is_the_composition_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        let n = 70_000;
        let init = Tensor::arange(0f32, n as f32, &dev)?
            .affine(0.37, 0.0)?
            .sin()?;
        for clip_value in [None, Some(0.4)] {
            let cfg = RmsPropConfig {
                learning_rate: 0.01,
                clip_value,
                decay: 0.01,
                ..Default::default()
            };
            let fused = Var::from_tensor(&init)?;
            let composed = Var::from_tensor(&init)?;
            let mut opt = RmsProp::new(vec![fused.clone()], cfg.clone())?;
            let mut velocity = composed.zeros_like()?;
            for step in 0..3 {
                // g = a varied function of θ, from -1.8 to 1.8.
                let loss = |p: &Var| -> Result<Tensor> {
                    let w = Tensor::arange(0f32, n as f32, &dev)?.affine(0.011, step as f64)?;
                    (p.as_tensor().sqr()? * w.cos()?)?.sum_all()
                };
                let lr = opt.learning_rate();
                opt.step(&loss(&fused)?.backward()?)?;
                let grads = loss(&composed)?.backward()?;
                let g = grads.get(&composed).unwrap();
                velocity = step_composed(&cfg, lr, &composed, &velocity, g)?;
                let bits = |t: &Tensor| -> Result<Vec<u32>> {
                    Ok(t.to_vec1::<f32>()?.iter().map(|x| x.to_bits()).collect())
                };
                assert!(bits(&fused)? == bits(&composed)?, "parameters, step {step}");
                assert!(
                    bits(&opt.velocity[0])? == bits(&velocity)?,
                    "velocity, step {step}"
                );
            }
        }
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
