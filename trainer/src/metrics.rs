//! `metrics.jsonl`: one JSON line per training step.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::eval::EvalMetric;

/// What one step measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// The step number after this update (1 for the first).
    pub step: u64,
    pub epoch: u64,
    pub loss_d: f32,
    pub loss_g: f32,
    /// Mean D(x): the discriminator's probability that real images are real.
    pub d_real: f32,
    /// Mean D(G(z)) before the discriminator update.
    pub d_fake: f32,
    /// Images per second of this step (batch size / step time).
    pub img_per_sec: f32,
    /// Training seconds since the start of the run (across resumes; evaluations not counted).
    pub seconds: f64,
    /// The discriminator's Adam learning rate at this step.
    #[serde(default)]
    pub lr_d: f64,
    /// The generator's Adam learning rate at this step.
    #[serde(default)]
    pub lr_g: f64,
    /// Milliseconds of the step spent in collective operations of data-parallel training
    /// (all-reduce of the gradients, gathering the losses; waiting for the slowest rank
    /// included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_ms: Option<f64>,
    /// `E|grad_x D(x)|^2` on the real batch, on the steps that apply the R1 penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r1_penalty: Option<f64>,
    /// The evaluation made after this step (`--eval-every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalMetrics>,
}

/// What an evaluation during training measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// FID of the generator that is sampled and exported (the EMA one when kept), eval mode.
    pub fid: f64,
    /// FID of the raw generator when an EMA is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_raw: Option<f64>,
    /// Mean patch SWD (x1000) of the sampled generator: lower is better, no classifier involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swd: Option<f64>,
    /// Classes holding at least 5% of the samples (as the classifier sees them; classifier
    /// metric only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes_covered: Option<usize>,
    /// Entropy of the predicted-label distribution in bits (classifier metric only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_entropy_bits: Option<f64>,
    /// How often the classifier finds the class each sample was generated for (class-conditional
    /// models, classifier metric only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_agreement: Option<f64>,
    /// The features `fid` is computed in (`best/` keeps the lowest of one metric).
    #[serde(default)]
    pub metric: EvalMetric,
    /// Inception FID, KID (mean and standard deviation over subsets), precision and recall
    /// of the sampled generator (inception metric only; TensorBoard `eval/inception_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inception_fid: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inception_kid: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inception_kid_std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inception_precision: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inception_recall: Option<f64>,
    /// Samples scored per generator.
    pub samples: usize,
    /// Seconds the evaluation took (sampling, scoring and keeping `best/`).
    pub seconds: f64,
}

impl StepMetrics {
    /// The step's values by name (the JSON field names), as TensorBoard scalars: the step
    /// fields, then the evaluation's as `eval/<field>`.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        let json = serde_json::to_value(self).expect("metrics serialise");
        let fields = json.as_object().expect("an object");
        for (name, value) in fields {
            if name == "step" {
                continue;
            }
            if let Some(v) = value.as_f64() {
                out.push((name.clone(), v));
            }
        }
        if let Some(eval) = fields.get("eval").and_then(|e| e.as_object()) {
            for (name, value) in eval {
                if let Some(v) = value.as_f64() {
                    out.push((format!("eval/{name}"), v));
                }
            }
        }
        out
    }
}

