import { existsSync, statSync } from 'node:fs'
import { chunkShape, resolveChunks } from './chunks'
import { centersArray, resolveConfig, withoutCenters, type ClusteringConfig, type ResolvedConfig } from './config'
import * as native from './native'

export interface TransformOptions {
  /** `[B, S, D]` or `[T, D]`; its product must equal `activations.length`. Absent: `[T, dModel]`. */
  shape?: readonly number[]
  /** `[B * S]`, nonzero (or true) = real token. Absent: every token is real. */
  attentionMask?: Uint8Array | ArrayLike<number | boolean>
  /** Also return the dense `[nRows, K]` matrix (default true). */
  dense?: boolean
  /** Memberships of the `level` groups of the tree's cut (`hierarchy()`) instead of the K clusters, summed per group. */
  level?: number
}

/**
 * Memberships of a batch of tokens: `memberships` (dense `[nRows, K]`, absent when `dense: false`),
 * `rowTokens` (`batch * S + position` of each row; padding and zero vectors have no row),
 * `indices` (`[nnz, 3]`: batch, position, cluster, sorted) with `values`, `labels` (each row's
 * hard label), `nRows`, `nClusters`, and `skipped` (real tokens whose vector was all zeros).
 */
export type TransformResult = Omit<native.TransformOutput, 'memberships'> & { memberships?: Float32Array }

/** An attention mask as the `Uint8Array` the core reads (copied only when it is not one already). */
export function maskArray(mask: TransformOptions['attentionMask']): Uint8Array | undefined {
  if (mask === undefined || mask === null) return undefined
  if (mask instanceof Uint8Array) return mask
  return Uint8Array.from(Array.from(mask as ArrayLike<number | boolean>, (v) => (v ? 1 : 0)))
}

/**
 * The chunk files the core takes: files as given, folders and globs expanded as the CLI does
 * (`resolveChunks`). A lone string would be read as one file per character, so it is refused.
 */
export function chunkList(chunkPaths: readonly string[]): string[] {
  if (!Array.isArray(chunkPaths)) {
    throw Object.assign(new TypeError(`chunkPaths: must be an array of paths, got ${typeof chunkPaths === 'string' ? `the string ${JSON.stringify(chunkPaths)}` : typeof chunkPaths}`), {
      code: 'ERR_INVALID_INPUT',
    })
  }
  const isFile = (p: string): boolean => typeof p === 'string' && existsSync(p) && statSync(p).isFile()
  return chunkPaths.flatMap((p) => (isFile(p) || typeof p !== 'string' ? [p] : resolveChunks([p])))
}

/** The `shape` argument of the core: absent means `[T, dModel]` (the core works it out). */
export function shapeArg(shape: readonly number[] | undefined): number[] | undefined {
  return shape === undefined || shape === null ? undefined : [...shape]
}

/**
 * Runs native work that reports progress to a user's callback. A callback that throws must not
 * end the process: it is called no more, the work runs to its end, and the promise rejects with
 * the callback's error.
 */
export async function withProgress<T>(onProgress: ((p: native.FitProgress) => void) | undefined, work: (cb?: (p: native.FitProgress) => void) => Promise<T>): Promise<T> {
  if (!onProgress) return work(undefined)
  let thrown: { error: unknown } | undefined
  const result = await work((p) => {
    if (thrown) return
    try {
      onProgress(p)
    } catch (error) {
      thrown = { error }
    }
  })
  if (thrown) throw thrown.error
  return result
}

/** Activations as the `Float32Array` the core reads; other arrays of numbers (`Float64Array`, `number[]`) are converted. */
export function activationsArray(activations: Float32Array | ArrayLike<number>): Float32Array {
  return activations instanceof Float32Array ? activations : Float32Array.from(activations as ArrayLike<number>)
}

export type FitProgress = native.FitProgress

export interface FitOptions {
  /**
   * Called after every chunk: phase, iteration, chunk i of n, tokens done and tokens/s. If it
   * throws, it is not called again, the work runs to its end, and the promise rejects with its error.
   */
  onProgress?: (progress: FitProgress) => void
  /**
   * Continue from `outputDir/checkpoint.safetensors` (written after every iteration) if there is
   * one. The config and the chunk files must be the ones it was made with.
   */
  resume?: boolean
  /**
   * Replace the outputs of an earlier run (listed in `outputDir/soft-cluster-run.json`, or an
   * unfinished fit's checkpoint) once this run is complete. Without it, a folder holding them is
   * refused (`ERR_OUTPUT_EXISTS`). Inputs are never replaced.
   */
  overwrite?: boolean
}

