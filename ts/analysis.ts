import { maskArray, type SequentialSoftClustering } from './clustering'

export interface AnalyzeOptions {
  /** `[B, S, D]` or `[T, D]`. */
  shape: readonly number[]
  attentionMask?: Uint8Array | ArrayLike<number | boolean>
  /** How many token ids to list per cluster (default 10). */
  topTokens?: number
}

export interface ClusterStats {
  cluster: number
  /** Sum of the cluster's memberships. */
  mass: number
  /** Tokens whose largest membership is this cluster. */
  hardCount: number
  /** Membership-weighted mean cosine between the tokens and the center. */
  meanCosine: number
  /** Token ids with the largest summed membership, largest first. */
  topTokens: { tokenId: number; weight: number }[]
}

function tokenIdArray(ids: BigInt64Array | ArrayLike<number | bigint> | null | undefined): BigInt64Array | undefined {
  if (ids === undefined || ids === null) return undefined
  if (ids instanceof BigInt64Array) return ids
  return BigInt64Array.from(Array.from(ids as ArrayLike<number | bigint>, (v) => BigInt(v)))
}

/** Per cluster: mass, hard count, mean cosine to the center and the most weighted token ids (SPEC 7). */
export function analyzeSequentialClusters(
  model: SequentialSoftClustering,
  activations: Float32Array,
  tokenIds: BigInt64Array | ArrayLike<number | bigint> | null | undefined,
  options: AnalyzeOptions,
): ClusterStats[] {
  const json = model.model.analyzeJson(activations, [...options.shape], maskArray(options.attentionMask), tokenIdArray(tokenIds), options.topTokens ?? 10)
  return JSON.parse(json) as ClusterStats[]
}
