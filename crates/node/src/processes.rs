//! This process's place in a run on several processes (docs/scaling.md "Many servers").

use crate::errors::js_error;
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use soft_cluster_core::world;

/// Rank and size of the run this process is part of.
#[napi(object)]
pub struct Processes {
    /// 0 for rank 0, the one that writes the model; 0 in one process.
    pub rank: u32,
    /// 1 unless an MPI launcher started several processes.
    pub size: u32,
    /// Whether this build can join an MPI job (`npm run build:mpi`).
    pub mpi_build: bool,
}

/// Rank and size of this process: rank 0 of 1 unless `mpirun`, `mpiexec` or `srun` started
/// several, in which case the first call joins the MPI job (a build without MPI refuses with
/// `ERR_INVALID_INPUT`). `fitChunks` under such a launch is one fit over all the ranks.
#[napi]
pub fn processes(env: Env) -> Result<Processes> {
    let world = world::processes().map_err(|e| js_error(&env, e))?;
    Ok(Processes { rank: world.rank() as u32, size: world.size() as u32, mpi_build: world::HAS_MPI })
}
