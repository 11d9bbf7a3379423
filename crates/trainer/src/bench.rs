//! Benchmark workloads: the same work, shapes and field names as
//! `../shared/peers/torch_peer.py`, so results compare as ratios on one machine.

use std::time::Instant;

use candle_core::{Device, Tensor};
use oneiro_models::{CharLstm, Vocabulary};
use oneiro_tensor_ops::{RmsProp, RmsPropConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Result;
use crate::text::data::CharCorpus;
use crate::text::generate::CharGenerator;

const VOCAB: usize = 57;
const MAXLEN: usize = 60;
const BATCH: usize = 128;
const HIDDEN: usize = 128;

fn timed(mut f: impl FnMut() -> Result<()>, warmup: usize, steps: usize) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        f()?;
    }
    Ok(t0.elapsed().as_secs_f64() / steps as f64)
}

/// One training step of the book's text model (batch 128, maxlen 60, vocab 57, LSTM 128,
/// RMSprop lr 0.01). Returns seconds per batch.
pub fn text_train(device: &Device, steps: usize) -> Result<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let model = CharLstm::new_random(VOCAB, HIDDEN, &mut rng, device)?;
    let mut opt = RmsProp::new(
        model.vars(),
        RmsPropConfig {
            learning_rate: 0.01,
            ..Default::default()
        },
    )?;
    let ids: Vec<u32> = (0..BATCH * MAXLEN)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect();
    let targets: Vec<u32> = (0..BATCH)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect();
    let x = Tensor::from_vec(ids, (BATCH, MAXLEN), device)?;
    let y = Tensor::from_vec(targets, BATCH, device)?;
    timed(
        || {
            let loss = candle_nn::loss::cross_entropy(&model.forward(&x, true)?, &y)?;
            opt.step(&loss.backward()?)?;
            // Like the peers, a step ends when its numbers are ready.
            loss.to_scalar::<f32>()?;
            Ok(())
        },
        3,
        steps,
    )
}

/// The book's generation loop for `chars` characters at temperature 0.5 from a random
/// 60-character window. Returns seconds per character.
pub fn text_generate(device: &Device, chars: usize) -> Result<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let vocab = Vocabulary::from_chars(
        (0..VOCAB as u32)
            .map(|i| char::from_u32(0x41 + i).unwrap())
            .collect(),
    );
    let model = CharLstm::new_random(VOCAB, HIDDEN, &mut rng, device)?;
    let generator = CharGenerator::new(model, vocab, MAXLEN, false)?;
    let seed: Vec<u32> = (0..MAXLEN)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect();
    let per_run = timed(
        || {
            generator.generate(&seed, 0.5, chars, &mut rng, &mut |_| true)?;
            Ok(())
        },
        1,
        3,
    )?;
    Ok(per_run / chars as f64)
}

/// One training step of the book's VAE (batch 16 of 28×28, latent 2, RMSprop lr 0.001),
/// like the peers' `vae-train`. Returns seconds per batch.
pub fn vae_train(device: &Device, steps: usize) -> Result<f64> {
    use oneiro_models::{Vae, VaeConfig};
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let model = Vae::new_random(VaeConfig::default(), &mut rng, device)?;
    let mut opt = RmsProp::new(model.vars(), RmsPropConfig::default())?;
    let x = Tensor::rand(0f32, 1f32, (16, 1, 28, 28), device)?;
    timed(
        || {
            let eps = Tensor::randn(0f32, 1f32, (16, 2), device)?;
            let loss = model.loss(&x, &eps)?;
            opt.step(&loss.total.backward()?)?;
            loss.total.to_scalar::<f32>()?;
            Ok(())
        },
        3,
        steps,
    )
}

