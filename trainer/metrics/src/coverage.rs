//! Class coverage of generated samples as a classifier sees them: mode collapse shows as few
//! classes, low entropy.

use serde::Serialize;

/// Predicted-label statistics of a sample set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coverage {
    /// Samples per predicted class.
    pub histogram: Vec<usize>,
    /// Classes holding at least 5% of the samples.
    pub classes_over_5_percent: usize,
    /// Mean probability of the predicted class.
    pub mean_confidence: f64,
    /// Entropy of the predicted-label distribution in bits (log2(classes) when uniform).
    pub label_entropy_bits: f64,
    /// For conditional models: how often the prediction equals the class asked for.
    pub class_agreement: Option<f64>,
}

/// Coverage from per-sample class probabilities (`rows` of `classes` values) and, for
/// conditional models, the asked classes.
pub fn coverage(probs: &[f32], classes: usize, asked: Option<&[u32]>) -> Coverage {
    let n = probs.len() / classes;
    let mut histogram = vec![0usize; classes];
    let mut confidence = 0f64;
    let mut agree = 0usize;
    for (i, row) in probs.chunks_exact(classes).enumerate() {
        let (best, p) =
            row.iter().enumerate().fold(
                (0, f32::MIN),
                |acc, (j, &v)| if v > acc.1 { (j, v) } else { acc },
            );
        histogram[best] += 1;
        confidence += p as f64;
        if asked.is_some_and(|a| a[i] as usize == best) {
            agree += 1;
        }
    }
    let entropy = histogram
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum();
    Coverage {
        classes_over_5_percent: histogram
            .iter()
            .filter(|&&c| c as f64 >= 0.05 * n as f64)
            .count(),
        histogram,
        mean_confidence: confidence / n.max(1) as f64,
        label_entropy_bits: entropy,
        class_agreement: asked.map(|_| agree as f64 / n.max(1) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_and_collapsed_sets() {
        // 4 samples, 2 classes, one of each, confident.
        let probs = [0.9, 0.1, 0.2, 0.8, 0.7, 0.3, 0.4, 0.6];
        let c = coverage(&probs, 2, Some(&[0, 1, 1, 1]));
        assert_eq!(c.histogram, vec![2, 2]);
        assert_eq!(c.classes_over_5_percent, 2);
        assert!((c.label_entropy_bits - 1.0).abs() < 1e-12);
        assert!((c.mean_confidence - 0.75).abs() < 1e-6);
        assert_eq!(c.class_agreement, Some(0.75));
        let collapsed = coverage(&[1.0, 0.0, 1.0, 0.0], 2, None);
        assert_eq!(
            (
                collapsed.classes_over_5_percent,
                collapsed.label_entropy_bits
            ),
            (1, 0.0)
        );
    }
}
