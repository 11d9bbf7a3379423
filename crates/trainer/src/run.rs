//! What every run needs whatever it trains: the device's name and its random streams.

use candle_core::Device;
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
