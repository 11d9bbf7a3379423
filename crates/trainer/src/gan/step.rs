//! One step of the DCGAN's adversarial training and the pictures of its progress: the
//! part the trainer and the benchmark share.

use candle_core::{DType, Device, Tensor};
use oneiro_models::Dcgan;
use oneiro_models::dcgan::bce_with_logits;
use oneiro_tensor_ops::RmsProp;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::cifar::ImageSet;
use crate::{Result, imageio};

/// A stream of its own per (step, purpose): a resumed run draws what an uninterrupted
/// one would have.
pub(crate) fn step_rng(seed: u64, step: u64, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((step << 8) | purpose);
    rng
}

pub fn latents(rng: &mut impl Rng, n: usize, dim: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..n * dim).map(|_| rng.sample(StandardNormal)).collect();
    Ok(Tensor::from_vec(v, (n, dim), dev)?)
}

/// Real images `start..start+n` (wrapping) as (n, 3, 32, 32) pixels / 255 (the book's
/// scaling, although the generator's tanh spans [-1, 1]).
pub(crate) fn real_batch(data: &ImageSet, start: usize, n: usize, dev: &Device) -> Result<Tensor> {
    let per = 3 * data.side * data.side;
    let mut px = Vec::with_capacity(n * per);
    for i in 0..n {
        px.extend(
            data.image((start + i) % data.count)
                .iter()
                .map(|&p| p as f32 / 255.0),
        );
    }
    Ok(Tensor::from_vec(px, (n, 3, data.side, data.side), dev)?)
}

/// A square grid PNG of images on the real data's scale, [0, 1] (values outside are
/// clipped). Generated images go in as they are: the book trains against pixels / 255, so
/// the generator learns to produce that scale with its tanh, and the book saves its
/// output ×255 the same way.
pub fn grid_png(images: &Tensor) -> Result<Vec<u8>> {
    let (n, _, side, _) = images.dims4()?;
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let hwc = images
        .permute((0, 2, 3, 1))?
        .clamp(0f32, 1f32)?
        .flatten_from(1)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    let mosaic = imageio::tile(&hwc, rows, cols, side, 3);
    imageio::encode_png(&mosaic, (cols * side) as u32, (rows * side) as u32, 3)
}

/// What one adversarial step measured.
pub struct StepLosses {
    pub discriminator_loss: f32,
    pub adversarial_loss: f32,
    /// Images of the discriminator's batch it classified right (before its update).
    pub discriminator_right: usize,
}

/// One step of the book's loop: a discriminator update on generated (label 1) and `real`
/// (label 0) images with `0.5·U(0, 1)` label noise, then a generator update through the
/// frozen discriminator towards `zeros` ("real"). The benchmark times exactly this.
pub fn adversarial_step(
    model: &Dcgan,
    d_opt: &mut RmsProp,
    g_opt: &mut RmsProp,
    real: &Tensor,
    zeros: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<StepLosses> {
    let (b, latent, device) = (real.dim(0)?, model.config.latent_dim, real.device());
    let generated = model.generate(&latents(rng, b, latent, device)?)?.detach();
    let images = Tensor::cat(&[&generated, real], 0)?;
    let labels: Vec<f32> = (0..2 * b)
        .map(|i| (if i < b { 1.0 } else { 0.0 }) + 0.5 * rng.random::<f32>())
        .collect();
    let labels = Tensor::from_vec(labels, (2 * b, 1), device)?;
    let logits = model.discriminate(&images, Some(rng), false)?;
    let loss = bce_with_logits(&logits, &labels)?;
    let discriminator_loss = loss.to_scalar::<f32>()?;
    d_opt.step(&loss.backward()?)?;
    let p = logits.flatten_all()?.to_vec1::<f32>()?;
    let discriminator_right = p
        .iter()
        .enumerate()
        .filter(|&(i, &l)| (l > 0.0) == (i < b))
        .count();

    let z = latents(rng, b, latent, device)?;
    let logits = model.discriminate(&model.generate(&z)?, Some(rng), true)?;
    let loss = bce_with_logits(&logits, zeros)?;
    let adversarial_loss = loss.to_scalar::<f32>()?;
    g_opt.step(&loss.backward()?)?;
    Ok(StepLosses {
        discriminator_loss,
        adversarial_loss,
        discriminator_right,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gan::GanTrainOptions;
    use crate::gan::train::tests::small;

    #[test]
    fn the_generator_step_leaves_the_discriminator_bit_identical() -> Result<()> {
        let dev = Device::Cpu;
        let m = Dcgan::new_random(small(), &mut step_rng(1, 0, 0), &dev)?;
        let opts = GanTrainOptions::default();
        let mut g_opt = RmsProp::new(m.generator.vars(), opts.optimizer(opts.generator_lr))?;
        let before: Vec<Vec<f32>> = m
            .discriminator
            .tensors()
            .iter()
            .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        let g_before = m.generator.tensors()[0].1.flatten_all()?.to_vec1::<f32>()?;
        let mut rng = step_rng(1, 1, 1);
        let z = latents(&mut rng, 4, 32, &dev)?;
        let logits = m.discriminate(&m.generate(&z)?, Some(&mut rng), true)?;
        let loss = bce_with_logits(&logits, &Tensor::zeros((4, 1), DType::F32, &dev)?)?;
        g_opt.step(&loss.backward()?)?;
        let after: Vec<Vec<f32>> = m
            .discriminator
            .tensors()
            .iter()
            .map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        let same = before
            .iter()
            .flatten()
            .zip(after.iter().flatten())
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same);
        assert_ne!(
            g_before,
            m.generator.tensors()[0].1.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
