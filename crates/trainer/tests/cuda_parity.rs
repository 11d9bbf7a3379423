//! CPU/GPU parity of every model: the same seeded weights and inputs on the CPU and on
//! `cuda:0` (`ONEIRO_TEST_CUDA` picks another ordinal), one forward pass and one training
//! step (or the DeepDream step and style-transfer evaluation), compared within a tolerance
//! relative to the largest CPU value. Compiled only with the `cuda` feature:
//!
//! `cargo test -p oneiro-trainer --features cuda --release --test cuda_parity`
//!
//! Weights and every random draw (latents, dropout masks, label noise) come from host
//! RNGs, so both devices see the same numbers; only the arithmetic differs (cuBLAS and
//! candle's kernels against tensor-ops' CPU kernels, other summation orders).
#![cfg(feature = "cuda")]

use candle_core::{Device, Tensor, Var};
use oneiro_models::{
    CharLstm, Dcgan, GanConfig, InceptionV3, Preprocessing, Vae, VaeConfig, Vgg19, Weights,
};
use oneiro_tensor_ops::{RmsProp, RmsPropConfig};
use oneiro_trainer::gan::{GanTrainOptions, adversarial_step};
use oneiro_trainer::vision::Planes;
use oneiro_trainer::vision::dream::{BOOK_LAYERS, Dreamer};
use oneiro_trainer::vision::style::{StyleOptions, Stylizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn gpu() -> Device {
    let ordinal = std::env::var("ONEIRO_TEST_CUDA")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Device::new_cuda(ordinal)
        .unwrap_or_else(|e| panic!("the cuda parity tests need a GPU (cuda:{ordinal}): {e}"))
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("tensor to host")
}

/// `max |cpu − gpu| ≤ tol · max |cpu|`, with the figures in the message.
fn assert_close(what: &str, cpu: &Tensor, gpu: &Tensor, tol: f32) {
    assert_eq!(cpu.dims(), gpu.dims(), "{what}: shapes");
    let (a, b) = (host(cpu), host(gpu));
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        b.iter().all(|x| x.is_finite()) && diff <= tol * scale,
        "{what}: max |cpu − gpu| = {diff:e} against {tol} × max |cpu| = {:e}",
        tol * scale
    );
}

/// One optimizer step taken on both devices from the same `before` parameters agrees:
/// the mean of `|cpu − gpu|` over each tensor is at most `tol` × the mean of the CPU's own
/// step `|after − before|`. A mean, not a maximum: RMSprop's first step moves a weight by
/// about ±lr·√10 whatever its gradient's size, so a gradient near zero whose sign the two
/// devices' rounding sets differently flips that weight's whole step.
fn assert_step_close(what: &str, before: &[Vec<f32>], cpu: &[Var], gpu: &[Var], tol: f32) {
    assert_eq!((before.len(), cpu.len()), (gpu.len(), gpu.len()));
    for (i, ((b, c), g)) in before.iter().zip(cpu).zip(gpu).enumerate() {
        let (c, g) = (host(c.as_tensor()), host(g.as_tensor()));
        let n = b.len().max(1) as f32;
        let step = b.iter().zip(&c).map(|(b, c)| (c - b).abs()).sum::<f32>() / n;
        let diff = c.iter().zip(&g).map(|(c, g)| (c - g).abs()).sum::<f32>() / n;
        assert!(
            g.iter().all(|x| x.is_finite()) && diff <= tol * step.max(1e-12),
            "{what} parameter {i}: mean |cpu − gpu| = {diff:e} against {tol} × mean step {step:e}"
        );
    }
}

fn values(vars: &[Var]) -> Vec<Vec<f32>> {
    vars.iter().map(|v| host(v.as_tensor())).collect()
}

