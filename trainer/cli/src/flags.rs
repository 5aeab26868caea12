//! The one place where the library's settings meet this command line's flags.

use gantry_trainer::{Setting, TrainError};

/// The flag that sets `setting`.
pub fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::Dataset => "--dataset",
        Setting::DataDir => "--data-dir",
        Setting::Out => "--out",
        Setting::Resume => "--resume",
        Setting::Checkpoint => "--checkpoint",
        Setting::Images => "--images",
        Setting::ImageSize => "--image-size",
        Setting::Channels => "--channels",
        Setting::BatchSize => "--batch-size",
        Setting::Epochs => "--epochs",
        Setting::MaxSteps => "--max-steps",
        Setting::LearningRate => "--lr",
        Setting::DiscriminatorLearningRate => "--lr-d",
        Setting::Beta1 => "--beta1",
        Setting::DSteps => "--d-steps",
        Setting::Beta2 => "--beta2",
        Setting::LatentDim => "--latent-dim",
        Setting::GeneratorWidth => "--g-width",
        Setting::DiscriminatorWidth => "--d-width",
        Setting::Ema => "--ema",
        Setting::Conditional => "--conditional",
        Setting::Device => "--device",
        Setting::SampleCount => "--n",
        Setting::Steps => "--steps",
        Setting::Accumulate => "--accumulate",
        Setting::EvalSamples => "--eval-samples",
        Setting::R1 => "--r1",
        Setting::R1Every => "--r1-every",
        Setting::Reference => "--reference",
        _ => "an option",
    }
}

/// The one-line message of an error, naming flags where the library names settings.
pub fn render(e: &anyhow::Error) -> String {
    match e.downcast_ref::<TrainError>() {
        Some(TrainError::Invalid { setting, problem }) => format!("{} {problem}", flag(*setting)),
        Some(TrainError::RunExists { out, found }) => format!(
            "--out {0} already holds a run ({1}); continue it with `trainer train --resume {0}` or choose another --out",
            out.display(),
            found.join(", ")
        ),
        _ => chain(e),
    }
}

/// The error and its causes on one line, leaving out a cause whose text is already there (an
/// error that shows its cause in its own message).
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every setting the library can name in an error has a flag of its own on this command line.
    #[test]
    fn every_setting_has_a_flag_of_its_own() {
        let flags: std::collections::HashSet<&str> =
            Setting::ALL.iter().map(|s| flag(*s)).collect();
        assert_eq!(flags.len(), Setting::ALL.len(), "{flags:?}");
        assert!(flags.iter().all(|f| f.starts_with("--")), "{flags:?}");
    }
}