/** The tree over a model's clusters and its dendrogram. */
export type Hierarchy = native.Hierarchy

/** One iteration of a fit (docs/algorithm.md "History"). */
export type HistoryEntry = native.HistoryEntry

/** A token that belongs to a cluster most, with its context (docs/algorithm.md "Exemplars"). */
export type Exemplar = native.Exemplar

/** What a fitted (or loaded) model knows besides its centers, and where its last fit ran. */
export type ModelSummary = native.ModelSummary

/** Soft spherical k-means over token activations (README "Use it from TypeScript"). */
export class SequentialSoftClustering {
  #model: native.NativeModel | undefined
  /** A config without `dModel`: `fitChunks` takes it from the first chunk's header. */
  #pending: ClusteringConfig | undefined

  /**
   * `config` is checked now (`ERR_INVALID_CONFIG`). Without `dModel`, `fitChunks` reads it from
   * the first chunk (`initialCenters` need it given).
   */
  constructor(config: ClusteringConfig)
  /** @internal */
  constructor(config: ClusteringConfig, model: native.NativeModel)
  constructor(config: ClusteringConfig, model?: native.NativeModel) {
    if (model === undefined && config !== null && typeof config === 'object' && config.dModel === undefined && config.initialCenters === undefined) {
      resolveConfig({ ...config, dModel: 1 }) // every other field is checked now
      this.#pending = { ...config }
      return
    }
    this.#model = model ?? new native.NativeModel(withoutCenters(config), centersArray(config.initialCenters))
  }

  /** @internal The native model; a config without `dModel` gets one at its first fit. */
  get model(): native.NativeModel {
    if (this.#model === undefined) {
      throw Object.assign(new Error('model: has no centers yet: fit it, load one, or pass initialCenters'), { code: 'ERR_INVALID_INPUT' })
    }
    return this.#model
  }

