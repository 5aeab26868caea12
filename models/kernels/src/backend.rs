//! Which implementation a network's layers run on: the one place that decides it.

use candle_core::Device;

/// What the user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// candle's built-in operations everywhere.
    Candle,
    /// The fastest implementation for the device: Gantry's GEMM kernels on the CPU, cuDNN on
    /// CUDA (feature `cudnn`), candle's operations elsewhere.
    #[default]
    Fast,
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "candle" => Ok(Self::Candle),
            "fast" => Ok(Self::Fast),
            other => Err(format!(
                "unknown kernels `{other}` (expected candle or fast)"
            )),
        }
    }
}

/// The implementation that actually runs, resolved from [`Kernels`] and a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// candle's operations on NCHW tensors.
    Candle,
    /// Gantry's CPU kernels on channel-major (`[C, B, H, W]`) tensors: [`crate::gemm_conv`],
    /// [`crate::gemm_conv_act`], [`crate::gemm_conv_bn_act_train`].
    CpuGemm,
    /// Convolutions through cuDNN on NCHW tensors ([`crate::primitive_conv_nchw`]); the rest
    /// in candle's operations.
    Cudnn,
}

impl Backend {
    /// The backend `kernels` means on `device`.
    pub fn select(kernels: Kernels, device: &Device) -> Self {
        match kernels {
            Kernels::Candle => Self::Candle,
            Kernels::Fast if device.is_cpu() => Self::CpuGemm,
            Kernels::Fast if cfg!(feature = "cudnn") && device.is_cuda() => Self::Cudnn,
            Kernels::Fast => Self::Candle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_means_the_gemm_kernels_on_the_cpu_and_candle_is_always_candle() {
        assert_eq!(
            Backend::select(Kernels::Fast, &Device::Cpu),
            Backend::CpuGemm
        );
        assert_eq!(
            Backend::select(Kernels::Candle, &Device::Cpu),
            Backend::Candle
        );
        assert_eq!("fast".parse::<Kernels>(), Ok(Kernels::Fast));
        assert!("gpu".parse::<Kernels>().unwrap_err().contains("gpu"));
    }
}
