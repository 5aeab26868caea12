//! The progress animation of a run: its fixed-noise sample grids (`samples/step_*.png`) in step
//! order as a looping GIF, `<run>/progress.gif` (as the TensorFlow DCGAN tutorial makes).

use std::path::{Path, PathBuf};

use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame};

use crate::error::{Result, TrainError};

/// How long each frame shows.
const FRAME_MS: u32 = 250;
/// How long the last frame (the finished run) is held before the loop starts again.
const LAST_FRAME_MS: u32 = 2000;

/// The sample grids in `samples_dir` (`step_<N>.png`) in step order, up to step `up_to`
/// (grids of later steps were made by a killed run past the checkpoint it was resumed from).
pub fn sample_frames(samples_dir: &Path, up_to: u64) -> Result<Vec<(u64, PathBuf)>> {
    let entries = std::fs::read_dir(samples_dir).map_err(|e| TrainError::io(samples_dir, e))?;
    let mut frames: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let step = name
                .strip_prefix("step_")?
                .strip_suffix(".png")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .filter(|(step, _)| *step <= up_to)
        .collect();
    frames.sort();
    Ok(frames)
}

/// Writes `frames` (PNG files of one size) as a looping animated GIF at `out`, atomically.
pub fn write_gif(frames: &[(u64, PathBuf)], out: &Path) -> Result<()> {
    let Some((_, first)) = frames.first() else {
        return Err(TrainError::data(out, "no sample grids to animate"));
    };
    let size = image::image_dimensions(first)
        .map_err(|e| TrainError::data(first, format!("unreadable sample grid: {e}")))?;
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, 10);
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(|e| TrainError::data(out, format!("GIF encoding failed: {e}")))?;
        for (i, (_, path)) in frames.iter().enumerate() {
            let img = image::open(path)
                .map_err(|e| TrainError::data(path, format!("unreadable sample grid: {e}")))?;
            if (img.width(), img.height()) != size {
                return Err(TrainError::data(
                    path,
                    format!(
                        "is {}x{} but the first grid is {}x{}",
                        img.width(),
                        img.height(),
                        size.0,
                        size.1
                    ),
                ));
            }
            let ms = if i + 1 == frames.len() {
                LAST_FRAME_MS
            } else {
                FRAME_MS
            };
            let frame = Frame::from_parts(img.to_rgba8(), 0, 0, Delay::from_numer_denom_ms(ms, 1));
            encoder
                .encode_frame(frame)
                .map_err(|e| TrainError::data(out, format!("GIF encoding failed: {e}")))?;
        }
    }
    gantry_models::atomic::write_file_atomic(out, &bytes)?;
    Ok(())
}

/// Animates the run in `run` up to its latest checkpoint's step into `out` (default
/// `<run>/progress.gif`); returns where it was written and the number of frames.
pub fn animate_run(run: &Path, out: Option<&Path>) -> Result<(PathBuf, usize)> {
    let checkpoint = gantry_models::resolve_checkpoint(run)?;
    let step = gantry_models::Checkpoint::load_generator(&checkpoint)?.step();
    let samples = run.join("samples");
    if !samples.is_dir() {
        return Err(TrainError::data(
            run,
            "has no samples/ folder: not a training run's folder",
        ));
    }
    let frames = sample_frames(&samples, step)?;
    if frames.is_empty() {
        return Err(TrainError::data(
            &samples,
            format!("holds no sample grids up to step {step}"),
        ));
    }
    let out = out.map_or_else(|| run.join("progress.gif"), Path::to_path_buf);
    write_gif(&frames, &out)?;
    Ok((out, frames.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::gif::GifDecoder;
    use image::AnimationDecoder;

    /// The GIF has one frame per grid up to the step asked, in step order, each the grid's
    /// pixels (grey levels survive the palette exactly: a grey grid has at most 256 colours).
    #[test]
    fn one_frame_per_grid_in_step_order() {
        let dir = tempfile::tempdir().unwrap();
        for (step, level) in [(30u64, 90u8), (10, 30), (20, 60), (40, 120)] {
            image::GrayImage::from_pixel(5, 3, image::Luma([level]))
                .save(dir.path().join(format!("step_{step:06}.png")))
                .unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "not a grid").unwrap();
        let frames = sample_frames(dir.path(), 30).unwrap();
        assert_eq!(
            frames.iter().map(|f| f.0).collect::<Vec<_>>(),
            vec![10, 20, 30]
        );
        let out = dir.path().join("progress.gif");
        write_gif(&frames, &out).unwrap();
        let decoder =
            GifDecoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap())).unwrap();
        let decoded: Vec<_> = decoder.into_frames().collect_frames().unwrap();
        assert_eq!(decoded.len(), 3);
        for (frame, level) in decoded.iter().zip([30u8, 60, 90]) {
            assert_eq!(frame.buffer().dimensions(), (5, 3));
            assert_eq!(frame.buffer().get_pixel(2, 1).0[..3], [level; 3]);
        }
        let (num, den) = decoded[2].delay().numer_denom_ms();
        assert_eq!(num / den, LAST_FRAME_MS);
    }

    #[test]
    fn grids_of_different_sizes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        image::GrayImage::new(5, 3)
            .save(dir.path().join("step_000001.png"))
            .unwrap();
        image::GrayImage::new(4, 3)
            .save(dir.path().join("step_000002.png"))
            .unwrap();
        let frames = sample_frames(dir.path(), u64::MAX).unwrap();
        let err = write_gif(&frames, &dir.path().join("p.gif"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("step_000002.png") && err.contains("4x3"),
            "{err}"
        );
        assert!(!dir.path().join("p.gif").exists());
    }
}
