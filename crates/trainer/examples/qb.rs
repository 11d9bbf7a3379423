fn main() {
    let d = candle_core::Device::Cpu;
    if let Ok(n) = std::env::var("QB_PROFILE") {
        let s = oneiro_trainer::bench::text_train(&d, n.parse().unwrap()).unwrap();
        println!("train {:.2} ms/batch", s * 1e3);
        return;
    }
    for _ in 0..3 {
        let s = oneiro_trainer::bench::text_train(&d, 30).unwrap();
        println!("train {:.2} ms/batch {:.0} seq/s", s * 1e3, 128.0 / s);
        let c = oneiro_trainer::bench::text_generate(&d, 400).unwrap();
        println!("gen {:.1} us/char {:.0} chars/s", c * 1e6, 1.0 / c);
    }
}
