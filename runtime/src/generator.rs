//! [`Generator`]: an ONNX generator loaded into ONNX Runtime, shared safely between threads.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;

use image::DynamicImage;
use ndarray::{s, Array1, Array2, Array4, ArrayView1, ArrayView2, Axis, Ix4};
use ort::session::Session;
use ort::value::{DynValue, TensorRef};
use rayon::prelude::*;

use crate::error::{Result, RuntimeError};
use crate::lanes::{split_evenly, Lanes};
use crate::latent::{slerp, LatentStream};
use crate::library;
use crate::providers::{self, Provider, ProviderChoice, ProviderOptions, ProviderReport};
use crate::session::{GraphOptimization, SessionSpec};
use crate::signature::{self, ModelInfo, OutputLayout};

/// Largest number of images one request may ask for.
pub const MAX_IMAGES: usize = 1_000_000;

/// A batch of generated images: uint8 `[N, H, W, C]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBatch {
    pub pixels: Vec<u8>,
    pub count: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl ImageBatch {
    fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Image `i` as an `image` crate image (grey or RGB).
    pub fn image(&self, i: usize) -> DynamicImage {
        let n = self.image_len();
        let px = self.pixels[i * n..(i + 1) * n].to_vec();
        let (w, h) = (self.width as u32, self.height as u32);
        if self.channels == 1 {
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, px).expect("sizes agree"))
        } else {
            DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, px).expect("sizes agree"))
        }
    }

    /// The batches one after another (all of the same image size).
    pub fn concat(parts: Vec<ImageBatch>) -> ImageBatch {
        let mut parts = parts.into_iter();
        let mut all = parts.next().expect("at least one batch");
        for part in parts {
            debug_assert_eq!(part.image_len(), all.image_len());
            all.pixels.extend_from_slice(&part.pixels);
            all.count += part.count;
        }
        all
    }

    /// All images.
    pub fn to_images(&self) -> Vec<DynamicImage> {
        (0..self.count).map(|i| self.image(i)).collect()
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub count: usize,
    pub seed: u64,
    /// Class of every image (conditional models); `None` cycles through the classes.
    pub class: Option<usize>,
    /// Redraw latent values whose magnitude exceeds this.
    pub truncation: Option<f32>,
    /// Images per inference call (bounds memory for any count).
    pub batch_size: usize,
}

impl GenerateRequest {
    /// `count` images from `seed` with defaults for the rest.
    pub fn new(count: usize, seed: u64) -> Self {
        Self {
            count,
            seed,
            class: None,
            truncation: None,
            batch_size: 64,
        }
    }
}

/// Configures and loads a [`Generator`].
#[derive(Debug, Clone, Default)]
pub struct GeneratorBuilder {
    model: Option<PathBuf>,
    ort_library: Option<PathBuf>,
    providers: ProviderChoice,
    provider_options: ProviderOptions,
    intra_threads: Option<usize>,
    batch_lanes: Option<usize>,
    optimization: GraphOptimization,
}

impl GeneratorBuilder {
    /// The ONNX file to load (required).
    pub fn model(mut self, path: impl Into<PathBuf>) -> Self {
        self.model = Some(path.into());
        self
    }

    /// An explicit ONNX Runtime library (else `ORT_DYLIB_PATH`, else the folder `make` installs into).
    pub fn ort_library(mut self, path: impl Into<PathBuf>) -> Self {
        self.ort_library = Some(path.into());
        self
    }

    /// Which execution providers to try (default: TensorRT, CUDA, CPU).
    pub fn providers(mut self, choice: ProviderChoice) -> Self {
        self.providers = choice;
        self
    }

    /// Provider settings (device id, TensorRT cache, ...).
    pub fn provider_options(mut self, options: ProviderOptions) -> Self {
        self.provider_options = options;
        self
    }

    /// Graph optimisation level (default: all).
    pub fn graph_optimization(mut self, level: GraphOptimization) -> Self {
        self.optimization = level;
        self
    }

