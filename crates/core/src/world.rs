//! The processes of this run (docs/scaling.md "Many servers"): one, or the ranks of an MPI job
//! when a launcher (`mpirun`, `mpiexec`, `srun`) started this process and the build has MPI
//! (cargo feature `mpi`, rsmpi over the site's MPI). A launch this build cannot join is refused:
//! N copies of a one-process fit would race on one output folder.

use crate::error::{Error, Result};
use crate::ranks::{Collective, OneProcess};
use std::sync::OnceLock;

/// Seconds a rank waits for the others in one collective step before it ends itself (a rank that
/// died or hangs must not leave the others waiting forever); `SOFT_CLUSTER_MPI_TIMEOUT` sets it.
pub const DEFAULT_TIMEOUT_S: u64 = 3600;

/// Whether this build can run as one rank of an MPI job.
pub const HAS_MPI: bool = cfg!(feature = "mpi");

/// What the launcher's variables say: (rank, size, the variable that said it), when a launcher
/// started more than one process: OpenMPI's `mpirun`, a PMI launcher (MPICH's `mpiexec`, `srun
/// --mpi=pmi2`) or a PMIx one (`srun --mpi=pmix`: `PMIX_RANK`, with the step's task count when
/// Slurm gives it, else no size: `None`, and MPI says). Not Slurm's task variables alone: a batch
/// script with several tasks that runs one fit without `srun` has them too.
pub fn launched() -> Option<(usize, Option<usize>, &'static str)> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<usize>().ok());
    for (size, rank) in [("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), ("PMI_SIZE", "PMI_RANK")] {
        if let Some(n) = var(size) {
            return (n > 1).then(|| (var(rank).unwrap_or(0), Some(n), size));
        }
    }
    // Under srun the step's task count says whether a PMIx launch is of one process.
    var("PMIX_RANK").and_then(|r| match var("SLURM_STEP_NUM_TASKS") {
        Some(n) if n <= 1 => None,
        n => Some((r, n, "PMIX_RANK")),
    })
}

static WORLD: OnceLock<std::result::Result<Box<dyn Collective>, String>> = OnceLock::new();

/// The processes of this run: `OneProcess` unless a launcher started several; then the MPI
/// world (initialized once, finalized at exit), or an error in a build without MPI.
pub fn processes() -> Result<&'static dyn Collective> {
    let world = WORLD.get_or_init(|| match launched() {
        None => Ok(Box::new(OneProcess)),
        Some(launch) => join(launch),
    });
    match world {
        Ok(world) => Ok(world.as_ref()),
        Err(problem) => Err(Error::invalid_input("MPI", problem.clone())),
    }
}

