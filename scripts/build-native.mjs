// Builds the native addon for this machine (`npm run build:native`). With SOFT_CLUSTER_MPI=1 in the
// environment, or `--mpi` (`npm run build:mpi`), it links the MPI found here (OpenMPI or MPICH, through
// `mpicc`) so that fits can run under `mpirun`/`srun` (docs/scaling.md "Many servers"); the default
// build, like the prebuilt binaries, has no MPI.
import { spawnSync } from 'node:child_process';

const mpi = process.argv.includes('--mpi') || process.env.SOFT_CLUSTER_MPI === '1';
const args = ['build', '--platform', '--release', '--manifest-path', 'crates/node/Cargo.toml', '--output-dir', '.'];
if (mpi) args.push('--features', 'mpi');
const napi = process.platform === 'win32' ? 'napi.cmd' : 'napi';
const run = spawnSync(napi, args, { stdio: 'inherit', shell: process.platform === 'win32' });
if (run.error) {
  console.error(`build-native: could not run ${napi}: ${run.error.message}`);
  process.exit(1);
}
process.exit(run.status ?? 1);
