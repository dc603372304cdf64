import * as native from './native'

/** Where the work runs: `auto` picks CUDA when a usable GPU and driver are present, else the CPU. */
export type Device = 'auto' | 'cpu' | 'cuda' | `cuda:${number}`

/** The config (docs/algorithm.md "Config"). Only `nClusters` and `dModel` are required; the core fills in the defaults. */
export interface ClusteringConfig {
  nClusters: number
  dModel: number
  /** Softmax temperature on cosine similarities (default 1.0). */
  temperature?: number
  /** Memberships below this are dropped, except each token's largest (default 0.01). */
  minMembership?: number
  device?: Device
  /** Exemplars kept per cluster (default 10). */
  nExemplars?: number
  /** Context tokens on each side of an exemplar (default 8). */
  contextWindow?: number
  /** Passes over the data (default 10). */
  nIterations?: number
  seed?: number
  /** Stop when the largest center shift falls below this; 0 = never stop early (default 1e-7). */
  tol?: number
  /**
   * Matrix products on CUDA: `float32` (default) or `tf32` (tensor cores, several times faster at
   * large K and D; cosines carry about 1e-3 relative error, memberships about 1e-3 / T). The CPU
   * always computes in float32.
   */
  precision?: 'float32' | 'tf32'
  /** Starting centers: `K * D` values row-major, or `K` rows of `D` (normalized on entry). */
  initialCenters?: Float32Array | ArrayLike<number>[]
}

/** The config with every default filled in, as the core resolved it. */
export type ResolvedConfig = Required<Omit<ClusteringConfig, 'initialCenters'>>

/** Flattens `initialCenters` to the `Float32Array` the core takes; sizes are checked there. */
export function centersArray(centers: ClusteringConfig['initialCenters']): Float32Array | undefined {
  if (centers === undefined || centers === null) return undefined
  if (centers instanceof Float32Array) return centers
  if (!Array.isArray(centers)) {
    throw Object.assign(new TypeError('invalid config: initialCenters: must be a Float32Array or an array of rows'), {
      code: 'ERR_INVALID_CONFIG',
    })
  }
  const rows = centers as ArrayLike<number>[]
  const d = rows[0]?.length ?? 0
  const out = new Float32Array(rows.length * d)
  rows.forEach((row, i) => {
    if (row?.length !== d) {
      throw Object.assign(new TypeError(`invalid config: initialCenters: row ${i} has ${row?.length} values, row 0 has ${d}`), {
        code: 'ERR_INVALID_CONFIG',
      })
    }
    out.set(Array.from(row), i * d)
  })
  return out
}

/** Validates `config` in the core and returns it with the defaults filled in. */
export function resolveConfig(config: ClusteringConfig): ResolvedConfig {
  const { initialCenters: _centers, ...plain } = config
  return JSON.parse(native.resolveConfig(JSON.stringify(plain))) as ResolvedConfig
}
