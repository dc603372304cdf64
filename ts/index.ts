import './binary'
export { analyzeChunks, analyzeSequentialClusters, type AnalyzeMetricOptions, type AnalyzeOptions, type ClusterAnalysis, type ClusterStats, type OverallStats } from './analysis'
export {
  SequentialSoftClustering,
  type Exemplar,
  type FitOptions,
  type FitProgress,
  type Hierarchy,
  type HistoryEntry,
  type ModelSummary,
  type TransformOptions,
  type TransformResult,
} from './clustering'
export { chunkShape, resolveChunks } from './chunks'
export { resolveConfig, type ClusteringConfig, type Device, type ResolvedConfig } from './config'
import type { Device } from './config'
import * as native from './native'

export type ChunkData = native.ChunkData

/** Reads one chunk `.npz` (docs/formats.md "Input chunks"): activations widened to float32, shape `[B, S, D]`. */
export function readChunk(path: string): ChunkData {
  return native.readChunk(path)
}

/** `readChunk` off the JS thread. */
export function readChunkAsync(path: string): Promise<ChunkData> {
  return native.readChunkAsync(path)
}

export type NpyArray = native.NpyArray

/** Reads a float `.npy` file (float16, float32 or float64) as float32, e.g. initial centers. */
export function readNpy(path: string): NpyArray {
  return native.readNpy(path)
}

export type MembershipsFile = native.MembershipsFile

/** Reads a `<chunk>.memberships.npz` written by `fitChunks` (docs/formats.md "Memberships file"). */
export function readMemberships(path: string): MembershipsFile {
  return native.readMemberships(path)
}

/** The memberships file a fit or transform writes into `outputDir` for the chunk at `chunkPath` (named by the core). */
export function membershipsPathFor(outputDir: string, chunkPath: string): string {
  return native.membershipsPathFor(outputDir, chunkPath)
}

export type Processes = native.Processes

/**
 * Rank and size of the run this process is part of: rank 0 of 1, unless `mpirun`, `mpiexec` or
 * `srun` started several processes of a build with MPI (`npm run build:mpi`); then `fitChunks` is
 * one fit over every rank, each reading its share of the chunks, and scripts print from rank 0
 * (docs/scaling.md "Many servers"). A build without MPI under such a launch throws `ERR_INVALID_INPUT`.
 */
export function processes(): Processes {
  return native.processes()
}

export type DeviceProbe = native.DeviceProbe

/** Whether `device` (default `'cuda'`) can be used here, and the reason: what a fit on it would say. */
export function probeDevice(device?: Device): DeviceProbe {
  return native.probeDevice(device)
}

/**
 * The most bytes one array of a chunk may decode to, for the whole process (a larger one is
 * refused before it is read, `ERR_BAD_CHUNK`); `null` restores the default, half the available
 * memory (docs/formats.md "Limits").
 */
export function setMaxChunkBytes(bytes: number | null): void {
  native.setMaxChunkBytes(bytes)
}

/**
 * The name of the activations tensor in safetensors chunks, for the whole process; `null`
 * restores the default: `activations`, or else the file's only float tensor of rank 2 or 3.
 */
export function setActivationsKey(key: string | null): void {
  native.setActivationsKey(key)
}
