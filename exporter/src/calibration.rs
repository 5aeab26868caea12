//! The calibration of an int8 export: the range of every activation of the generator's fp32
//! calibration graph (transposed convolutions already in sub-pixel form, so the names are the
//! int8 graph's), measured with ONNX Runtime on latents drawn as the runtime draws them
//! (`gantry_runtime::LatentStream`, a seed), labels cycling through the classes.
//!
//! Ranges are the minimum and maximum over every calibration batch. A calibration can be saved
//! and reused (`--save-calibration`, `--calibration`): the file names the model it was measured
//! on (a fingerprint of the calibration graph, weights included) and is refused for another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_models::ModelConfig;
use gantry_runtime::{Feed, LatentStream, Provider, ProviderChoice, ProviderOptions, TensorModel};
use serde::{Deserialize, Serialize};

use crate::error::{ExportError, ExportSetting, Result};

/// Version of the calibration file format.
pub const CALIBRATION_FORMAT: u32 = 1;
/// Latents per calibration batch.
pub const CALIBRATION_BATCH: usize = 64;
/// Calibration batches unless told otherwise.
pub const DEFAULT_CALIBRATION_BATCHES: usize = 8;
/// The most calibration batches an export accepts.
pub const MAX_CALIBRATION_BATCHES: usize = 10_000;

/// How an int8 export gets its calibration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationOptions {
    /// Batches of [`CALIBRATION_BATCH`] latents to measure on.
    pub batches: usize,
    /// Seed of the latents.
    pub seed: u64,
    /// Use this saved calibration instead of measuring.
    pub load: Option<PathBuf>,
    /// Save the calibration used here.
    pub save: Option<PathBuf>,
}

impl Default for CalibrationOptions {
    fn default() -> Self {
        Self {
            batches: DEFAULT_CALIBRATION_BATCHES,
            seed: 0,
            load: None,
            save: None,
        }
    }
}

/// Measured activation ranges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub format: u32,
    /// Fingerprint of the calibration graph it was measured on.
    pub model: String,
    /// How ranges were taken (`minmax`).
    pub method: String,
    pub batches: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Tensor name -> `[min, max]`.
    pub ranges: BTreeMap<String, [f32; 2]>,
}

/// A stable fingerprint of a serialised graph (64-bit FNV-1a, hex).
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

fn invalid(path: &Path, problem: impl std::fmt::Display) -> ExportError {
    ExportError::invalid(
        ExportSetting::Calibration,
        format!("{}: {problem}", path.display()),
    )
}

impl Calibration {
    /// Measures the ranges of every output of `model` (the calibration graph with each tensor
    /// made a graph output, serialised) for the generator `cfg`.
    pub fn measure(
        model: &[u8],
        fingerprint: String,
        cfg: &ModelConfig,
        opts: &CalibrationOptions,
    ) -> Result<Self> {
        check_batches(opts.batches)?;
        let failed = |e: gantry_runtime::RuntimeError| {
            ExportError::Weights(format!("calibration run failed: {e}"))
        };
        let session = TensorModel::open(
            model,
            Path::new("calibration graph"),
            ProviderChoice::Only(Provider::Cpu),
            &ProviderOptions::default(),
            None,
        )
        .map_err(failed)?;
        let mut latents = LatentStream::new(opts.seed, cfg.latent_dim, None);
        let classes = cfg.num_classes.unwrap_or(0);
        let mut ranges: BTreeMap<String, [f32; 2]> = BTreeMap::new();
        for batch in 0..opts.batches {
            let z = latents.next_batch(CALIBRATION_BATCH);
            let z = z.as_slice().ok_or_else(|| {
                ExportError::Weights("calibration latents are not contiguous".into())
            })?;
            let labels: Vec<i64> = (0..CALIBRATION_BATCH)
                .map(|i| ((batch * CALIBRATION_BATCH + i) % classes.max(1)) as i64)
                .collect();
            let (z_shape, l_shape) = ([CALIBRATION_BATCH, cfg.latent_dim], [CALIBRATION_BATCH]);
            let mut feeds = vec![(crate::INPUT_Z, Feed::F32(z, &z_shape))];
            if classes > 0 {
                feeds.push((crate::INPUT_LABEL, Feed::I64(&labels, &l_shape)));
            }
            for out in session.run_all(&feeds).map_err(failed)? {
                let (lo, hi) = out
                    .values
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
                        (l.min(*v), h.max(*v))
                    });
                if !lo.is_finite() || !hi.is_finite() {
                    return Err(ExportError::Weights(format!(
                        "calibration: tensor `{}` is not finite (the weights give NaN or inf)",
                        out.name
                    )));
                }
                let r = ranges.entry(out.name).or_insert([lo, hi]);
                *r = [r[0].min(lo), r[1].max(hi)];
            }
        }
        Ok(Self {
            format: CALIBRATION_FORMAT,
            model: fingerprint,
            method: "minmax".into(),
            batches: opts.batches,
            batch_size: CALIBRATION_BATCH,
            seed: opts.seed,
            ranges,
        })
    }

    /// Reads a saved calibration, refusing a file that is not one or holds an impossible range.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| invalid(path, e))?;
        let c: Self = serde_json::from_str(&text)
            .map_err(|e| invalid(path, format!("not a Gantry calibration file: {e}")))?;
        if c.format != CALIBRATION_FORMAT {
            return Err(invalid(
                path,
                format!(
                    "format {} (this exporter reads {CALIBRATION_FORMAT})",
                    c.format
                ),
            ));
        }
        if let Some((name, r)) = c
            .ranges
            .iter()
            .find(|(_, r)| !r[0].is_finite() || !r[1].is_finite() || r[0] > r[1])
        {
            return Err(invalid(path, format!("tensor `{name}` has range {r:?}")));
        }
        Ok(c)
    }

    /// Refuses a calibration measured on another model than the one of `fingerprint`.
    pub fn check_model(&self, path: &Path, fingerprint: &str) -> Result<()> {
        if self.model != fingerprint {
            return Err(invalid(
                path,
                format!(
                    "measured on model {}, not this one ({fingerprint}): another checkpoint, \
                     weights choice or Gantry version; calibrate again",
                    self.model
                ),
            ));
        }
        Ok(())
    }

    /// Writes the calibration as JSON (temp file and rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| ExportError::Weights(format!("calibration: {e}")))?;
        gantry_files::write_file_atomic(path, &json)?;
        Ok(())
    }

    /// The calibrated range of tensor `name`.
    pub fn range(&self, name: &str) -> Result<(f32, f32)> {
        self.ranges
            .get(name)
            .map(|r| (r[0], r[1]))
            .ok_or_else(|| ExportError::Weights(format!("calibration has no range for `{name}`")))
    }

    /// How it was made, for the model's metadata.
    pub fn describe(&self) -> String {
        format!(
            "{} over {} batches of {} latents (seed {}); uint8 activations per tensor, int8 \
             weights per channel",
            self.method, self.batches, self.batch_size, self.seed
        )
    }
}

/// Refuses a number of calibration batches outside `1..=MAX_CALIBRATION_BATCHES`.
pub fn check_batches(batches: usize) -> Result<()> {
    if !(1..=MAX_CALIBRATION_BATCHES).contains(&batches) {
        return Err(ExportError::invalid(
            ExportSetting::CalibrationBatches,
            format!("{batches} (choose 1..={MAX_CALIBRATION_BATCHES})"),
        ));
    }
    Ok(())
}
