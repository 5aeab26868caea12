//! The checkpoint directory (documented in `docs/checkpoint-format.md`).
//!
//! ```text
//! config.json                  CheckpointMeta: format version, ModelConfig, training options
//! generator.safetensors        G parameters and BatchNorm running statistics
//! generator_ema.safetensors    (optional) exponential moving average of G
//! discriminator.safetensors    D parameters and BatchNorm running statistics
//! optimizer_g.safetensors      Adam moments of G (`{param}.exp_avg`, `.exp_avg_sq`), step in metadata
//! optimizer_d.safetensors      the same for D
//! trainer_state.json           TrainerState: step, epoch, seed, data-order position
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::{recover_dir, write_dir_atomic};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::run_layout::{BEST_DIR, CHECKPOINT_DIR, FINAL_DIR};
use crate::spec::{discriminator_spec, generator_spec};
use crate::tensors::{
    check_finite, read_safetensors, read_safetensors_with_metadata, safetensors_bytes,
    validate_against_spec, TensorMap,
};

/// Version of the checkpoint layout written by this crate.
pub const FORMAT_VERSION: u32 = 1;

pub const CONFIG_FILE: &str = "config.json";
pub const GENERATOR_FILE: &str = "generator.safetensors";
pub const GENERATOR_EMA_FILE: &str = "generator_ema.safetensors";
pub const DISCRIMINATOR_FILE: &str = "discriminator.safetensors";
pub const OPTIMIZER_G_FILE: &str = "optimizer_g.safetensors";
pub const OPTIMIZER_D_FILE: &str = "optimizer_d.safetensors";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";

/// `config.json`: what the weights are and how they were trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format_version: u32,
    pub model: ModelConfig,
    /// Name of the training data set (`mnist`, `folder:cats`, ...).
    #[serde(default)]
    pub dataset: Option<String>,
    /// Training options (learning rate, loss, EMA, ...) for reference and resume.
    #[serde(default)]
    pub training: serde_json::Value,
}

impl CheckpointMeta {
    /// Metadata for a model trained on `dataset` with `training` options.
    pub fn new(model: ModelConfig, dataset: Option<String>, training: serde_json::Value) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            model,
            dataset,
            training,
        }
    }
}

/// `trainer_state.json`: where training stands, enough to continue it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Completed optimisation steps (one D and one G update each).
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Batches of the current epoch already consumed (position in the seeded data order).
    pub batch_in_epoch: u64,
    /// Seed of weights, data order and latents.
    pub seed: u64,
    /// Training wall time so far, in seconds.
    #[serde(default)]
    pub elapsed_seconds: f64,
}

/// Optimiser state as stored: moments and metadata (step count, hyper-parameters).
pub type OptimizerState = (TensorMap, HashMap<String, String>);

/// Everything in a checkpoint directory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub generator: TensorMap,
    pub generator_ema: Option<TensorMap>,
    pub discriminator: Option<TensorMap>,
    pub optimizer_g: Option<OptimizerState>,
    pub optimizer_d: Option<OptimizerState>,
    pub trainer_state: Option<TrainerState>,
}

fn json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(value).expect("checkpoint JSON serialises");
    v.push(b'\n');
    v
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ModelError::checkpoint(path, format!("invalid JSON: {e}")))
}

