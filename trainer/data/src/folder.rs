//! Image folders like torchvision's `ImageFolder`: one subfolder per class holding PNG/JPEG files.
//! A folder with images and no subfolders is one class.

use std::path::{Path, PathBuf};

use image::DynamicImage;

use crate::error::{DataError, Result};

fn is_image(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

/// An image file and its class index.
pub type LabelledFile = (PathBuf, u32);

/// Class names (sorted) and the labelled files of an image folder.
pub fn scan(dir: &Path) -> Result<(Vec<String>, Vec<LabelledFile>)> {
    let entries = sorted_entries(dir)?;
    let class_dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    let mut classes = Vec::new();
    let mut files = Vec::new();
    if class_dirs.is_empty() {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "images".into());
        classes.push(name);
        files.extend(
            entries
                .iter()
                .filter(|p| is_image(p))
                .map(|p| (p.clone(), 0)),
        );
    } else {
        for class_dir in class_dirs {
            let label = classes.len() as u32;
            let images: Vec<PathBuf> = sorted_entries(class_dir)?
                .into_iter()
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            if images.is_empty() {
                continue;
            }
            classes.push(
                class_dir
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            files.extend(images.into_iter().map(|p| (p, label)));
        }
    }
    if files.is_empty() {
        return Err(DataError::data(
            dir,
            "no PNG or JPEG images found (expected class subfolders of images, like ImageFolder)",
        ));
    }
    Ok((classes, files))
}

/// Decodes one image file; undecodable files are an error naming the file.
pub fn decode(path: &Path) -> Result<DynamicImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    reader
        .decode()
        .map_err(|e| DataError::data(path, format!("cannot decode image ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_classes_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        for (class, n) in [("dog", 2), ("cat", 1), ("empty", 0)] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for i in 0..n {
                image::GrayImage::new(4, 4)
                    .save(dir.path().join(class).join(format!("{i}.png")))
                    .unwrap();
            }
        }
        std::fs::write(dir.path().join("dog/readme.txt"), "x").unwrap();
        let (classes, files) = scan(dir.path()).unwrap();
        assert_eq!(classes, vec!["cat", "dog"]);
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].1, 0);
        assert_eq!(files[2].1, 1);
    }

    #[test]
    fn empty_folder_and_undecodable_image_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = scan(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no PNG or JPEG images"), "{err}");
        let bad = dir.path().join("broken.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let err = decode(&bad).unwrap_err().to_string();
        assert!(
            err.contains("broken.png") && err.contains("cannot decode"),
            "{err}"
        );
    }
}
