//! Per-model counters in Prometheus' text exposition format, named after Triton's
//! (`nv_inference_*` there, `gantry_inference_*` here).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The counters of one model version. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    request_success: AtomicU64,
    request_failure: AtomicU64,
    inference_count: AtomicU64,
    exec_count: AtomicU64,
    max_batch: AtomicU64,
    queue_duration_us: AtomicU64,
    compute_infer_duration_us: AtomicU64,
    pending: AtomicU64,
}

impl ModelMetrics {
    /// A request that ended with its answer (success) or an error (failure).
    pub fn record_request(&self, ok: bool) {
        let counter = if ok {
            &self.request_success
        } else {
            &self.request_failure
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One ONNX Runtime execution of `images` images that took `compute`.
    pub fn record_execution(&self, images: usize, compute: Duration) {
        self.exec_count.fetch_add(1, Ordering::Relaxed);
        self.max_batch.fetch_max(images as u64, Ordering::Relaxed);
        self.inference_count
            .fetch_add(images as u64, Ordering::Relaxed);
        self.compute_infer_duration_us
            .fetch_add(compute.as_micros() as u64, Ordering::Relaxed);
    }

    /// Time a piece of a request waited in the queue.
    pub fn record_queue(&self, waited: Duration) {
        self.queue_duration_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts `pieces` more request pieces as waiting, unless that would make more than
    /// `bound`; returns whether they were counted.
    pub fn try_enqueue(&self, pieces: usize, bound: usize) -> bool {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p as usize + pieces <= bound).then_some(p + pieces as u64)
            })
            .is_ok()
    }

    /// `pieces` request pieces stopped waiting (their execution starts, or they were not sent).
    pub fn dequeued(&self, pieces: usize) {
        self.pending.fetch_sub(pieces as u64, Ordering::AcqRel);
    }

    /// Successful requests so far.
    pub fn request_success(&self) -> u64 {
        self.request_success.load(Ordering::Relaxed)
    }

    /// Failed requests so far.
    pub fn request_failure(&self) -> u64 {
        self.request_failure.load(Ordering::Relaxed)
    }

    /// Images inferred so far.
    pub fn inference_count(&self) -> u64 {
        self.inference_count.load(Ordering::Relaxed)
    }

    /// ONNX Runtime executions so far (`inference_count / exec_count` is the average batch).
    pub fn exec_count(&self) -> u64 {
        self.exec_count.load(Ordering::Relaxed)
    }

    /// The most images one execution has run so far (never above the model's max batch).
    pub fn max_batch(&self) -> u64 {
        self.max_batch.load(Ordering::Relaxed)
    }
}

/// One model version's identity and counters, as the exposition lists them.
pub struct Labelled<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub provider: &'a str,
    pub metrics: &'a ModelMetrics,
}

/// The whole `/metrics` page.
pub fn render(models: &[Labelled<'_>]) -> String {
    type Read = fn(&ModelMetrics) -> u64;
    let families: [(&str, &str, &str, Read); 8] = [
        (
            "gantry_inference_request_success",
            "counter",
            "Successful inference requests",
            |m| m.request_success(),
        ),
        (
            "gantry_inference_request_failure",
            "counter",
            "Failed inference requests",
            |m| m.request_failure(),
        ),
        (
            "gantry_inference_count",
            "counter",
            "Images inferred (the batch size of every execution, summed)",
            |m| m.inference_count(),
        ),
        (
            "gantry_inference_exec_count",
            "counter",
            "ONNX Runtime executions (inference_count / exec_count is the average batch)",
            |m| m.exec_count(),
        ),
        (
            "gantry_inference_max_batch_size",
            "gauge",
            "The most images one ONNX Runtime execution has run (at most the model's max batch)",
            |m| m.max_batch(),
        ),
        (
            "gantry_inference_queue_duration_us",
            "counter",
            "Cumulative time requests waited in the queue, microseconds",
            |m| m.queue_duration_us.load(Ordering::Relaxed),
        ),
        (
            "gantry_inference_compute_infer_duration_us",
            "counter",
            "Cumulative ONNX Runtime execution time, microseconds",
            |m| m.compute_infer_duration_us.load(Ordering::Relaxed),
        ),
        (
            "gantry_inference_pending_request_count",
            "gauge",
            "Request pieces waiting in the queue now",
            |m| m.pending.load(Ordering::Relaxed),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, read) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for m in models {
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",version=\"{}\"}} {}",
                escape(m.model),
                escape(m.version),
                read(m.metrics)
            );
        }
    }
    let name = "gantry_execution_provider";
    let _ = writeln!(
        out,
        "# HELP {name} The ONNX Runtime execution provider each model runs on (value 1)\n# TYPE {name} gauge"
    );
    for m in models {
        let _ = writeln!(
            out,
            "{name}{{model=\"{}\",version=\"{}\",provider=\"{}\"}} 1",
            escape(m.model),
            escape(m.version),
            escape(m.provider)
        );
    }
    out
}

/// A label value with `\`, `"` and newlines escaped as the exposition format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lists_every_family_per_model() {
        let a = ModelMetrics::default();
        a.record_request(true);
        a.record_request(true);
        a.record_request(false);
        a.record_execution(8, Duration::from_micros(1500));
        a.record_execution(4, Duration::from_micros(500));
        a.record_queue(Duration::from_micros(70));
        let b = ModelMetrics::default();
        let text = render(&[
            Labelled {
                model: "digits",
                version: "1",
                provider: "CPUExecutionProvider",
                metrics: &a,
            },
            Labelled {
                model: "we\"ird",
                version: "2",
                provider: "CPUExecutionProvider",
                metrics: &b,
            },
        ]);
        for line in [
            "gantry_inference_request_success{model=\"digits\",version=\"1\"} 2",
            "gantry_inference_request_failure{model=\"digits\",version=\"1\"} 1",
            "gantry_inference_count{model=\"digits\",version=\"1\"} 12",
            "gantry_inference_exec_count{model=\"digits\",version=\"1\"} 2",
            "gantry_inference_compute_infer_duration_us{model=\"digits\",version=\"1\"} 2000",
            "gantry_inference_queue_duration_us{model=\"digits\",version=\"1\"} 70",
            "gantry_inference_count{model=\"we\\\"ird\",version=\"2\"} 0",
            "gantry_execution_provider{model=\"digits\",version=\"1\",provider=\"CPUExecutionProvider\"} 1",
            "# TYPE gantry_inference_count counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }
}
