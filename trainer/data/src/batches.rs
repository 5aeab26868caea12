//! Seeded data order: each epoch is a permutation drawn from `(seed, epoch)` alone, so a run that
//! resumes at (epoch, batch) sees exactly the batches an uninterrupted run would.

use gantry_models::init::rng_for;
use rand::seq::SliceRandom;

/// The batch schedule of a data set of `len` images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochOrder {
    pub len: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl EpochOrder {
    /// Batches per epoch: the last partial batch is kept unless it would hold a single image
    /// (BatchNorm needs at least two).
    pub fn batches_per_epoch(&self) -> usize {
        let full = self.len / self.batch_size;
        let rest = self.len % self.batch_size;
        full + usize::from(rest >= 2)
    }

    /// The shuffled image order of `epoch`.
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        order.shuffle(&mut rng_for(
            self.seed,
            &format!("data-order/epoch-{epoch}"),
        ));
        order
    }

    /// The image indices of batch `batch` within an epoch's permutation.
    pub fn batch<'a>(&self, permutation: &'a [usize], batch: usize) -> &'a [usize] {
        let start = batch * self.batch_size;
        let end = (start + self.batch_size).min(self.len);
        &permutation[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_batches_and_every_image_once() {
        let a = EpochOrder {
            len: 10,
            batch_size: 4,
            seed: 3,
        };
        let b = EpochOrder {
            len: 10,
            batch_size: 4,
            seed: 3,
        };
        let c = EpochOrder {
            len: 10,
            batch_size: 4,
            seed: 4,
        };
        assert_eq!(a.permutation(2), b.permutation(2));
        assert_ne!(a.permutation(2), c.permutation(2));
        assert_ne!(a.permutation(0), a.permutation(1));
        let perm = a.permutation(0);
        let mut seen: Vec<usize> = (0..a.batches_per_epoch())
            .flat_map(|i| a.batch(&perm, i).to_vec())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(a.batches_per_epoch(), 3);
        assert_eq!(
            EpochOrder {
                len: 9,
                batch_size: 4,
                seed: 0
            }
            .batches_per_epoch(),
            2
        );
    }
}
