//! Temperature sampling exactly as the book: `q = exp(log(p) / T)`, normalised, then one
//! multinomial draw. `T = 0` is the greedy limit (argmax).

use rand::Rng;

/// Softmax of `logits` into `probs` (max-subtracted, so no overflow).
pub fn softmax(logits: &[f32], probs: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (p, &l) in probs.iter_mut().zip(logits) {
        *p = (l - max).exp();
        sum += *p;
    }
    probs.iter_mut().for_each(|p| *p /= sum);
}

/// The book's reweighting `exp(log(p) / T) / Σ`, computed in f64 with the largest term
/// factored out so that small temperatures neither underflow nor overflow. `T > 0`.
pub fn reweight(p: &[f32], temperature: f32) -> Vec<f64> {
    let t = temperature as f64;
    let logs: Vec<f64> = p.iter().map(|&x| (x as f64).ln() / t).collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let q: Vec<f64> = logs.iter().map(|&l| (l - max).exp()).collect();
    let sum: f64 = q.iter().sum();
    q.into_iter().map(|x| x / sum).collect()
}

/// Index of the largest probability (first one on ties).
pub fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

/// Draws an index from `p` reweighted at `temperature` (0 = argmax).
pub fn sample(p: &[f32], temperature: f32, rng: &mut impl Rng) -> usize {
    if temperature == 0.0 {
        return argmax(p);
    }
    let q = reweight(p, temperature);
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (i, &x) in q.iter().enumerate() {
        acc += x;
        if u < acc {
            return i;
        }
    }
    // Rounding left `acc` a hair under 1: the last index with any mass.
    q.iter().rposition(|&x| x > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const P: [f32; 5] = [0.05, 0.1, 0.4, 0.25, 0.2];

    #[test]
    fn temperature_one_leaves_the_distribution_unchanged() {
        for (a, b) in reweight(&P, 1.0).iter().zip(P) {
            assert!((a - b as f64).abs() < 1e-7);
        }
    }

    #[test]
    fn low_temperature_sharpens_and_high_flattens() {
        let cold = reweight(&P, 0.1);
        let hot = reweight(&P, 5.0);
        assert!(cold[2] > 0.98, "{cold:?}");
        let spread =
            hot.iter().cloned().fold(0.0, f64::max) - hot.iter().cloned().fold(1.0, f64::min);
        assert!(spread < 0.1, "{hot:?}");
    }

    #[test]
    fn tiny_temperatures_pick_the_argmax_without_nan() {
        let mut rng = StdRng::seed_from_u64(1);
        for t in [1e-3f32, 1e-6, 1e-12] {
            let q = reweight(&P, t);
            assert!(q.iter().all(|x| x.is_finite()), "{q:?}");
            for _ in 0..100 {
                assert_eq!(sample(&P, t, &mut rng), 2);
            }
        }
        assert_eq!(sample(&P, 0.0, &mut rng), 2);
    }

    #[test]
    fn temperature_one_draws_follow_the_model_distribution() {
        // Pearson chi-square goodness of fit, 4 degrees of freedom: the 0.999 quantile is
        // 18.47, so a correct sampler fails this (seeded) test with probability 1e-3.
        let mut rng = StdRng::seed_from_u64(2026);
        let n = 20_000;
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[sample(&P, 1.0, &mut rng)] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .zip(P)
            .map(|(&c, p)| {
                let e = n as f64 * p as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 18.47, "chi-square {chi2} for counts {counts:?}");
    }

    #[test]
    fn zero_probability_characters_are_never_drawn() {
        let p = [0.0f32, 0.5, 0.0, 0.5];
        let mut rng = StdRng::seed_from_u64(3);
        for t in [0.5f32, 1.0, 1.2] {
            for _ in 0..1000 {
                let i = sample(&p, t, &mut rng);
                assert!(i == 1 || i == 3);
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let mut p = [0.0f32; 3];
        softmax(&[1000.0, 999.0, -1000.0], &mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[0] > p[1] && p[2] == 0.0);
    }
}
