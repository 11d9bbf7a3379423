use super::*;

#[test]
fn wavefront_logits_equal_the_sliding_window_loop() -> Result<()> {
    let (v, h, maxlen) = (7usize, 6usize, 5usize);
    let dev = Device::Cpu;
    let table = Tensor::arange(0f32, (v * 4 * h) as f32, &dev)?
        .reshape((v, 4 * h))?
        .sin()?;
    let w_hh = (Tensor::arange(0f32, (4 * h * h) as f32, &dev)?
        .reshape((4 * h, h))?
        .cos()?
        * 0.5)?;
    let out_w = Tensor::arange(0f32, (v * h) as f32, &dev)?
        .reshape((v, h))?
        .sin()?;
    let out_b = Tensor::zeros(v, DType::F32, &dev)?;
    let runner = CpuLstmRunner::new(&table, &w_hh, &out_w, &out_b)?;
    let mut scratch = RunnerScratch::default();
    for seed_len in [1usize, 3, 5, 9] {
        let mut text: Vec<u32> = (0..seed_len as u32)
            .map(|i| (i * 3 + 1) % v as u32)
            .collect();
        let mut wf = Wavefront::new(&runner, maxlen, &text)?;
        for step in 0..12 {
            let window = &text[text.len().saturating_sub(maxlen)..];
            let (mut a, mut b) = (vec![0.0; v], vec![0.0; v]);
            runner.logits(window, &mut scratch, &mut a);
            wf.logits(&mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() < 1e-5,
                    "seed {seed_len}, step {step}: {a:?} vs {b:?}"
                );
            }
            let next = (step * 5 + seed_len) as u32 % v as u32;
            text.push(next);
            wf.push(next);
        }
    }
    Ok(())
}
