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
    if param.device().is_cpu() {
        let bias1 = 1.0 - s.beta1.powi(s.step as i32);
        let bias2_sqrt = (1.0 - s.beta2.powi(s.step as i32)).sqrt();
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
    update_with_candle_ops(param, exp_avg, exp_avg_sq, grad, s)
}

/// The same step as candle operations (any device; used off the CPU).
fn update_with_candle_ops(
    param: &Var,
    exp_avg: &Var,
    exp_avg_sq: &Var,
    grad: &Tensor,
    s: &AdamStep,
) -> candle_core::Result<()> {
    let bias1 = 1.0 - s.beta1.powi(s.step as i32);
    let bias2_sqrt = (1.0 - s.beta2.powi(s.step as i32)).sqrt();
    let next_m = ((exp_avg.as_tensor() * s.beta1)? + (grad * (1.0 - s.beta1))?)?;
    let next_v = ((exp_avg_sq.as_tensor() * s.beta2)? + (grad.sqr()? * (1.0 - s.beta2))?)?;
    let denom = ((next_v.sqrt()? / bias2_sqrt)? + s.eps)?;
    let update = (next_m.div(&denom)? * (s.lr / bias1))?;
    param.set(&(param.as_tensor() - update)?)?;
    exp_avg.set(&next_m)?;
    exp_avg_sq.set(&next_v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three steps of both implementations against Adam written out in f64 (PyTorch's update:
    /// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
    /// `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`), with gradients of mixed
    /// signs and sizes; the fused CPU op (in chunks of 16384) on a tensor longer than a chunk.
    #[test]
    fn both_paths_follow_the_formula() {
        let n = 20_000;
        // Every tenth gradient is tiny (1e-9), where eps = 1e-8 dominates the denominator.
        let grad_at = |t: u64, i: usize| {
            let g = (i as f64 * 0.37 + t as f64).sin() * (1.0 + i as f64 % 7.0);
            (if i % 10 == 0 { g * 1e-9 } else { g }) as f32
        };
        for fused in [true, false] {
            let start: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).cos()).collect();
            let p = Var::from_vec(start.clone(), n, &Device::Cpu).unwrap();
            let m = Var::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap();
            let v = Var::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap();
            let (mut rp, mut rm, mut rv): (Vec<f64>, Vec<f64>, Vec<f64>) = (
                start.iter().map(|&x| x as f64).collect(),
                vec![0.0; n],
                vec![0.0; n],
            );
            for t in 1..=3u64 {
                let s = AdamStep {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.99,
                    eps: 1e-8,
                    step: t,
                };
                let g: Vec<f32> = (0..n).map(|i| grad_at(t, i)).collect();
                let gt = Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap();
                if fused {
                    adam_update(&p, &m, &v, &gt, &s).unwrap();
                } else {
                    update_with_candle_ops(&p, &m, &v, &gt, &s).unwrap();
                }
                for i in 0..n {
                    let g = g[i] as f64;
                    rm[i] = 0.9 * rm[i] + 0.1 * g;
                    rv[i] = 0.99 * rv[i] + 0.01 * g * g;
                    let step = 0.01 / (1.0 - 0.9f64.powi(t as i32));
                    let denom = rv[i].sqrt() / (1.0 - 0.99f64.powi(t as i32)).sqrt() + 1e-8;
                    rp[i] -= step * rm[i] / denom;
                }
            }
            for (what, got, want) in [("param", &p, &rp), ("m", &m, &rm), ("v", &v, &rv)] {
                let got = got.as_tensor().to_vec1::<f32>().unwrap();
                let worst = got
                    .iter()
                    .zip(want.iter())
                    .map(|(a, b)| (*a as f64 - b).abs())
                    .fold(0.0, f64::max);
                assert_eq!(got.len(), want.len());
                // f32 against f64: a few ulps of values up to ~8 (v) or 1 (params).
                assert!(worst < 1e-5, "fused {fused}: {what} off by {worst}");
            }
        }
    }
}
