//! A folder of generated images to score (`trainer eval --images`): flat, or sorted into one
//! subfolder per class asked for (`DIR/<class>/*.png`, the ImageFolder layout), which makes the
//! class agreement of a conditional generator from another tool measurable.

use std::path::Path;

use candle_core::{Device, Tensor};
use gantry_data::{self as data, preprocess, DataSpec};

use crate::{MetricsError, Result};

/// The images of `dir` as `[N, C, S, S]` in [-1, 1] (fitted to `spec`), and, when they sit in
/// class subfolders, the class each was generated for (an index into `class_names`).
pub fn load(
    dir: &Path,
    spec: &DataSpec,
    class_names: &[String],
    device: &Device,
) -> Result<(Tensor, Option<Vec<u32>>)> {
    let (folders, files) = data::folder::scan(dir)?;
    let asked = if files.iter().all(|(path, _)| path.parent() == Some(dir)) {
        None
    } else {
        let classes = folders
            .iter()
            .map(|folder| {
                class_of(folder, class_names).ok_or_else(|| not_a_class(dir, folder, class_names))
            })
            .collect::<Result<Vec<u32>>>()?;
        Some(files.iter().map(|&(_, k)| classes[k as usize]).collect())
    };
    let s = spec.image_size;
    let mut pixels = Vec::with_capacity(files.len() * spec.channels * s * s);
    for (path, _) in &files {
        let img = data::folder::decode(path)?;
        pixels.extend(
            preprocess::to_chw_bytes(&img, s as u32, spec.channels, spec.fit)
                .iter()
                .map(|&b| b as f32 / 127.5 - 1.0),
        );
    }
    let images = Tensor::from_vec(pixels, (files.len(), spec.channels, s, s), device)?;
    Ok((images, asked))
}

/// The class a subfolder names: one of `class_names`, or its index (`0`, `1`, ...).
fn class_of(folder: &str, class_names: &[String]) -> Option<u32> {
    if let Some(k) = class_names.iter().position(|name| name == folder) {
        return Some(k as u32);
    }
    match folder.parse::<usize>() {
        Ok(k) if k < class_names.len() && folder == k.to_string() => Some(k as u32),
        _ => None,
    }
}

fn not_a_class(dir: &Path, folder: &str, class_names: &[String]) -> MetricsError {
    MetricsError::data(
        dir.join(folder),
        format!(
            "a subfolder of generated images must name the class they were generated for, one of \
             the data set's classes ({}) or its index 0..{}; '{folder}' is neither (put \
             unconditional samples directly in {})",
            class_names.join(", "),
            class_names.len() - 1,
            dir.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_subfolder_names_a_class_by_name_or_by_index() {
        let classes = names(&["T-shirt/top", "Trouser", "Pullover", "3"]);
        assert_eq!(class_of("Trouser", &classes), Some(1));
        assert_eq!(class_of("2", &classes), Some(2));
        // A class whose name is a number is that class, not the index.
        assert_eq!(class_of("3", &classes), Some(3));
        for other in ["4", "-1", "02", "trouser", ""] {
            assert_eq!(class_of(other, &classes), None, "{other}");
        }
        let digits = names(&["1", "0"]);
        assert_eq!(class_of("0", &digits), Some(1), "the name comes first");
    }
}