impl Checkpoint {
    /// Writes the checkpoint as directory `dir`, atomically replacing any previous one. Weights
    /// with NaN or infinite values are refused (the previous checkpoint stays).
    pub fn save(&self, dir: &Path) -> Result<()> {
        for (file, map) in [
            (GENERATOR_FILE, Some(&self.generator)),
            (GENERATOR_EMA_FILE, self.generator_ema.as_ref()),
            (DISCRIMINATOR_FILE, self.discriminator.as_ref()),
        ] {
            if let Some(map) = map {
                check_finite(map, &dir.join(file))?;
            }
        }
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            (CONFIG_FILE, json_bytes(&self.meta)),
            (GENERATOR_FILE, safetensors_bytes(&self.generator, None)?),
        ];
        if let Some(ema) = &self.generator_ema {
            files.push((GENERATOR_EMA_FILE, safetensors_bytes(ema, None)?));
        }
        if let Some(d) = &self.discriminator {
            files.push((DISCRIMINATOR_FILE, safetensors_bytes(d, None)?));
        }
        for (name, state) in [
            (OPTIMIZER_G_FILE, &self.optimizer_g),
            (OPTIMIZER_D_FILE, &self.optimizer_d),
        ] {
            if let Some((tensors, meta)) = state {
                files.push((name, safetensors_bytes(tensors, Some(meta.clone()))?));
            }
        }
        if let Some(state) = &self.trainer_state {
            files.push((TRAINER_STATE_FILE, json_bytes(state)));
        }
        Ok(write_dir_atomic(dir, &files)?)
    }

    /// Reads `config.json` of a checkpoint directory.
    pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
        let dir = checked_dir(dir)?;
        let meta: CheckpointMeta = read_json(&dir.join(CONFIG_FILE))?;
        if meta.format_version != FORMAT_VERSION {
            return Err(ModelError::checkpoint(
                dir.join(CONFIG_FILE),
                format!(
                    "checkpoint format version {} is not supported (this build reads {FORMAT_VERSION})",
                    meta.format_version
                ),
            ));
        }
        meta.model
            .validate()
            .map_err(|e| ModelError::checkpoint(dir.join(CONFIG_FILE), e.to_string()))?;
        Ok(meta)
    }

    /// Reads what inference needs: config, generator (and EMA generator) weights, trainer state
    /// if present and readable (it only gives the step). Every tensor is checked against the
    /// config and for NaN or infinite values.
    pub fn load_generator(dir: &Path) -> Result<Self> {
        let dir = checked_dir(dir)?;
        let meta = Self::read_meta(&dir)?;
        let spec = generator_spec(&meta.model);
        let read_g = |file: &str| -> Result<TensorMap> {
            let path = dir.join(file);
            let map = read_safetensors(&path)?;
            validate_against_spec(&map, &spec, &path)?;
            check_finite(&map, &path)?;
            Ok(map)
        };
        let generator = read_g(GENERATOR_FILE)?;
        let generator_ema = if dir.join(GENERATOR_EMA_FILE).exists() {
            Some(read_g(GENERATOR_EMA_FILE)?)
        } else {
            None
        };
        let trainer_state = read_json(&dir.join(TRAINER_STATE_FILE)).ok();
        Ok(Self {
            meta,
            generator,
            generator_ema,
            discriminator: None,
            optimizer_g: None,
            optimizer_d: None,
            trainer_state,
        })
    }

    /// Reads a complete training checkpoint (for resume); every file must be present and valid,
    /// and every tensor finite.
    pub fn load(dir: &Path) -> Result<Self> {
        let dir = checked_dir(dir)?;
        let mut ckpt = Self::load_generator(&dir)?;
        let d_path = dir.join(DISCRIMINATOR_FILE);
        let d = read_safetensors(&d_path)?;
        validate_against_spec(&d, &discriminator_spec(&ckpt.meta.model), &d_path)?;
        check_finite(&d, &d_path)?;
        ckpt.discriminator = Some(d);
        for (file, slot) in [
            (OPTIMIZER_G_FILE, &mut ckpt.optimizer_g),
            (OPTIMIZER_D_FILE, &mut ckpt.optimizer_d),
        ] {
            let path = dir.join(file);
            let state = read_safetensors_with_metadata(&path)?;
            check_finite(&state.0, &path)?;
            *slot = Some(state);
        }
        let state_path = dir.join(TRAINER_STATE_FILE);
        if !state_path.is_file() {
            return Err(ModelError::checkpoint(
                state_path,
                "missing: this checkpoint cannot be resumed",
            ));
        }
        ckpt.trainer_state = Some(read_json(&state_path)?);
        Ok(ckpt)
    }

    /// The step this checkpoint was taken at (0 when it has no trainer state).
    pub fn step(&self) -> u64 {
        self.trainer_state.as_ref().map_or(0, |s| s.step)
    }
}

fn checked_dir(dir: &Path) -> Result<PathBuf> {
    let dir = recover_dir(dir);
    if !dir.is_dir() {
        return Err(ModelError::checkpoint(&dir, "no such checkpoint directory"));
    }
    if !dir.join(CONFIG_FILE).is_file() {
        return Err(ModelError::checkpoint(
            &dir,
            format!("not a Gantry checkpoint (no {CONFIG_FILE})"),
        ));
    }
    Ok(dir)
}

/// Which of a run folder's checkpoints a path means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunCheckpoint {
    /// The most recent one (see [`resolve_checkpoint`]).
    #[default]
    Latest,
    /// `best/`: the lowest FID of the evaluations during training.
    Best,
    /// `final/`: the end of the run.
    Final,
}

impl RunCheckpoint {
    /// The name of the choice (`latest`, `best`, `final`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Latest => "latest",
            Self::Best => "best",
            Self::Final => "final",
        }
    }
}

