//! TensorBoard event files of a run (`<run>/tb/`): the step metrics as scalars, the sample grid
//! as an image, the evaluation results under `eval/`. Every event is written to the file as it
//! happens, so `tensorboard --logdir runs` follows a live run. A resumed run first drops from
//! the earlier files every event after the step it resumes from (the steps a killed run logged
//! past its last checkpoint, which the resumed run redoes), so no step appears twice.

#![forbid(unsafe_code)]

pub mod event;
pub mod record;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use image::DynamicImage;
use prost::Message;

use event::{Event, Summary, SummaryImage, SummaryValue};
use gantry_files::{FileError, Result};

/// What TensorBoard's reader looks for in an event file's name.
const NAME_PREFIX: &str = "events.out.tfevents.";

/// The event format version TensorBoard expects in a file's first record.
const FILE_VERSION: &str = "brain.Event:2";

/// Appends events to one event file of a run.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Starts a new event file in `dir` for a run continuing after `step` (0 for a fresh run),
    /// first removing events after `step` from the files already there (each rewritten
    /// atomically). The new file's name sorts after theirs, as TensorBoard reads them in order.
    pub fn open(dir: &Path, step: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| FileError::io(dir, e))?;
        gantry_files::atomic::remove_stale_temps(dir);
        let existing = event_files(dir)?;
        for path in &existing {
            drop_events_after(path, step)?;
        }
        let newest = existing.iter().filter_map(|p| timestamp_of(p)).max();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let stamp = newest.map_or(now, |t| now.max(t + 1));
        let path = dir.join(format!(
            "{NAME_PREFIX}{stamp:010}.gantry.{}",
            std::process::id()
        ));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| FileError::io(&path, e))?;
        let mut writer = Self { path, file };
        writer.write(Event {
            wall_time: wall_time(),
            step: 0,
            file_version: Some(FILE_VERSION.into()),
            summary: None,
        })?;
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scalars at `step`, one event holding all of them.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
                image: None,
            })
            .collect();
        self.summary(step, Summary { value })
    }

    /// An image at `step` under `tag`, stored as PNG.
    pub fn image(&mut self, step: u64, tag: &str, image: &DynamicImage) -> Result<()> {
        let png = gantry_files::images::png_bytes(image)?;
        let colorspace = match image.color().channel_count() {
            1 => 1,
            4 => 4,
            _ => 3,
        };
        let image = SummaryImage {
            height: image.height() as i32,
            width: image.width() as i32,
            colorspace,
            encoded_image_string: png,
        };
        let value = vec![SummaryValue {
            tag: tag.into(),
            simple_value: None,
            image: Some(image),
        }];
        self.summary(step, Summary { value })
    }

    fn summary(&mut self, step: u64, summary: Summary) -> Result<()> {
        self.write(Event {
            wall_time: wall_time(),
            step: step as i64,
            file_version: None,
            summary: Some(summary),
        })
    }

    /// One record, handed to the OS at once (a reader sees it; a kill leaves it whole).
    fn write(&mut self, event: Event) -> Result<()> {
        let mut bytes = Vec::new();
        record::frame(&event.encode_to_vec(), &mut bytes);
        self.file
            .write_all(&bytes)
            .map_err(|e| FileError::io(&self.path, e))
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The event files in `dir`, sorted by name.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FileError::io(dir, e)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(NAME_PREFIX))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The events of an event file, up to a torn or damaged record.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|e| FileError::io(path, e))?;
    Ok(record::records(&bytes)
        .into_iter()
        .filter_map(|r| Event::decode(r).ok())
        .collect())
}

