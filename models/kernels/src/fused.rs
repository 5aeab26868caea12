//! A convolution with what follows it in a block — training-mode BatchNorm and its activation,
//! or the activation alone — as one autograd node; and a lone training-mode BatchNorm with its
//! activation (a residual block's pre-activation) as one node.
//!
//! candle's backward pass zero-fills and then adds every gradient it stores (`zeros_like` +
//! `add` per node). With BatchNorm or the activation as nodes of their own, each layer's
//! convolution output — with the block's output, the largest tensors of a step — went through
//! that on every backward pass; here the gradient between them stays inside the node.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use crate::batch_norm::{activate, bn_act_backward, bn_act_forward, Act, ActGrad, BatchStats};
use crate::gemm_conv::{self, ConvParams};
use crate::storage::f32_slice;

/// What the forward pass keeps for the backward pass: the convolution output (BatchNorm's
/// input) and the batch statistics.
#[derive(Default)]
struct Saved {
    conv_out: Vec<f32>,
    stats: BatchStats,
}

/// `(x, w, [gamma; beta]) -> act(batchnorm(conv(x, w)))`.
struct ConvBnAct {
    conv: ConvParams,
    eps: f64,
    act: Act,
    saved: Arc<Mutex<Saved>>,
}

/// `(y, dy) -> [d conv_out, dgamma, dbeta]`, reading the convolution output saved by the
/// forward pass.
struct BnGrad {
    act: Act,
    gamma: Vec<f32>,
    saved: Arc<Mutex<Saved>>,
}

impl CustomOp3 for ConvBnAct {
    fn name(&self) -> &'static str {
        "gantry-conv-batchnorm-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let affine = f32_slice(s3, l3, "gamma and beta")?;
        let (conv_out, d) = self.conv.forward_storage(s1, l1, s2, l2)?;
        let c = d.c_out;
        if affine.len() != 2 * c {
            candle_core::bail!(
                "gantry conv+batchnorm: {c} channels but {} affine values",
                affine.len()
            );
        }
        let (y, stats) =
            bn_act_forward(&conv_out, c, &affine[..c], &affine[c..], self.eps, self.act);
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Saved { conv_out, stats };
        Ok((CpuStorage::F32(y), d.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        affine: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (d_conv_out, d_affine) = bn_act_grads(self.act, &self.saved, affine, y, dy)?;
        let (dx, dw) = gemm_conv::grads(self.conv, x, w, &d_conv_out)?;
        Ok((dx, dw, d_affine))
    }
}

/// The backward pass through a training-mode BatchNorm and its activation, from the output
/// `y`, its gradient `dy` and what the forward pass `saved`: the gradient of BatchNorm's input
/// and, when autograd tracks them, of `[gamma; beta]`.
fn bn_act_grads(
    act: Act,
    saved: &Arc<Mutex<Saved>>,
    affine: &Tensor,
    y: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let c = y.dim(0)?;
    let op = BnGrad {
        act,
        gamma: affine.narrow(0, 0, c)?.to_vec1()?,
        saved: saved.clone(),
    };
    let packed = y.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)?;
    let total = y.elem_count();
    let d_input = packed.narrow(0, 0, total)?.reshape(y.shape())?;
    let d_affine = if affine.track_op() {
        Some(packed.narrow(0, total, 2 * c)?)
    } else {
        None
    };
    Ok((d_input, d_affine))
}

impl CustomOp2 for BnGrad {
    fn name(&self) -> &'static str {
        "gantry-batchnorm-act-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, "output")?;
        let dy = f32_slice(s2, l2, "gradient")?;
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        if saved.conv_out.len() != y.len() || saved.stats.inv_std.len() != self.gamma.len() {
            candle_core::bail!("gantry conv+batchnorm: backward without its forward pass");
        }
        let packed = bn_act_backward(&saved.conv_out, y, dy, &self.gamma, &saved.stats, self.act);
        let len = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(len)))
    }
}

/// `act(batchnorm(conv(x, w)))` in training mode on a channel-major `x`, as one autograd node;
/// also returns the batch (mean, biased variance) per channel for the running statistics.
pub fn gemm_conv_bn_act_train(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    conv: ConvParams,
    eps: f64,
    act: Act,
) -> candle_core::Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let saved = Arc::new(Mutex::new(Saved::default()));
    let op = ConvBnAct {
        conv,
        eps,
        act,
        saved: saved.clone(),
    };
    let affine = Tensor::cat(&[gamma, beta], 0)?;
    let y = x
        .contiguous()?
        .apply_op3(&w.contiguous()?, &affine.contiguous()?, op)?;
    let s = saved.lock().unwrap_or_else(|e| e.into_inner());
    Ok((y, s.stats.mean.clone(), s.stats.var.clone()))
}

