//! DeepDream (SPEC §2): gradient ascent on an image to amplify what chosen InceptionV3
//! layers respond to, over octaves from small to full size, re-injecting the detail that
//! the shrinking lost.
//!
//! The dream lives in the book's space, pixels scaled to [-1, 1] (`p / 127.5 - 1`), so the
//! step size means what it meant in the book whatever the weights: the network's own
//! preprocessing is applied inside the forward pass (an identity for the default
//! TensorFlow-slim weights).

use candle_core::{Device, Tensor, Var};
use oneiro_models::{InceptionV3, Preprocessing};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::planes::Planes;
use crate::{Error, Result};

/// The book's layer contributions.
pub const BOOK_LAYERS: [(&str, f32); 4] = [
    ("mixed2", 0.2),
    ("mixed3", 3.0),
    ("mixed4", 2.0),
    ("mixed5", 1.5),
];

#[derive(Clone, Debug, PartialEq)]
pub struct DreamOptions {
    /// Layers (Keras or checkpoint names) and their coefficients.
    pub layers: Vec<(String, f32)>,
    /// Gradient-ascent step (in [-1, 1] pixel space, on the normalised gradient).
    pub step: f32,
    /// Ascent iterations per octave.
    pub iterations: usize,
    /// Stop an octave's ascent at the first iteration whose loss exceeds this.
    pub max_loss: f32,
    /// Number of scales, the original included.
    pub octaves: usize,
    /// Size ratio between successive octaves.
    pub octave_scale: f32,
}

impl Default for DreamOptions {
    fn default() -> Self {
        Self {
            layers: BOOK_LAYERS
                .iter()
                .map(|(n, c)| (n.to_string(), *c))
                .collect(),
            step: 0.01,
            iterations: 20,
            max_loss: 10.0,
            // SPEC §2: the original size and three smaller ones, H / 1.4^i for i = 1..3.
            octaves: 4,
            octave_scale: 1.4,
        }
    }
}

impl DreamOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.layers.is_empty() {
            return bad("DeepDream needs at least one layer".into());
        }
        for (name, c) in &self.layers {
            InceptionV3::resolve(name).map_err(|e| Error::invalid(e.to_string()))?;
            if !c.is_finite() {
                return bad(format!("layer {name}: coefficient {c} is not a number"));
            }
        }
        if self.layers.iter().all(|(_, c)| *c == 0.0) {
            return bad("every layer coefficient is 0: there is nothing to maximise".into());
        }
        if !(self.step.is_finite() && self.step > 0.0) {
            return bad(format!("step {} must be a positive number", self.step));
        }
        if self.iterations == 0 || self.iterations > 10_000 {
            return bad(format!("iterations {} must be 1..=10000", self.iterations));
        }
        if self.max_loss.is_nan() {
            return bad("max_loss is not a number".into());
        }
        if self.octaves == 0 || self.octaves > 12 {
            return bad(format!("octaves {} must be 1..=12", self.octaves));
        }
        if !(self.octave_scale.is_finite() && self.octave_scale > 1.0 && self.octave_scale <= 8.0) {
            return bad(format!(
                "octave scale {} must be in (1, 8]",
                self.octave_scale
            ));
        }
        Ok(())
    }
}

/// The book's suggested exploration: two to four of `mixed0`..`mixed7` with random
/// coefficients in [0.2, 3].
pub fn random_layers(seed: u64) -> Vec<(String, f32)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut names: Vec<usize> = (0..8).collect();
    names.shuffle(&mut rng);
    let n = rng.random_range(2..=4);
    let mut chosen: Vec<usize> = names[..n].to_vec();
    chosen.sort_unstable();
    chosen
        .into_iter()
        .map(|i| {
            let c: f32 = rng.random_range(0.2..3.0);
            (format!("mixed{i}"), (c * 100.0).round() / 100.0)
        })
        .collect()
}

/// The octave sizes, smallest first: the original `(h, w)` and `(h, w) / scale^i`
/// (truncated) for i = 1..octaves.
pub fn octave_shapes(
    height: usize,
    width: usize,
    octaves: usize,
    scale: f32,
) -> Vec<(usize, usize)> {
    let mut shapes: Vec<(usize, usize)> = (0..octaves)
        .map(|i| {
            let f = (scale as f64).powi(i as i32);
            ((height as f64 / f) as usize, (width as f64 / f) as usize)
        })
        .collect();
    shapes.reverse();
    shapes
}