  /**
   * The config with every default filled in: after a fit (or for a loaded model) the fitted
   * model's, where an `'auto'` temperature has become the number the fit chose. `dModel` is 0
   * until a fit has read it from the chunks when the config left it out.
   */
  get config(): ResolvedConfig {
    if (this.#pending) return { ...resolveConfig({ ...this.#pending, dModel: 1 }), dModel: 0 }
    return this.model.config
  }

  /** Reads a model file written by `save` or `fitChunks`. */
  static async load(path: string): Promise<SequentialSoftClustering> {
    const model = await native.NativeModel.load(path)
    return new SequentialSoftClustering(model.config, model)
  }

  /**
   * Learns the clusters by streaming over the chunk files, then writes one
   * `<name>.memberships.npz` per chunk and `model.safetensors` into `outputDir`.
   * Runs off the JS thread; resolves with the fit's history.
   */
  async fitChunks(chunkPaths: readonly string[], outputDir: string, options: FitOptions = {}): Promise<HistoryEntry[]> {
    const chunks = chunkList(chunkPaths)
    if (this.#pending) {
      if (chunks.length === 0) throw Object.assign(new Error('chunkPaths: no chunk files'), { code: 'ERR_INVALID_INPUT' })
      this.#model = new native.NativeModel(withoutCenters({ ...this.#pending, dModel: chunkShape(chunks[0]!)[2] }))
      this.#pending = undefined
    }
    return withProgress(options.onProgress, (cb) => this.model.fitChunks(chunks, outputDir, cb, options.resume ?? false, options.overwrite ?? false))
  }

  /**
   * Writes `<outputDir>/<chunk>.memberships.npz` for every chunk under this model's centers (the
   * fit's output pass, on other data). Resolves with the number of token rows written.
   */
  async transformChunks(chunkPaths: readonly string[], outputDir: string, options: Pick<FitOptions, 'onProgress' | 'overwrite'> & { level?: number } = {}): Promise<number> {
    const chunks = chunkList(chunkPaths)
    return withProgress(options.onProgress, (cb) => this.model.transformChunks(chunks, outputDir, cb, options.overwrite ?? false, options.level))
  }

  /**
   * The tree over the clusters (docs/algorithm.md "Hierarchy"): `linkage`, `K - 1` rows `[a, b,
   * distance, clusters]` in scipy's layout (ids >= K name the group made by row id - K), and
   * what a dendrogram draws (`order` of the leaves, `icoord`, `dcoord` as scipy names them).
   */
  hierarchy(): Hierarchy {
    return this.model.hierarchy()
  }

  /**
   * A new model with `clusters` merged into one (docs/algorithm.md "Merge"). With `chunks`,
   * `iterations` (3) passes over them follow. `summary.operations` records the id mapping.
   */
  async merge(clusters: readonly number[], options: { chunks?: readonly string[]; iterations?: number; onProgress?: (p: FitProgress) => void } = {}): Promise<SequentialSoftClustering> {
    const chunks = options.chunks === undefined ? undefined : chunkList(options.chunks)
    const model = await withProgress(options.onProgress, (cb) => this.model.merge([...clusters], chunks, options.iterations, cb))
    return new SequentialSoftClustering(model.config, model)
  }

  /**
   * A new model with `cluster` split into `parts` by its member tokens in `chunks`, then
   * `iterations` (3) passes over them (docs/algorithm.md "Split"). The first part keeps the id;
   * the others become clusters K, K + 1, ...
   */
  async split(cluster: number, parts: number, chunkPaths: readonly string[], options: { iterations?: number; onProgress?: (p: FitProgress) => void } = {}): Promise<SequentialSoftClustering> {
    const chunks = chunkList(chunkPaths)
    const model = await withProgress(options.onProgress, (cb) => this.model.split(cluster, parts, chunks, options.iterations, cb))
    return new SequentialSoftClustering(model.config, model)
  }

  /**
   * Folds new chunks into this model (docs/algorithm.md "Update"): `iterations` (3) passes whose
   * sums are added to the stored ones scaled by `decay` (1: old and new tokens weigh the same),
   * then the new chunks' memberships files and `model.safetensors` are written into `outputDir`.
   * Resolves with the whole history.
   */
  async partialFit(chunkPaths: readonly string[], outputDir: string, options: { iterations?: number; decay?: number; overwrite?: boolean; onProgress?: (p: FitProgress) => void } = {}): Promise<HistoryEntry[]> {
    const chunks = chunkList(chunkPaths)
    return withProgress(options.onProgress, (cb) => this.model.partialFit(chunks, outputDir, options.iterations, options.decay, options.overwrite ?? false, cb))
  }

  /** Writes the model file (safetensors, docs/formats.md "Model file"). */
  async save(path: string): Promise<void> {
    await this.model.save(path)
  }

  /** Cluster statistics, exemplars, history, chunk names and the device of the last fit; null before there are centers. */
  get summary(): ModelSummary | null {
    return this.#model?.summary() ?? null
  }

  /** The centers, `[K * D]` row-major unit vectors, or null before there are any. */
  get centers(): Float32Array | null {
    return this.#model?.centers ?? null
  }

  /**
   * Memberships of a batch of tokens, computed on the calling thread. `activations` is a
   * `Float32Array` (read in place) or any other array of numbers (converted to float32);
   * `labels` holds each row's hard label (argmax).
   */
  transform(activations: Float32Array | ArrayLike<number>, options: TransformOptions = {}): TransformResult {
    return stripNull(
      this.model.transform(activationsArray(activations), shapeArg(options.shape), maskArray(options.attentionMask), options.dense ?? true, options.level),
    )
  }

  /**
   * The same as `transform`, off the JS thread. The inputs are copied when it is called, so the
   * caller may reuse or detach its buffers at once.
   */
  async transformAsync(activations: Float32Array | ArrayLike<number>, options: TransformOptions = {}): Promise<TransformResult> {
    return stripNull(
      await this.model.transformAsync(activationsArray(activations), shapeArg(options.shape), maskArray(options.attentionMask), options.dense ?? true, options.level),
    )
  }
}

function stripNull(out: native.TransformOutput): TransformResult {
  const { memberships, ...rest } = out
  return memberships ? { memberships, ...rest } : rest
}