/// `(x, [gamma; beta]) -> act(batchnorm(x))`: a BatchNorm that no convolution precedes.
struct BnAct {
    eps: f64,
    act: Act,
    saved: Arc<Mutex<Saved>>,
}

impl CustomOp2 for BnAct {
    fn name(&self) -> &'static str {
        "gantry-batchnorm-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "input")?;
        let affine = f32_slice(s2, l2, "gamma and beta")?;
        let c = l1.dims()[0];
        if affine.len() != 2 * c {
            candle_core::bail!(
                "gantry batchnorm: {c} channels but {} affine values",
                affine.len()
            );
        }
        let (y, stats) = bn_act_forward(x, c, &affine[..c], &affine[c..], self.eps, self.act);
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Saved {
            conv_out: x.to_vec(),
            stats,
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        affine: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, d_affine) = bn_act_grads(self.act, &self.saved, affine, y, dy)?;
        Ok((Some(dx), d_affine))
    }
}

/// `act(batchnorm(x))` in training mode on a channel-major `x` (`[C, ...]`), as one autograd
/// node; also returns the batch (mean, biased variance) per channel for the running statistics.
pub fn bn_act_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Act,
) -> candle_core::Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let saved = Arc::new(Mutex::new(Saved::default()));
    let op = BnAct {
        eps,
        act,
        saved: saved.clone(),
    };
    let affine = Tensor::cat(&[gamma, beta], 0)?;
    let y = x.contiguous()?.apply_op2(&affine.contiguous()?, op)?;
    let s = saved.lock().unwrap_or_else(|e| e.into_inner());
    Ok((y, s.stats.mean.clone(), s.stats.var.clone()))
}

/// `(x, w) -> act(conv(x, w))`, for blocks without BatchNorm.
struct ConvAct {
    conv: ConvParams,
    act: Act,
}

impl CustomOp2 for ConvAct {
    fn name(&self) -> &'static str {
        "gantry-conv-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (mut y, d) = self.conv.forward_storage(s1, l1, s2, l2)?;
        let neg = self.act.negative_slope();
        y.par_iter_mut()
            .with_min_len(4096)
            .for_each(|v| *v = activate(*v, neg));
        Ok((CpuStorage::F32(y), d.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d_conv_out = dy
            .contiguous()?
            .apply_op2_no_bwd(&y.contiguous()?, &ActGrad(self.act))?;
        gemm_conv::grads(self.conv, x, w, &d_conv_out)
    }
}

/// `act(conv(x, w))` on a channel-major `x`, as one autograd node.
pub fn gemm_conv_act(
    x: &Tensor,
    w: &Tensor,
    conv: ConvParams,
    act: Act,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, ConvAct { conv, act })
}

#[cfg(test)]
mod tests {
    use candle_core::{Tensor, Var};

    use super::*;
    use crate::tests::{candle_conv, cases, max_abs_diff, randn};

    const EPS: f64 = 1e-5;
    const ACTS: [Act; 3] = [Act::Identity, Act::Relu, Act::LeakyRelu(0.2)];

    /// The activation in candle's own operations.
    fn candle_act(z: &Tensor, act: Act) -> Tensor {
        match act {
            Act::Identity => z.clone(),
            Act::Relu => z.relu().unwrap(),
            Act::LeakyRelu(s) => z.maximum(&(z * s as f64).unwrap()).unwrap(),
        }
    }

    /// Training-mode BatchNorm of a channel-major `x` in candle's operations (biased variance),
    /// then the activation; also the batch mean and variance.
    fn candle_bn_act(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        act: Act,
    ) -> (Tensor, Tensor, Tensor) {
        let c = x.dims()[0];
        let flat = x.reshape((c, ())).unwrap();
        let mean = flat.mean_keepdim(1).unwrap();
        let centred = flat.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(1).unwrap();
        let x_hat = centred
            .broadcast_div(&(&var + EPS).unwrap().sqrt().unwrap())
            .unwrap();
        let z = x_hat
            .broadcast_mul(&gamma.reshape((c, 1)).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape((c, 1)).unwrap())
            .unwrap()
            .reshape(x.dims())
            .unwrap();
        (
            candle_act(&z, act),
            mean.flatten_all().unwrap(),
            var.flatten_all().unwrap(),
        )
    }

    /// The largest difference between two gradients, one of them possibly missing.
    fn grad_diff(a: Option<&Tensor>, b: Option<&Tensor>) -> f32 {
        max_abs_diff(a.expect("a gradient"), b.expect("a gradient"))
    }