#[cfg(not(feature = "mpi"))]
fn join((rank, size, var): (usize, Option<usize>, &'static str)) -> std::result::Result<Box<dyn Collective>, String> {
    let of = size.map_or_else(String::new, |n| format!(" of {n}"));
    Err(format!(
        "this process is rank {rank}{of} of a parallel launch ({var} is set), but this build of soft-cluster has no MPI; build it with `npm run build:mpi` (docs/scaling.md \"Many servers\"), or run one process"
    ))
}

#[cfg(feature = "mpi")]
fn join(_: (usize, Option<usize>, &'static str)) -> std::result::Result<Box<dyn Collective>, String> {
    mpi_ranks::MpiRanks::init().map(|w| -> Box<dyn Collective> { if w.size() == 1 { Box::new(OneProcess) } else { Box::new(w) } })
}

#[cfg(feature = "mpi")]
mod mpi_ranks {
    use super::DEFAULT_TIMEOUT_S;
    use crate::error::Result;
    use crate::ranks::Collective;
    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use mpi::Count;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// Bytes per MPI call: MPI counts are 32-bit.
    const PIECE: usize = 1 << 28;

    /// When the collective step under way must be over (ms since the epoch; 0: none under way).
    static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);

    pub struct MpiRanks {
        rank: usize,
        size: usize,
        local: usize,
        timeout: Duration,
    }

    extern "C" fn finalize_at_exit() {
        if !mpi::is_finalized() {
            // SAFETY: MPI was initialized by `init` and is finalized once, here, at exit.
            unsafe { mpi::ffi::MPI_Finalize() };
        }
    }

    fn now_ms() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    impl MpiRanks {
        pub fn init() -> std::result::Result<MpiRanks, String> {
            let timeout_s = match std::env::var("SOFT_CLUSTER_MPI_TIMEOUT") {
                Ok(v) => v.trim().parse::<u64>().ok().filter(|&s| s > 0).ok_or_else(|| format!("SOFT_CLUSTER_MPI_TIMEOUT must be a whole number of seconds > 0, got {v:?}"))?,
                Err(_) => DEFAULT_TIMEOUT_S,
            };
            // Calls come from one thread at a time (the one running the fit), not always the same.
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized).ok_or("MPI was initialized before soft-cluster could")?;
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            let local = world.split_shared(world.rank()).size() as usize;
            // Finalized at exit, after whatever the process still does with the results.
            std::mem::forget(universe);
            // SAFETY: registers a plain extern "C" function.
            unsafe { libc::atexit(finalize_at_exit) };
            let timeout = Duration::from_secs(timeout_s);
            std::thread::Builder::new()
                .name("soft-cluster-mpi-watchdog".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let deadline = DEADLINE_MS.load(Ordering::Acquire);
                    if deadline != 0 && now_ms() > deadline {
                        eprintln!("soft-cluster: rank {rank} of {size}: waited {timeout_s} s for the other ranks; one of them died or hangs (SOFT_CLUSTER_MPI_TIMEOUT); ending this rank");
                        // Not `exit`: the fit's thread is inside MPI, which must not be finalized under it.
                        // SAFETY: ends the process at once.
                        unsafe { libc::_exit(70) };
                    }
                })
                .map_err(|e| format!("could not start the MPI watchdog thread: {e}"))?;
            Ok(MpiRanks { rank, size, local, timeout })
        }

        /// Runs one collective step under the deadline.
        fn timed<T>(&self, step: impl FnOnce(&SimpleCommunicator) -> T) -> T {
            DEADLINE_MS.store(now_ms() + self.timeout.as_millis() as u64, Ordering::Release);
            let out = step(&SimpleCommunicator::world());
            DEADLINE_MS.store(0, Ordering::Release);
            out
        }

        /// Every rank's byte count.
        fn lengths(&self, world: &SimpleCommunicator, len: usize) -> Vec<usize> {
            let mut all = vec![0u64; self.size];
            world.all_gather_into(&(len as u64), &mut all[..]);
            all.into_iter().map(|n| n as usize).collect()
        }

        /// Every rank's bytes on every rank (`all`) or on rank 0 only, in rounds of at most
        /// `PIECE` bytes in all.
        fn collect(&self, bytes: Vec<u8>, all: bool) -> Vec<Vec<u8>> {
            self.timed(|world| {
                let lens = self.lengths(world, bytes.len());
                let mut out: Vec<Vec<u8>> = lens.iter().map(|&n| Vec::with_capacity(if all || self.rank == 0 { n } else { 0 })).collect();
                let per_round = (PIECE / self.size).max(1);
                let rounds = lens.iter().max().map_or(0, |&m| m.div_ceil(per_round));
                let root = world.process_at_rank(0);
                for round in 0..rounds {
                    let span = |n: usize| (round * per_round).min(n)..((round + 1) * per_round).min(n);
                    let counts: Vec<Count> = lens.iter().map(|&n| span(n).len() as Count).collect();
                    let displs: Vec<Count> = counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect();
                    let mut buf = vec![0u8; counts.iter().map(|&c| c as usize).sum()];
                    let mine = &bytes[span(bytes.len())];
                    if all {
                        world.all_gather_varcount_into(mine, &mut PartitionMut::new(&mut buf[..], &counts[..], &displs[..]));
                    } else if self.rank == 0 {
                        root.gather_varcount_into_root(mine, &mut PartitionMut::new(&mut buf[..], &counts[..], &displs[..]));
                    } else {
                        root.gather_varcount_into(mine);
                        continue;
                    }
                    for (r, o) in out.iter_mut().enumerate() {
                        o.extend_from_slice(&buf[displs[r] as usize..(displs[r] + counts[r]) as usize]);
                    }
                }
                if all || self.rank == 0 { out } else { Vec::new() }
            })
        }
    }

    impl Collective for MpiRanks {
        fn rank(&self) -> usize {
            self.rank
        }

        fn size(&self) -> usize {
            self.size
        }

        fn on_this_machine(&self) -> usize {
            self.local
        }

        fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
            self.timed(|world| {
                for piece in values.chunks_mut(PIECE / 8) {
                    let mine = piece.to_vec();
                    world.all_reduce_into(&mine[..], piece, SystemOperation::sum());
                }
            });
            Ok(())
        }

        fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
            Ok(self.collect(bytes, true))
        }

        fn gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
            Ok(self.collect(bytes, false))
        }

        fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
            Ok(self.timed(|world| {
                let root = world.process_at_rank(0);
                let mut len = bytes.len() as u64;
                root.broadcast_into(&mut len);
                let mut buf = if self.rank == 0 { bytes } else { vec![0u8; len as usize] };
                for piece in buf.chunks_mut(PIECE) {
                    root.broadcast_into(piece);
                }
                buf
            }))
        }
    }
}