    /// Threads ONNX Runtime uses inside one run (default: all cores).
    pub fn intra_threads(mut self, threads: usize) -> Self {
        self.intra_threads = Some(threads);
        self
    }

    /// On the CPU provider, batches of at least `lanes` images run as `lanes` single-threaded
    /// sessions at once, each on a slice of the batch (default: as many as
    /// [`intra_threads`](Self::intra_threads), else one per core; 1 turns lanes off). Ignored on
    /// GPU providers. Faster because ONNX Runtime leaves parts of each operator (such as
    /// ConvTranspose's col2im) on one thread, while lanes keep every core busy for the whole
    /// graph. They open on the second batch large enough to use them, so that a one-batch job
    /// does not pay for opening them.
    pub fn batch_lanes(mut self, lanes: usize) -> Self {
        self.batch_lanes = Some(lanes);
        self
    }

    /// Loads the library and the model, registers providers and checks the model's signature.
    pub fn build(self) -> Result<Generator> {
        let path = self.model.ok_or_else(|| {
            RuntimeError::Invalid("no model given (GeneratorBuilder::model / --model)".into())
        })?;
        if !path.is_file() {
            return Err(RuntimeError::Model {
                path,
                message: "no such file".into(),
            });
        }
        library::ensure_loaded(self.ort_library.as_deref())?;
        let spec = SessionSpec::new(&path, self.optimization);
        let mut builder = spec.builder(self.intra_threads)?;
        let report = providers::register(&mut builder, self.providers, &self.provider_options)?;
        let session = spec.open(builder)?;
        let inputs: Vec<_> = session
            .inputs()
            .iter()
            .map(|o| (o.name().to_string(), o.dtype().clone()))
            .collect();
        let outputs: Vec<_> = session
            .outputs()
            .iter()
            .map(|o| (o.name().to_string(), o.dtype().clone()))
            .collect();
        let signature = signature::detect(&path, &inputs, &outputs)?;
        let (metadata, producer) = read_metadata(&session);
        let info = ModelInfo::new(&path, signature, &inputs, &outputs, metadata, producer);
        let lanes = if report.active == Provider::Cpu {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Lanes::new(
                spec,
                self.batch_lanes.or(self.intra_threads).unwrap_or(cores),
            )
        } else {
            Lanes::none()
        };
        Ok(Generator {
            session: Mutex::new(session),
            lanes,
            info,
            providers: report,
        })
    }
}

fn read_metadata(session: &Session) -> (BTreeMap<String, String>, Option<String>) {
    let Ok(meta) = session.metadata() else {
        return (BTreeMap::new(), None);
    };
    let keys = meta.custom_keys().unwrap_or_default();
    let map = keys
        .into_iter()
        .filter_map(|k| meta.custom(&k).map(|v| (k, v)))
        .collect();
    (map, meta.producer())
}

/// A generator model ready to run. `Send + Sync`: share it between threads (runs are serialised
/// on the ONNX Runtime sessions, which themselves use all cores; latent sampling runs outside
/// the lock).
pub struct Generator {
    /// The session small batches (and every batch on a GPU) run on, with all intra-op threads.
    session: Mutex<Session>,
    /// Single-threaded sessions that large CPU batches are split over.
    lanes: Lanes,
    info: ModelInfo,
    providers: ProviderReport,
}

impl Generator {
    /// Starts configuring a generator.
    pub fn builder() -> GeneratorBuilder {
        GeneratorBuilder::default()
    }

    /// The model's signature, metadata and path.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The execution provider in use and the ones that were skipped (and why).
    pub fn providers(&self) -> &ProviderReport {
        &self.providers
    }

    /// How many single-threaded sessions a CPU batch of at least that many images is split over
    /// (1: batches always run whole).
    pub fn batch_lanes(&self) -> usize {
        self.lanes.count()
    }