#[test]
fn char_lstm_forward_and_training_step() -> TestResult {
    let (vocab, hidden, batch, window) = (23, 32, 8, 12);
    let mut data = ChaCha8Rng::seed_from_u64(1);
    let ids: Vec<u32> = (0..batch * window)
        .map(|_| data.random_range(0..vocab as u32))
        .collect();
    let targets: Vec<u32> = (0..batch)
        .map(|_| data.random_range(0..vocab as u32))
        .collect();
    type Run = (Tensor, Tensor, Vec<Tensor>, Vec<Vec<f32>>, Vec<Var>);
    let run = |dev: &Device| -> candle_core::Result<Run> {
        let model = CharLstm::new_random(vocab, hidden, &mut ChaCha8Rng::seed_from_u64(0), dev)?;
        let x = Tensor::from_vec(ids.clone(), (batch, window), dev)?;
        let y = Tensor::from_vec(targets.clone(), batch, dev)?;
        let before = values(&model.vars());
        let logits = model.forward(&x, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let mut opt = RmsProp::new(
            model.vars(),
            RmsPropConfig {
                learning_rate: 0.01,
                ..Default::default()
            },
        )?;
        let grads = loss.backward()?;
        let g = model
            .vars()
            .iter()
            .map(|v| grads.get(v).unwrap().clone())
            .collect();
        opt.step(&grads)?;
        Ok((logits, loss, g, before, model.vars()))
    };
    let (cpu_logits, cpu_loss, cpu_grads, before, cpu_vars) = run(&Device::Cpu)?;
    let (gpu_logits, gpu_loss, gpu_grads, gpu_before, gpu_vars) = run(&gpu())?;
    assert_close("LSTM logits", &cpu_logits, &gpu_logits, 1e-4);
    assert_close("LSTM loss", &cpu_loss, &gpu_loss, 1e-4);
    for (i, (c, g)) in cpu_grads.iter().zip(&gpu_grads).enumerate() {
        assert_close(&format!("LSTM gradient {i}"), c, g, 1e-3);
    }
    assert_eq!(before, gpu_before, "same initial weights on both devices");
    assert_step_close("LSTM step", &before, &cpu_vars, &gpu_vars, 1e-2);
    Ok(())
}

#[test]
fn vae_forward_and_training_step() -> TestResult {
    let mut data = ChaCha8Rng::seed_from_u64(2);
    let images: Vec<f32> = (0..4 * 28 * 28).map(|_| data.random::<f32>()).collect();
    let eps: Vec<f32> = (0..4 * 2).map(|_| data.random::<f32>() - 0.5).collect();
    type Run = (Tensor, Vec<Tensor>, Vec<Vec<f32>>, Vec<Var>);
    let run = |dev: &Device| -> candle_core::Result<Run> {
        let model = Vae::new_random(VaeConfig::default(), &mut ChaCha8Rng::seed_from_u64(0), dev)?;
        let x = Tensor::from_vec(images.clone(), (4, 1, 28, 28), dev)?;
        let e = Tensor::from_vec(eps.clone(), (4, 2), dev)?;
        let before = values(&model.vars());
        let loss = model.loss(&x, &e)?;
        let mut opt = RmsProp::new(model.vars(), RmsPropConfig::default())?;
        let grads = loss.total.backward()?;
        let g = model
            .vars()
            .iter()
            .map(|v| grads.get(v).unwrap().clone())
            .collect();
        opt.step(&grads)?;
        Ok((loss.total, g, before, model.vars()))
    };
    let (cpu_loss, cpu_grads, before, cpu_vars) = run(&Device::Cpu)?;
    let (gpu_loss, gpu_grads, _, gpu_vars) = run(&gpu())?;
    assert_close("VAE loss", &cpu_loss, &gpu_loss, 1e-4);
    for (i, (c, g)) in cpu_grads.iter().zip(&gpu_grads).enumerate() {
        assert_close(&format!("VAE gradient {i}"), c, g, 1e-3);
    }
    assert_step_close("VAE step", &before, &cpu_vars, &gpu_vars, 1e-2);
    Ok(())
}

#[test]
fn dcgan_generator_and_adversarial_step() -> TestResult {
    let config = GanConfig {
        generator_seed_channels: 16,
        generator_channels: 16,
        discriminator_channels: 16,
        ..Default::default()
    };
    let mut data = ChaCha8Rng::seed_from_u64(3);
    let real: Vec<f32> = (0..4 * 3 * 32 * 32).map(|_| data.random::<f32>()).collect();
    type Run = (Tensor, [f32; 2], Vec<Vec<f32>>, Vec<Var>);
    let run = |dev: &Device| -> Result<Run, Box<dyn std::error::Error>> {
        let model = Dcgan::new_random(config.clone(), &mut ChaCha8Rng::seed_from_u64(0), dev)?;
        let z = oneiro_trainer::gan::latents(
            &mut ChaCha8Rng::seed_from_u64(4),
            4,
            config.latent_dim,
            dev,
        )?;
        let before = values(&[model.generator.vars(), model.discriminator.vars()].concat());
        let generated = model.generate(&z)?;
        let o = GanTrainOptions::default();
        let mut d_opt = RmsProp::new(model.discriminator.vars(), o.optimizer(o.discriminator_lr))?;
        let mut g_opt = RmsProp::new(model.generator.vars(), o.optimizer(o.generator_lr))?;
        let real = Tensor::from_vec(real.clone(), (4, 3, 32, 32), dev)?;
        let zeros = Tensor::zeros((4, 1), candle_core::DType::F32, dev)?;
        let losses = adversarial_step(
            &model,
            &mut d_opt,
            &mut g_opt,
            &real,
            &zeros,
            &mut ChaCha8Rng::seed_from_u64(5),
        )?;
        Ok((
            generated,
            [losses.discriminator_loss, losses.adversarial_loss],
            before,
            [model.generator.vars(), model.discriminator.vars()].concat(),
        ))
    };
    let (cpu_images, cpu_losses, before, cpu_vars) = run(&Device::Cpu)?;
    let (gpu_images, gpu_losses, _, gpu_vars) = run(&gpu())?;
    assert_close("generated images", &cpu_images, &gpu_images, 1e-4);
    for (name, c, g) in [
        ("discriminator loss", cpu_losses[0], gpu_losses[0]),
        ("adversarial loss", cpu_losses[1], gpu_losses[1]),
    ] {
        assert!(
            (c - g).abs() <= 1e-4 * c.abs().max(1.0),
            "{name}: cpu {c}, gpu {g}"
        );
    }
    assert_step_close("DCGAN step", &before, &cpu_vars, &gpu_vars, 1e-2);
    Ok(())
}

#[test]
fn deepdream_step_on_inception_v3() -> TestResult {
    let (h, w) = (91, 107);
    let mut data = ChaCha8Rng::seed_from_u64(6);
    let image: Vec<f32> = (0..3 * h * w)
        .map(|_| data.random_range(-1.0..1.0))
        .collect();
    let layers: Vec<(String, f32)> = BOOK_LAYERS
        .iter()
        .map(|(n, c)| (n.to_string(), *c))
        .collect();
    let run = |dev: &Device| -> Result<(Tensor, Tensor), Box<dyn std::error::Error>> {
        let net = InceptionV3::load(
            &Weights::Seeded(0),
            oneiro_models::inception_v3::INCEPTION_BN_EPS,
            dev,
        )?;
        let dreamer = Dreamer::new(&net, Preprocessing::Inception, &layers, dev)?;
        let x = Tensor::from_vec(image.clone(), (1, 3, h, w), dev)?;
        Ok(dreamer.step(&x, 0.01)?)
    };
    let (cpu_loss, cpu_next) = run(&Device::Cpu)?;
    let (gpu_loss, gpu_next) = run(&gpu())?;
    assert_close("dream loss", &cpu_loss, &gpu_loss, 1e-4);
    assert_close("dreamed image", &cpu_next, &gpu_next, 1e-4);
    Ok(())
}

#[test]
fn style_transfer_loss_and_gradient_on_vgg19() -> TestResult {
    let (h, w) = (40, 56);
    let mut data = ChaCha8Rng::seed_from_u64(7);
    let mut picture = || Planes {
        height: h,
        width: w,
        data: (0..3 * h * w)
            .map(|_| data.random_range(0.0..255.0))
            .collect(),
    };
    let (content, style) = (picture(), picture());
    let opts = StyleOptions {
        height: h,
        ..Default::default()
    };
    let run = |dev: &Device| -> Result<(f64, Tensor), Box<dyn std::error::Error>> {
        let net = Vgg19::load(&Weights::Seeded(0), dev)?;
        let s = Stylizer::new(&net, Preprocessing::Imagenet, &content, &style, &opts, dev)?;
        Ok(s.loss_and_gradient(&content.to_tensor(dev)?)?)
    };
    let (cpu_loss, cpu_grad) = run(&Device::Cpu)?;
    let (gpu_loss, gpu_grad) = run(&gpu())?;
    assert!(
        (cpu_loss - gpu_loss).abs() <= 1e-4 * cpu_loss.abs(),
        "style loss: cpu {cpu_loss}, gpu {gpu_loss}"
    );
    assert_close("style gradient", &cpu_grad, &gpu_grad, 1e-3);
    Ok(())
}
