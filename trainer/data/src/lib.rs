//! Training data: MNIST-style IDX, CIFAR-10 binary batches and image folders, preprocessed once
//! to bytes of the training size and served in seeded batches.

#![forbid(unsafe_code)]

pub mod batches;
pub mod cifar;
mod error;
pub mod folder;
pub mod idx;
pub mod preprocess;

#[cfg(test)]
mod fuzz;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::{DynamicImage, GrayImage};
use rayon::prelude::*;

pub use batches::EpochOrder;
pub use error::{DataError, Result};
pub use preprocess::Fit;

/// The supported data set layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
    Cifar10,
    Folder,
}

impl DatasetKind {
    /// The name used on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mnist => "mnist",
            Self::FashionMnist => "fashion-mnist",
            Self::Cifar10 => "cifar10",
            Self::Folder => "folder",
        }
    }

    /// The data set's natural channel count (folders default to RGB).
    pub fn default_channels(self) -> usize {
        match self {
            Self::Mnist | Self::FashionMnist => 1,
            Self::Cifar10 | Self::Folder => 3,
        }
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mnist" => Ok(Self::Mnist),
            "fashion-mnist" => Ok(Self::FashionMnist),
            "cifar10" => Ok(Self::Cifar10),
            "folder" => Ok(Self::Folder),
            other => Err(format!(
                "unknown data set `{other}` (expected mnist, fashion-mnist, cifar10 or folder)"
            )),
        }
    }
}

/// Which part of a data set to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// How to load and preprocess a data set.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    pub kind: DatasetKind,
    pub dir: PathBuf,
    pub image_size: usize,
    pub channels: usize,
    pub fit: Fit,
}

/// A preprocessed data set held as bytes: `len` images of `channels x size x size`.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub image_size: usize,
    pub channels: usize,
    /// CHW bytes of every image, one after another.
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the data set has no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_bytes(&self) -> usize {
        self.channels * self.image_size * self.image_size
    }

    /// The images at `indices` as a float tensor `[B, C, H, W]` in [-1, 1] and their labels `[B]`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let n = self.image_bytes();
        let mut data = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            data.extend(
                self.pixels[i * n..(i + 1) * n]
                    .iter()
                    .map(|&b| b as f32 / 127.5 - 1.0),
            );
        }
        let s = self.image_size;
        let images = Tensor::from_vec(data, (indices.len(), self.channels, s, s), device)?;
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        let labels = Tensor::from_vec(labels, indices.len(), device)?;
        Ok((images, labels))
    }
}

/// Loads and preprocesses a split of a data set.
pub fn load(spec: &DataSpec, split: Split) -> Result<Dataset> {
    if !spec.dir.is_dir() {
        return Err(DataError::data(&spec.dir, "data folder does not exist"));
    }
    let size = spec.image_size as u32;
    let (class_names, images, labels): (Vec<String>, Vec<Vec<u8>>, Vec<u32>) = match spec.kind {
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            let prefix = if split == Split::Train {
                "train"
            } else {
                "t10k"
            };
            let img_path = idx::find_idx_file(&spec.dir, &format!("{prefix}-images-idx3-ubyte"))?;
            let lab_path = idx::find_idx_file(&spec.dir, &format!("{prefix}-labels-idx1-ubyte"))?;
            let (arr, labels) = idx::load_images_and_labels(&img_path, &lab_path)?;
            let (h, w) = (arr.dims[1], arr.dims[2]);
            let max = labels.iter().copied().max().unwrap_or(0);
            if max > 9 {
                return Err(DataError::data(
                    &lab_path,
                    format!("label {max} is out of range 0..=9"),
                ));
            }
            let images = arr
                .data
                .par_chunks_exact(h * w)
                .map(|px| {
                    let img = GrayImage::from_raw(w as u32, h as u32, px.to_vec()).unwrap();
                    preprocess::to_chw_bytes(
                        &DynamicImage::ImageLuma8(img),
                        size,
                        spec.channels,
                        spec.fit,
                    )
                })
                .collect();
            let names = if spec.kind == DatasetKind::Mnist {
                (0..10).map(|d| d.to_string()).collect()
            } else {
                FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
            };
            (names, images, labels)
        }
        DatasetKind::Cifar10 => {
            let mut images = Vec::new();
            let mut labels = Vec::new();
            for file in cifar::batch_files(&spec.dir, split == Split::Train)? {
                let records = cifar::read_batch(&file)?;
                let processed: Vec<Vec<u8>> = records
                    .par_iter()
                    .map(|(img, _)| {
                        preprocess::to_chw_bytes(
                            &DynamicImage::ImageRgb8(img.clone()),
                            size,
                            spec.channels,
                            spec.fit,
                        )
                    })
                    .collect();
                images.extend(processed);
                labels.extend(records.iter().map(|(_, l)| *l));
            }
            (
                cifar::CLASSES.iter().map(|s| s.to_string()).collect(),
                images,
                labels,
            )
        }
        DatasetKind::Folder => {
            let dir = folder_split_dir(&spec.dir, split);
            let (classes, files) = folder::scan(&dir)?;
            let images = files
                .par_iter()
                .map(|(path, _)| {
                    folder::decode(path)
                        .map(|img| preprocess::to_chw_bytes(&img, size, spec.channels, spec.fit))
                })
                .collect::<Result<Vec<_>>>()?;
            (classes, images, files.iter().map(|(_, l)| *l).collect())
        }
    };
    if labels.is_empty() {
        return Err(DataError::data(&spec.dir, "the data set has no images"));
    }
    Ok(Dataset {
        name: dataset_name(spec),
        image_size: spec.image_size,
        channels: spec.channels,
        pixels: images.concat(),
        labels,
        class_names,
    })
}

/// A folder data set may hold `train/` and `test/` splits; otherwise the folder is the train split
/// and the test split.
fn folder_split_dir(dir: &Path, split: Split) -> PathBuf {
    let sub = dir.join(if split == Split::Train {
        "train"
    } else {
        "test"
    });
    if sub.is_dir() {
        sub
    } else {
        dir.to_path_buf()
    }
}

/// A short name recorded in checkpoints and ONNX metadata.
pub fn dataset_name(spec: &DataSpec) -> String {
    match spec.kind {
        DatasetKind::Folder => format!(
            "folder:{}",
            spec.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        kind => kind.name().to_string(),
    }
}

/// Fashion-MNIST's class names, in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
];
