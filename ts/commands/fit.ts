import { resolve } from 'node:path'
import { SequentialSoftClustering } from '../clustering'
import type { ClusteringConfig, Device } from '../config'
import * as native from '../native'
import { resolveChunks } from '../chunks'
import { membershipsFiles, printJson } from './chunks'
import { progressReporter } from './progress'
import { processes } from '../index'

export interface FitCommandOptions {
  clusters: number
  out: string
  temperature?: number | 'auto'
  minMembership?: number
  iterations?: number
  warmup?: number
  exemplars?: number
  context?: number
  distinctContexts?: boolean
  quantileBins?: number
  quantileExamples?: number
  device?: string
  precision?: string
  cache?: number | 'auto' | 'off'
  seed?: number
  initCenters?: string
  tol?: number
  resume?: boolean
  overwrite?: boolean
  progress?: boolean
  json?: boolean
}

/** `soft-cluster fit CHUNKS... --clusters K --out DIR`: fits, writes the outputs, prints a summary. */
export async function fit(chunkSpecs: string[], options: FitCommandOptions): Promise<void> {
  const chunks = resolveChunks(chunkSpecs)
  const dModel = native.chunkShape(chunks[0]!)[2]!
  const config: ClusteringConfig = {
    nClusters: options.clusters,
    dModel,
    temperature: options.temperature,
    minMembership: options.minMembership,
    nIterations: options.iterations,
    warmupIterations: options.warmup,
    nExemplars: options.exemplars,
    contextWindow: options.context,
    distinctContexts: options.distinctContexts,
    quantileBins: options.quantileBins,
    quantileExamples: options.quantileExamples,
    device: options.device as Device | undefined,
    precision: options.precision as ClusteringConfig['precision'],
    cache: options.cache,
    seed: options.seed,
    tol: options.tol,
  }
  if (options.initCenters) config.initialCenters = native.readNpy(options.initCenters).data
  const model = new SequentialSoftClustering(config)
  // Under MPI every rank fits its share; rank 0 speaks for the run (its progress is its own share's).
  const speaks = processes().rank === 0
  const progress = speaks ? progressReporter(options.progress ?? false) : { onProgress: undefined, stop: () => {} }
  const out = resolve(options.out)
  try {
    const history = await model.fitChunks(chunks, out, { onProgress: progress.onProgress, resume: options.resume, overwrite: options.overwrite })
    progress.stop()
    if (!speaks) return
    const modelPath = resolve(out, 'model.safetensors')
    const device = model.summary?.device
    const { temperature, temperatureRule } = model.config
    const warnings = model.summary?.warnings ?? []
    // A collapsed fit still writes its outputs, but never passes silently.
    for (const w of warnings) console.error(`soft-cluster: warning: ${w}`)
    if (options.json) {
      return printJson({ outputDir: out, model: modelPath, memberships: membershipsFiles(out, chunks), chunks, device, temperature, temperatureRule, warnings, history })
    }
    const last = history[history.length - 1]
    console.log(
      `fitted ${options.clusters} clusters over ${chunks.length} chunks in ${history.length} iterations` +
        (last ? ` (objective ${last.objective.toFixed(4)}, last shift ${last.maxShift.toExponential(1)})` : ''),
    )
    console.log(`temperature ${typeof temperature === 'number' ? Number(temperature.toPrecision(3)) : temperature}${temperatureRule ? ` (${temperatureRule})` : ''}, on ${device}`)
    if (last) console.log(`passes read ${last.data}`)
    console.log(`wrote ${modelPath} and ${chunks.length} .memberships.npz files into ${out}`)
  } finally {
    progress.stop()
  }
}
