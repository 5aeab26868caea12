//! `metrics.jsonl`: one JSON line per training step.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

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
    /// Training seconds since the start of the run (across resumes).
    pub seconds: f64,
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
        }
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
}
