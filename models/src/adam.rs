//! Adam (Kingma & Ba) with its state exposed, so checkpoints can save and restore it exactly.
//!
//! candle-nn's `AdamW` keeps its moments private, which makes an exact resume impossible; this is
//! the same update as PyTorch's `torch.optim.Adam` (no weight decay), with the state as named tensors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use gantry_kernels::{adam_update, AdamStep};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::tensors::TensorMap;

/// Adam hyper-parameters (DCGAN's: lr 2e-4, betas (0.5, 0.999)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// The Adam optimiser over named variables.
#[derive(Debug)]
pub struct Adam {
    pub config: AdamConfig,
    params: Vec<(String, Var)>,
    exp_avg: Vec<Var>,
    exp_avg_sq: Vec<Var>,
    step: u64,
}

impl Adam {
    /// An optimiser with zero moments for `params`.
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        let zeros = |v: &Var| Var::zeros(v.shape(), v.dtype(), v.device());
        let exp_avg = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<Result<_, _>>()?;
        let exp_avg_sq = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            config,
            params,
            exp_avg,
            exp_avg_sq,
            step: 0,
        })
    }

    /// Number of updates applied so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let grads = self.gradients(grads);
        self.step_with(&grads)
    }

    /// The gradients of this optimiser's parameters in `grads`, in parameter order (`None`
    /// where a parameter got none).
    pub fn gradients(&self, grads: &GradStore) -> Vec<Option<Tensor>> {
        self.params
            .iter()
            .map(|(_, p)| grads.get(p.as_tensor()).cloned())
            .collect()
    }

    /// The parameters, in the order [`Adam::gradients`] and [`Adam::step_with`] use.
    pub fn params(&self) -> impl Iterator<Item = &Var> {
        self.params.iter().map(|(_, v)| v)
    }

    /// The first and second moments of every parameter (the optimiser's state besides its
    /// step count).
    pub fn moments(&self) -> impl Iterator<Item = &Var> {
        self.exp_avg.iter().chain(&self.exp_avg_sq)
    }

    /// One update from gradients given in parameter order (see [`Adam::gradients`]);
    /// parameters without a gradient are left as they are.
    pub fn step_with(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(ModelError::Input(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        self.step += 1;
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
        } = self.config;
        let coefficients = AdamStep {
            lr,
            beta1,
            beta2,
            eps,
            step: self.step,
        };
        let state = self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq);
        for ((((_, p), m), v), g) in state.zip(grads) {
            if let Some(g) = g {
                adam_update(p, m, v, g, &coefficients)?;
            }
        }
        Ok(())
    }

    /// The moments as named CPU tensors (`{param}.exp_avg`, `{param}.exp_avg_sq`) and the
    /// step count and hyper-parameters as metadata, ready for a safetensors file.
    pub fn state(&self) -> Result<(TensorMap, HashMap<String, String>)> {
        let mut map = TensorMap::new();
        for (((name, _), m), v) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            let cpu = |t: &Var| t.as_tensor().to_device(&candle_core::Device::Cpu)?.copy();
            map.insert(format!("{name}.exp_avg"), cpu(m)?);
            map.insert(format!("{name}.exp_avg_sq"), cpu(v)?);
        }
        let meta = HashMap::from([
            ("step".to_string(), self.step.to_string()),
            (
                "config".to_string(),
                serde_json::to_string(&self.config).expect("config serialises"),
            ),
        ]);
        Ok((map, meta))
    }

    /// Restores moments and step count saved by [`Adam::state`]; `file` names the source in errors.
    pub fn load_state(
        &mut self,
        tensors: &TensorMap,
        metadata: &HashMap<String, String>,
        file: &Path,
    ) -> Result<()> {
        let step = metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ModelError::checkpoint(file, "optimizer state has no step count"))?;
        for (((name, p), m), v) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            for (suffix, var) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let key = format!("{name}.{suffix}");
                let t = tensors.get(&key).ok_or_else(|| {
                    ModelError::checkpoint(file, format!("missing optimizer tensor `{key}`"))
                })?;
                if t.dims() != p.dims() {
                    return Err(ModelError::checkpoint(
                        file,
                        format!(
                            "optimizer tensor `{key}` has shape {:?}, expected {:?}",
                            t.dims(),
                            p.dims()
                        ),
                    ));
                }
                var.set(&t.to_device(p.device())?)?;
            }
        }
        if tensors.len() != 2 * self.params.len() {
            return Err(ModelError::checkpoint(
                file,
                format!(
                    "optimizer state has {} tensors, expected {}",
                    tensors.len(),
                    2 * self.params.len()
                ),
            ));
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Adam on f(x) = sum(x^2) against the update computed by hand (PyTorch's formula).
    #[test]
    fn matches_the_reference_update() {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1.0f32, -2.0, 0.5], 3, &dev).unwrap();
        let cfg = AdamConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
        };
        let mut opt = Adam::new(vec![("x".into(), x.clone())], cfg).unwrap();
        let mut expect = [1.0f64, -2.0, 0.5];
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for t in 1..=3 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            for i in 0..3 {
                let g = 2.0 * expect[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.99 * v[i] + 0.01 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.99f64.powi(t));
                expect[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = x.as_tensor().to_vec1::<f32>().unwrap();
        for (g, e) in got.iter().zip(expect) {
            assert!((*g as f64 - e).abs() < 1e-6, "{got:?} vs {expect:?}");
        }
        assert_eq!(opt.steps(), 3);
    }

    #[test]
    fn state_round_trips() {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1.0f32, -2.0], 2, &dev).unwrap();
        let mut a = Adam::new(vec![("x".into(), x.clone())], AdamConfig::default()).unwrap();
        let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
        a.step(&loss.backward().unwrap()).unwrap();
        let (tensors, meta) = a.state().unwrap();
        let y = Var::from_vec(vec![0.0f32, 0.0], 2, &dev).unwrap();
        let mut b = Adam::new(vec![("x".into(), y)], AdamConfig::default()).unwrap();
        b.load_state(&tensors, &meta, Path::new("opt")).unwrap();
        assert_eq!(b.steps(), 1);
        let (t2, _) = b.state().unwrap();
        for (k, v) in &tensors {
            assert_eq!(v.to_vec1::<f32>().unwrap(), t2[k].to_vec1::<f32>().unwrap());
        }
        let mut bad = tensors.clone();
        bad.remove("x.exp_avg");
        let err = b
            .load_state(&bad, &meta, Path::new("opt.safetensors"))
            .unwrap_err();
        assert!(err.to_string().contains("opt.safetensors"), "{err}");
    }

    /// `params` and `moments` list every variable in parameter order (what data-parallel
    /// training averages and a checkpoint's replica check compares), and a state with a tensor
    /// too many is refused.
    #[test]
    fn params_and_moments_are_listed_in_order() {
        let dev = Device::Cpu;
        let values: [&[f32]; 3] = [&[1.0, -2.0], &[0.5, 3.0, -1.5], &[4.0]];
        let vars: Vec<(String, Var)> = ["a", "b", "c"]
            .iter()
            .zip(values)
            .map(|(name, v)| (name.to_string(), Var::from_slice(v, v.len(), &dev).unwrap()))
            .collect();
        let mut opt = Adam::new(vars.clone(), AdamConfig::default()).unwrap();
        let loss = vars
            .iter()
            .map(|(_, v)| v.as_tensor().sqr().unwrap().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let listed: Vec<Vec<f32>> = opt.params().map(|v| v.to_vec1().unwrap()).collect();
        let expected: Vec<Vec<f32>> = vars.iter().map(|(_, v)| v.to_vec1().unwrap()).collect();
        assert_eq!(listed, expected);
        let (state, meta) = opt.state().unwrap();
        let moments: Vec<Vec<f32>> = opt.moments().map(|v| v.to_vec1().unwrap()).collect();
        let in_order: Vec<Vec<f32>> = ["exp_avg", "exp_avg_sq"]
            .iter()
            .flat_map(|m| ["a", "b", "c"].map(|p| state[&format!("{p}.{m}")].to_vec1().unwrap()))
            .collect();
        assert_eq!(moments, in_order);
        assert!(
            moments.iter().flatten().all(|&m| m != 0.0),
            "moments after a step"
        );

        let mut extra = state.clone();
        extra.insert("d.exp_avg".into(), state["c.exp_avg"].clone());
        let err = opt
            .load_state(&extra, &meta, Path::new("opt.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("has 7 tensors, expected 6"), "{err}");
        opt.load_state(&state, &meta, Path::new("opt.safetensors"))
            .unwrap();
    }
}
