//! Dynamic batching as Triton does it: the pieces of requests queued for one model are merged
//! into one ONNX Runtime execution of up to the model's max batch size, waiting at most the
//! queue delay (counted from the oldest piece's arrival) for more; each piece gets its own rows
//! of the result back. The queue is bounded, so a full queue is an immediate error, not memory.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_runtime::{Generator, OutputLayout};
use ndarray::{Array1, Array2, Axis};
use tokio::sync::oneshot;

use crate::error::ServeError;
use crate::metrics::ModelMetrics;
use crate::tensor::{DataType, Images};

/// How a model's requests are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchPolicy {
    /// Most images per execution; larger requests are split. 0: no limit and no merging (a
    /// request runs whole, as Triton's `max_batch_size: 0`).
    pub max_batch_size: usize,
    /// Merge queued requests into one execution (Triton's `dynamic_batching`).
    pub dynamic: bool,
    /// How long the oldest queued piece may wait for others to join its batch.
    pub max_queue_delay: Duration,
    /// Request pieces waiting (not yet executing) before new requests are refused.
    pub max_queue_size: usize,
}

impl BatchPolicy {
    /// Dynamic batching up to `max_batch_size` images, waiting at most `max_queue_delay`.
    pub fn dynamic(max_batch_size: usize, max_queue_delay: Duration) -> Self {
        Self {
            max_batch_size,
            dynamic: max_batch_size > 1,
            max_queue_delay,
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
        }
    }

    /// Images per piece a request of `rows` images is split into.
    pub(crate) fn piece_size(&self, rows: usize) -> usize {
        if self.max_batch_size == 0 {
            rows.max(1)
        } else {
            self.max_batch_size
        }
    }
}

/// Default bound of a model's queue, in request pieces.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 1024;

/// A piece of a request: its latents (and labels) and where its images go.
pub(crate) struct Job {
    pub z: Array2<f32>,
    pub labels: Option<Array1<i64>>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Images, ServeError>>,
}

/// Runs the batching loop of one model until every sender of `jobs` is gone.
pub(crate) fn run_worker(
    generator: Arc<Generator>,
    jobs: Receiver<Job>,
    policy: BatchPolicy,
    metrics: Arc<ModelMetrics>,
) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut rows = first.z.nrows();
        let deadline = first.enqueued + policy.max_queue_delay;
        let mut batch = vec![first];
        while policy.dynamic && rows < policy.max_batch_size {
            let next = match jobs.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= deadline {
                        None
                    } else {
                        jobs.recv_timeout(deadline - now).ok()
                    }
                }
            };
            let Some(job) = next else { break };
            if rows + job.z.nrows() > policy.max_batch_size {
                carried = Some(job);
                break;
            }
            rows += job.z.nrows();
            batch.push(job);
        }
        run_batch(&generator, batch, &metrics);
    }
}

/// Runs one execution for the pieces in `batch` and answers each with its rows.
fn run_batch(generator: &Generator, batch: Vec<Job>, metrics: &ModelMetrics) {
    let started = Instant::now();
    let mut live = Vec::with_capacity(batch.len());
    for job in batch {
        metrics.dequeued(1);
        metrics.record_queue(started.saturating_duration_since(job.enqueued));
        // A piece whose request has given up (timed out, client gone) is not computed.
        if !job.reply.is_closed() {
            live.push(job);
        }
    }
    if live.is_empty() {
        return;
    }
    let result = catch_unwind(AssertUnwindSafe(|| execute(generator, &live)))
        .unwrap_or_else(|_| Err(ServeError::Internal("the execution panicked".into())));
    let rows: usize = live.iter().map(|j| j.z.nrows()).sum();
    metrics.record_execution(rows, started.elapsed());
    match result {
        Ok(images) => {
            let mut first = 0;
            for job in live {
                let n = job.z.nrows();
                let _ = job.reply.send(Ok(images.slice(first, n)));
                first += n;
            }
        }
        Err(e) => {
            for job in live {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

/// One ONNX Runtime execution over the concatenated pieces.
fn execute(generator: &Generator, jobs: &[Job]) -> Result<Images, ServeError> {
    let join = |e: ndarray::ShapeError| ServeError::Internal(format!("joining the requests: {e}"));
    let z = if jobs.len() == 1 {
        jobs[0].z.clone()
    } else {
        let views: Vec<_> = jobs.iter().map(|j| j.z.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(join)?
    };
    let labels = if jobs[0].labels.is_some() {
        let views: Vec<_> = jobs
            .iter()
            .filter_map(|j| j.labels.as_ref().map(|l| l.view()))
            .collect();
        Some(ndarray::concatenate(Axis(0), &views).map_err(join)?)
    } else {
        None
    };
    match generator.info().signature.layout {
        OutputLayout::Uint8Nhwc => {
            let batch = generator.generate_from_latents(&z, labels.as_ref())?;
            let shape = vec![batch.height(), batch.width(), batch.channels()];
            Ok(Images::new(
                DataType::Uint8,
                shape,
                batch.count(),
                batch.into_pixels(),
            ))
        }
        _ => {
            let out = generator.raw_output(&z, labels.as_ref())?;
            let shape = out.shape()[1..].to_vec();
            let count = out.shape()[0];
            let mut bytes = Vec::with_capacity(out.len() * 4);
            for v in out.iter() {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            Ok(Images::new(DataType::Fp32, shape, count, bytes))
        }
    }
}
