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
    upsample_nearest2x_candle(x)
}

/// [`upsample_nearest2x`] in candle's ops (what runs off the CPU; tested on the CPU).
fn upsample_nearest2x_candle(x: &Tensor) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle_ops;
    use crate::network::StageModule;
    use crate::test_util::max_diff;
    use crate::{Discriminator, ModelConfig};
    use candle_core::Device;
    use gantry_kernels::Backend;

    /// The broadcast form (off the CPU) equals the CPU kernel, values and gradients.
    #[test]
    fn both_upsampling_forms_agree() {
        let x = candle_core::Var::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu).unwrap();
        let (a, b) = (
            upsample_nearest2x(&x).unwrap(),
            upsample_nearest2x_candle(&x).unwrap(),
        );
        assert_eq!(b.dims(), [2, 3, 8, 10]);
        assert_eq!(max_diff(&a, &b), 0.0);
        let weights = Tensor::randn(0f32, 1.0, (2, 3, 8, 10), &Device::Cpu).unwrap();
        let grad = |y: &Tensor| {
            let g = (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        assert!(max_diff(&grad(&a), &grad(&b)) < 1e-6);
    }

    /// A discriminator block against its definition in candle's ops: [ReLU,] conv3x3, ReLU,
    /// conv3x3, average pool, plus the shortcut (pool, then 1x1 conv); the first block has no
    /// leading ReLU.
    #[test]
    fn discriminator_blocks_follow_their_definition() {
        let cfg = ModelConfig {
            arch: crate::Arch::Resnet,
            image_size: 32,
            channels: 3,
            d_width: 4,
            ..Default::default()
        };
        let d = Discriminator::new(&cfg, 3, &Device::Cpu).unwrap();
        let blocks: Vec<&ResidualModule> = d
            .net
            .stages
            .iter()
            .filter_map(|s| match s {
                StageModule::Residual(b) => Some(&**b),
                _ => None,
            })
            .collect();
        let pass = Pass {
            labels: None,
            train: false,
            frozen: true,
            backend: Backend::Candle,
        };
        let mut x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        for (i, block) in blocks.iter().take(2).enumerate() {
            assert_eq!(block.block.pre_relu, i > 0);
            let conv = |c: &ConvBlock, x: &Tensor| {
                let y = candle_ops::conv(x, &c.conv_weight(true).unwrap(), &c.layer).unwrap();
                let bias = c
                    .bias
                    .as_ref()
                    .unwrap()
                    .as_tensor()
                    .reshape((1, (), 1, 1))
                    .unwrap();
                y.broadcast_add(&bias).unwrap()
            };
            let h = if i > 0 { x.relu().unwrap() } else { x.clone() };
            let h = conv(&block.conv1, &h).relu().unwrap();
            let h = conv(&block.conv2, &h).avg_pool2d(2).unwrap();
            let s = conv(block.shortcut.as_ref().unwrap(), &x.avg_pool2d(2).unwrap());
            let expected = (h + s).unwrap();
            let got = block.forward(&x, &pass).unwrap();
            assert!(max_diff(&got, &expected) < 1e-5, "block {i}");
            x = got;
        }
    }
}