/// The checkpoint `which` of the run folder `path`; for [`RunCheckpoint::Latest`] `path` may
/// also be a checkpoint directory itself.
pub fn resolve_run_checkpoint(path: &Path, which: RunCheckpoint) -> Result<PathBuf> {
    let folder = match which {
        RunCheckpoint::Latest => return resolve_checkpoint(path),
        RunCheckpoint::Best => BEST_DIR,
        RunCheckpoint::Final => FINAL_DIR,
    };
    if path.join(CONFIG_FILE).is_file() {
        return Err(ModelError::checkpoint(
            path,
            format!("is a single checkpoint, not a run folder with a {folder}/ checkpoint"),
        ));
    }
    let dir = recover_dir(&path.join(folder));
    if !dir.join(CONFIG_FILE).is_file() {
        let why = match which {
            RunCheckpoint::Best => {
                "the run kept no best checkpoint (it is kept when the run evaluates during training)"
            }
            _ => "the run has not finished",
        };
        return Err(ModelError::checkpoint(
            path,
            format!("has no {folder}/ checkpoint: {why}"),
        ));
    }
    Ok(dir)
}

/// The checkpoint a path means: a checkpoint directory itself, or a run directory (the output of
/// `trainer train`), meaning its most recent checkpoint (`checkpoint/` or `final/`, whichever is
/// further along among those whose files are intact; see [`looks_intact`]).
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(CONFIG_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        return Err(ModelError::checkpoint(
            path,
            "no such checkpoint or run directory",
        ));
    }
    let step_of = |dir: &Path| -> Option<u64> {
        let state: TrainerState = read_json(&dir.join(TRAINER_STATE_FILE)).ok()?;
        Some(state.step)
    };
    let candidates = [CHECKPOINT_DIR, FINAL_DIR]
        .iter()
        .map(|name| recover_dir(&path.join(name)))
        .filter(|d| d.join(CONFIG_FILE).is_file());
    // The newest intact one; if none is intact, the newest (loading it then says what is wrong).
    candidates
        .max_by_key(|d| (looks_intact(d), step_of(d).unwrap_or(0)))
        .ok_or_else(|| {
            ModelError::checkpoint(
                path,
                "not a checkpoint and holds no checkpoint/ or final/ directory",
            )
        })
}

/// A cheap check that a checkpoint folder is whole, without reading its weights: `config.json`
/// parses, and every safetensors file has a readable header whose data fills the file exactly.
pub fn looks_intact(dir: &Path) -> bool {
    if Checkpoint::read_meta(dir).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).all(|e| {
        let path = e.path();
        path.extension().is_none_or(|x| x != "safetensors") || safetensors_header_fits(&path)
    })
}

