//! Image preprocessing: fit to a square of the training size, convert channels, store as bytes.

use image::imageops::FilterType;
use image::DynamicImage;

/// How an image is brought to the square training size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fit {
    /// Resize the shorter side to the size, then centre-crop (torchvision's Resize + CenterCrop).
    #[default]
    Crop,
    /// Centre-pad with black when smaller than the size (MNIST 28 -> 32 as in the PyTorch
    /// reference), otherwise behave like `Crop`.
    Pad,
}

impl std::str::FromStr for Fit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "crop" => Ok(Self::Crop),
            "pad" => Ok(Self::Pad),
            other => Err(format!("unknown fit `{other}` (expected crop or pad)")),
        }
    }
}

impl std::fmt::Display for Fit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Crop => "crop",
            Self::Pad => "pad",
        })
    }
}

/// Fits `img` to `size x size` with `channels` (1 = luma, 3 = RGB) and returns CHW bytes.
pub fn to_chw_bytes(img: &DynamicImage, size: u32, channels: usize, fit: Fit) -> Vec<u8> {
    let (w, h) = (img.width(), img.height());
    let square = if fit == Fit::Pad && w <= size && h <= size {
        let mut canvas = DynamicImage::new(size, size, img.color());
        image::imageops::overlay(
            &mut canvas,
            img,
            ((size - w) / 2) as i64,
            ((size - h) / 2) as i64,
        );
        canvas
    } else if w == size && h == size {
        img.clone()
    } else {
        let scale = size as f64 / w.min(h) as f64;
        let (nw, nh) = (
            ((w as f64 * scale).round() as u32).max(size),
            ((h as f64 * scale).round() as u32).max(size),
        );
        let resized = img.resize_exact(nw, nh, FilterType::Triangle);
        resized.crop_imm((nw - size) / 2, (nh - size) / 2, size, size)
    };
    let plane = (size * size) as usize;
    if channels == 1 {
        square.to_luma8().into_raw()
    } else {
        let rgb = square.to_rgb8().into_raw();
        let mut out = vec![0u8; 3 * plane];
        for (p, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + p] = px[c];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, RgbImage};

    #[test]
    fn crop_resizes_shorter_side_and_centres() {
        // 40x20 image: left half black, right half white; resized to 32x16... then the centre
        // 16x16 crop straddles the edge.
        let img = GrayImage::from_fn(40, 20, |x, _| image::Luma([if x < 20 { 0 } else { 255 }]));
        let out = to_chw_bytes(&DynamicImage::ImageLuma8(img), 16, 1, Fit::Crop);
        assert_eq!(out.len(), 256);
        assert!(out[16 * 8 + 1] < 10, "left of centre is dark");
        assert!(out[16 * 8 + 14] > 245, "right of centre is bright");
    }

    #[test]
    fn pad_keeps_pixels_and_adds_a_black_border() {
        let img = GrayImage::from_pixel(28, 28, image::Luma([200]));
        let out = to_chw_bytes(&DynamicImage::ImageLuma8(img), 32, 1, Fit::Pad);
        assert_eq!(out[0], 0);
        assert_eq!(out[2 * 32 + 2], 200);
        assert_eq!(out[29 * 32 + 29], 200);
        assert_eq!(out[30 * 32 + 30], 0);
    }

    #[test]
    fn converts_channels_to_planar() {
        let img = RgbImage::from_pixel(16, 16, image::Rgb([10, 20, 30]));
        let out = to_chw_bytes(&DynamicImage::ImageRgb8(img.clone()), 16, 3, Fit::Crop);
        assert_eq!((out[0], out[256], out[512]), (10, 20, 30));
        let grey = to_chw_bytes(&DynamicImage::ImageRgb8(img), 16, 1, Fit::Crop);
        assert_eq!(grey.len(), 256);
        let g = GrayImage::from_pixel(16, 16, image::Luma([77]));
        let rgb = to_chw_bytes(&DynamicImage::ImageLuma8(g), 16, 3, Fit::Crop);
        assert_eq!((rgb[0], rgb[256], rgb[512]), (77, 77, 77));
    }

    #[test]
    fn fits_parse_and_print_their_names() {
        for (fit, name) in [(Fit::Crop, "crop"), (Fit::Pad, "pad")] {
            assert_eq!(name.parse::<Fit>(), Ok(fit));
            assert_eq!(fit.to_string(), name);
        }
        let err = "stretch".parse::<Fit>().unwrap_err();
        assert!(err.contains("stretch"), "{err}");
    }

    /// `Pad` pads only an image that fits on both sides; one wider than the size is cropped
    /// (a 40x20 image at 32: resized to 64x32, centre 32x32), and `Crop` scales a small image
    /// up instead of padding it (a constant image stays constant: no black border).
    #[test]
    fn pad_needs_both_sides_to_fit_and_crop_never_pads() {
        let wide = GrayImage::from_fn(40, 20, |x, _| image::Luma([if x < 20 { 0 } else { 255 }]));
        let out = to_chw_bytes(&DynamicImage::ImageLuma8(wide), 32, 1, Fit::Pad);
        assert_eq!(out.len(), 32 * 32);
        // The crop straddles the black/white edge in the middle, rows alike: no padded rows.
        assert!(out[0] < 10 && out[31] > 245, "{:?}", &out[..32]);
        assert_eq!(&out[..32], &out[31 * 32..]);
        let small = GrayImage::from_pixel(20, 20, image::Luma([77]));
        let out = to_chw_bytes(&DynamicImage::ImageLuma8(small), 32, 1, Fit::Crop);
        assert!(out.iter().all(|&v| v == 77), "padded: {:?}", &out[..8]);
    }

    /// Crop resizes the shorter side to the size and cuts the centre: for each shape, the
    /// resized size and the crop corner written out by hand (40x20 at 32: 64x32 from x 16;
    /// 20x40: 32x64 from y 16; 33x50 at 16: 16x24 from y 4; 40x32 and 32x40 at 32: no resize,
    /// x or y from 4),
    /// on an image with no symmetry, so any other size or corner shows.
    #[test]
    fn crop_sizes_and_corners_are_torchvision_s() {
        for ((w, h), size, (nw, nh), (x, y)) in [
            ((40, 20), 32, (64, 32), (16, 0)),
            ((20, 40), 32, (32, 64), (0, 16)),
            ((33, 50), 16, (16, 24), (0, 4)),
            ((40, 32), 32, (40, 32), (4, 0)),
            ((32, 40), 32, (32, 40), (0, 4)),
        ] {
            let img = DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |i, j| {
                image::Luma([((i * 7 + j * 13) % 256) as u8])
            }));
            let want = img
                .resize_exact(nw, nh, FilterType::Triangle)
                .crop_imm(x, y, size, size)
                .to_luma8()
                .into_raw();
            let got = to_chw_bytes(&img, size, 1, Fit::Crop);
            assert_eq!(got, want, "{w}x{h} at {size}");
        }
    }
}
