//! The Adam update (PyTorch's `torch.optim.Adam` without weight decay) applied in place: one
//! fused pass per tensor on the CPU, candle's operations elsewhere.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::storage::{f32_slice, f32_slice_mut};

/// The coefficients of one Adam step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// The step's number, counting from 1 (for the bias corrections).
    pub step: u64,
}

/// `m = beta * m + (1 - beta) * g` (or `g^2` for the second moment), in place.
struct Moment {
    beta: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "gantry-adam-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let m = f32_slice_mut(s1, l1, "moment")?;
        let g = f32_slice(s2, l2, "gradient")?;
        let (b, c) = (self.beta, 1.0 - self.beta);
        let square = self.square;
        m.par_chunks_mut(1 << 14)
            .zip(g.par_chunks(1 << 14))
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    *m = b * *m + c * if square { g * g } else { g };
                }
            });
        Ok(())
    }
}

/// `p -= step_size * m / (sqrt(v) / bias2_sqrt + eps)`, in place.
struct Update {
    step_size: f32,
    bias2_sqrt: f32,
    eps: f32,
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "gantry-adam-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let p = f32_slice_mut(s1, l1, "parameter")?;
        let (m, v) = (f32_slice(s2, l2, "moment")?, f32_slice(s3, l3, "moment")?);
        let chunk = 1 << 14;
        p.par_chunks_mut(chunk)
            .zip(m.par_chunks(chunk).zip(v.par_chunks(chunk)))
            .for_each(|(p, (m, v))| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    *p -= self.step_size * m / (v.sqrt() / self.bias2_sqrt + self.eps);
                }
            });
        Ok(())
    }
}

/// Applies one Adam step to `param` with gradient `grad`, updating the moments `exp_avg` and
/// `exp_avg_sq` in place.
pub fn adam_update(
    param: &Var,
    exp_avg: &Var,
    exp_avg_sq: &Var,
    grad: &Tensor,
    s: &AdamStep,
) -> candle_core::Result<()> {
    let bias1 = 1.0 - s.beta1.powi(s.step as i32);
    let bias2_sqrt = (1.0 - s.beta2.powi(s.step as i32)).sqrt();
    if param.device().is_cpu() {
        let g = grad.contiguous()?;
        exp_avg.inplace_op2(
            &g,
            &Moment {
                beta: s.beta1 as f32,
                square: false,
            },
        )?;
        exp_avg_sq.inplace_op2(
            &g,
            &Moment {
                beta: s.beta2 as f32,
                square: true,
            },
        )?;
        return param.inplace_op3(
            exp_avg.as_tensor(),
            exp_avg_sq.as_tensor(),
            &Update {
                step_size: (s.lr / bias1) as f32,
                bias2_sqrt: bias2_sqrt as f32,
                eps: s.eps as f32,
            },
        );
    }
    let next_m = ((exp_avg.as_tensor() * s.beta1)? + (grad * (1.0 - s.beta1))?)?;
    let next_v = ((exp_avg_sq.as_tensor() * s.beta2)? + (grad.sqr()? * (1.0 - s.beta2))?)?;
    let denom = ((next_v.sqrt()? / bias2_sqrt)? + s.eps)?;
    let update = (next_m.div(&denom)? * (s.lr / bias1))?;
    param.set(&(param.as_tensor() - update)?)?;
    exp_avg.set(&next_m)?;
    exp_avg_sq.set(&next_v)
}
