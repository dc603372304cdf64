// Quality metrics of a clustering. The numbers are computed in the Rust core
// (crates/core/src/analysis.rs, which defines each metric); their types come from the binding.
import { activationsArray, chunkList, maskArray, shapeArg, withProgress, type FitProgress, type SequentialSoftClustering } from './clustering'
import type * as native from './native'

/** Options of the metrics: `topTokens`, `histogramBins`, `silhouetteSample`, `seed`, `liftSmoothing` (absent: the core's defaults). */
export type AnalyzeMetricOptions = native.AnalyzeParams

export interface AnalyzeOptions extends AnalyzeMetricOptions {
  /** `[B, S, D]` or `[T, D]`; absent: `[T, dModel]`. */
  shape?: readonly number[]
  attentionMask?: Uint8Array | ArrayLike<number | boolean>
}

/** Per-cluster metrics: mass, hardCount, meanCosine, ..., nearestCenter (null when K = 1). */
export type ClusterStats = native.ClusterStats

/** Metrics of the whole partition: entropy, coefficient, Xie-Beni, silhouette, ... */
export type OverallStats = native.OverallStats

/** Everything `analyze` computes (the core's `Analysis`). */
export type ClusterAnalysis = native.ClusterAnalysis

/** Token ids as the `Int32Array` the core reads; a value that is not an int32 is refused, not wrapped. */
function tokenIdArray(ids: Int32Array | BigInt64Array | ArrayLike<number | bigint> | null | undefined): Int32Array | undefined {
  if (ids === undefined || ids === null) return undefined
  if (ids instanceof Int32Array) return ids
  return Int32Array.from(Array.from(ids as ArrayLike<number | bigint>), (v, i) => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < -(2 ** 31) || n >= 2 ** 31) {
      throw Object.assign(new RangeError(`tokenIds: value ${String(v)} at ${i} is not an int32 token id`), { code: 'ERR_INVALID_INPUT' })
    }
    return n
  })
}

function metricOptions(o: AnalyzeMetricOptions) {
  return { topTokens: o.topTokens, histogramBins: o.histogramBins, silhouetteSample: o.silhouetteSample, seed: o.seed, liftSmoothing: o.liftSmoothing }
}

/** Quality metrics of a batch of tokens under the model's centers (`analyzeSequentialClusters`, README "Quality metrics"). */
export function analyzeSequentialClusters(
  model: SequentialSoftClustering,
  activations: Float32Array | ArrayLike<number>,
  tokenIds: Int32Array | BigInt64Array | ArrayLike<number | bigint> | null | undefined,
  options: AnalyzeOptions = {},
): ClusterAnalysis {
  return model.model.analyze(activationsArray(activations), shapeArg(options.shape), maskArray(options.attentionMask), tokenIdArray(tokenIds), metricOptions(options))
}

/** The same metrics over chunk files, streamed off the JS thread one chunk at a time. */
export async function analyzeChunks(
  model: SequentialSoftClustering,
  chunkPaths: readonly string[],
  options: AnalyzeMetricOptions & { onProgress?: (progress: FitProgress) => void } = {},
): Promise<ClusterAnalysis> {
  const chunks = chunkList(chunkPaths)
  return withProgress(options.onProgress, (cb) => model.model.analyzeChunks(chunks, metricOptions(options), cb))
}
