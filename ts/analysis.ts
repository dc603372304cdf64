// Quality metrics of a clustering. The numbers are computed in the Rust core
// (crates/core/src/analysis.rs, which defines each metric); this file only types them.
import { maskArray, type FitProgress, type SequentialSoftClustering } from './clustering'

export interface AnalyzeMetricOptions {
  /** How many token ids to list per cluster (default 10). */
  topTokens?: number
  /** Bins of each cluster's membership histogram over (0, 1] (default 10). */
  histogramBins?: number
  /** Most tokens in the silhouette's seeded sample (default 2000). */
  silhouetteSample?: number
  /** Seed of that sample (default 0). */
  seed?: number
}

export interface AnalyzeOptions extends AnalyzeMetricOptions {
  /** `[B, S, D]` or `[T, D]`. */
  shape: readonly number[]
  attentionMask?: Uint8Array | ArrayLike<number | boolean>
}

export interface ClusterStats {
  cluster: number
  /** `sum_x p_k(x)`. */
  mass: number
  /** Tokens whose largest membership is this cluster. */
  hardCount: number
  /** Membership-weighted mean cosine between the tokens and the center. */
  meanCosine: number
  /** Largest membership of any token. */
  maxMembership: number
  /** Mean membership over the tokens where it is nonzero. */
  meanMembership: number
  /** Share of the tokens with a nonzero membership. */
  nonzeroFraction: number
  /** Nonzero memberships per bin of (0, 1] (`histogramBins` equal bins; the last includes 1). */
  histogram: number[]
  /** Token ids with the largest summed membership, largest first. */
  topTokens: { tokenId: number; weight: number }[]
  /** The most similar other center and its cosine (null when K = 1). */
  nearestCenter: number | null
  nearestCenterCosine: number | null
}

export interface OverallStats {
  nTokens: number
  skipped: number
  /** mean_x (-sum_k p_k ln p_k) / ln K: 0 = hard memberships, 1 = spread evenly. */
  partitionEntropy: number
  /** mean_x sum_k p_k^2: 1 = hard, 1/K = spread evenly. */
  partitionCoefficient: number
  meanNonzeroPerToken: number
  /** sum_x sum_k p_k^2 (1 - cos(x, C_k)) / (N min_{j != l} (1 - cos(C_j, C_l))); lower is better. */
  xieBeni: number | null
  /** Mean cosine silhouette of a seeded sample, hard assignment = argmax membership. */
  silhouette: number | null
  silhouetteSample: number
}

/** Everything `analyze` computes (the core's `Analysis`). */
export interface ClusterAnalysis {
  nClusters: number
  overall: OverallStats
  clusters: ClusterStats[]
  /** cos(C_j, C_l), `[K][K]`. */
  centerSimilarity: number[][]
  /** Each center on the first two principal components of the centers. */
  centerMap: [number, number][]
  /** Share of the centers' variance along those two components. */
  centerMapVariance: [number, number]
}

function tokenIdArray(ids: BigInt64Array | ArrayLike<number | bigint> | null | undefined): BigInt64Array | undefined {
  if (ids === undefined || ids === null) return undefined
  if (ids instanceof BigInt64Array) return ids
  return BigInt64Array.from(Array.from(ids as ArrayLike<number | bigint>, (v) => BigInt(v)))
}

function metricOptions(o: AnalyzeMetricOptions) {
  return { topTokens: o.topTokens, histogramBins: o.histogramBins, silhouetteSample: o.silhouetteSample, seed: o.seed }
}

/** Quality metrics of a batch of tokens under the model's centers (`analyzeSequentialClusters`, README "Quality metrics"). */
export function analyzeSequentialClusters(
  model: SequentialSoftClustering,
  activations: Float32Array,
  tokenIds: BigInt64Array | ArrayLike<number | bigint> | null | undefined,
  options: AnalyzeOptions,
): ClusterAnalysis {
  const json = model.model.analyzeJson(activations, [...options.shape], maskArray(options.attentionMask), tokenIdArray(tokenIds), metricOptions(options))
  return JSON.parse(json) as ClusterAnalysis
}

/** The same metrics over chunk files, streamed off the JS thread one chunk at a time. */
export async function analyzeChunks(
  model: SequentialSoftClustering,
  chunkPaths: readonly string[],
  options: AnalyzeMetricOptions & { onProgress?: (progress: FitProgress) => void } = {},
): Promise<ClusterAnalysis> {
  return JSON.parse(await model.model.analyzeChunks([...chunkPaths], metricOptions(options), options.onProgress)) as ClusterAnalysis
}
