//! GAN losses on raw discriminator logits.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Which adversarial loss to train with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Non-saturating binary cross-entropy (the DCGAN paper's loss).
    #[default]
    Bce,
    /// Hinge loss: D minimises relu(1 - D(x)) + relu(1 + D(G(z))), G minimises -D(G(z)).
    Hinge,
}

impl std::str::FromStr for LossKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bce" => Ok(Self::Bce),
            "hinge" => Ok(Self::Hinge),
            other => Err(format!("unknown loss `{other}` (expected bce or hinge)")),
        }
    }
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bce => "bce",
            Self::Hinge => "hinge",
        })
    }
}

/// Mean binary cross-entropy of `logits` against a constant target in {0, 1}, computed as
/// `max(x, 0) - x * y + log(1 + exp(-|x|))`, which stays finite for any finite logit
/// (candle-nn's `binary_cross_entropy_with_logit` overflows once logits saturate).
pub fn bce_with_logits(logits: &Tensor, target: f64) -> Result<Tensor> {
    let log_term = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let loss = ((logits.relu()? - (logits * target)?)? + log_term)?;
    Ok(loss.mean_all()?)
}

impl LossKind {
    /// The discriminator's loss on real and fake logits.
    pub fn discriminator(self, real: &Tensor, fake: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Bce => (bce_with_logits(real, 1.0)? + bce_with_logits(fake, 0.0)?)?,
            Self::Hinge => {
                let r = real.neg()?.affine(1.0, 1.0)?.relu()?.mean_all()?;
                let f = fake.affine(1.0, 1.0)?.relu()?.mean_all()?;
                (r + f)?
            }
        })
    }

    /// The generator's loss on the discriminator's logits for its fakes.
    pub fn generator(self, fake: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Bce => bce_with_logits(fake, 1.0)?,
            Self::Hinge => fake.mean_all()?.neg()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn reference_bce(x: f64, y: f64) -> f64 {
        let p = 1.0 / (1.0 + (-x).exp());
        -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
    }

    #[test]
    fn matches_the_textbook_formula_and_stays_finite() {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 4.0];
        let t = Tensor::new(&xs, &Device::Cpu).unwrap();
        for y in [0.0, 1.0] {
            let got = bce_with_logits(&t, y).unwrap().to_scalar::<f32>().unwrap() as f64;
            let want =
                xs.iter().map(|&x| reference_bce(x as f64, y)).sum::<f64>() / xs.len() as f64;
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        // Saturated logits: the naive formula gives inf/NaN, this one the exact large value.
        let sat = Var::new(&[1000.0f32, -1000.0], &Device::Cpu).unwrap();
        let loss = bce_with_logits(sat.as_tensor(), 1.0).unwrap();
        let v = loss.to_scalar::<f32>().unwrap();
        assert!((v - 500.0).abs() < 1e-3, "{v}");
        let g = loss.backward().unwrap();
        let grad = g.get(sat.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(grad.iter().all(|v| v.is_finite()), "{grad:?}");
        assert!(
            (grad[1] + 0.5).abs() < 1e-6,
            "d/dx of softplus(-x)/2 at -1000 is -1/2: {grad:?}"
        );
    }

    /// D's BCE loss is the sum of the real and fake terms (as PyTorch's DCGAN example sums
    /// errD_real and errD_fake), G's the non-saturating term, against the formula in f64.
    #[test]
    fn bce_losses_of_both_players() {
        let (r, f) = ([1.5f64, -0.5, 3.0], [0.25f64, -2.0, 1.0]);
        let real = Tensor::new(&r.map(|v| v as f32), &Device::Cpu).unwrap();
        let fake = Tensor::new(&f.map(|v| v as f32), &Device::Cpu).unwrap();
        let mean = |xs: &[f64], y: f64| xs.iter().map(|&x| reference_bce(x, y)).sum::<f64>() / 3.0;
        let d = LossKind::Bce
            .discriminator(&real, &fake)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (d as f64 - (mean(&r, 1.0) + mean(&f, 0.0))).abs() < 1e-6,
            "{d}"
        );
        let g = LossKind::Bce
            .generator(&fake)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((g as f64 - mean(&f, 1.0)).abs() < 1e-6, "{g}");
    }

    #[test]
    fn loss_names_parse_and_print_back() {
        for kind in [LossKind::Bce, LossKind::Hinge] {
            assert_eq!(kind.to_string().parse::<LossKind>(), Ok(kind));
        }
        assert_eq!("hinge".parse::<LossKind>(), Ok(LossKind::Hinge));
        assert!("wgan".parse::<LossKind>().unwrap_err().contains("wgan"));
    }

    #[test]
    fn hinge_losses() {
        let real = Tensor::new(&[2.0f32, 0.5], &Device::Cpu).unwrap();
        let fake = Tensor::new(&[-2.0f32, 0.0], &Device::Cpu).unwrap();
        let d = LossKind::Hinge
            .discriminator(&real, &fake)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // real: relu(1-2)=0, relu(1-0.5)=0.5 -> 0.25; fake: relu(1-2)=0, relu(1)=1 -> 0.5
        assert!((d - 0.75).abs() < 1e-6, "{d}");
        let g = LossKind::Hinge
            .generator(&fake)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((g - 1.0).abs() < 1e-6, "{g}");
    }
}