    /// The gradient op refuses to run on what another forward pass saved (or on nothing):
    /// neither a saved input of another size nor statistics of another channel count reach
    /// the backward arithmetic, which indexes by both.
    #[test]
    fn the_gradient_op_needs_its_own_forward_pass() {
        let (c, m) = (3, 8);
        let y = Tensor::ones((c, m), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let stats = |channels: usize| BatchStats {
            mean: vec![0.0; channels],
            var: vec![1.0; channels],
            inv_std: vec![1.0; channels],
        };
        let grad_op = |conv_out: Vec<f32>, stats: BatchStats| BnGrad {
            act: Act::Relu,
            gamma: vec![1.0; c],
            saved: Arc::new(Mutex::new(Saved { conv_out, stats })),
        };
        // the forward pass that matches: the op runs
        assert!(y
            .apply_op2_no_bwd(&y, &grad_op(vec![1.0; c * m], stats(c)))
            .is_ok());
        for (what, op) in [
            (
                "no forward pass",
                grad_op(Vec::new(), BatchStats::default()),
            ),
            ("another batch", grad_op(vec![1.0; c * (m + 1)], stats(c))),
            (
                "another channel count",
                grad_op(vec![1.0; c * m], stats(c - 1)),
            ),
        ] {
            let err = y.apply_op2_no_bwd(&y, &op).expect_err(what).to_string();
            assert!(err.contains("without its forward pass"), "{what}: {err}");
        }
    }

    /// Each fused node against the same computation in candle's operations: outputs, the batch
    /// statistics it returns, and the gradients of a random linear functional of the output
    /// with respect to every input. Tolerance 1e-4 absolute on O(1) values, as for the
    /// convolution alone (reordered f32 sums; BatchNorm's division by a standard deviation of
    /// order 1 keeps the scale).
    #[test]
    fn the_fused_nodes_equal_candles_operations_forward_and_backward() {
        for (xs, ws, p) in cases() {
            let c_out = match p.kind {
                crate::ConvKind::Conv => ws[0],
                crate::ConvKind::ConvTranspose => ws[1],
            };
            for act in ACTS {
                let x = Var::from_tensor(&randn(&xs, "bx")).unwrap();
                let w = Var::from_tensor(&randn(&ws, "bw")).unwrap();
                let gamma =
                    Var::from_tensor(&randn(&[c_out], "bg").affine(0.5, 1.0).unwrap()).unwrap();
                let beta = Var::from_tensor(&(randn(&[c_out], "bb") * 0.3).unwrap()).unwrap();
                let (g, b) = (gamma.as_tensor(), beta.as_tensor());

                let conv = candle_conv(x.as_tensor(), w.as_tensor(), p);
                let (want_bn, mean, var) = candle_bn_act(&conv, g, b, act);
                let (got_bn, got_mean, got_var) =
                    gemm_conv_bn_act_train(x.as_tensor(), w.as_tensor(), g, b, p, EPS, act)
                        .unwrap();
                let what = format!("{p:?} {act:?}");
                assert!(max_abs_diff(&got_bn, &want_bn) < 1e-4, "conv+bn+act {what}");
                let stats = |v: Vec<f32>| Tensor::new(v, mean.device()).unwrap();
                assert!(max_abs_diff(&stats(got_mean), &mean) < 1e-5, "mean {what}");
                assert!(
                    max_abs_diff(&stats(got_var), &var) < 1e-4,
                    "variance {what}"
                );

                // BatchNorm alone (no convolution) on the convolution's output, as a new leaf.
                let h = Var::from_tensor(&conv.detach()).unwrap();
                let (want_alone, _, _) = candle_bn_act(h.as_tensor(), g, b, act);
                let (got_alone, _, _) = bn_act_train(h.as_tensor(), g, b, EPS, act).unwrap();
                assert!(
                    max_abs_diff(&got_alone, &want_alone) < 1e-4,
                    "bn+act {what}"
                );

                let want_conv_act = candle_act(&conv, act);
                let got_conv_act = gemm_conv_act(x.as_tensor(), w.as_tensor(), p, act).unwrap();
                assert!(
                    max_abs_diff(&got_conv_act, &want_conv_act) < 1e-4,
                    "conv+act {what}"
                );

                let probe = randn(got_bn.dims(), "bprobe");
                // The gradients of `sum(y * probe)` for both outputs agree at every variable.
                let same_grads = |node: &str, ours: &Tensor, theirs: &Tensor, vars: &[&Var]| {
                    let grads =
                        |y: &Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    let (ours, theirs) = (grads(ours), grads(theirs));
                    for v in vars {
                        let t = v.as_tensor();
                        assert!(
                            grad_diff(ours.get(t), theirs.get(t)) < 1e-4,
                            "{node} d{:?} {what}",
                            t.dims()
                        );
                    }
                };
                same_grads("conv+bn+act", &got_bn, &want_bn, &[&x, &w, &gamma, &beta]);
                same_grads("bn+act", &got_alone, &want_alone, &[&h, &gamma, &beta]);
                same_grads("conv+act", &got_conv_act, &want_conv_act, &[&x, &w]);
            }
        }
    }
}
