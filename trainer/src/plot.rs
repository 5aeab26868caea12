//! `losses.png`: discriminator and generator losses over the steps.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Result, TrainError};
use crate::metrics::StepMetrics;

/// Fonts tried for axis labels; without one the plot is drawn without text.
const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        FONT_CANDIDATES.iter().any(|p| {
            std::fs::read(p).ok().is_some_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    })
}

/// Moving average over `window` points, so noisy per-step losses read as trends.
fn smooth(values: &[f32], window: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(values.len());
    let mut sum = 0.0;
    for (i, v) in values.iter().enumerate() {
        sum += v;
        if i >= window {
            sum -= values[i - window];
        }
        out.push(sum / (i + 1).min(window) as f32);
    }
    out
}

/// Draws the loss curves of `history` to `path` (PNG, written atomically).
pub fn plot_losses(history: &[StepMetrics], path: &Path) -> Result<()> {
    if history.is_empty() {
        return Ok(());
    }
    let (w, h) = (900u32, 500u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let draw = |buf: &mut [u8]| -> std::result::Result<(), Box<dyn std::error::Error>> {
        let with_text = register_font();
        let root = BitMapBackend::with_buffer(buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let steps: Vec<f32> = history.iter().map(|m| m.step as f32).collect();
        let window = (history.len() / 50).max(1);
        let ld = smooth(
            &history.iter().map(|m| m.loss_d).collect::<Vec<_>>(),
            window,
        );
        let lg = smooth(
            &history.iter().map(|m| m.loss_g).collect::<Vec<_>>(),
            window,
        );
        let finite = |v: &&f32| v.is_finite();
        let ymax = ld
            .iter()
            .chain(&lg)
            .filter(finite)
            .fold(0.1f32, |a, &b| a.max(b))
            * 1.05;
        let ymin = ld
            .iter()
            .chain(&lg)
            .filter(finite)
            .fold(0.0f32, |a, &b| a.min(b));
        let (x0, x1) = (steps[0], steps[steps.len() - 1].max(steps[0] + 1.0));
        let mut builder = ChartBuilder::on(&root);
        builder.margin(15);
        if with_text {
            builder
                .caption(
                    format!("GAN losses (moving average of {window} steps)"),
                    ("sans-serif", 22),
                )
                .x_label_area_size(40)
                .y_label_area_size(50);
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, ymin..ymax)?;
        if with_text {
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("loss")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .draw()?;
        } else {
            chart
                .configure_mesh()
                .disable_x_mesh()
                .disable_y_mesh()
                .draw()?;
        }
        let series = [("loss_d", &ld, RED), ("loss_g", &lg, BLUE)];
        for (name, values, color) in series {
            let line = chart.draw_series(LineSeries::new(
                steps.iter().zip(values.iter()).map(|(&x, &y)| (x, y)),
                color.stroke_width(2),
            ))?;
            if with_text {
                line.label(name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
        if with_text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw(&mut buf)
        .map_err(|e| TrainError::data(path, format!("cannot draw the loss plot: {e}")))?;
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer has the plot's size");
    crate::samples::save_png(&image::DynamicImage::ImageRgb8(img), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_moving_average_is_over_the_last_window_points() {
        let got = smooth(&[1.0, 3.0, 5.0, 7.0, 100.0], 2);
        assert_eq!(got, [1.0, 2.0, 4.0, 6.0, 53.5]);
        assert_eq!(smooth(&[4.0, 8.0], 1), [4.0, 8.0]);
    }

    /// The mean row of the pixels of one colour in each half of the plot, left and right.
    fn mean_rows_of(img: &image::RgbImage, is_colour: impl Fn([u8; 3]) -> bool) -> (f64, f64) {
        let (mut sums, mut counts) = ([0f64; 2], [0f64; 2]);
        for (x, y, p) in img.enumerate_pixels() {
            if is_colour(p.0) {
                let half = (x >= img.width() / 2) as usize;
                sums[half] += y as f64;
                counts[half] += 1.0;
            }
        }
        assert!(
            counts[0] > 50.0 && counts[1] > 50.0,
            "the curve spans the plot: {counts:?}"
        );
        (sums[0] / counts[0], sums[1] / counts[1])
    }

    #[test]
    fn the_plot_draws_d_falling_in_red_and_g_rising_in_blue_across_the_steps() {
        let history: Vec<StepMetrics> = (1..=200)
            .map(|step| {
                let t = step as f32 / 200.0;
                StepMetrics {
                    step,
                    epoch: 0,
                    loss_d: 4.0 - 3.0 * t,
                    loss_g: 0.5 + 3.0 * t,
                    d_real: 0.5,
                    d_fake: 0.5,
                    img_per_sec: 1.0,
                    seconds: 0.0,
                    lr_d: 0.0,
                    lr_g: 0.0,
                    sync_ms: None,
                    r1_penalty: None,
                    eval: None,
                }
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("losses.png");
        plot_losses(&history, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (900, 500));
        let red = |[r, g, b]: [u8; 3]| r > 200 && g < 60 && b < 60;
        let blue = |[r, g, b]: [u8; 3]| b > 200 && r < 60 && g < 60;
        // Image rows grow downwards: a falling loss sits lower (larger row) on the right.
        let (d_left, d_right) = mean_rows_of(&img, red);
        let (g_left, g_right) = mean_rows_of(&img, blue);
        assert!(
            d_right > d_left + 100.0,
            "loss_d falls: rows {d_left} -> {d_right}"
        );
        assert!(
            g_right < g_left - 100.0,
            "loss_g rises: rows {g_left} -> {g_right}"
        );
        // Both curves fit the plot: loss_d starts near the top (4 of a 0..4.2 axis), loss_g near
        // the bottom.
        assert!(
            d_left < g_left,
            "at the start loss_d (4) is above loss_g (0.5)"
        );

        let empty = dir.path().join("empty.png");
        plot_losses(&[], &empty).unwrap();
        assert!(!empty.exists(), "no history, no plot");
    }

    /// With one of the candidate fonts installed, the plot's labels get it.
    #[test]
    fn an_installed_font_is_registered() {
        let installed = FONT_CANDIDATES
            .iter()
            .any(|p| std::path::Path::new(p).is_file());
        assert_eq!(register_font(), installed);
    }
}
