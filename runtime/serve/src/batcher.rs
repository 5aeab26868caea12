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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use gantry_runtime::{Provider, ProviderChoice};

    use super::*;

    /// A tiny real generator (32x32x1, latent 16) on one CPU thread.
    fn generator(dir: &std::path::Path) -> Arc<Generator> {
        let model =
            gantry_testkit::export_tiny_model(dir, None, gantry_exporter::OutputFormat::Float);
        Arc::new(
            Generator::builder()
                .model(&model)
                .providers(ProviderChoice::Only(Provider::Cpu))
                .intra_threads(1)
                .batch_lanes(1)
                .build()
                .unwrap(),
        )
    }

    fn latents(rows: usize, seed: usize) -> Array2<f32> {
        Array2::from_shape_fn((rows, 16), |(r, c)| {
            ((r * 31 + c * 7 + seed * 13) % 17) as f32 / 8.0 - 1.0
        })
    }

    type Reply = oneshot::Receiver<Result<Images, ServeError>>;

    /// Queues pieces of `rows` images (all before the worker starts, so what it merges is
    /// deterministic), runs the worker until the queue is empty, and returns the replies
    /// (`None` for pieces whose requester gave up before) and the metrics.
    fn serve(
        g: &Arc<Generator>,
        policy: BatchPolicy,
        pieces: &[(usize, bool)],
    ) -> (Vec<Option<Reply>>, Arc<ModelMetrics>) {
        let (tx, rx) = mpsc::channel();
        let metrics = Arc::new(ModelMetrics::default());
        let mut replies = Vec::new();
        for (i, &(rows, abandoned)) in pieces.iter().enumerate() {
            let (reply, answer) = oneshot::channel();
            assert!(metrics.try_enqueue(1, policy.max_queue_size));
            tx.send(Job {
                z: latents(rows, i),
                labels: None,
                enqueued: Instant::now(),
                reply,
            })
            .unwrap();
            replies.push((!abandoned).then_some(answer));
        }
        drop(tx);
        run_worker(g.clone(), rx, policy, metrics.clone());
        (replies, metrics)
    }

    /// The generator's own images for piece `i` of `rows` images.
    fn alone(g: &Generator, rows: usize, i: usize) -> Vec<f32> {
        g.raw_output(&latents(rows, i), None)
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    fn floats(images: &Images) -> Vec<f32> {
        images
            .bytes
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// Equal up to the summation order of another batch size (1e-5).
    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5)
    }

    fn answer(reply: Option<Reply>) -> Images {
        reply.unwrap().blocking_recv().unwrap().unwrap()
    }

    #[test]
    fn queued_pieces_merge_up_to_the_max_batch_and_each_gets_its_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let g = generator(dir.path());
        let policy = BatchPolicy::dynamic(8, Duration::from_secs(5));
        // 3 + 2 + 3 fill one batch of 8; 5 does not fit beside them and is carried into the
        // next, which 2 joins; the last 4 would make 11: a third execution.
        let pieces = [
            (3, false),
            (2, false),
            (3, false),
            (5, false),
            (2, false),
            (4, false),
        ];
        let started = Instant::now();
        let (replies, metrics) = serve(&g, policy, &pieces);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "waited for the delay with a full batch or a closed queue"
        );
        assert_eq!(metrics.exec_count(), 3);
        assert_eq!(metrics.inference_count(), 19);
        assert_eq!(metrics.max_batch(), 8);
        for (i, (reply, &(rows, _))) in replies.into_iter().zip(&pieces).enumerate() {
            let images = answer(reply);
            assert_eq!(
                (images.count, images.shape.clone()),
                (rows, vec![1, 32, 32])
            );
            assert!(
                close(&floats(&images), &alone(&g, rows, i)),
                "piece {i} got other rows"
            );
        }
    }

    #[test]
    fn pieces_whose_requester_gave_up_are_not_computed() {
        let dir = tempfile::tempdir().unwrap();
        let g = generator(dir.path());
        let policy = BatchPolicy::dynamic(8, Duration::from_millis(1));
        let pieces = [(2, false), (4, true), (3, false)];
        let (replies, metrics) = serve(&g, policy, &pieces);
        // [2, 4 given up] then [3] (2 + 4 + 3 > 8): two executions, 5 images computed.
        assert_eq!(
            metrics.inference_count(),
            5,
            "the abandoned 4 images were computed"
        );
        assert_eq!((metrics.exec_count(), metrics.max_batch()), (2, 3));
        let mut replies = replies.into_iter();
        assert!(close(
            &floats(&answer(replies.next().unwrap())),
            &alone(&g, 2, 0)
        ));
        assert!(replies.next().unwrap().is_none());
        assert!(close(
            &floats(&answer(replies.next().unwrap())),
            &alone(&g, 3, 2)
        ));
        // Every piece left the queue's count, the abandoned one included.
        assert!(
            metrics.try_enqueue(1, 1),
            "the queue count was not released"
        );
    }

    #[test]
    fn without_dynamic_batching_every_piece_runs_alone() {
        let dir = tempfile::tempdir().unwrap();
        let g = generator(dir.path());
        let policy = BatchPolicy {
            dynamic: false,
            ..BatchPolicy::dynamic(8, Duration::from_secs(5))
        };
        let (replies, metrics) = serve(&g, policy, &[(1, false), (2, false), (3, false)]);
        assert_eq!((metrics.exec_count(), metrics.max_batch()), (3, 3));
        for (i, reply) in replies.into_iter().enumerate() {
            assert!(close(&floats(&answer(reply)), &alone(&g, i + 1, i)));
        }
        // Triton's max_batch_size 0: a request is one piece, whatever its size.
        assert_eq!(BatchPolicy::dynamic(0, Duration::ZERO).piece_size(40), 40);
        assert_eq!(BatchPolicy::dynamic(8, Duration::ZERO).piece_size(40), 8);
    }
}
