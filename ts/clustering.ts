import { centersArray, resolveConfig, type ClusteringConfig, type ResolvedConfig } from './config'
import * as native from './native'

export interface TransformOptions {
  /** `[B, S, D]` or `[T, D]`; its product must equal `activations.length`. */
  shape: readonly number[]
  /** `[B * S]`, nonzero (or true) = real token. Absent: every token is real. */
  attentionMask?: Uint8Array | ArrayLike<number | boolean>
  /** Also return the dense `[nRows, K]` matrix (default true). */
  dense?: boolean
}

export interface TransformResult {
  /** Dense `[nRows, K]` memberships (absent when `dense: false`). */
  memberships?: Float32Array
  /** For each row: the flattened token index `batch * S + position`. Padding and zero vectors have no row. */
  rowTokens: Uint32Array
  /** Nonzero memberships as `[nnz, 3]` triplets (batch, position, cluster), sorted. */
  indices: Int32Array
  values: Float32Array
  nRows: number
  nClusters: number
  /** Real tokens whose vector was all zeros (no direction, no row). */
  skipped: number
}

function maskArray(mask: TransformOptions['attentionMask']): Uint8Array | undefined {
  if (mask === undefined || mask === null) return undefined
  if (mask instanceof Uint8Array) return mask
  return Uint8Array.from(Array.from(mask as ArrayLike<number | boolean>, (v) => (v ? 1 : 0)))
}

function activationsArray(activations: Float32Array | ArrayLike<number>): Float32Array {
  return activations instanceof Float32Array ? activations : Float32Array.from(activations as ArrayLike<number>)
}

/** Soft spherical k-means over token activations (SPEC 7). */
export class SequentialSoftClustering {
  /** @internal */
  protected readonly model: native.NativeModel
  readonly config: ResolvedConfig

  constructor(config: ClusteringConfig) {
    this.config = resolveConfig(config)
    this.model = new native.NativeModel(JSON.stringify(this.config), centersArray(config.initialCenters))
  }

  /** The centers, `[K * D]` row-major unit vectors, or null before there are any. */
  get centers(): Float32Array | null {
    return this.model.centers
  }

  /** Memberships of a batch of tokens, computed on the calling thread. */
  transform(activations: Float32Array | ArrayLike<number>, options: TransformOptions): TransformResult {
    return stripNull(
      this.model.transform(activationsArray(activations), [...options.shape], maskArray(options.attentionMask), options.dense ?? true),
    )
  }

  /** The same as `transform`, off the JS thread. */
  async transformAsync(activations: Float32Array | ArrayLike<number>, options: TransformOptions): Promise<TransformResult> {
    return stripNull(
      await this.model.transformAsync(activationsArray(activations), [...options.shape], maskArray(options.attentionMask), options.dense ?? true),
    )
  }
}

function stripNull(out: native.TransformOutput): TransformResult {
  const { memberships, ...rest } = out
  return memberships ? { memberships, ...rest } : rest
}
