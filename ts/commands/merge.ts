import { SequentialSoftClustering } from '../clustering'
import { resolveChunks } from '../chunks'
import { printJson } from './chunks'
import { clusterIds, modelOutput } from './operation-output'
import { progressReporter } from './progress'

export interface MergeCommandOptions {
  model: string
  clusters: string
  out: string
  refit?: string[]
  iterations?: number
  overwrite?: boolean
  progress?: boolean
  json?: boolean
}

/** `soft-cluster merge --model M --clusters 3,7 --out M2.safetensors [--refit CHUNKS...]`. */
export async function mergeCommand(options: MergeCommandOptions): Promise<void> {
  const clusters = clusterIds(options.clusters)
  const out = modelOutput(options.out, options.model, options.overwrite)
  const chunks = options.refit ? resolveChunks(options.refit) : undefined
  const model = await SequentialSoftClustering.load(options.model)
  const progress = progressReporter(options.progress ?? false)
  try {
    const merged = await model.merge(clusters, { chunks, iterations: options.iterations, onProgress: progress.onProgress })
    progress.stop()
    await merged.save(out)
    const op = merged.summary!.operations.at(-1)!
    if (options.json) return printJson({ model: out, nClusters: op.nClusters, merged: op.clusters, mapping: op.mapping, iterations: op.iterations })
    console.log(`merged clusters ${op.clusters.join(', ')} into cluster ${op.mapping[op.clusters[0]!]}: ${op.nClusters} clusters${op.iterations ? `, then ${op.iterations} passes` : ''}; wrote ${out}`)
    console.log(`new ids (old -> new): ${op.mapping.map((n, o) => `${o}->${n}`).join(' ')}`)
  } finally {
    progress.stop()
  }
}