/// What a dream reports as it goes.
#[derive(Debug)]
pub enum DreamEvent<'a> {
    /// One ascent iteration: the loss before its step.
    Step {
        octave: usize,
        iteration: usize,
        loss: f32,
    },
    /// An octave is done (detail re-injected); `stopped_early`: its ascent hit max_loss.
    Octave {
        octave: usize,
        image: &'a Planes,
        stopped_early: bool,
    },
}

/// The network and layers a dream maximises.
pub struct Dreamer<'a> {
    net: &'a InceptionV3,
    preprocessing: Preprocessing,
    taps: Vec<usize>,
    coefficients: Vec<f64>,
    device: Device,
}

impl<'a> Dreamer<'a> {
    pub fn new(
        net: &'a InceptionV3,
        preprocessing: Preprocessing,
        layers: &[(String, f32)],
        device: &Device,
    ) -> Result<Self> {
        let taps = layers
            .iter()
            .map(|(n, _)| InceptionV3::resolve(n).map_err(|e| Error::invalid(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            net,
            preprocessing,
            taps,
            coefficients: layers.iter().map(|(_, c)| *c as f64).collect(),
            device: device.clone(),
        })
    }

    /// The smallest side the layers can be computed on.
    pub fn min_side(&self) -> usize {
        self.net
            .min_input(*self.taps.iter().max().expect("layers checked"))
    }

    /// The loss (Σ coefficient · mean(activation²)) of `x` in [-1, 1] space.
    pub fn loss(&self, x: &Tensor) -> Result<Tensor> {
        let input = match self.preprocessing {
            // The book's space is this network's input already.
            Preprocessing::Inception => x.clone(),
            other => other.from_pixels(&((x + 1.0)? * 127.5)?)?,
        };
        let acts = self.net.forward_taps(&input, &self.taps)?;
        let mut loss: Option<Tensor> = None;
        for (a, c) in acts.iter().zip(&self.coefficients) {
            let term = (a.sqr()?.mean_all()? * *c)?;
            loss = Some(match loss {
                Some(l) => (l + term)?,
                None => term,
            });
        }
        Ok(loss.expect("at least one layer"))
    }

    /// One ascent step: the loss at `x`, and `x + step · g / max(mean|g|, 1e-7)`.
    pub fn step(&self, x: &Tensor, step: f32) -> Result<(Tensor, Tensor)> {
        let var = Var::from_tensor(x)?;
        let loss = self.loss(var.as_tensor())?;
        let grads = loss.backward()?;
        let g = grads
            .get(&var)
            .ok_or_else(|| Error::invalid("the loss does not depend on the image"))?;
        let norm = g.abs()?.mean_all()?.maximum(1e-7)?;
        let next = (x + g.broadcast_div(&norm)?.affine(step as f64, 0.0)?)?;
        Ok((loss, next))
    }

    /// Gradient ascent on `x` for up to `iterations`, stopping at the first loss above
    /// `max_loss` (before its step, as the book does). Returns the image and whether it
    /// stopped early.
    fn ascend(
        &self,
        mut x: Tensor,
        opts: &DreamOptions,
        octave: usize,
        on: &mut dyn FnMut(DreamEvent) -> Result<()>,
    ) -> Result<(Tensor, bool)> {
        for iteration in 0..opts.iterations {
            let (loss, next) = self.step(&x, opts.step)?;
            let loss = loss.to_scalar::<f32>()?;
            if !loss.is_finite() {
                return Err(Error::Diverged(format!(
                    "the DeepDream loss became {loss} at octave {octave}, iteration {iteration}: try a smaller step"
                )));
            }
            on(DreamEvent::Step {
                octave,
                iteration,
                loss,
            })?;
            if loss > opts.max_loss {
                return Ok((x, true));
            }
            x = next;
        }
        Ok((x, false))
    }

    /// The whole dream of `image` (in [-1, 1]); returns the final image. Too small an
    /// image (at the smallest octave) is refused before any work.
    pub fn dream(
        &self,
        image: &Planes,
        opts: &DreamOptions,
        on: &mut dyn FnMut(DreamEvent) -> Result<()>,
    ) -> Result<Planes> {
        opts.validate()?;
        let shapes = octave_shapes(image.height, image.width, opts.octaves, opts.octave_scale);
        let min = self.min_side();
        let (sh, sw) = shapes[0];
        if sh < min || sw < min {
            let deepest =
                oneiro_models::inception_v3::display_name(*self.taps.iter().max().expect("layers"));
            return Err(Error::invalid(format!(
                "a {}x{} (height x width) image shrinks to {sh}x{sw} at the smallest of {} octaves (scale {}), \
                 smaller than the {min}x{min} InceptionV3 needs up to {deepest}: use a larger image, fewer octaves or a smaller octave scale",
                image.height, image.width, opts.octaves, opts.octave_scale
            )));
        }
        let mut dream = image.clone();
        let mut shrunk_original = image.resize(sh, sw);
        for (octave, &(h, w)) in shapes.iter().enumerate() {
            let x = dream.resize(h, w).to_tensor(&self.device)?;
            let (x, stopped_early) = self.ascend(x, opts, octave, on)?;
            dream = Planes::from_tensor(&x)?;
            let same_size_original = image.resize(h, w);
            let lost = same_size_original.sub(&shrunk_original.resize(h, w));
            dream.add_assign(&lost);
            shrunk_original = same_size_original;
            on(DreamEvent::Octave {
                octave,
                image: &dream,
                stopped_early,
            })?;
        }
        Ok(dream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octave_shapes_follow_the_book() {
        assert_eq!(
            octave_shapes(400, 600, 3, 1.4),
            vec![(204, 306), (285, 428), (400, 600)]
        );
        assert_eq!(octave_shapes(99, 77, 1, 1.4), vec![(99, 77)]);
        // The defaults: the original and three smaller scales, smallest first.
        let d = DreamOptions::default();
        assert_eq!(
            octave_shapes(400, 300, d.octaves, d.octave_scale),
            vec![(145, 109), (204, 153), (285, 214), (400, 300)]
        );
    }

    #[test]
    fn options_are_checked() {
        assert!(DreamOptions::default().validate().is_ok());
        let with = |f: &dyn Fn(&mut DreamOptions)| {
            let mut o = DreamOptions::default();
            f(&mut o);
            o.validate().unwrap_err().to_string()
        };
        assert!(with(&|o| o.layers = vec![("mixed42".into(), 1.0)]).contains("mixed42"));
        assert!(with(&|o| o.layers = vec![("mixed1".into(), 0.0)]).contains("nothing"));
        assert!(with(&|o| o.step = -1.0).contains("step"));
        assert!(with(&|o| o.octave_scale = 1.0).contains("octave scale"));
        assert!(with(&|o| o.iterations = 0).contains("iterations"));
        let r = random_layers(7);
        assert!((2..=4).contains(&r.len()));
        assert_eq!(r, random_layers(7));
        assert!(
            r.iter()
                .all(|(n, c)| InceptionV3::resolve(n).is_ok() && (0.2..=3.0).contains(c))
        );
    }

    /// A seeded random InceptionV3 on a small odd-sized image: the loss rises within an
    /// octave, every octave reports its image at its size, and a low max_loss stops the
    /// ascent early.
    #[test]
    fn a_dream_raises_the_loss_and_stops_at_max_loss() {
        let dev = Device::Cpu;
        let net = InceptionV3::load(&oneiro_models::Weights::Seeded(3), 1e-3, &dev).unwrap();
        let layers = vec![("mixed0".to_string(), 1.0f32), ("mixed1".to_string(), 0.5)];
        let dreamer = Dreamer::new(&net, Preprocessing::Inception, &layers, &dev).unwrap();
        let (h, w) = (57, 71);
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let v = 0.5 + 0.4 * ((x as f32 * 0.3).sin() * (y as f32 * 0.2).cos());
                rgb.extend([v, 1.0 - v, 0.5]);
            }
        }
        let image = Planes::from_rgb01(&rgb, w, h);
        let opts = DreamOptions {
            layers,
            iterations: 6,
            max_loss: f32::INFINITY,
            octaves: 2,
            octave_scale: 1.3,
            step: 0.05,
        };
        let mut losses: Vec<Vec<f32>> = vec![vec![]; 2];
        let mut sizes = vec![];
        let out = dreamer
            .dream(&image, &opts, &mut |e| {
                match e {
                    DreamEvent::Step { octave, loss, .. } => losses[octave].push(loss),
                    DreamEvent::Octave {
                        image,
                        stopped_early,
                        ..
                    } => {
                        assert!(!stopped_early);
                        sizes.push((image.height, image.width))
                    }
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(sizes, vec![(43, 54), (57, 71)]);
        assert_eq!((out.height, out.width), (57, 71));
        for l in &losses {
            assert_eq!(l.len(), 6);
            assert!(l[5] > l[0] * 1.2, "loss rose too little: {l:?}");
        }
        assert_ne!(out.data, image.data, "the image changed");

        // max_loss between the first and last loss of the first octave: an early stop.
        let cap = (losses[0][0] + losses[0][5]) / 2.0;
        let mut seen = 0;
        let mut early = vec![];
        dreamer
            .dream(
                &image,
                &DreamOptions {
                    max_loss: cap,
                    ..opts.clone()
                },
                &mut |e| {
                    match e {
                        DreamEvent::Step { octave: 0, .. } => seen += 1,
                        DreamEvent::Octave { stopped_early, .. } => early.push(stopped_early),
                        _ => {}
                    }
                    Ok(())
                },
            )
            .unwrap();
        assert!(seen < 6, "stopped early at max_loss");
        assert!(early[0]);

        // Too small for the layers: a clear error, before any work.
        let tiny = Planes::from_rgb01(&rgb[..3 * 30 * 30], 30, 30);
        let e = dreamer
            .dream(&tiny, &opts, &mut |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("30x30") && e.contains("needs"), "{e}");
    }

    /// A seeded random InceptionV3 keeps its activations at a unit scale through the
    /// network (He-initialised convolutions, identity batch-norm), so the book's defaults
    /// (max_loss 10) leave room to climb: every octave runs several iterations and the
    /// picture changes. What `oneiro dream --random-weights` shows offline.
    #[test]
    fn a_default_dream_with_random_weights_climbs_in_every_octave() {
        let dev = Device::Cpu;
        let net = InceptionV3::load(
            &oneiro_models::Weights::Seeded(0),
            oneiro_models::inception_v3::INCEPTION_BN_EPS,
            &dev,
        )
        .unwrap();
        let (h, w) = (150, 200);
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let v = 0.5 + 0.3 * ((x as f32 * 0.11).sin() * (y as f32 * 0.07).cos());
                let t = if (x / 7 + y / 5) % 2 == 0 { 0.1 } else { -0.1 };
                rgb.extend([v + t, 1.0 - v, 0.4 + t]);
            }
        }
        let image = Planes::from_rgb01(&rgb, w, h);
        let x = Tensor::from_vec(
            image.data.iter().map(|v| v * 2.0 - 1.0).collect(),
            (1, 3, h, w),
            &dev,
        )
        .unwrap();
        for layer in 0..=10 {
            let d = Dreamer::new(
                &net,
                Preprocessing::Inception,
                &[(format!("mixed{layer}"), 1.0)],
                &dev,
            )
            .unwrap();
            let ms = d.loss(&x).unwrap().to_scalar::<f32>().unwrap();
            assert!((0.02..2.0).contains(&ms), "mixed{layer}: mean square {ms}");
        }
        let opts = DreamOptions::default();
        let dreamer = Dreamer::new(&net, Preprocessing::Inception, &opts.layers, &dev).unwrap();
        let mut steps = vec![0; opts.octaves];
        let out = dreamer
            .dream(&image, &opts, &mut |e| {
                if let DreamEvent::Step { octave, .. } = e {
                    steps[octave] += 1;
                }
                Ok(())
            })
            .unwrap();
        assert!(
            steps.iter().all(|&n| n > 1),
            "iterations per octave: {steps:?}"
        );
        let change = out
            .data
            .iter()
            .zip(&image.data)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / image.data.len() as f32;
        assert!(change > 0.01, "mean change {change} of pixels in [0, 1]");
    }
}
