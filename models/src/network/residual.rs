//! Residual blocks and the 2x resampling they use.

use candle_core::Tensor;

use super::conv::ConvBlock;
use super::norm::{NormBlock, Pass};
use crate::error::Result;
use crate::spec::{Resample, ResidualBlock};

/// Nearest-neighbour x2 upsampling of the last two axes (`[A, B, H, W]` -> `[A, B, 2H, 2W]`):
/// Gantry's kernel on the CPU; elsewhere broadcasts and reshapes, so that autograd sums each
/// 2x2 cell's gradient back.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return Ok(gantry_kernels::upsample_nearest2x(x)?);
    }
    let (a, b, h, w) = x.dims4()?;
    Ok(x.reshape((a, b, h, 1, w, 1))?
        .broadcast_as((a, b, h, 2, w, 2))?
        .contiguous()?
        .reshape((a, b, 2 * h, 2 * w))?)
}

/// 2x2 average pooling of the last two axes (`[A, B, H, W]` -> `[A, B, H/2, W/2]`): Gantry's
/// kernel on the CPU, candle's `avg_pool2d` elsewhere.
pub fn avg_pool2x(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return Ok(gantry_kernels::avg_pool2x(x)?);
    }
    Ok(x.avg_pool2d(2)?)
}

/// A residual block's modules.
#[derive(Debug)]
pub struct ResidualModule {
    pub block: ResidualBlock,
    pub pre_norm: Option<NormBlock>,
    pub conv1: ConvBlock,
    pub conv2: ConvBlock,
    pub shortcut: Option<ConvBlock>,
}

impl ResidualModule {
    pub(super) fn forward(&self, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let b = &self.block;
        let mut h = match &self.pre_norm {
            Some(norm) => norm.forward(x, pass)?,
            None if b.pre_relu => x.relu()?,
            None => x.clone(),
        };
        if b.resample == Resample::Up {
            h = upsample_nearest2x(&h)?;
        }
        h = self.conv1.forward(&h, pass)?;
        h = self.conv2.forward(&h, pass)?;
        if b.resample == Resample::Down {
            h = avg_pool2x(&h)?;
        }
        // The shortcut's 1x1 convolution at the lower resolution (see `ResidualBlock`).
        let mut s = match b.resample {
            Resample::Down => avg_pool2x(x)?,
            Resample::Up | Resample::None => x.clone(),
        };
        if let Some(conv) = &self.shortcut {
            s = conv.forward(&s, pass)?;
        }
        if b.resample == Resample::Up {
            s = upsample_nearest2x(&s)?;
        }
        Ok((h + s)?)
    }

    pub(super) fn conv_blocks(&self) -> impl Iterator<Item = &ConvBlock> {
        [&self.conv1, &self.conv2].into_iter().chain(&self.shortcut)
    }
}
