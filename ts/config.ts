// The config's shapes are declared once, by the binding (index.d.ts, from crates/node/src/config.rs);
// this file adds the one field that travels as data, `initialCenters`.
import * as native from './native'

/** Where the work runs: `auto` picks CUDA when a usable GPU and driver are present, else the CPU. */
export type Device = NonNullable<native.ClusteringConfig['device']>

/**
 * The config (docs/algorithm.md "Config"): the binding's `ClusteringConfig` (only `nClusters` is
 * required; `temperature` is a number or `'auto'`, the default), plus starting centers. Without
 * `dModel`, `fitChunks` reads it from the first chunk.
 */
export type ClusteringConfig = Omit<native.ClusteringConfig, 'dModel'> & {
  /** Dimension of the activations; absent: `fitChunks` reads it from the first chunk's header. */
  dModel?: number
  /** Starting centers: `K * D` values row-major, or `K` rows of `D` (normalized on entry). */
  initialCenters?: Float32Array | ArrayLike<number>[]
}

/** The config with every default filled in, as the core resolved it. */
export type ResolvedConfig = native.ResolvedConfig

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

/** The config without `initialCenters`, which travels separately, as data (a missing `dModel` is the core's to refuse). */
export function withoutCenters(config: ClusteringConfig): native.ClusteringConfig {
  const { initialCenters: _centers, ...plain } = config
  return plain as native.ClusteringConfig
}

/** Validates `config` in the core and returns it with the defaults filled in. */
export function resolveConfig(config: ClusteringConfig): ResolvedConfig {
  return native.resolveConfig(withoutCenters(config))
}
