//! [`Collective`] on MPI (OpenMPI through the `mpi` crate): one rank per process, started by
//! `mpirun`, `srun` or any MPI launcher. MPI's default error handler aborts the whole job on a
//! communication failure, which is what a data-parallel job wants (no rank trains on alone).

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::Collective;
use crate::error::{DistributedError, Result};

/// The world communicator of an MPI job; MPI is finalised when this is dropped.
pub struct MpiCollective {
    world: SimpleCommunicator,
    _universe: Universe,
}

impl MpiCollective {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| {
            DistributedError::Failed("MPI could not be initialised (or was already)".into())
        })?;
        let world = universe.world();
        Ok(Self {
            world,
            _universe: universe,
        })
    }
}

impl MpiCollective {
    /// Rank `root`'s bytes into every rank's `buf`.
    pub fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<()> {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }

    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<f32>> {
        let mut out = vec![0f32; local.len() * self.size()];
        self.world.all_gather_into(local, &mut out[..]);
        Ok(out)
    }

    fn all_gather_u64(&self, local: &[u64]) -> Result<Vec<u64>> {
        let mut out = vec![0u64; local.len() * self.size()];
        self.world.all_gather_into(local, &mut out[..]);
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("MPI ({} ranks)", self.size())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
