//! `--device auto|cpu|cuda[:N]` and `--dtype auto|f32|bf16|f16` (no clap: tools parse strings).

use anyhow::{Result, bail};
use candle_core::{DType, Device};

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "cpu" => Self::Cpu,
            "cuda" | "gpu" => Self::Cuda(0),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Self::Cuda(n),
                _ => bail!("invalid device {s:?} (expected auto, cpu, cuda or cuda:N)"),
            },
        })
    }
}

/// A parsed `--dtype` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeSpec {
    Auto,
    Exact(DType),
}

impl std::str::FromStr for DTypeSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "f32" | "float32" => Self::Exact(DType::F32),
            "bf16" | "bfloat16" => Self::Exact(DType::BF16),
            "f16" | "float16" => Self::Exact(DType::F16),
            _ => bail!("invalid dtype {s:?} (expected auto, f32, bf16 or f16)"),
        })
    }
}

/// Open the device. `auto` tries CUDA 0 and falls back to the CPU, calling `note` with the
/// reason (tools print it on stderr). An explicit `cuda` that fails is an error.
pub fn open_device(spec: DeviceSpec, note: &mut dyn FnMut(&str)) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                bail!(
                    "--device cuda: this build has no CUDA support (rebuild with --features cuda)"
                );
            }
            Device::new_cuda(n).map_err(|e| anyhow::anyhow!("cannot open cuda:{n}: {e}"))
        }
        DeviceSpec::Auto => {
            if !candle_core::utils::cuda_is_available() {
                return Ok(Device::Cpu);
            }
            match Device::new_cuda(0) {
                Ok(d) => Ok(d),
                Err(e) => {
                    note(&format!("no usable CUDA device ({e}); using the CPU"));
                    Ok(Device::Cpu)
                }
            }
        }
    }
}

/// `auto`: bf16 on CUDA, f32 on the CPU.
pub fn resolve_dtype(spec: DTypeSpec, device: &Device) -> DType {
    match spec {
        DTypeSpec::Exact(d) => d,
        DTypeSpec::Auto if device.is_cuda() => DType::BF16,
        DTypeSpec::Auto => DType::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() -> Result<()> {
        assert_eq!("auto".parse::<DeviceSpec>()?, DeviceSpec::Auto);
        assert_eq!("cpu".parse::<DeviceSpec>()?, DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>()?, DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>()?, DeviceSpec::Cuda(3));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("bf16".parse::<DTypeSpec>()?, DTypeSpec::Exact(DType::BF16));
        assert!("f64".parse::<DTypeSpec>().is_err());
        let mut notes = Vec::new();
        let d = open_device(DeviceSpec::Auto, &mut |m| notes.push(m.to_string()))?;
        if !candle_core::utils::cuda_is_available() {
            assert!(d.is_cpu());
            assert!(open_device(DeviceSpec::Cuda(0), &mut |_| {}).is_err());
        }
        assert_eq!(resolve_dtype(DTypeSpec::Auto, &Device::Cpu), DType::F32);
        assert_eq!(
            resolve_dtype(DTypeSpec::Exact(DType::F16), &Device::Cpu),
            DType::F16
        );
        Ok(())
    }
}
