//! DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training",
//! 2020): random translation, cutout and colour changes applied to the real *and* the generated
//! images every time D sees them, built from differentiable tensor ops so that G's gradient
//! flows through the augmentation. D then cannot memorise a small data set, and G is not pushed
//! to generate augmented images (the augmentation is applied to both sides). The operations and
//! their ranges are the paper's reference implementation's (`DiffAugment_pytorch.py`).
//! Every random choice comes from a stream named by seed, step and purpose, so a resumed run
//! draws the same augmentations as an uninterrupted one.

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Which augmentations are applied (`--augment translation,cutout,color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Augment {
    /// Shift by up to 1/8 of the side in each direction, filling with zeros (the middle of
    /// the [-1, 1] pixel range).
    pub translation: bool,
    /// Zero a square of half the side at a random place.
    pub cutout: bool,
    /// Random brightness, saturation and contrast.
    pub color: bool,
}

/// The shift range of translation, as a fraction of the side.
const TRANSLATION_RATIO: f64 = 0.125;
/// The side of the cutout square, as a fraction of the image's side.
const CUTOUT_RATIO: f64 = 0.5;

impl Augment {
    /// No augmentation.
    pub const OFF: Self = Self {
        translation: false,
        cutout: false,
        color: false,
    };

    /// Whether nothing is applied.
    pub fn is_off(&self) -> bool {
        *self == Self::OFF
    }

    /// `x` (`[N, C, H, W]`) augmented with random draws from `rng`: colour, then translation,
    /// then cutout (the reference's order). Every image gets its own draws.
    pub fn apply(&self, x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let mut x = x.clone();
        if self.color {
            x = color(&x, rng)?;
        }
        if self.translation {
            x = translation(&x, rng)?;
        }
        if self.cutout {
            x = cutout(&x, rng)?;
        }
        Ok(x)
    }
}

/// One random factor per image, shaped `[N, 1, 1, 1]` to broadcast over an image.
fn per_image(x: &Tensor, rng: &mut ChaCha8Rng, f: impl Fn(f32) -> f32) -> Result<Tensor> {
    let n = x.dim(0)?;
    let values: Vec<f32> = (0..n).map(|_| f(rng.random::<f32>())).collect();
    Ok(Tensor::from_vec(values, (n, 1, 1, 1), x.device())?.to_dtype(x.dtype())?)
}

/// Brightness `x + (r - 0.5)`, saturation `(x - mean_c) * 2r + mean_c`, contrast
/// `(x - mean) * (r + 0.5) + mean`, each with its own `r` ~ U(0, 1) per image.
fn color(x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let x = x.broadcast_add(&per_image(x, rng, |r| r - 0.5)?)?;
    let mean = x.mean_keepdim(1)?;
    let x = x
        .broadcast_sub(&mean)?
        .broadcast_mul(&per_image(&x, rng, |r| r * 2.0)?)?
        .broadcast_add(&mean)?;
    let mean = x.mean_keepdim((1, 2, 3))?;
    Ok(x.broadcast_sub(&mean)?
        .broadcast_mul(&per_image(&x, rng, |r| r + 0.5)?)?
        .broadcast_add(&mean)?)
}

/// Shifts each image by whole pixels in `[-s, s]` on both axes (`s` = side / 8, rounded),
/// filling what comes in with zeros.
fn translation(x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    let (sy, sx) = (
        (h as f64 * TRANSLATION_RATIO + 0.5) as usize,
        (w as f64 * TRANSLATION_RATIO + 0.5) as usize,
    );
    let padded = x.pad_with_zeros(2, sy, sy)?.pad_with_zeros(3, sx, sx)?;
    let mut images = Vec::with_capacity(n);
    for i in 0..n {
        let dy = rng.random_range(-(sy as i64)..=sy as i64);
        let dx = rng.random_range(-(sx as i64)..=sx as i64);
        // Output pixel (y, x) shows input pixel (y - dy, x - dx): padded row y - dy + sy.
        let image = padded
            .narrow(0, i, 1)?
            .narrow(2, (sy as i64 - dy) as usize, h)?
            .narrow(3, (sx as i64 - dx) as usize, w)?;
        images.push(image);
    }
    Ok(Tensor::cat(&images, 0)?)
}

/// Multiplies each image by a mask that is zero on one square of half the side, centred at a
/// random place (clipped at the borders), the same for every channel.
fn cutout(x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    let (ch, cw) = (
        (h as f64 * CUTOUT_RATIO + 0.5) as usize,
        (w as f64 * CUTOUT_RATIO + 0.5) as usize,
    );
    let mut mask = vec![1f32; n * h * w];
    for image in mask.chunks_mut(h * w) {
        let oy = rng.random_range(0..h + (1 - ch % 2)) as i64 - (ch / 2) as i64;
        let ox = rng.random_range(0..w + (1 - cw % 2)) as i64 - (cw / 2) as i64;
        for y in oy.max(0)..(oy + ch as i64).min(h as i64) {
            for x in ox.max(0)..(ox + cw as i64).min(w as i64) {
                image[y as usize * w + x as usize] = 0.0;
            }
        }
    }
    let mask = Tensor::from_vec(mask, (n, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_mul(&mask)?)
}

impl FromStr for Augment {
    type Err = String;
    /// `off`, or a comma-separated list of `translation`, `cutout`, `color`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut a = Self::OFF;
        if s == "off" || s == "none" {
            return Ok(a);
        }
        for part in s.split(',').map(str::trim) {
            match part {
                "translation" => a.translation = true,
                "cutout" => a.cutout = true,
                "color" | "colour" => a.color = true,
                other => {
                    return Err(format!(
                    "unknown augmentation `{other}` (expected translation, cutout, color or off)"
                ))
                }
            }
        }
        Ok(a)
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.translation, "translation"),
            (self.cutout, "cutout"),
            (self.color, "color"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            f.write_str("off")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use gantry_models::init::{normal_vec, rng_for};

    const ALL: Augment = Augment {
        translation: true,
        cutout: true,
        color: true,
    };

    fn images(n: usize, c: usize, side: usize) -> Tensor {
        let values = normal_vec(&mut rng_for(3, "images"), n * c * side * side, 0.0, 0.5);
        Tensor::from_vec(values, (n, c, side, side), &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn the_same_stream_gives_the_same_augmentation_and_another_does_not() {
        let x = images(4, 3, 16);
        let a = ALL.apply(&x, &mut rng_for(1, "augment/step-3")).unwrap();
        let b = ALL.apply(&x, &mut rng_for(1, "augment/step-3")).unwrap();
        let c = ALL.apply(&x, &mut rng_for(1, "augment/step-4")).unwrap();
        assert_eq!(a.dims(), x.dims());
        assert_eq!(flat(&a), flat(&b));
        assert_ne!(flat(&a), flat(&c));
        assert_eq!(
            flat(&Augment::OFF.apply(&x, &mut rng_for(1, "x")).unwrap()),
            flat(&x)
        );
    }

    /// Translation moves pixels by whole steps within 1/8 of the side and fills with zeros;
    /// cutout zeroes a square of half the side (clipped) in every channel.
    #[test]
    fn translation_shifts_and_cutout_masks() {
        let side = 16;
        let x = (images(8, 2, side).abs().unwrap() + 1.0).unwrap(); // no zero pixels
        let only = |translation, cutout| Augment {
            translation,
            cutout,
            color: false,
        };
        let mut rng = rng_for(5, "t");
        let shifted = only(true, false).apply(&x, &mut rng).unwrap();
        for i in 0..8 {
            let (src, dst) = (
                x.get(i).unwrap().get(0).unwrap().to_vec2::<f32>().unwrap(),
                shifted
                    .get(i)
                    .unwrap()
                    .get(0)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
            );
            let found = (-2i64..=2)
                .flat_map(|dy| (-2i64..=2).map(move |dx| (dy, dx)))
                .find(|&(dy, dx)| {
                    (0..side as i64).all(|y| {
                        (0..side as i64).all(|xx| {
                            let (sy, sx) = (y - dy, xx - dx);
                            let want = if (0..side as i64).contains(&sy)
                                && (0..side as i64).contains(&sx)
                            {
                                src[sy as usize][sx as usize]
                            } else {
                                0.0
                            };
                            dst[y as usize][xx as usize] == want
                        })
                    })
                });
            assert!(found.is_some(), "image {i} is not a shift within 2 pixels");
        }
        let cut = only(false, true).apply(&x, &mut rng).unwrap();
        for i in 0..8 {
            let image = cut.get(i).unwrap();
            let zeros: Vec<usize> = (0..2)
                .map(|c| {
                    flat(&image.get(c).unwrap())
                        .iter()
                        .filter(|v| **v == 0.0)
                        .count()
                })
                .collect();
            assert_eq!(zeros[0], zeros[1], "same mask in every channel");
            assert!(
                (1..=64).contains(&zeros[0]),
                "at most an 8x8 square: {}",
                zeros[0]
            );
        }
    }

    /// For fixed random draws the augmentation is a linear map of the pixels (plus a constant),
    /// so the gradient autograd gives for a linear functional of its output equals the exact
    /// finite difference: the augmentation is differentiable and passes G's gradient through.
    #[test]
    fn gradients_flow_through_every_augmentation() {
        let x = images(2, 3, 8);
        let weights = images(2, 3, 8);
        let objective = |input: &Tensor| -> Tensor {
            ALL.apply(input, &mut rng_for(9, "grad"))
                .unwrap()
                .mul(&weights)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let var = Var::from_tensor(&x).unwrap();
        let grads = objective(var.as_tensor()).backward().unwrap();
        let grad = flat(grads.get(var.as_tensor()).unwrap());
        assert!(grad.iter().any(|g| *g != 0.0));
        let base = objective(&x).to_scalar::<f32>().unwrap() as f64;
        let mut values = flat(&x);
        for i in [0usize, 17, 64, 100, 191, 383] {
            let old = values[i];
            values[i] = old + 1.0;
            let bumped = Tensor::from_vec(values.clone(), x.dims(), &Device::Cpu).unwrap();
            let fd = objective(&bumped).to_scalar::<f32>().unwrap() as f64 - base;
            values[i] = old;
            assert!(
                (fd - grad[i] as f64).abs() <= 1e-3 * (1.0 + fd.abs()),
                "pixel {i}: autograd {} vs finite difference {fd}",
                grad[i]
            );
        }
    }

    #[test]
    fn policies_parse_and_print() {
        let a: Augment = "translation,cutout,color".parse().unwrap();
        assert_eq!(a, ALL);
        assert_eq!(a.to_string(), "translation,cutout,color");
        assert_eq!("off".parse::<Augment>().unwrap(), Augment::OFF);
        assert_eq!(Augment::OFF.to_string(), "off");
        let err = "flip".parse::<Augment>().unwrap_err();
        assert!(err.contains("flip"), "{err}");
    }

    /// `n` images of `c` x `h` x `w` (non-square, so that axes cannot be swapped unseen).
    fn block(n: usize, c: usize, h: usize, w: usize) -> (Tensor, Vec<f32>) {
        let values = normal_vec(&mut rng_for(4, "block"), n * c * h * w, 0.0, 0.5);
        let t = Tensor::from_vec(values.clone(), (n, c, h, w), &Device::Cpu).unwrap();
        (t, values)
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-5,
                "{what}: element {k}: {g} vs {w}"
            );
        }
    }

    /// Each augmentation equals its definition (DiffAugment's, written as loops in f64 here),
    /// drawing from the stream in the same order: colour's brightness, saturation and contrast
    /// factors for every image in turn; translation's (dy, dx) in `[-side/8, side/8]` and
    /// cutout's corner in `[0, side + 1 - size % 2) - size / 2` per image.
    #[test]
    fn each_augmentation_equals_its_definition_pixel_by_pixel() {
        // Even and odd cutout sizes (4 x 6 and 3 x 5) draw their corners from other ranges.
        for (h, w) in [(8, 12), (6, 10)] {
            augmentations_equal_their_definition(3, 3, h, w);
        }
    }

    fn augmentations_equal_their_definition(n: usize, c: usize, h: usize, w: usize) {
        let (x, v) = block(n, c, h, w);
        let at = |i: usize, ch: usize, y: usize, xx: usize| ((i * c + ch) * h + y) * w + xx;

        let mut draws = rng_for(5, "color");
        let mut factors = |f: fn(f64) -> f64| -> Vec<f64> {
            (0..n).map(|_| f(draws.random::<f32>() as f64)).collect()
        };
        let (bright, sat, contrast) = (
            factors(|r| r - 0.5),
            factors(|r| r * 2.0),
            factors(|r| r + 0.5),
        );
        let mut want = vec![0f64; v.len()];
        for i in 0..n {
            let mut img: Vec<f64> = (0..c * h * w)
                .map(|k| v[i * c * h * w + k] as f64 + bright[i])
                .collect();
            for p in 0..h * w {
                let mean = (0..c).map(|ch| img[ch * h * w + p]).sum::<f64>() / c as f64;
                for ch in 0..c {
                    let e = &mut img[ch * h * w + p];
                    *e = (*e - mean) * sat[i] + mean;
                }
            }
            let mean = img.iter().sum::<f64>() / img.len() as f64;
            for (k, e) in img.iter().enumerate() {
                want[i * c * h * w + k] = (e - mean) * contrast[i] + mean;
            }
        }
        assert_close(
            &flat(&color(&x, &mut rng_for(5, "color")).unwrap()),
            &want,
            "color",
        );

        let mut draws = rng_for(6, "translation");
        let round = |f: f64| f.round() as i64;
        let (sy, sx) = (round(h as f64 / 8.0), round(w as f64 / 8.0));
        let mut want = vec![0f64; v.len()];
        for i in 0..n {
            let dy = draws.random_range(-sy..=sy);
            let dx = draws.random_range(-sx..=sx);
            for ch in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        let (fy, fx) = (y as i64 - dy, xx as i64 - dx);
                        if (0..h as i64).contains(&fy) && (0..w as i64).contains(&fx) {
                            want[at(i, ch, y, xx)] = v[at(i, ch, fy as usize, fx as usize)] as f64;
                        }
                    }
                }
            }
        }
        let got = flat(&translation(&x, &mut rng_for(6, "translation")).unwrap());
        assert_close(&got, &want, "translation");

        let mut draws = rng_for(7, "cutout");
        let (ch_size, cw_size) = (round(h as f64 / 2.0 - 1e-9), round(w as f64 / 2.0 - 1e-9));
        // An even size's window may start half its size before either edge, an odd one's
        // one pixel less at the far edge (DiffAugment's `randint(0, side + 1 - size % 2)`).
        let corners = |side: usize, size: i64| if size % 2 == 0 { side + 1 } else { side };
        let mut want: Vec<f64> = v.iter().map(|&e| e as f64).collect();
        for i in 0..n {
            let oy = draws.random_range(0..corners(h, ch_size)) as i64 - ch_size / 2;
            let ox = draws.random_range(0..corners(w, cw_size)) as i64 - cw_size / 2;
            for ch in 0..c {
                for y in 0..h as i64 {
                    for xx in 0..w as i64 {
                        if (oy..oy + ch_size).contains(&y) && (ox..ox + cw_size).contains(&xx) {
                            want[at(i, ch, y as usize, xx as usize)] = 0.0;
                        }
                    }
                }
            }
        }
        let got = flat(&cutout(&x, &mut rng_for(7, "cutout")).unwrap());
        assert_close(&got, &want, "cutout");
        assert!(
            got.iter().filter(|&&e| e == 0.0).count() > 0,
            "cutout cut nothing"
        );
    }

    #[test]
    fn only_the_empty_policy_is_off() {
        assert!(Augment::OFF.is_off());
        for policy in ["translation", "cutout", "color"] {
            assert!(!policy.parse::<Augment>().unwrap().is_off(), "{policy}");
        }
    }
}
