//! Images as the vision techniques work on them: RGB channel planes of `f32`, in
//! whatever value space a technique chose (DeepDream's [-1, 1], style transfer's 0–255).

use candle_core::{Device, Tensor};

use crate::Result;

/// An RGB image, channel planes of `f32` (CHW).
#[derive(Clone, Debug, PartialEq)]
pub struct Planes {
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Planes {
    /// From interleaved RGB in [0, 1] (what `imageio::to_rgb` gives) to planes in the
    /// book's [-1, 1].
    pub fn from_rgb01(rgb: &[f32], width: usize, height: usize) -> Self {
        Self::from_interleaved(rgb, width, height, |v| v * 2.0 - 1.0)
    }

    /// Back to interleaved RGB in [0, 1], clipped (the book's de-processing).
    pub fn to_rgb01(&self) -> Vec<f32> {
        self.to_interleaved(|v| ((v + 1.0) * 0.5).clamp(0.0, 1.0))
    }

    /// Planes of `f(v)` for interleaved RGB values `v`.
    pub fn from_interleaved(
        rgb: &[f32],
        width: usize,
        height: usize,
        f: impl Fn(f32) -> f32,
    ) -> Self {
        let n = width * height;
        let mut data = vec![0.0; 3 * n];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * n + i] = f(px[c]);
            }
        }
        Self {
            height,
            width,
            data,
        }
    }

    /// Interleaved RGB of `f(v)` for the planes' values `v`.
    pub fn to_interleaved(&self, f: impl Fn(f32) -> f32) -> Vec<f32> {
        let n = self.width * self.height;
        let mut out = vec![0.0; 3 * n];
        for i in 0..n {
            for c in 0..3 {
                out[3 * i + c] = f(self.data[c * n + i]);
            }
        }
        out
    }

    /// Bilinear resize with half-pixel centres and no antialiasing (TensorFlow's
    /// `tf.image.resize`, which the book's resizing is). Written here because `image`'s
    /// triangle filter widens its support when shrinking (an antialiased resize), which
    /// changes what detail the octaves lose and re-inject.
    pub fn resize(&self, height: usize, width: usize) -> Self {
        if (height, width) == (self.height, self.width) {
            return self.clone();
        }
        let taps = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
            let scale = inp as f32 / out as f32;
            (0..out)
                .map(|o| {
                    let src = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (inp - 1) as f32);
                    let i0 = src.floor() as usize;
                    (i0, (i0 + 1).min(inp - 1), src - i0 as f32)
                })
                .collect()
        };
        let (ys, xs) = (taps(height, self.height), taps(width, self.width));
        let (ih, iw) = (self.height, self.width);
        let mut data = Vec::with_capacity(3 * height * width);
        for c in 0..3 {
            let plane = &self.data[c * ih * iw..(c + 1) * ih * iw];
            for &(y0, y1, fy) in &ys {
                let (r0, r1) = (
                    &plane[y0 * iw..(y0 + 1) * iw],
                    &plane[y1 * iw..(y1 + 1) * iw],
                );
                for &(x0, x1, fx) in &xs {
                    let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
                    let bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
                    data.push(top + (bottom - top) * fy);
                }
            }
        }
        Self {
            height,
            width,
            data,
        }
    }

    pub(crate) fn sub(&self, other: &Self) -> Self {
        let data = self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| a - b)
            .collect();
        Self { data, ..*self }
    }

    pub(crate) fn add_assign(&mut self, other: &Self) {
        self.data
            .iter_mut()
            .zip(&other.data)
            .for_each(|(a, b)| *a += b);
    }

    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (1, 3, self.height, self.width),
            device,
        )?)
    }

    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (_, _, height, width) = t.dims4()?;
        Ok(Self {
            height,
            width,
            data: t.flatten_all()?.to_vec1()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_resize_matches_half_pixel_interpolation() {
        // A horizontal ramp stays a ramp; 2×2 → 4×4 gives TensorFlow's values.
        let p = Planes {
            height: 2,
            width: 2,
            data: [0.0, 1.0, 2.0, 3.0].repeat(3),
        };
        let r = p.resize(4, 4);
        let row0: Vec<f32> = r.data[..4].to_vec();
        assert_eq!(row0, vec![0.0, 0.25, 0.75, 1.0]);
        let col0: Vec<f32> = (0..4).map(|y| r.data[y * 4]).collect();
        assert_eq!(col0, vec![0.0, 0.5, 1.5, 2.0]);
        // Shrinking by 2 averages pixel pairs (half-pixel centres fall between them).
        let q = Planes {
            height: 1,
            width: 4,
            data: [0.0, 2.0, 4.0, 6.0].repeat(3),
        };
        assert_eq!(q.resize(1, 2).data[..2], [1.0, 5.0]);
        assert_eq!(p.resize(2, 2), p);
    }

    #[test]
    fn planes_round_trip_interleaved_rgb() {
        let rgb = vec![0.0, 0.5, 1.0, 0.25, 0.75, 0.1];
        let p = Planes::from_rgb01(&rgb, 2, 1);
        assert_eq!(p.data, vec![-1.0, -0.5, 0.0, 0.5, 1.0, -0.8]);
        let back = p.to_rgb01();
        for (a, b) in back.iter().zip(&rgb) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