/// The seconds in an event file's name (`events.out.tfevents.<seconds>.<host>...`).
fn timestamp_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(NAME_PREFIX)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Rewrites `path` (atomically) without its events after `step` and anything after a torn
/// record; leaves it untouched when there is nothing to drop.
fn drop_events_after(path: &Path, step: u64) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| FileError::io(path, e))?;
    let records = record::records(&bytes);
    let mut kept = Vec::with_capacity(bytes.len());
    let mut dropped = false;
    for data in records {
        match Event::decode(data) {
            Ok(event) if event.step <= step as i64 => record::frame(data, &mut kept),
            _ => dropped = true,
        }
    }
    if !dropped && kept.len() == bytes.len() {
        return Ok(());
    }
    gantry_files::atomic::write_file_atomic(path, &kept)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(dir: &Path) -> Vec<(i64, String)> {
        event_files(dir)
            .unwrap()
            .iter()
            .flat_map(|p| read_events(p).unwrap())
            .flat_map(|e| {
                let step = e.step;
                e.summary
                    .into_iter()
                    .flat_map(move |s| s.value.into_iter().map(move |v| (step, v.tag)))
            })
            .collect()
    }

    /// A resumed writer drops the events after its step from the earlier file (including a torn
    /// record) and writes a file that sorts after it.
    #[test]
    fn a_resumed_writer_keeps_each_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let tb = dir.path().join("tb");
        let mut first = EventWriter::open(&tb, 0).unwrap();
        for step in 1..=5 {
            first
                .scalars(step, &[("loss".into(), step as f64)])
                .unwrap();
        }
        let first_path = first.path().to_path_buf();
        drop(first);
        // A torn record at the end, as a kill -9 mid-write leaves.
        let mut f = OpenOptions::new().append(true).open(&first_path).unwrap();
        f.write_all(&[7, 0, 0, 0, 0, 0, 0]).unwrap();
        drop(f);

        let mut second = EventWriter::open(&tb, 3).unwrap();
        assert!(second.path() > first_path.as_path(), "sorts after");
        for step in 4..=6 {
            second
                .scalars(step, &[("loss".into(), step as f64)])
                .unwrap();
        }
        let seen: Vec<i64> = steps(&tb).into_iter().map(|(s, _)| s).collect();
        assert_eq!(seen, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(event_files(&tb).unwrap().len(), 2);
        // The first file still starts with its version record.
        let events = read_events(&first_path).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
    }

    #[test]
    fn images_carry_their_size_and_colour_space() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::open(dir.path(), 0).unwrap();
        let img = DynamicImage::new_luma8(6, 4);
        w.image(10, "samples", &img).unwrap();
        let events = read_events(w.path()).unwrap();
        let image = events[1].summary.as_ref().unwrap().value[0]
            .image
            .clone()
            .unwrap();
        assert_eq!((image.width, image.height, image.colorspace), (6, 4, 1));
        let decoded = image::load_from_memory(&image.encoded_image_string).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (6, 4));
    }

    #[test]
    fn rgba_images_say_so_and_events_carry_the_time_they_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let before = wall_time();
        let mut w = EventWriter::open(dir.path(), 0).unwrap();
        w.image(1, "rgba", &DynamicImage::new_rgba8(2, 2)).unwrap();
        w.image(2, "rgb", &DynamicImage::new_rgb8(2, 2)).unwrap();
        let events = read_events(w.path()).unwrap();
        let colorspace = |i: usize| {
            events[i].summary.as_ref().unwrap().value[0]
                .image
                .as_ref()
                .unwrap()
                .colorspace
        };
        assert_eq!((colorspace(1), colorspace(2)), (4, 3));
        let after = wall_time();
        assert!(before > 1.7e9, "seconds since 1970: {before}");
        for e in &events {
            assert!(
                (before..=after).contains(&e.wall_time),
                "{} not in [{before}, {after}]",
                e.wall_time
            );
        }
    }

    #[test]
    fn event_files_are_the_named_files_and_a_missing_folder_has_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(event_files(&dir.path().join("absent")).unwrap().is_empty());
        let not_a_folder = dir.path().join("file");
        std::fs::write(&not_a_folder, b"x").unwrap();
        let err = event_files(&not_a_folder).unwrap_err().to_string();
        assert!(err.contains("file"), "{err}");
        std::fs::create_dir(dir.path().join(format!("{NAME_PREFIX}1.dir"))).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join(format!("{NAME_PREFIX}2.host")), b"").unwrap();
        std::fs::write(dir.path().join(format!("{NAME_PREFIX}1.host")), b"").unwrap();
        let names: Vec<String> = event_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                format!("{NAME_PREFIX}1.host"),
                format!("{NAME_PREFIX}2.host")
            ]
        );
    }

    /// Resuming at or after every logged step leaves an intact file as it is (not rewritten:
    /// same inode); a torn tail alone is cut off even when no event is dropped.
    #[test]
    fn files_with_nothing_to_drop_are_left_alone_and_torn_tails_are_cut() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::open(dir.path(), 0).unwrap();
        w.scalars(1, &[("loss".into(), 1.0)]).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let (inode, len) = {
            let m = std::fs::metadata(&path).unwrap();
            (m.ino(), m.len())
        };
        drop(EventWriter::open(dir.path(), 1).unwrap());
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.ino(), m.len()), (inode, len), "rewritten for nothing");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 0, 0]).unwrap();
        drop(f);
        drop(EventWriter::open(dir.path(), 5).unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            len,
            "torn tail kept"
        );
        assert_eq!(read_events(&path).unwrap().len(), 2);
    }
}
