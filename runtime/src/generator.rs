//! [`Generator`]: an ONNX generator loaded into ONNX Runtime, shared safely between threads.

use std::sync::Mutex;

use image::DynamicImage;
use ndarray::{s, Array1, Array2, Array4, ArrayView1, ArrayView2, Axis, Ix4};
use ort::session::Session;
use ort::value::{DynValue, TensorRef};

use crate::error::{RequestField, Result, RuntimeError};
use crate::image_batch::ImageBatch;
use crate::lanes::{run_split, Lanes};
use crate::latent::{slerp, LatentStream};
use crate::providers::ProviderReport;
use crate::request::{validate_steps, GenerateRequest, MAX_IMAGES};
use crate::signature::{ModelInfo, OutputLayout};

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
    pub(crate) fn from_parts(
        session: Session,
        lanes: Lanes,
        info: ModelInfo,
        providers: ProviderReport,
    ) -> Self {
        Self {
            session: Mutex::new(session),
            lanes,
            info,
            providers,
        }
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

    /// The labels of images `first..first + count` of a request for `class`: that class for
    /// every image, or (`None`) the classes in turn; `None` for unconditional models.
    pub fn labels(
        &self,
        class: Option<usize>,
        first: usize,
        count: usize,
    ) -> Result<Option<Array1<i64>>> {
        match (&self.info.signature.label_input, class) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(RuntimeError::invalid(
                RequestField::Class,
                "needs a class-conditional model; this model has no label input",
            )),
            (Some(_), Some(k)) => {
                if let Some(n) = self.info.num_classes {
                    if k >= n {
                        return Err(RuntimeError::invalid(
                            RequestField::Class,
                            format!(
                                "{k} is out of range: the model has {n} classes (0..={})",
                                n - 1
                            ),
                        ));
                    }
                }
                Ok(Some(Array1::from_elem(count, k as i64)))
            }
            (Some(_), None) => {
                let n = self.info.num_classes.ok_or_else(|| {
                    RuntimeError::invalid(
                        RequestField::Class,
                        "required: this conditional model does not state its class count",
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
        let parts = self.run(z, labels, |out| self.to_image_batch(out, layout))?;
        ImageBatch::concat(parts)
    }

    /// An error unless every value is finite: a model with NaN weights would otherwise give
    /// black images without a word.
    fn check_finite(&self, values: &[f32]) -> Result<()> {
        let count = values.iter().filter(|v| !v.is_finite()).count();
        if count == 0 {
            return Ok(());
        }
        Err(RuntimeError::NonFiniteOutput {
            path: self.info.path.clone(),
            count,
            total: values.len(),
        })
    }

    /// Converts the model's image output to bytes `[N, H, W, C]`.
    fn to_image_batch(&self, out: &DynValue, layout: OutputLayout) -> Result<ImageBatch> {
        let shape4 = |shape: &[usize]| -> Result<[usize; 4]> {
            shape.try_into().map_err(|_| {
                RuntimeError::inference(format!("the model gave a {}-D image output", shape.len()))
            })
        };
        match layout {
            OutputLayout::FloatNchw => {
                let a = out
                    .try_extract_array::<f32>()
                    .map_err(RuntimeError::inference)?;
                let shape = shape4(a.shape())?;
                let a = a.as_standard_layout();
                let values = a
                    .as_slice()
                    .ok_or_else(|| RuntimeError::inference("the output is not contiguous"))?;
                self.check_finite(values)?;
                ImageBatch::from_float_nchw(values, shape)
            }
            OutputLayout::Uint8Nhwc => {
                let a = out
                    .try_extract_array::<u8>()
                    .map_err(RuntimeError::inference)?;
                let [n, h, w, c] = shape4(a.shape())?;
                let pixels = a.as_standard_layout().iter().copied().collect();
                ImageBatch::new(pixels, n, h, w, c)
            }
        }
    }

    /// The raw float output `[N, C, H, W]` of a float model for explicit latents (for programs
    /// that post-process the images themselves, and for parity checks).
    pub fn raw_output(&self, z: &Array2<f32>, labels: Option<&Array1<i64>>) -> Result<Array4<f32>> {
        if self.info.signature.layout != OutputLayout::FloatNchw {
            return Err(RuntimeError::Unsupported(format!(
                "{}: raw output needs a model with float NCHW output",
                self.info.path.display()
            )));
        }
        let mut parts = self.run(z, labels, |out| {
            let a = out
                .try_extract_array::<f32>()
                .map_err(RuntimeError::inference)?;
            let a = a
                .to_owned()
                .into_dimensionality::<Ix4>()
                .map_err(RuntimeError::inference)?;
            if let Some(values) = a.as_slice() {
                self.check_finite(values)?;
            }
            Ok(a)
        })?;
        if parts.len() == 1 {
            if let Some(whole) = parts.pop() {
                return Ok(whole);
            }
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(RuntimeError::inference)
    }

    /// Checks latents (and labels) against the model's inputs.
    fn check_inputs(&self, z: &Array2<f32>, labels: Option<&Array1<i64>>) -> Result<()> {
        let sig = &self.info.signature;
        let n = z.nrows();
        if z.ncols() != sig.latent_dim {
            return Err(RuntimeError::invalid(
                RequestField::Latents,
                format!(
                    "have {} values each, the model expects {}",
                    z.ncols(),
                    sig.latent_dim
                ),
            ));
        }
        if n == 0 {
            return Err(RuntimeError::invalid(
                RequestField::Latents,
                "at least one latent is needed",
            ));
        }
        match (&sig.label_input, labels) {
            (Some(_), Some(l)) if l.len() != n => Err(RuntimeError::invalid(
                RequestField::Labels,
                format!("{} labels for {n} latents", l.len()),
            )),
            (Some(_), None) => Err(RuntimeError::invalid(
                RequestField::Labels,
                "this conditional model needs labels",
            )),
            (None, Some(_)) => Err(RuntimeError::invalid(
                RequestField::Labels,
                "this model takes no labels",
            )),
            _ => Ok(()),
        }
    }

    /// Runs the model on latents (and labels) and hands each output to `read` while its session
    /// is held. Large CPU batches run as slices on the lanes at once; the parts come back in
    /// order.
    fn run<T: Send>(
        &self,
        z: &Array2<f32>,
        labels: Option<&Array1<i64>>,
        read: impl Fn(&DynValue) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        self.check_inputs(z, labels)?;
        let z = z.as_standard_layout();
        match self.lanes.for_batch(z.nrows())? {
            None => Ok(vec![self.run_on(
                &self.session,
                z.view(),
                labels.map(|l| l.view()),
                &read,
            )?]),
            Some(sessions) => run_split(sessions, z.nrows(), |range, session| {
                let l = labels.map(|l| l.slice(s![range.clone()]));
                self.run_on(session, z.slice(s![range, ..]), l, &read)
            }),
        }
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
                .map_err(RuntimeError::inference)?;
            TensorRef::from_array_view(z4)
                .map_err(RuntimeError::inference)?
                .into_dyn()
        } else {
            TensorRef::from_array_view(z)
                .map_err(RuntimeError::inference)?
                .into_dyn()
        };
        let mut inputs = vec![(sig.latent_input.clone(), z_value)];
        if let (Some(name), Some(l)) = (&sig.label_input, labels) {
            inputs.push((
                name.clone(),
                TensorRef::from_array_view(l)
                    .map_err(RuntimeError::inference)?
                    .into_dyn(),
            ));
        }
        let mut session = session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(inputs).map_err(RuntimeError::inference)?;
        let output = outputs.get(sig.output.as_str()).ok_or_else(|| {
            RuntimeError::inference(format!("the model gave no output `{}`", sig.output))
        })?;
        read(output)
    }

    /// Generates `request.count` images in batches, handing each batch (with the index of its
    /// first image) to `sink` as soon as it is ready, so memory stays bounded for any count.
    pub fn generate_each(
        &self,
        request: &GenerateRequest,
        mut sink: impl FnMut(usize, ImageBatch) -> Result<()>,
    ) -> Result<()> {
        request.validate()?;
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

    /// `steps` images along the spherical path between the latents of `seed_a` and `seed_b`
    /// (conditional models: of `class`, else class 0).
    pub fn interpolate(
        &self,
        seed_a: u64,
        seed_b: u64,
        steps: usize,
        class: Option<usize>,
    ) -> Result<Vec<DynamicImage>> {
        validate_steps(steps)?;
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