/// Whether a safetensors file's header parses and its tensors end exactly at the end of the file.
fn safetensors_header_fits(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(size) = f.metadata().map(|m| m.len()) else {
        return false;
    };
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return false;
    }
    let len = u64::from_le_bytes(len);
    if len > size.saturating_sub(8) || len > 100 << 20 {
        return false;
    }
    let mut header = vec![0u8; len as usize];
    if f.read_exact(&mut header).is_err() {
        return false;
    }
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(&header) else {
        return false;
    };
    let data_end = entries
        .values()
        .filter_map(|v| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    8 + len + data_end == size
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{init::init_tensors, Adam, AdamConfig, Generator};
    use candle_core::Device;

    fn sample_checkpoint(cfg: &ModelConfig) -> Checkpoint {
        let g = init_tensors(&generator_spec(cfg), "generator", 1).unwrap();
        let d = init_tensors(&discriminator_spec(cfg), "discriminator", 1).unwrap();
        let gen = Generator::from_tensors(cfg, &g, &Device::Cpu).unwrap();
        let opt = Adam::new(gen.net.parameters(), AdamConfig::default()).unwrap();
        Checkpoint {
            meta: CheckpointMeta::new(
                cfg.clone(),
                Some("mnist".into()),
                serde_json::json!({"lr": 2e-4}),
            ),
            generator: g,
            generator_ema: None,
            discriminator: Some(d),
            optimizer_g: Some(opt.state().unwrap()),
            optimizer_d: Some(opt.state().unwrap()),
            trainer_state: Some(TrainerState {
                step: 12,
                epoch: 1,
                batch_in_epoch: 3,
                seed: 5,
                elapsed_seconds: 1.5,
            }),
        }
    }

    fn small() -> ModelConfig {
        ModelConfig {
            image_size: 16,
            channels: 1,
            g_width: 8,
            d_width: 8,
            latent_dim: 10,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_is_exact() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let ckpt = sample_checkpoint(&small());
        ckpt.save(&dir).unwrap();
        let back = Checkpoint::load(&dir).unwrap();
        assert_eq!(back.meta, ckpt.meta);
        assert_eq!(back.trainer_state, ckpt.trainer_state);
        for (a, b) in [
            (&ckpt.generator, &back.generator),
            (
                ckpt.discriminator.as_ref().unwrap(),
                back.discriminator.as_ref().unwrap(),
            ),
            (
                &ckpt.optimizer_g.as_ref().unwrap().0,
                &back.optimizer_g.as_ref().unwrap().0,
            ),
        ] {
            assert_eq!(a.len(), b.len());
            for (k, v) in a {
                let x = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let y = b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(x, y, "{k}");
            }
        }
        assert_eq!(back.optimizer_g.unwrap().1["step"], "0");
    }

    #[test]
    fn rejects_mismatched_weights_naming_file_and_tensor() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let mut ckpt = sample_checkpoint(&small());
        ckpt.meta.model.g_width = 16; // config no longer matches the weights
        ckpt.save(&dir).unwrap();
        let err = Checkpoint::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("generator.safetensors") && err.contains("layers.0.weight"),
            "{err}"
        );

        let mut ckpt = sample_checkpoint(&small());
        ckpt.generator.remove("layers.1.bn.running_var");
        ckpt.save(&dir).unwrap();
        let err = Checkpoint::load_generator(&dir).unwrap_err().to_string();
        assert!(
            err.contains("missing tensor `layers.1.bn.running_var`"),
            "{err}"
        );
    }

    #[test]
    fn rejects_corrupt_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        sample_checkpoint(&small()).save(&dir).unwrap();
        std::fs::write(dir.join(GENERATOR_FILE), b"garbage").unwrap();
        let err = Checkpoint::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("generator.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );

        sample_checkpoint(&small()).save(&dir).unwrap();
        std::fs::write(dir.join(CONFIG_FILE), b"{").unwrap();
        let err = Checkpoint::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("invalid JSON"),
            "{err}"
        );

        let err = Checkpoint::load(&root.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such checkpoint directory"), "{err}");
    }

    #[test]
    fn non_finite_weights_are_refused_on_save_and_on_load() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let good = sample_checkpoint(&small());
        good.save(&dir).unwrap();
        let before = std::fs::read(dir.join(GENERATOR_FILE)).unwrap();
        let mut bad = good.clone();
        let w = bad.generator["layers.1.weight"].clone();
        bad.generator
            .insert("layers.1.weight".into(), (w * f64::NAN).unwrap());
        let err = bad.save(&dir).unwrap_err().to_string();
        assert!(
            err.contains("layers.1.weight") && err.contains("NaN"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dir.join(GENERATOR_FILE)).unwrap(),
            before,
            "the old one stays"
        );
        // A damaged file on disk (NaN written by something else) is refused on load.
        let bytes = safetensors_bytes(&bad.generator, None).unwrap();
        std::fs::write(dir.join(GENERATOR_FILE), bytes).unwrap();
        for err in [
            Checkpoint::load(&dir).unwrap_err().to_string(),
            Checkpoint::load_generator(&dir).unwrap_err().to_string(),
        ] {
            assert!(
                err.contains("generator.safetensors") && err.contains("NaN"),
                "{err}"
            );
        }
    }

    #[test]
    fn an_unreadable_trainer_state_does_not_stop_inference() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        sample_checkpoint(&small()).save(&dir).unwrap();
        std::fs::write(dir.join(TRAINER_STATE_FILE), b"{not json").unwrap();
        let ckpt = Checkpoint::load_generator(&dir).unwrap();
        assert_eq!(ckpt.step(), 0);
        let err = Checkpoint::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("trainer_state.json"),
            "resume still needs it: {err}"
        );
    }

    #[test]
    fn identical_checkpoints_are_identical_bytes() {
        let root = tempfile::tempdir().unwrap();
        let ckpt = sample_checkpoint(&small());
        let files = |name: &str| {
            let dir = root.path().join(name);
            ckpt.save(&dir).unwrap();
            let mut all = Vec::new();
            for f in [
                GENERATOR_FILE,
                OPTIMIZER_G_FILE,
                OPTIMIZER_D_FILE,
                CONFIG_FILE,
            ] {
                all.push(std::fs::read(dir.join(f)).unwrap());
            }
            all
        };
        let first = files("a");
        for i in 0..5 {
            assert_eq!(files(&format!("b{i}")), first);
        }
    }

    #[test]
    fn a_damaged_newer_checkpoint_is_passed_over() {
        let root = tempfile::tempdir().unwrap();
        let mut ckpt = sample_checkpoint(&small());
        ckpt.save(&root.path().join("checkpoint")).unwrap();
        ckpt.trainer_state.as_mut().unwrap().step = 99;
        ckpt.save(&root.path().join("final")).unwrap();
        assert!(looks_intact(&root.path().join("final")));
        // An overwritten weights file (what a stray export did) makes final/ not intact.
        std::fs::write(
            root.path().join("final").join(GENERATOR_FILE),
            b"onnx bytes",
        )
        .unwrap();
        assert!(!looks_intact(&root.path().join("final")));
        assert_eq!(
            resolve_checkpoint(root.path()).unwrap(),
            root.path().join("checkpoint")
        );
    }

    #[test]
    fn run_directory_resolves_to_latest_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let mut ckpt = sample_checkpoint(&small());
        ckpt.save(&root.path().join("final")).unwrap();
        ckpt.trainer_state.as_mut().unwrap().step = 99;
        ckpt.save(&root.path().join("checkpoint")).unwrap();
        assert_eq!(
            resolve_checkpoint(root.path()).unwrap(),
            root.path().join("checkpoint")
        );
        assert_eq!(
            resolve_checkpoint(&root.path().join("final")).unwrap(),
            root.path().join("final")
        );
        let err = resolve_checkpoint(&root.path().join("checkpoint/config.json/x"));
        assert!(err.is_err());
    }

    /// `--which best|final` picks that folder of a run (and says why it cannot: no best kept,
    /// not finished, a single checkpoint given); `latest` is the most recent one.
    #[test]
    fn a_run_checkpoint_is_picked_by_name() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path();
        let mut ckpt = sample_checkpoint(&small());
        ckpt.save(&run.join("checkpoint")).unwrap();
        let not_finished = resolve_run_checkpoint(run, RunCheckpoint::Final).unwrap_err();
        assert!(not_finished
            .to_string()
            .contains("has no final/ checkpoint: the run has not finished"));
        ckpt.trainer_state.as_mut().unwrap().step = 20;
        ckpt.save(&run.join("final")).unwrap();
        ckpt.trainer_state.as_mut().unwrap().step = 15;
        ckpt.save(&run.join("best")).unwrap();
        for (which, folder, step) in [
            (RunCheckpoint::Latest, "final", 20),
            (RunCheckpoint::Final, "final", 20),
            (RunCheckpoint::Best, "best", 15),
        ] {
            let dir = resolve_run_checkpoint(run, which).unwrap();
            assert_eq!(dir, run.join(folder), "{}", which.name());
            assert_eq!(Checkpoint::load(&dir).unwrap().step(), step);
        }
        let names = [
            RunCheckpoint::Latest,
            RunCheckpoint::Best,
            RunCheckpoint::Final,
        ]
        .map(RunCheckpoint::name);
        assert_eq!(names, ["latest", "best", "final"]);
        let single = resolve_run_checkpoint(&run.join("final"), RunCheckpoint::Best).unwrap_err();
        assert!(single
            .to_string()
            .contains("is a single checkpoint, not a run folder with a best/"));
        std::fs::remove_dir_all(run.join("best")).unwrap();
        let no_best = resolve_run_checkpoint(run, RunCheckpoint::Best).unwrap_err();
        assert!(
            no_best
                .to_string()
                .contains("the run kept no best checkpoint"),
            "{no_best}"
        );
    }

    /// The cheap intactness check reads a safetensors header and its data's extent: whole files
    /// pass (a file of no tensors too: its header fills it), short, long and lying ones do not.
    #[test]
    fn safetensors_files_fit_their_header_exactly() {
        let root = tempfile::tempdir().unwrap();
        let file = |name: &str, header: &str, data: usize, claimed: Option<u64>| {
            let path = root.path().join(name);
            let len = claimed.unwrap_or(header.len() as u64);
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend(std::iter::repeat_n(0u8, data));
            std::fs::write(&path, bytes).unwrap();
            safetensors_header_fits(&path)
        };
        let one = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(file("whole", one, 8, None));
        assert!(file("no-tensors", r#"{"__metadata__":{}}"#, 0, None));
        assert!(!file("short", one, 7, None));
        assert!(!file("long", one, 9, None));
        assert!(!file("lying", one, 8, Some(1 << 40)));
        assert!(!file("not-json", "{\"w\":", 8, None));
        assert!(!file("empty", "", 0, None));
    }
}
