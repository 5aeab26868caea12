//! Seeded weight initialisation, each tensor as its spec says (DCGAN: conv weights N(0, 0.02),
//! BatchNorm gamma N(1, 0.02); ResNet: Xavier-uniform weights, gamma 1; both: beta 0, running
//! mean 0, running variance 1, learned label embeddings N(0, 1), one-hot label tables the
//! identity).

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::Result;
use crate::spec::{Init, NetworkSpec};
use crate::tensors::TensorMap;

/// A reproducible random stream for `(seed, purpose)`: the same pair always yields the same numbers,
/// independently of what else was drawn before. Used for weights, latents and data order.
pub fn rng_for(seed: u64, purpose: &str) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(fnv1a(purpose.as_bytes()));
    rng
}

/// 64-bit FNV-1a hash: a stable (across builds and platforms) way to name a random stream.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `n` draws from N(mean, std) out of `rng`.
pub fn normal_vec(rng: &mut ChaCha8Rng, n: usize, mean: f32, std: f32) -> Vec<f32> {
    let dist = Normal::new(mean, std).expect("std is finite and positive");
    (0..n).map(|_| dist.sample(rng)).collect()
}

/// Fresh weights for every tensor of `spec`, each drawn as its [`Init`] says from the stream
/// named `{prefix}.{tensor}`.
pub fn init_tensors(spec: &NetworkSpec, prefix: &str, seed: u64) -> Result<TensorMap> {
    let mut map = TensorMap::new();
    for t in spec.tensors() {
        let n: usize = t.shape.iter().product();
        let mut rng = rng_for(seed, &format!("{prefix}.{}", t.name));
        let data = match t.init {
            Init::Normal { mean, std } => normal_vec(&mut rng, n, mean, std),
            Init::Uniform { bound } => {
                let dist = Uniform::new_inclusive(-bound, bound).expect("bound is finite");
                (0..n).map(|_| dist.sample(&mut rng)).collect()
            }
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Identity => {
                let k = t.shape[0];
                (0..n)
                    .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
                    .collect()
            }
        };
        map.insert(t.name, Tensor::from_vec(data, t.shape, &Device::Cpu)?);
    }
    Ok(map)
}

/// `n` latent vectors of size `dim`, N(0, 1), drawn from the stream `purpose` of `seed`: the
/// same seed and purpose give the same latents on any device and in any program of the
/// training side (samples, evaluation, the training step).
pub fn latents(
    seed: u64,
    purpose: &str,
    n: usize,
    dim: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let data = normal_vec(&mut rng_for(seed, purpose), n * dim, 0.0, 1.0);
    Tensor::from_vec(data, (n, dim), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generator_spec, ModelConfig};

    #[test]
    fn init_is_seeded_and_has_dcgan_statistics() {
        let spec = generator_spec(&ModelConfig::default());
        let a = init_tensors(&spec, "g", 7).unwrap();
        let b = init_tensors(&spec, "g", 7).unwrap();
        let c = init_tensors(&spec, "g", 8).unwrap();
        let w = |m: &TensorMap, k: &str| m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w(&a, "layers.1.weight"), w(&b, "layers.1.weight"));
        assert_ne!(w(&a, "layers.1.weight"), w(&c, "layers.1.weight"));
        let conv = w(&a, "layers.1.weight");
        let mean = conv.iter().sum::<f32>() / conv.len() as f32;
        let std = (conv.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / conv.len() as f32).sqrt();
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((std - 0.02).abs() < 1e-3, "std {std}");
        let gamma = w(&a, "layers.1.bn.weight");
        let gmean = gamma.iter().sum::<f32>() / gamma.len() as f32;
        assert!((gmean - 1.0).abs() < 0.01, "gamma mean {gmean}");
        assert!(w(&a, "layers.1.bn.bias").iter().all(|&x| x == 0.0));
        assert!(w(&a, "layers.1.bn.running_var").iter().all(|&x| x == 1.0));
    }

    /// The stream names hash as FNV-1a (the published test vectors), so every tensor, latent
    /// and data order draws from its own stream, the same on any build.
    #[test]
    fn streams_are_named_by_fnv1a() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        // Two tensors of the same shape and init draw different values.
        let spec = generator_spec(&ModelConfig::default());
        let a = init_tensors(&spec, "g", 7).unwrap();
        let w = |k: &str| a[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(w("layers.1.bn.weight")[..8], w("layers.2.bn.weight")[..8]);
    }

    /// A fixed one-hot label code is the identity table.
    #[test]
    fn one_hot_label_tables_are_the_identity() {
        let cfg = ModelConfig {
            num_classes: Some(3),
            label_embed_dim: 0,
            ..Default::default()
        };
        let a = init_tensors(&generator_spec(&cfg), "g", 1).unwrap();
        let table = a["label_embedding.weight"].to_vec2::<f32>().unwrap();
        assert_eq!(table, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    }

    /// Latents are `[n, dim]` N(0, 1) draws of the stream `(seed, purpose)`, in row order.
    #[test]
    fn latents_are_the_named_stream_in_rows() {
        let z = latents(3, "eval", 4, 5, &Device::Cpu).unwrap();
        assert_eq!(z.dims(), [4, 5]);
        let expected = normal_vec(&mut rng_for(3, "eval"), 20, 0.0, 1.0);
        assert_eq!(z.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected);
        let other = latents(3, "samples", 4, 5, &Device::Cpu).unwrap();
        assert_ne!(other.to_vec2::<f32>().unwrap(), z.to_vec2::<f32>().unwrap());
    }

    /// A learned input embedding starts N(0, 1); a projection table Xavier-uniform (SNGAN).
    #[test]
    fn label_tables_start_as_their_kind_says() {
        let learned = ModelConfig {
            num_classes: Some(10),
            label_embed_dim: 50,
            ..Default::default()
        };
        let t = init_tensors(&generator_spec(&learned), "g", 1).unwrap();
        let v = t["label_embedding.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        assert!(
            mean.abs() < 0.15 && (std - 1.0).abs() < 0.1,
            "mean {mean} std {std}"
        );
        let projection = ModelConfig {
            arch: crate::Arch::Resnet,
            num_classes: Some(10),
            d_width: 32,
            ..Default::default()
        };
        let t = init_tensors(&crate::discriminator_spec(&projection), "d", 1).unwrap();
        let v = t["projection.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let bound = (6.0f32 / (10.0 + 64.0)).sqrt();
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            max <= bound && max > 0.9 * bound,
            "max {max}, Xavier bound {bound}"
        );
    }
}