/// One step of the book's DCGAN (batch 20 of 32×32, latent 32; a discriminator update on
/// 40 images, then a generator update through the frozen discriminator), like the peers'
/// `gan-train`. Returns seconds per step.
pub fn gan_train(device: &Device, steps: usize) -> Result<f64> {
    use crate::gan::{GanTrainOptions, adversarial_step};
    use oneiro_models::{Dcgan, GanConfig};
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let model = Dcgan::new_random(GanConfig::default(), &mut rng, device)?;
    let o = GanTrainOptions::default();
    let mut d_opt = RmsProp::new(model.discriminator.vars(), o.optimizer(o.discriminator_lr))?;
    let mut g_opt = RmsProp::new(model.generator.vars(), o.optimizer(o.generator_lr))?;
    let real = Tensor::rand(0f32, 1f32, (20, 3, 32, 32), device)?;
    let zeros = Tensor::zeros((20, 1), candle_core::DType::F32, device)?;
    timed(
        || {
            adversarial_step(&model, &mut d_opt, &mut g_opt, &real, &zeros, &mut rng)?;
            Ok(())
        },
        2,
        steps,
    )
}

/// One DeepDream ascent step on a seeded random InceptionV3 at `height`×`width`, up to
/// mixed5 with the book's layer coefficients, like the peers' `dream-step` (loss, input
/// gradient, normalised step; no weight gradients). Returns seconds per step.
pub fn dream_step(device: &Device, height: usize, width: usize, steps: usize) -> Result<f64> {
    use crate::vision::dream::{BOOK_LAYERS, Dreamer};
    use oneiro_models::{InceptionV3, Preprocessing, Weights};
    let net = InceptionV3::load(
        &Weights::Seeded(0),
        oneiro_models::inception_v3::INCEPTION_BN_EPS,
        device,
    )?;
    let layers: Vec<(String, f32)> = BOOK_LAYERS
        .iter()
        .map(|(n, c)| (n.to_string(), *c))
        .collect();
    let dreamer = Dreamer::new(&net, Preprocessing::Inception, &layers, device)?;
    let mut x = Tensor::rand(-1f32, 1f32, (1, 3, height, width), device)?;
    timed(
        || {
            let (_, next) = dreamer.step(&x, 0.01)?;
            x = next;
            // A step ends when its numbers are ready (a no-op on the CPU).
            device.synchronize()?;
            Ok(())
        },
        // Frozen kernels are packed for good on the second step (tensor-ops' cache).
        2,
        steps,
    )
}

/// One style-transfer loss and gradient evaluation on a seeded random VGG19 at
/// `height`×`width` (content, style and total-variation terms, the book's weights), like
/// the peers' `style-eval`; the targets are computed once, outside the timing. Returns
/// seconds per evaluation.
pub fn style_eval(device: &Device, height: usize, width: usize, steps: usize) -> Result<f64> {
    use crate::vision::Planes;
    use crate::vision::style::{StyleOptions, Stylizer};
    use oneiro_models::{Preprocessing, Vgg19, Weights};
    let net = Vgg19::load(&Weights::Seeded(0), device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut picture = || Planes {
        height,
        width,
        data: (0..3 * height * width)
            .map(|_| rng.random_range(0.0..255.0))
            .collect(),
    };
    let (content, style) = (picture(), picture());
    let opts = StyleOptions {
        height,
        ..Default::default()
    };
    let s = Stylizer::new(
        &net,
        Preprocessing::Imagenet,
        &content,
        &style,
        &opts,
        device,
    )?;
    let x = content.to_tensor(device)?;
    timed(
        || {
            s.loss_and_gradient(&x)?;
            device.synchronize()?;
            Ok(())
        },
        // Frozen kernels are packed for good on the second evaluation.
        2,
        steps,
    )
}

/// Prepares a corpus file the way training does; returns (characters, windows, peak
/// resident memory in bytes of this process so far, if the OS tells).
pub fn text_prepare(text: &str) -> Result<(usize, usize, Option<u64>)> {
    let corpus = CharCorpus::prepare(text, &Default::default(), None)?;
    Ok((corpus.ids.len(), corpus.window_count(), peak_rss_bytes()))
}

/// Peak resident set size (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
