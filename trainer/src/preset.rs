//! Named training recipes: the defaults of the options that decide sample quality, which
//! explicit settings override.
//!
//! `gantry` (the default) is the recipe chosen by the quality benchmark (docs/quality.md):
//! spectral normalisation of D, which lets both networks learn at twice the paper's rate
//! (Adam lr 4e-4), and an exponential moving average of G (decay 0.999). `dcgan` is the DCGAN
//! paper's recipe as the PyTorch example trains it: lr 2e-4, neither. `sngan` is the recipe of
//! Miyato et al. 2018 for their ResNets: hinge loss, spectral norm, five D updates per G
//! update, Adam lr 2e-4 with betas (0, 0.9), plus Gantry's EMA.

use std::fmt;
use std::str::FromStr;

use gantry_models::ModelConfig;

use crate::loss::LossKind;
use crate::TrainConfig;

/// A named training recipe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preset {
    /// Spectral norm in D, Adam lr 4e-4 and an EMA of G (decay 0.999): Gantry's measured default.
    #[default]
    Gantry,
    /// The DCGAN paper's recipe (Radford et al. 2015): Adam lr 2e-4, no spectral norm, no EMA.
    Dcgan,
    /// SNGAN's recipe (Miyato et al. 2018): hinge loss, spectral norm, 5 D steps per G step,
    /// Adam lr 2e-4 and betas (0, 0.9); with an EMA of G (decay 0.999).
    Sngan,
}

impl Preset {
    /// The EMA decay of G under this recipe (`None`: no average).
    pub fn ema(self) -> Option<f64> {
        match self {
            Self::Gantry | Self::Sngan => Some(0.999),
            Self::Dcgan => None,
        }
    }

    /// Adam's learning rate for G (and for D unless it has its own) under this recipe.
    pub fn lr(self) -> f64 {
        match self {
            Self::Gantry => 4e-4,
            Self::Dcgan | Self::Sngan => 2e-4,
        }
    }

    /// Adam's (beta1, beta2) under this recipe.
    pub fn betas(self) -> (f64, f64) {
        match self {
            Self::Gantry | Self::Dcgan => (0.5, 0.999),
            Self::Sngan => (0.0, 0.9),
        }
    }

    /// The adversarial loss under this recipe.
    pub fn loss(self) -> LossKind {
        match self {
            Self::Gantry | Self::Dcgan => LossKind::default(),
            Self::Sngan => LossKind::Hinge,
        }
    }

    /// Discriminator updates per generator update under this recipe.
    pub fn d_steps(self) -> usize {
        match self {
            Self::Gantry | Self::Dcgan => 1,
            Self::Sngan => 5,
        }
    }

    /// Whether D's convolutions are spectrally normalised under this recipe.
    pub fn spectral_norm(self) -> bool {
        match self {
            Self::Gantry | Self::Sngan => true,
            Self::Dcgan => false,
        }
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gantry" => Ok(Self::Gantry),
            "dcgan" => Ok(Self::Dcgan),
            "sngan" => Ok(Self::Sngan),
            other => Err(format!(
                "unknown preset `{other}` (expected gantry, dcgan or sngan)"
            )),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gantry => "gantry",
            Self::Dcgan => "dcgan",
            Self::Sngan => "sngan",
        })
    }
}

/// The options of a run that decide sample quality, in one line (printed when training starts).
pub fn describe_recipe(config: &TrainConfig, model: &ModelConfig) -> String {
    let ema = config.ema.map_or("off".to_string(), |d| d.to_string());
    let r1 = config.r1.map_or("off".to_string(), |gamma| {
        format!("{gamma} every {} steps", config.r1_every)
    });
    format!(
        "loss {}, spectral norm {}, EMA {ema}, DiffAugment {}, R1 {r1}, D steps {}, Adam lr G {} D {} betas ({}, {})",
        config.loss,
        match (model.spectral_norm, model.g_spectral_norm) {
            (true, false) => "on",
            (true, true) => "on (G too)",
            (false, true) => "G only",
            (false, false) => "off",
        },
        config.augment,
        config.d_steps,
        config.adam.lr,
        config.adam_d().lr,
        config.adam.beta1,
        config.adam.beta2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_recipes_differ_where_documented() {
        for preset in [Preset::Gantry, Preset::Dcgan, Preset::Sngan] {
            assert_eq!(preset.to_string().parse::<Preset>(), Ok(preset));
        }
        assert_eq!(Preset::default(), Preset::Gantry);
        assert_eq!(Preset::Gantry.ema(), Some(0.999));
        assert!(Preset::Gantry.spectral_norm());
        assert_eq!(Preset::Gantry.lr(), 4e-4);
        assert_eq!(Preset::Dcgan.lr(), crate::TrainConfig::default().adam.lr);
        assert_eq!(Preset::Dcgan.ema(), None);
        assert!(!Preset::Dcgan.spectral_norm());
        assert_eq!(Preset::Dcgan.betas(), (0.5, 0.999));
        assert_eq!(
            (
                Preset::Sngan.loss(),
                Preset::Sngan.d_steps(),
                Preset::Sngan.betas()
            ),
            (LossKind::Hinge, 5, (0.0, 0.9))
        );
        assert!(Preset::Sngan.spectral_norm());
        let err = "wgan".parse::<Preset>().unwrap_err();
        assert!(err.contains("wgan"), "{err}");
    }

    /// The recipe line names every option that decides quality, with its value.
    #[test]
    fn the_recipe_line_names_each_option() {
        let config = TrainConfig {
            ema: Some(0.999),
            r1: Some(10.0),
            r1_every: 16,
            d_steps: 5,
            lr_d: Some(4e-4),
            augment: "translation".parse().unwrap(),
            ..TrainConfig::default()
        };
        let model = ModelConfig {
            spectral_norm: true,
            g_spectral_norm: true,
            ..ModelConfig::default()
        };
        assert_eq!(
            describe_recipe(&config, &model),
            "loss bce, spectral norm on (G too), EMA 0.999, DiffAugment translation, R1 10 every 16 steps, D steps 5, Adam lr G 0.0002 D 0.0004 betas (0.5, 0.999)"
        );
        let plain = describe_recipe(&TrainConfig::default(), &ModelConfig::default());
        assert!(
            plain.contains("spectral norm off, EMA off, DiffAugment off, R1 off"),
            "{plain}"
        );
    }
}