    /// Opens the batch lanes now instead of on the second batch large enough to use them (for
    /// programs that want their first large batch at full speed); does nothing without lanes.
    pub fn open_lanes(&self) -> Result<()> {
        self.lanes.open().map(|_| ())
    }

    /// Whether the batch lanes are open (they open on the second batch that can use them, or
    /// with [`Generator::open_lanes`]).
    pub fn lanes_open(&self) -> bool {
        self.lanes.is_open()
    }

    /// Latent size of the model.
    pub fn latent_dim(&self) -> usize {
        self.info.signature.latent_dim
    }

    /// Checks `class` against the model and expands it to one label per image.
    fn labels(
        &self,
        class: Option<usize>,
        first: usize,
        count: usize,
    ) -> Result<Option<Array1<i64>>> {
        match (&self.info.signature.label_input, class) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(RuntimeError::Invalid(
                "--class needs a class-conditional model; this model has no label input".into(),
            )),
            (Some(_), Some(k)) => {
                if let Some(n) = self.info.num_classes {
                    if k >= n {
                        return Err(RuntimeError::Invalid(format!(
                            "--class {k} is out of range: the model has {n} classes (0..={})",
                            n - 1
                        )));
                    }
                }
                Ok(Some(Array1::from_elem(count, k as i64)))
            }
            (Some(_), None) => {
                let n = self.info.num_classes.ok_or_else(|| {
                    RuntimeError::Invalid(
                        "this conditional model does not state its class count: pass --class"
                            .into(),
                    )
                })?;
                Ok(Some(Array1::from_iter(
                    (first..first + count).map(|i| (i % n) as i64),
                )))
            }
        }
    }

    /// Runs the model on explicit latents `[N, latent_dim]` (and labels for conditional models).
    pub fn generate_from_latents(
        &self,
        z: &Array2<f32>,
        labels: Option<&Array1<i64>>,
    ) -> Result<ImageBatch> {
        let layout = self.info.signature.layout;
        let parts = self.run(z, labels, |out| to_image_batch(out, layout))?;
        Ok(ImageBatch::concat(parts))
    }

    /// The raw float output `[N, C, H, W]` of a float model for explicit latents (for programs
    /// that post-process the images themselves, and for parity checks).
    pub fn raw_output(&self, z: &Array2<f32>, labels: Option<&Array1<i64>>) -> Result<Array4<f32>> {
        if self.info.signature.layout != OutputLayout::FloatNchw {
            return Err(RuntimeError::Invalid(
                "raw_output needs a model with float NCHW output".into(),
            ));
        }
        let parts = self.run(z, labels, |out| {
            let a = out.try_extract_array::<f32>().map_err(inference)?;
            a.to_owned()
                .into_dimensionality::<Ix4>()
                .map_err(|e| RuntimeError::Inference(e.to_string()))
        })?;
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().expect("one part"));
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(|e| RuntimeError::Inference(e.to_string()))
    }

    /// Checks latents (and labels) against the model's inputs.
    fn check_inputs(&self, z: &Array2<f32>, labels: Option<&Array1<i64>>) -> Result<()> {
        let sig = &self.info.signature;
        let n = z.nrows();
        if z.ncols() != sig.latent_dim {
            return Err(RuntimeError::Invalid(format!(
                "latents have {} values, the model expects {}",
                z.ncols(),
                sig.latent_dim
            )));
        }
        if n == 0 {
            return Err(RuntimeError::Invalid(
                "at least one latent is needed".into(),
            ));
        }
        match (&sig.label_input, labels) {
            (Some(_), Some(l)) if l.len() != n => Err(RuntimeError::Invalid(format!(
                "{} labels for {n} latents",
                l.len()
            ))),
            (Some(_), None) => Err(RuntimeError::Invalid(
                "this conditional model needs labels".into(),
            )),
            (None, Some(_)) => Err(RuntimeError::Invalid("this model takes no labels".into())),
            _ => Ok(()),
        }
    }

    /// Runs the model on latents (and labels) and hands each output to `read` while its session
    /// is held. Large CPU batches run as slices on the lanes at once; the parts come back in
    /// batch order (one part when the batch ran whole).
    fn run<T: Send>(
        &self,
        z: &Array2<f32>,
        labels: Option<&Array1<i64>>,
        read: impl Fn(&DynValue) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        self.check_inputs(z, labels)?;
        let z = z.as_standard_layout();
        let Some(sessions) = self.lanes.for_batch(z.nrows())? else {
            return Ok(vec![self.run_on(
                &self.session,
                z.view(),
                labels.map(|l| l.view()),
                &read,
            )?]);
        };
        let slices = split_evenly(z.nrows(), sessions.len());
        let run_slice = |(range, session): (&Range<usize>, &Mutex<Session>)| {
            let l = labels.map(|l| l.slice(s![range.clone()]));
            self.run_on(session, z.slice(s![range.clone(), ..]), l, &read)
        };
        std::thread::scope(|scope| {
            let mut jobs = slices.iter().zip(sessions);
            let first = jobs.next().expect("at least one slice");
            let others: Vec<_> = jobs
                .map(|job| scope.spawn(move || run_slice(job)))
                .collect();
            let mut parts = vec![run_slice(first)];
            parts.extend(
                others
                    .into_iter()
                    .map(|h| h.join().expect("a lane does not panic")),
            );
            parts.into_iter().collect()
        })
    }

    /// One run on one session: feeds the latents (and labels) and reads the image output.
    fn run_on<T>(
        &self,
        session: &Mutex<Session>,
        z: ArrayView2<f32>,
        labels: Option<ArrayView1<i64>>,
        read: &impl Fn(&DynValue) -> Result<T>,
    ) -> Result<T> {
        let sig = &self.info.signature;
        let z4;
        let z_value = if sig.latent_is_4d {
            z4 = z
                .into_shape_with_order((z.nrows(), sig.latent_dim, 1, 1))
                .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
            TensorRef::from_array_view(z4)
                .map_err(inference)?
                .into_dyn()
        } else {
            TensorRef::from_array_view(z).map_err(inference)?.into_dyn()
        };
        let mut inputs = vec![(sig.latent_input.clone(), z_value)];
        if let (Some(name), Some(l)) = (&sig.label_input, labels) {
            inputs.push((
                name.clone(),
                TensorRef::from_array_view(l).map_err(inference)?.into_dyn(),
            ));
        }
        let mut session = session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(inputs).map_err(inference)?;
        read(&outputs[sig.output.as_str()])
    }

    /// Generates `request.count` images in batches, handing each batch (with the index of its
    /// first image) to `sink` as soon as it is ready, so memory stays bounded for any count.
    pub fn generate_each(
        &self,
        request: &GenerateRequest,
        mut sink: impl FnMut(usize, ImageBatch) -> Result<()>,
    ) -> Result<()> {
        validate(request)?;
        self.labels(request.class, 0, 1)?;
        let mut stream = LatentStream::new(request.seed, self.latent_dim(), request.truncation);
        let mut first = 0;
        while first < request.count {
            let n = request.batch_size.min(request.count - first);
            let z = stream.next_batch(n);
            let labels = self.labels(request.class, first, n)?;
            let batch = self.generate_from_latents(&z, labels.as_ref())?;
            sink(first, batch)?;
            first += n;
        }
        Ok(())
    }

    /// `count` images from `seed` (unconditional models, or conditional ones cycling classes).
    pub fn generate(&self, count: usize, seed: u64) -> Result<Vec<DynamicImage>> {
        self.generate_request(&GenerateRequest::new(count, seed))
    }

    /// All images of a request, in memory.
    pub fn generate_request(&self, request: &GenerateRequest) -> Result<Vec<DynamicImage>> {
        let mut out = Vec::with_capacity(request.count.min(MAX_IMAGES));
        self.generate_each(request, |_, batch| {
            out.extend(batch.to_images());
            Ok(())
        })?;
        Ok(out)
    }

    /// `steps` images along the spherical path between the latents of `seed_a` and `seed_b`.
    pub fn interpolate(
        &self,
        seed_a: u64,
        seed_b: u64,
        steps: usize,
        class: Option<usize>,
    ) -> Result<Vec<DynamicImage>> {
        if steps < 2 {
            return Err(RuntimeError::Invalid("--steps must be at least 2".into()));
        }
        if steps > 4096 {
            return Err(RuntimeError::Invalid(format!(
                "--steps {steps} is too many (at most 4096)"
            )));
        }
        let dim = self.latent_dim();
        let a = LatentStream::new(seed_a, dim, None).next_batch(1);
        let b = LatentStream::new(seed_b, dim, None).next_batch(1);
        let (a, b) = (a.row(0).to_vec(), b.row(0).to_vec());
        let mut z = Array2::zeros((steps, dim));
        for (i, mut row) in z.axis_iter_mut(Axis(0)).enumerate() {
            let t = i as f32 / (steps - 1) as f32;
            row.assign(&Array1::from(slerp(&a, &b, t)));
        }
        let labels = match (&self.info.signature.label_input, class) {
            (Some(_), None) => Some(Array1::from_elem(steps, 0)),
            _ => self.labels(class, 0, steps)?,
        };
        Ok(self.generate_from_latents(&z, labels.as_ref())?.to_images())
    }
}

