//! Batch lanes: a large batch on the CPU provider runs as several single-threaded sessions, each
//! on its own slice of the batch, at the same time.
//!
//! One session with N intra-op threads parallelises inside each operator, and ONNX Runtime's CPU
//! ConvTranspose leaves much of its work (the per-image col2im, the activations) on one thread.
//! Slicing the batch keeps every core busy for the whole graph: on the 2-core benchmark machine a
//! batch of 64 64x64x3 images takes ~75 ms as two lanes against ~85 ms as one two-thread run
//! (docs/benchmarks.md). Small batches (fewer images than lanes) still run whole on the shared
//! multi-threaded session, where intra-op threads are the only parallelism there is.
//!
//! Opening the lane sessions costs about as much as one batch saves (~15 ms for a 32x32 model
//! here), so they open on the second batch large enough to use them: a one-batch job (the CLI's
//! default `-n 64`) does not pay for them. [`Lanes::open`] opens them at once.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;

use crate::error::{Result, RuntimeError};
use crate::session::SessionSpec;

/// Up to `count` single-threaded sessions of one model, opened on first use.
pub(crate) struct Lanes {
    spec: Option<SessionSpec>,
    count: usize,
    sessions: OnceLock<Vec<Mutex<Session>>>,
    /// Whether a batch large enough for the lanes has run whole already.
    seen_large_batch: AtomicBool,
}

impl Lanes {
    /// No lanes: every batch runs whole.
    pub(crate) fn none() -> Self {
        Self {
            spec: None,
            count: 1,
            sessions: OnceLock::new(),
            seen_large_batch: AtomicBool::new(false),
        }
    }

    /// `count` lanes of the model in `spec` (fewer than 2 means none).
    pub(crate) fn new(spec: SessionSpec, count: usize) -> Self {
        if count < 2 {
            return Self::none();
        }
        Self {
            spec: Some(spec),
            count,
            sessions: OnceLock::new(),
            seen_large_batch: AtomicBool::new(false),
        }
    }

    /// Number of lanes a big batch is split over (1: none).
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The sessions to split a batch of `n` images over, or `None` when it should run whole:
    /// when there are no lanes, `n` is smaller than their count, or this is the first batch
    /// large enough (see the module documentation).
    pub(crate) fn for_batch(&self, n: usize) -> Result<Option<&[Mutex<Session>]>> {
        if self.spec.is_none() || n < self.count {
            return Ok(None);
        }
        if let Some(sessions) = self.sessions.get() {
            return Ok(Some(sessions));
        }
        if !self.seen_large_batch.swap(true, Ordering::Relaxed) {
            return Ok(None);
        }
        self.open()
    }

    /// Opens the lane sessions (in parallel) unless they are open; `None` when there are no lanes.
    pub(crate) fn open(&self) -> Result<Option<&[Mutex<Session>]>> {
        let Some(spec) = &self.spec else {
            return Ok(None);
        };
        if let Some(sessions) = self.sessions.get() {
            return Ok(Some(sessions));
        }
        let opened: Vec<Result<Session>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.count)
                .map(|_| scope.spawn(|| spec.open(spec.builder(Some(1))?)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(RuntimeError::inference("opening a lane panicked")))
                })
                .collect()
        });
        let sessions = opened
            .into_iter()
            .map(|s| s.map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        // Another thread may have opened them meanwhile; either set is as good.
        Ok(Some(self.sessions.get_or_init(|| sessions)))
    }

    /// Whether the lane sessions are open.
    pub(crate) fn is_open(&self) -> bool {
        self.sessions.get().is_some()
    }
}

/// Runs `run_slice` on each of `sessions` with its share of `n` rows (contiguous, in order) at
/// the same time, and returns the parts in order. A panic in a lane becomes an error.
pub(crate) fn run_split<T: Send>(
    sessions: &[Mutex<Session>],
    n: usize,
    run_slice: impl Fn(Range<usize>, &Mutex<Session>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let slices = split_evenly(n, sessions.len());
    let run_slice = &run_slice;
    std::thread::scope(|scope| {
        let mut jobs = slices.into_iter().zip(sessions);
        // The calling thread runs the first slice itself.
        let first = jobs.next();
        let others: Vec<_> = jobs
            .map(|(range, session)| scope.spawn(move || run_slice(range, session)))
            .collect();
        let mut parts = Vec::with_capacity(others.len() + 1);
        if let Some((range, session)) = first {
            parts.push(run_slice(range, session));
        }
        parts.extend(others.into_iter().map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(RuntimeError::inference("a batch lane panicked")))
        }));
        parts.into_iter().collect()
    })
}

/// `n` items split into `parts` contiguous ranges whose lengths differ by at most one.
pub(crate) fn split_evenly(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split_evenly;

    #[test]
    fn split_covers_every_item_once_in_order() {
        for n in 1..40 {
            for parts in 1..10 {
                let ranges = split_evenly(n, parts);
                assert_eq!(ranges.len(), parts.min(n));
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges.last().unwrap().end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                let (min, max) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(max - min <= 1, "n={n} parts={parts}: {lens:?}");
            }
        }
    }
}
