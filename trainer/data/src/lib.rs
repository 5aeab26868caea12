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

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_testkit::{encode_idx, write_mnist_fixture};

    #[test]
    fn kinds_have_their_names_and_channels() {
        for (kind, name, channels) in [
            (DatasetKind::Mnist, "mnist", 1),
            (DatasetKind::FashionMnist, "fashion-mnist", 1),
            (DatasetKind::Cifar10, "cifar10", 3),
            (DatasetKind::Folder, "folder", 3),
        ] {
            assert_eq!(kind.name(), name);
            assert_eq!(name.parse::<DatasetKind>(), Ok(kind));
            assert_eq!(kind.default_channels(), channels, "{name}");
        }
        let err = "svhn".parse::<DatasetKind>().unwrap_err();
        assert!(err.contains("svhn"), "{err}");
    }

    /// Two 3x2x2 images with distinct bytes: a batch picks them in the order asked, as floats
    /// `b / 127.5 - 1` in `[B, C, H, W]`, with their labels.
    #[test]
    fn batches_hold_the_chosen_images_scaled_to_minus_one_one() {
        let data = Dataset {
            name: "t".into(),
            image_size: 2,
            channels: 3,
            pixels: (0..24).map(|i| (i * 10) as u8).collect(),
            labels: vec![4, 7],
            class_names: vec![],
        };
        assert_eq!(
            (data.len(), data.is_empty(), data.image_bytes()),
            (2, false, 12)
        );
        let (images, labels) = data.batch(&[1, 0, 1], &Device::Cpu).unwrap();
        assert_eq!(images.dims(), [3, 3, 2, 2]);
        let values: Vec<f32> = images.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = [12..24, 0..12, 12..24]
            .into_iter()
            .flatten()
            .map(|i| (i * 10) as f32 / 127.5 - 1.0)
            .collect();
        assert_eq!(values, want);
        assert_eq!(labels.to_vec1::<u32>().unwrap(), [7, 4, 7]);
        let empty = Dataset {
            pixels: vec![],
            labels: vec![],
            ..data
        };
        assert_eq!((empty.is_empty(), empty.len()), (true, 0));
    }

    /// The train split reads `train-*`, the test split `t10k-*` (here of another size); a
    /// folder that is not there is refused by name.
    #[test]
    fn splits_read_their_own_files_and_a_missing_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist_fixture(dir.path(), 6);
        std::fs::write(
            dir.path().join("t10k-images-idx3-ubyte"),
            encode_idx(&[3, 28, 28], &[128; 3 * 784]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            encode_idx(&[3], &[1, 2, 9]),
        )
        .unwrap();
        let spec = DataSpec {
            kind: DatasetKind::Mnist,
            dir: dir.path().to_path_buf(),
            image_size: 16,
            channels: 1,
            fit: Fit::Pad,
        };
        let train = load(&spec, Split::Train).unwrap();
        let test = load(&spec, Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (6, 3));
        assert_eq!(test.labels, [1, 2, 9]);
        assert_eq!(train.image_bytes(), 256);
        assert_eq!(train.name, "mnist");
        assert_eq!(train.class_names[3], "3");
        let fashion = DataSpec {
            kind: DatasetKind::FashionMnist,
            ..spec.clone()
        };
        let f = load(&fashion, Split::Train).unwrap();
        assert_eq!(
            (f.name.as_str(), f.class_names[9].as_str()),
            ("fashion-mnist", "boot")
        );
        // A label past 9 is refused, naming the labels file.
        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            encode_idx(&[3], &[1, 10, 2]),
        )
        .unwrap();
        let err = load(&spec, Split::Test).unwrap_err().to_string();
        assert!(
            err.contains("t10k-labels") && err.contains("label 10"),
            "{err}"
        );
        let missing = DataSpec {
            dir: dir.path().join("nowhere"),
            ..spec
        };
        let err = load(&missing, Split::Train).unwrap_err().to_string();
        assert!(
            err.contains("nowhere") && err.contains("does not exist"),
            "{err}"
        );
    }

    /// CIFAR-10's train split is its `data_batch_*.bin` files, the test split `test_batch.bin`.
    #[test]
    fn cifar_splits_read_their_batches() {
        let dir = tempfile::tempdir().unwrap();
        let record = |label: u8| {
            let mut r = vec![label];
            r.extend((0..3072).map(|i| (i % 251) as u8));
            r
        };
        std::fs::write(
            dir.path().join("data_batch_1.bin"),
            [record(3), record(5)].concat(),
        )
        .unwrap();
        std::fs::write(dir.path().join("test_batch.bin"), record(8)).unwrap();
        let spec = DataSpec {
            kind: DatasetKind::Cifar10,
            dir: dir.path().to_path_buf(),
            image_size: 32,
            channels: 3,
            fit: Fit::Crop,
        };
        let train = load(&spec, Split::Train).unwrap();
        let test = load(&spec, Split::Test).unwrap();
        assert_eq!(
            (train.labels.clone(), test.labels.clone()),
            (vec![3, 5], vec![8])
        );
        assert_eq!(
            (train.name.as_str(), train.class_names[3].as_str()),
            ("cifar10", "cat")
        );
    }

    /// A folder with `train/` and `test/` reads each split from its own; a folder without them
    /// is both splits; the name is `folder:<folder name>`.
    #[test]
    fn folder_splits_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let png = |path: std::path::PathBuf| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            image::RgbImage::from_pixel(4, 4, image::Rgb([9, 99, 199]))
                .save(path)
                .unwrap();
        };
        let split = dir.path().join("pets");
        png(split.join("train/cat/a.png"));
        png(split.join("train/dog/b.png"));
        png(split.join("test/cat/c.png"));
        let plain = dir.path().join("plain");
        png(plain.join("x.png"));
        png(plain.join("y.png"));
        png(plain.join("z.png"));
        let spec = |d: &Path| DataSpec {
            kind: DatasetKind::Folder,
            dir: d.to_path_buf(),
            image_size: 16,
            channels: 3,
            fit: Fit::Crop,
        };
        let count = |d: &Path, s| load(&spec(d), s).unwrap().len();
        assert_eq!(
            (count(&split, Split::Train), count(&split, Split::Test)),
            (2, 1)
        );
        assert_eq!(
            (count(&plain, Split::Train), count(&plain, Split::Test)),
            (3, 3)
        );
        assert_eq!(
            load(&spec(&split), Split::Train).unwrap().name,
            "folder:pets"
        );
        assert_eq!(dataset_name(&spec(&plain)), "folder:plain");
    }
}