fn inference(e: ort::Error) -> RuntimeError {
    RuntimeError::Inference(e.to_string())
}

/// Converts the model's image output to bytes `[N, H, W, C]`.
fn to_image_batch(out: &DynValue, layout: OutputLayout) -> Result<ImageBatch> {
    match layout {
        OutputLayout::FloatNchw => {
            let a = out.try_extract_array::<f32>().map_err(inference)?;
            let (n, c, h, w) = (a.shape()[0], a.shape()[1], a.shape()[2], a.shape()[3]);
            let a = a.as_standard_layout();
            let src = a.as_slice().expect("standard layout");
            let plane = h * w;
            let mut pixels = vec![0u8; n * c * plane];
            pixels
                .par_chunks_mut(c * plane)
                .zip(src.par_chunks(c * plane))
                .for_each(|(dst, img)| {
                    for p in 0..plane {
                        for ch in 0..c {
                            dst[p * c + ch] = to_byte(img[ch * plane + p]);
                        }
                    }
                });
            Ok(ImageBatch {
                pixels,
                count: n,
                height: h,
                width: w,
                channels: c,
            })
        }
        OutputLayout::Uint8Nhwc => {
            let a = out.try_extract_array::<u8>().map_err(inference)?;
            let (n, h, w, c) = (a.shape()[0], a.shape()[1], a.shape()[2], a.shape()[3]);
            let pixels = a.as_standard_layout().iter().copied().collect();
            Ok(ImageBatch {
                pixels,
                count: n,
                height: h,
                width: w,
                channels: c,
            })
        }
    }
}

/// `[-1, 1]` -> `0..=255`, rounded (the same mapping as the exporter's uint8 output).
#[inline]
fn to_byte(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

fn validate(r: &GenerateRequest) -> Result<()> {
    if r.count == 0 {
        return Err(RuntimeError::Invalid("-n must be at least 1".into()));
    }
    if r.count > MAX_IMAGES {
        return Err(RuntimeError::Invalid(format!(
            "-n {} is too many: at most {MAX_IMAGES} images per run (split larger jobs by --seed)",
            r.count
        )));
    }
    if r.batch_size == 0 {
        return Err(RuntimeError::Invalid(
            "--batch-size must be at least 1".into(),
        ));
    }
    if let Some(t) = r.truncation {
        if !(t > 0.0 && t.is_finite()) {
            return Err(RuntimeError::Invalid(format!(
                "--truncation must be a positive number, got {t}"
            )));
        }
    }
    Ok(())
}