/// Appends step metrics to a JSONL file.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping lines of steps after `keep_up_to` (steps a
    /// crashed run logged after its last checkpoint, which the resumed run will redo).
    pub fn open(path: &Path, keep_up_to: u64) -> Result<(Self, Vec<StepMetrics>)> {
        let history = read(path)?
            .into_iter()
            .filter(|m| m.step <= keep_up_to)
            .collect::<Vec<_>>();
        let mut text = String::new();
        for m in &history {
            text.push_str(&serde_json::to_string(m).expect("metrics serialise"));
            text.push('\n');
        }
        gantry_models::atomic::write_file_atomic(path, text.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
            },
            history,
        ))
    }

    /// Appends one line.
    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let mut line = serde_json::to_string(m).expect("metrics serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Reads a metrics file; a missing file is empty, a torn last line (crash mid-write) is skipped.
pub fn read(path: &Path) -> Result<Vec<StepMetrics>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    Ok(BufReader::new(file)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(step: u64) -> StepMetrics {
        StepMetrics {
            step,
            epoch: 0,
            loss_d: 1.0,
            loss_g: 2.0,
            d_real: 0.5,
            d_fake: 0.5,
            img_per_sec: 10.0,
            seconds: step as f64,
            lr_d: 2e-4,
            lr_g: 1e-4,
            sync_ms: None,
            r1_penalty: None,
            eval: None,
        }
    }

    #[test]
    fn scalars_are_the_fields_and_the_evaluation_under_eval() {
        let mut step = m(7);
        let names = |s: &StepMetrics| -> Vec<String> {
            s.scalars().into_iter().map(|(n, _)| n).collect::<Vec<_>>()
        };
        assert_eq!(
            names(&step),
            [
                "d_fake",
                "d_real",
                "epoch",
                "img_per_sec",
                "loss_d",
                "loss_g",
                "lr_d",
                "lr_g",
                "seconds"
            ]
        );
        let classifier = EvalMetrics {
            fid: 12.5,
            fid_raw: None,
            swd: Some(31.5),
            classes_covered: Some(9),
            label_entropy_bits: Some(3.1),
            class_agreement: Some(0.75),
            metric: EvalMetric::Classifier,
            inception_fid: None,
            inception_kid: None,
            inception_kid_std: None,
            inception_precision: None,
            inception_recall: None,
            samples: 100,
            seconds: 2.0,
        };
        step.eval = Some(classifier.clone());
        let scalars = step.scalars();
        assert!(scalars.contains(&("eval/fid".into(), 12.5)));
        assert!(scalars.contains(&("eval/classes_covered".into(), 9.0)));
        assert!(scalars.contains(&("eval/swd".into(), 31.5)));
        assert!(scalars.contains(&("eval/class_agreement".into(), 0.75)));
        assert!(scalars.contains(&("lr_g".into(), 1e-4)));
        assert!(!names(&step).contains(&"eval/fid_raw".to_string()));
        assert!(!names(&step).iter().any(|n| n.starts_with("eval/inception")));
        // An Inception evaluation's scores are TensorBoard's eval/inception_* tags.
        step.eval = Some(EvalMetrics {
            metric: EvalMetric::Inception,
            classes_covered: None,
            label_entropy_bits: None,
            class_agreement: None,
            swd: None,
            inception_fid: Some(40.0),
            inception_kid: Some(0.02),
            inception_kid_std: Some(0.001),
            inception_precision: Some(0.5),
            inception_recall: Some(0.25),
            fid: 40.0,
            ..classifier
        });
        let scalars = step.scalars();
        for (tag, value) in [
            ("eval/inception_fid", 40.0),
            ("eval/inception_kid", 0.02),
            ("eval/inception_kid_std", 0.001),
            ("eval/inception_precision", 0.5),
            ("eval/inception_recall", 0.25),
        ] {
            assert!(scalars.contains(&(tag.into(), value)), "{tag}");
        }
        assert!(!names(&step).contains(&"eval/classes_covered".to_string()));
    }

    #[test]
    fn resume_drops_steps_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let (mut log, hist) = MetricsLog::open(&p, 0).unwrap();
        assert!(hist.is_empty());
        for s in 1..=5 {
            log.append(&m(s)).unwrap();
        }
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"step\":6,")
            .unwrap();
        let (_, hist) = MetricsLog::open(&p, 3).unwrap();
        assert_eq!(
            hist.iter().map(|m| m.step).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(read(&p).unwrap().len(), 3);
    }

    /// A missing metrics file reads as no steps; one that cannot be opened for another reason
    /// (its folder is a file) is an error naming it.
    #[test]
    fn only_a_missing_file_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("metrics.jsonl")).unwrap().is_empty());
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = read(&file.join("metrics.jsonl")).unwrap_err().to_string();
        assert!(err.contains("a-file"), "{err}");
    }
}
