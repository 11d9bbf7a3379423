//! What every run needs whatever it trains: the device's name, its random streams and
//! the checks of the options every trainer has.

use candle_core::Device;

use crate::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A distinct, reproducible stream for each (seed, epoch, purpose): continuing a model
/// for more epochs draws what one longer run would have drawn.
pub(crate) fn rng_for(seed: u64, epoch: u32, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((epoch as u64) << 8) | purpose);
    rng
}

/// `cpu` or `cuda:N`, as users write it.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// A count option (`epochs`, `batch size`, `steps`) within `1..=max`.
pub(crate) fn check_count(what: &str, value: usize, max: usize) -> Result<()> {
    if value == 0 || value > max {
        return Err(Error::invalid(format!(
            "{what} must be between 1 and {max}, got {value}"
        )));
    }
    Ok(())
}

/// An optional learning rate: finite and positive when given.
pub(crate) fn check_learning_rate(lr: Option<f64>) -> Result<()> {
    if let Some(lr) = lr
        && !(lr.is_finite() && lr > 0.0)
    {
        return Err(Error::invalid(format!(
            "learning rate must be a finite number > 0, got {lr}"
        )));
    }
    Ok(())
}

/// The divergence guard's factor: finite and >= 0 (0 switches it off).
pub(crate) fn check_divergence_factor(f: f32) -> Result<()> {
    if !(f.is_finite() && f >= 0.0) {
        return Err(Error::invalid(format!(
            "divergence factor must be a finite number >= 0 (0 = off), got {f}"
        )));
    }
    Ok(())
}
