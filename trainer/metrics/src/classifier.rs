//! The evaluation classifier: a small CNN Gantry trains itself (Inception weights cannot be
//! downloaded here). Its 128-d penultimate activations are the features for FID, its softmax the
//! class predictions for coverage. Cached next to the data with its test accuracy.
//!
//! Architecture: stride-2 4x4 convolutions with LeakyReLU(0.2) from the image size down to 4x4
//! (widths 32, 64, 128, ...), then Linear(-> 128) + ReLU (the features) and Linear(-> classes).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use gantry_models::init::{normal_vec, rng_for};
use gantry_models::network::Network;
use gantry_models::spec::{
    Activation, ConvKind, ConvLayer, Init, NetworkSpec, TensorRole, TensorSpec, LEAKY_RELU_SLOPE,
};
use gantry_models::tensors::{read_safetensors_with_metadata, safetensors_bytes, TensorMap};
use gantry_models::{Adam, AdamConfig};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};
use gantry_data::{self as data, DataSpec, Dataset, Split};

/// Size of the feature vector FID is computed on.
pub const FEATURE_DIM: usize = 128;
const BASE_WIDTH: usize = 32;

/// What the cached classifier file records besides its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    pub dataset: String,
    pub image_size: usize,
    pub channels: usize,
    pub classes: usize,
    pub fit: data::Fit,
    pub epochs: usize,
    pub test_accuracy: f64,
}

/// The trained classifier.
pub struct Classifier {
    pub info: ClassifierInfo,
    convs: Network,
    fc1: (Var, Var),
    fc2: (Var, Var),
}

fn conv_spec(image_size: usize, channels: usize) -> NetworkSpec {
    let stages = (image_size / 4).trailing_zeros() as usize;
    let mut layers = Vec::new();
    let (mut c, mut size) = (channels, image_size);
    for i in 0..stages {
        let out = BASE_WIDTH << i;
        layers.push(ConvLayer {
            name: ConvLayer::numbered(i),
            kind: ConvKind::Conv,
            in_channels: c,
            out_channels: out,
            kernel: 4,
            stride: 2,
            padding: 1,
            in_size: size,
            out_size: size / 2,
            batch_norm: false,
            activation: Activation::LeakyRelu(LEAKY_RELU_SLOPE),
            spectral_norm: false,
            bias: false,
            // Drawn by this module's own He-normal `init`, not by the spec's.
            init: Init::Zeros,
            bn_gain_init: Init::Ones,
            bn_classes: None,
        });
        c = out;
        size /= 2;
    }
    NetworkSpec::sequential(layers, None)
}

fn head_shapes(spec: &NetworkSpec, classes: usize) -> [(String, Vec<usize>); 4] {
    let flat = spec.conv_layers().last().map_or(0, |l| l.out_channels * 16);
    [
        ("fc1.weight".into(), vec![FEATURE_DIM, flat]),
        ("fc1.bias".into(), vec![FEATURE_DIM]),
        ("fc2.weight".into(), vec![classes, FEATURE_DIM]),
        ("fc2.bias".into(), vec![classes]),
    ]
}

/// He-normal initialisation (suits (leaky) ReLU), zero biases.
fn init(spec: &NetworkSpec, classes: usize, seed: u64) -> Result<TensorMap> {
    let mut map = TensorMap::new();
    let conv: Vec<TensorSpec> = spec.tensors();
    let all = conv
        .into_iter()
        .filter(|t| t.role == TensorRole::Parameter)
        .map(|t| (t.name, t.shape))
        .chain(head_shapes(spec, classes));
    for (name, shape) in all {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let values = if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            normal_vec(
                &mut rng_for(seed, &format!("classifier/{name}")),
                n,
                0.0,
                (2.0 / fan_in as f32).sqrt(),
            )
        };
        map.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Ok(map)
}

impl Classifier {
    fn from_tensors(info: ClassifierInfo, tensors: &TensorMap, device: &Device) -> Result<Self> {
        let spec = conv_spec(info.image_size, info.channels);
        let var = |k: &str| -> Result<Var> {
            let t = tensors
                .get(k)
                .ok_or_else(|| MetricsError::data("classifier", format!("missing tensor {k}")))?;
            Ok(Var::from_tensor(&t.to_device(device)?)?)
        };
        Ok(Self {
            convs: Network::from_tensors(spec, tensors, device)?,
            fc1: (var("fc1.weight")?, var("fc1.bias")?),
            fc2: (var("fc2.weight")?, var("fc2.bias")?),
            info,
        })
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        let mut p = self.convs.parameters();
        p.push(("fc1.weight".into(), self.fc1.0.clone()));
        p.push(("fc1.bias".into(), self.fc1.1.clone()));
        p.push(("fc2.weight".into(), self.fc2.0.clone()));
        p.push(("fc2.bias".into(), self.fc2.1.clone()));
        p
    }

    /// Features `[N, 128]` and logits `[N, classes]` of NCHW images in [-1, 1].
    pub fn forward(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.convs.forward(images, None, true, false)?;
        let h = h.flatten_from(1)?;
        let features = h
            .matmul(&self.fc1.0.as_tensor().t()?)?
            .broadcast_add(self.fc1.1.as_tensor())?
            .relu()?;
        let logits = features
            .matmul(&self.fc2.0.as_tensor().t()?)?
            .broadcast_add(self.fc2.1.as_tensor())?;
        Ok((features, logits))
    }

