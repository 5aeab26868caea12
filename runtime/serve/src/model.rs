//! A served model version: its generator, its batching queue and its counters; and the set of
//! models a server holds.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_runtime::{Generator, OutputLayout};
use tokio::sync::oneshot;

use crate::batcher::{run_worker, BatchPolicy, Job};
use crate::error::{Result, ServeError};
use crate::metrics::ModelMetrics;
use crate::tensor::{decode_inputs, DataType, Images, InputTensor, ModelInputs};

/// Most images one inference request may ask for (larger jobs: several requests).
pub const MAX_REQUEST_IMAGES: usize = 4096;

/// One version of one model, ready to take requests.
pub struct Model {
    name: String,
    version: String,
    generator: Arc<Generator>,
    policy: BatchPolicy,
    queue: SyncSender<Job>,
    metrics: Arc<ModelMetrics>,
}

impl Model {
    /// Serves `generator` as `name` version `version`, scheduled by `policy` (starts the
    /// model's batching thread; it ends when the model is dropped).
    pub fn new(
        name: &str,
        version: &str,
        generator: Generator,
        policy: BatchPolicy,
    ) -> std::io::Result<Self> {
        let generator = Arc::new(generator);
        let metrics = Arc::new(ModelMetrics::default());
        let (queue, jobs) = sync_channel(policy.max_queue_size.max(1));
        let (g, m) = (generator.clone(), metrics.clone());
        std::thread::Builder::new()
            .name(format!("batch-{name}-{version}"))
            .spawn(move || run_worker(g, jobs, policy, m))?;
        Ok(Self {
            name: name.to_string(),
            version: version.to_string(),
            generator,
            policy,
            queue,
            metrics,
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version (a positive integer in a repository; "1" for a single model).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The generator behind the model.
    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    /// How requests are scheduled.
    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// The model's counters.
    pub fn metrics(&self) -> &ModelMetrics {
        &self.metrics
    }

    /// The protocol type of the image output.
    pub fn output_datatype(&self) -> DataType {
        match self.generator.info().signature.layout {
            OutputLayout::Uint8Nhwc => DataType::Uint8,
            _ => DataType::Fp32,
        }
    }

    /// Runs a request through the model's queue: split into pieces of at most the max batch
    /// size, merged with other requests' pieces, answered within `timeout`. Counted as a
    /// success or failure in the model's metrics.
    pub async fn infer(&self, inputs: ModelInputs, timeout: Duration) -> Result<Images> {
        let result = self.infer_uncounted(inputs, timeout).await;
        self.metrics.record_request(result.is_ok());
        result
    }

    /// Decodes a request's input tensors against the model's signature and runs them like
    /// [`Model::infer`]; a decoding error is counted as a failed request too.
    pub async fn infer_tensors(
        &self,
        inputs: Vec<InputTensor>,
        timeout: Duration,
    ) -> Result<Images> {
        let result = match decode_inputs(&self.generator.info().signature, inputs) {
            Ok(decoded) => self.infer_uncounted(decoded, timeout).await,
            Err(e) => Err(e),
        };
        self.metrics.record_request(result.is_ok());
        result
    }

    async fn infer_uncounted(&self, inputs: ModelInputs, timeout: Duration) -> Result<Images> {
        self.check(&inputs)?;
        let rows = inputs.z.nrows();
        let piece = self.policy.piece_size(rows);
        let pieces = rows.div_ceil(piece);
        if !self.metrics.try_enqueue(pieces, self.policy.max_queue_size) {
            return Err(ServeError::Unavailable(format!(
                "model `{}` is busy: its queue is full ({} request pieces waiting at most); retry later",
                self.name, self.policy.max_queue_size
            )));
        }
        let mut replies = Vec::with_capacity(pieces);
        let mut first = 0;
        while first < rows {
            let n = piece.min(rows - first);
            let (reply, answer) = oneshot::channel();
            let job = Job {
                z: inputs.z.slice(ndarray::s![first..first + n, ..]).to_owned(),
                labels: inputs
                    .labels
                    .as_ref()
                    .map(|l| l.slice(ndarray::s![first..first + n]).to_owned()),
                enqueued: Instant::now(),
                reply,
            };
            // The count above bounds the channel's content, so it is never full here; it is
            // disconnected only when the batching thread is gone.
            if self.queue.try_send(job).is_err() {
                self.metrics.dequeued(pieces - replies.len());
                return Err(ServeError::Unavailable(format!(
                    "model `{}` is not serving",
                    self.name
                )));
            }
            replies.push(answer);
            first += n;
        }
        let gather = async {
            let mut parts = Vec::with_capacity(replies.len());
            for answer in replies {
                parts.push(answer.await.map_err(|_| {
                    ServeError::Internal("the model's batching thread stopped".into())
                })??);
            }
            Images::concat(parts)
        };
        tokio::time::timeout(timeout, gather).await.map_err(|_| {
            ServeError::Timeout(format!(
                "model `{}` did not answer within {} ms",
                self.name,
                timeout.as_millis()
            ))
        })?
    }

    /// Checks request values that depend on the model beyond the input shapes: the number of
    /// images and the label range.
    fn check(&self, inputs: &ModelInputs) -> Result<()> {
        let n = inputs.z.nrows();
        if n > MAX_REQUEST_IMAGES {
            return Err(ServeError::bad(format!(
                "{n} images in one request is too many (at most {MAX_REQUEST_IMAGES})"
            )));
        }
        if let Some(labels) = &inputs.labels {
            let classes = self.generator.info().num_classes;
            if let Some(bad) = labels
                .iter()
                .find(|&&l| l < 0 || classes.is_some_and(|k| l as usize >= k))
            {
                return Err(ServeError::bad(match classes {
                    Some(k) => format!(
                        "label {bad} is out of range: the model has {k} classes (0..={})",
                        k - 1
                    ),
                    None => format!("label {bad} is negative"),
                }));
            }
        }
        Ok(())
    }
}

/// The models a server holds: name -> version -> model.
#[derive(Default)]
pub struct Models {
    by_name: BTreeMap<String, BTreeMap<u64, Arc<Model>>>,
}

impl Models {
    /// Adds a model version; its version must be a non-negative integer (Triton's rule).
    pub fn insert(&mut self, model: Model) -> std::result::Result<(), String> {
        let v: u64 = model.version.parse().map_err(|_| {
            format!(
                "model `{}`: version `{}` is not a number",
                model.name, model.version
            )
        })?;
        let versions = self.by_name.entry(model.name.clone()).or_default();
        if versions.contains_key(&v) {
            return Err(format!("model `{}` version {v} is given twice", model.name));
        }
        versions.insert(v, Arc::new(model));
        Ok(())
    }

    /// Model `name` at `version`, or its highest version when `version` is `None` or empty.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<&Arc<Model>> {
        let versions = self
            .by_name
            .get(name)
            .ok_or_else(|| ServeError::NotFound(format!("unknown model `{name}`")))?;
        match version.filter(|v| !v.is_empty()) {
            None => versions.values().next_back(),
            Some(v) => v.parse::<u64>().ok().and_then(|v| versions.get(&v)),
        }
        .ok_or_else(|| {
            ServeError::NotFound(format!(
                "model `{name}` has no version `{}`",
                version.unwrap_or_default()
            ))
        })
    }

    /// The versions of `name`, lowest first.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.by_name
            .get(name)
            .map(|v| v.keys().map(u64::to_string).collect())
            .unwrap_or_default()
    }

    /// Every model version, by name then version.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.by_name.values().flat_map(|v| v.values())
    }

    /// Whether no model is held.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
