use super::*;
use candle_core::Var;

fn setup(b: usize, t: usize, v: usize, h: usize, seed: u64) -> Result<(Tensor, Var, Var)> {
    let dev = Device::Cpu;
    // Deterministic pseudo-random values without pulling an RNG into the test.
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let ids: Vec<u32> = (0..b * t)
        .map(|_| ((next() + 0.5) * v as f32) as u32 % v as u32)
        .collect();
    let table: Vec<f32> = (0..v * 4 * h).map(|_| next() * 1.5).collect();
    let w: Vec<f32> = (0..4 * h * h).map(|_| next()).collect();
    Ok((
        Tensor::from_vec(ids, (b, t), &dev)?,
        Var::from_tensor(&Tensor::from_vec(table, (v, 4 * h), &dev)?)?,
        Var::from_tensor(&Tensor::from_vec(w, (4 * h, h), &dev)?)?,
    ))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The fused op's output and gradients against the candle composition.
fn check_against_reference(b: usize, t: usize, v: usize, h: usize) -> Result<()> {
    let (ids, table, w) = setup(b, t, v, h, 42)?;
    // A loss that weights every output differently, so no gradient cancels.
    let weights = Tensor::arange(0f32, (b * h) as f32, &Device::Cpu)?
        .reshape((b, h))?
        .cos()?;
    let fused = lstm_last_hidden(&ids, &table, &w, true)?;
    let reference = lstm_last_hidden_reference(&ids, &table, &w)?;
    assert!(max_abs_diff(&fused, &reference) < 1e-5);
    let gf = (fused * &weights)?.sum_all()?.backward()?;
    let gr = (reference * &weights)?.sum_all()?.backward()?;
    for var in [&table, &w] {
        let (a, r) = (gf.get(var).unwrap(), gr.get(var).unwrap());
        let scale = r.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-3);
        assert!(
            max_abs_diff(a, r) / scale < 1e-4,
            "gradient mismatch for shape {:?} (b={b} t={t} v={v} h={h})",
            var.shape()
        );
    }
    Ok(())
}

#[test]
fn fused_forward_and_gradients_match_the_candle_composition() -> Result<()> {
    // H = 16 and 32 run every product through the AVX-512 kernel where there is one
    // (the others have widths that are not multiples of 16 and take `gemm`).
    for &(b, t, v, h) in &[
        (5, 7, 6, 4),
        (16, 12, 9, 8),
        (3, 1, 4, 3),
        (7, 5, 6, 16),
        (13, 4, 5, 32),
    ] {
        check_against_reference(b, t, v, h)?;
    }
    Ok(())
}

#[test]
fn the_backward_folds_runs_of_steps_of_any_length() -> Result<()> {
    // The backward folds the gate gradients into dW_hh and d(table) every
    // ⌈KC / rows⌉ steps. With 1 or 3 threads these shapes give runs of 2 or 4 steps
    // and a short one (100 rows, or 34 and 32 per thread), of 19 steps and a short
    // one (7 rows), exactly two runs (9 rows), and a single run (fewer rows).
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(candle_core::Error::wrap)?;
        pool.install(|| -> Result<()> {
            for &(b, t, v, h) in &[(100, 9, 5, 16), (7, 40, 6, 16), (9, 30, 4, 3)] {
                check_against_reference(b, t, v, h)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn fused_gradients_match_finite_differences() -> Result<()> {
    let (b, t, v, h) = (4, 6, 5, 3);
    let (ids, table, w) = setup(b, t, v, h, 7)?;
    let weights = Tensor::arange(0f32, (b * h) as f32, &Device::Cpu)?
        .reshape((b, h))?
        .sin()?;
    let loss = |table: &Tensor, w: &Tensor| -> Result<f64> {
        let out = lstm_last_hidden(&ids, table, w, false)?;
        (out * &weights)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    };
    let grads = (lstm_last_hidden(&ids, &table, &w, true)? * &weights)?
        .sum_all()?
        .backward()?;
    let eps = 1e-2f32;
    for var in [&table, &w] {
        let analytic = grads.get(var).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let base = var.flatten_all()?.to_vec1::<f32>()?;
        for idx in (0..base.len()).step_by(3) {
            let perturbed = |delta: f32| -> Result<f64> {
                let mut p = base.clone();
                p[idx] += delta;
                let p = Tensor::from_vec(p, var.shape(), &Device::Cpu)?;
                if std::ptr::eq(var, &table) {
                    loss(&p, &w)
                } else {
                    loss(&table, &p)
                }
            };
            let numeric = (perturbed(eps)? - perturbed(-eps)?) / (2.0 * eps as f64);
            let err = (numeric - analytic[idx] as f64).abs();
            assert!(
                err < 2e-3 + 2e-2 * numeric.abs(),
                "index {idx}: numeric {numeric} vs analytic {}",
                analytic[idx]
            );
        }
    }
    Ok(())
}

#[test]
fn runner_matches_the_graph_forward() -> Result<()> {
    let (b, t, v, h) = (3, 9, 6, 8);
    let (ids, table, w) = setup(b, t, v, h, 3)?;
    let out_w = Tensor::arange(0f32, (5 * h) as f32, &Device::Cpu)?
        .reshape((5, h))?
        .sin()?;
    let out_b = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0, 1.0], &Device::Cpu)?;
    let expected = lstm_last_hidden(&ids, &table, &w, false)?
        .matmul(&out_w.t()?)?
        .broadcast_add(&out_b)?;
    let runner = CpuLstmRunner::new(&table, &w, &out_w, &out_b)?;
    let mut scratch = RunnerScratch::default();
    let ids = ids.to_vec2::<u32>()?;
    for (row, exp_row) in ids.iter().zip(expected.to_vec2::<f32>()?) {
        let mut logits = vec![0.0; 5];
        runner.logits(row, &mut scratch, &mut logits);
        for (a, e) in logits.iter().zip(&exp_row) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
    }
    Ok(())
}

#[test]
fn out_of_range_ids_are_an_error_not_a_crash() -> Result<()> {
    let (_, table, w) = setup(1, 1, 4, 2, 1)?;
    let ids = Tensor::new(&[[0u32, 9]], &Device::Cpu)?;
    let err = lstm_last_hidden(&ids, &table, &w, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("out of range"), "{err}");
    Ok(())
}