    /// Features and class probabilities for images, in batches; returned as flat row-major vectors.
    pub fn features_and_probs(&self, images: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = images.dim(0)?;
        let (mut feats, mut probs) = (Vec::new(), Vec::new());
        for start in (0..n).step_by(500) {
            let len = 500.min(n - start);
            let (f, l) = self.forward(&images.narrow(0, start, len)?.detach())?;
            feats.extend(f.flatten_all()?.to_vec1::<f32>()?);
            probs.extend(
                candle_nn::ops::softmax(&l, D::Minus1)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        Ok((feats, probs))
    }

    /// Accuracy on a data set.
    pub fn accuracy(&self, data: &Dataset, device: &Device) -> Result<f64> {
        let idx: Vec<usize> = (0..data.len()).collect();
        let mut correct = 0usize;
        for chunk in idx.chunks(500) {
            let (x, y) = data.batch(chunk, device)?;
            let (_, logits) = self.forward(&x)?;
            let pred = logits.argmax(D::Minus1)?.to_dtype(DType::U32)?;
            correct += pred
                .eq(&y)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()? as usize;
        }
        Ok(correct as f64 / data.len() as f64)
    }
}

/// Where the classifier of a data set is cached: `{data_dir}/.gantry/classifier-{size}x{channels}-{fit}.safetensors`.
pub fn cache_path(spec: &DataSpec) -> PathBuf {
    let fit = match spec.fit {
        data::Fit::Crop => "crop",
        data::Fit::Pad => "pad",
    };
    spec.dir.join(".gantry").join(format!(
        "classifier-{}x{}-{fit}.safetensors",
        spec.image_size, spec.channels
    ))
}

/// Loads the cached classifier of `spec`, if present.
pub fn load(spec: &DataSpec, device: &Device) -> Result<Option<Classifier>> {
    let path = cache_path(spec);
    if !path.is_file() {
        return Ok(None);
    }
    let (tensors, meta) = read_safetensors_with_metadata(&path)?;
    let info: ClassifierInfo = meta
        .get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| MetricsError::data(&path, "classifier file has no info metadata"))?;
    Ok(Some(Classifier::from_tensors(info, &tensors, device)?))
}

/// Trains the classifier of `spec` for `epochs` on the train split, measures it on the test
/// split, and caches it. `log` receives progress lines.
pub fn train(
    spec: &DataSpec,
    epochs: usize,
    device: &Device,
    log: &mut dyn FnMut(String),
) -> Result<Classifier> {
    let train_set = data::load(spec, Split::Train)?;
    let test_set = data::load(spec, Split::Test)?;
    let classes = train_set.class_names.len();
    if classes < 2 {
        return Err(MetricsError::data(
            &spec.dir,
            "the classifier needs at least two classes",
        ));
    }
    let conv = conv_spec(spec.image_size, spec.channels);
    let info = ClassifierInfo {
        dataset: train_set.name.clone(),
        image_size: spec.image_size,
        channels: spec.channels,
        classes,
        fit: spec.fit,
        epochs,
        test_accuracy: 0.0,
    };
    let mut model = Classifier::from_tensors(info, &init(&conv, classes, 0)?, device)?;
    let mut opt = Adam::new(
        model.parameters(),
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
    )?;
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    let batch = 128;
    for epoch in 0..epochs {
        // Halving the learning rate every epoch settles the noisy late epochs of constant-rate Adam.
        opt.config.lr = 1e-3 * 0.5f64.powi(epoch as i32);
        order.shuffle(&mut rng_for(0, &format!("classifier/epoch-{epoch}")));
        let mut loss_sum = 0f64;
        let mut batches = 0usize;
        for chunk in order.chunks(batch).filter(|c| c.len() > 1) {
            let (x, y) = train_set.batch(chunk, device)?;
            let (_, logits) = model.forward(&x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            batches += 1;
            opt.step(&loss.backward()?)?;
        }
        let acc = model.accuracy(&test_set, device)?;
        log(format!(
            "classifier epoch {}: loss {:.4}, test accuracy {:.2}%",
            epoch + 1,
            loss_sum / batches as f64,
            acc * 100.0
        ));
        model.info.test_accuracy = acc;
    }
    save(&model, &cache_path(spec))?;
    Ok(model)
}

fn save(model: &Classifier, path: &Path) -> Result<()> {
    let mut tensors = model.convs.to_tensors()?;
    for (name, var) in model
        .parameters()
        .into_iter()
        .filter(|(n, _)| n.starts_with("fc"))
    {
        tensors.insert(name, var.as_tensor().to_device(&Device::Cpu)?);
    }
    let meta = std::collections::HashMap::from([(
        "info".to_string(),
        serde_json::to_string(&model.info).expect("info serialises"),
    )]);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| MetricsError::io(dir, e))?;
    }
    gantry_models::atomic::write_file_atomic(path, &safetensors_bytes(&tensors, Some(meta))?)
        .map_err(gantry_models::ModelError::from)?;
    Ok(())
}

/// The cached classifier of `spec`, training (and caching) it first if needed.
pub fn load_or_train(
    spec: &DataSpec,
    epochs: usize,
    device: &Device,
    log: &mut dyn FnMut(String),
) -> Result<Classifier> {
    match load(spec, device)? {
        Some(c) => Ok(c),
        None => {
            log(format!(
                "training the evaluation classifier for {} (cached at {})",
                spec.dir.display(),
                cache_path(spec).display()
            ));
            train(spec, epochs, device, log)
        }
    }
}
