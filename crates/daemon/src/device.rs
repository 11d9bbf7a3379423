//! `--device cpu|cuda:N|auto`.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: use cpu, cuda:N or auto")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. `auto` picks `cuda:0` when this build has CUDA and a GPU is
    /// present, else the CPU.
    pub fn open(self) -> Result<Device, String> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => {
                if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                    Self::Cuda(0).open()
                } else {
                    Ok(Device::Cpu)
                }
            }
            Self::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(format!(
                        "device cuda:{n} asked for, but this build has no CUDA support: rebuild with `--features cuda`"
                    ));
                }
                Device::new_cuda(n).map_err(|e| format!("cannot open cuda:{n}: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse() {
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!("auto".parse::<DeviceSpec>(), Ok(DeviceSpec::Auto));
        assert!(
            "gpu"
                .parse::<DeviceSpec>()
                .unwrap_err()
                .contains("cpu, cuda:N or auto")
        );
        assert_eq!(
            DeviceSpec::Auto.open().map(|d| d.is_cpu()),
            Ok(!cfg!(feature = "cuda") || !candle_core::utils::cuda_is_available())
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_names_the_flag() {
        assert!(
            DeviceSpec::Cuda(0)
                .open()
                .unwrap_err()
                .contains("--features cuda")
        );
    }
}
