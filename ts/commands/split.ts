import { SequentialSoftClustering } from '../clustering'
import { resolveChunks } from '../chunks'
import { printJson } from './chunks'
import { modelOutput } from './operation-output'
import { progressReporter } from './progress'

export interface SplitCommandOptions {
  model: string
  cluster: number
  into: number
  out: string
  iterations?: number
  overwrite?: boolean
  progress?: boolean
  json?: boolean
}

/** `soft-cluster split --model M --cluster 5 --into 2 CHUNKS... --out M2.safetensors`. */
export async function splitCommand(chunkSpecs: string[], options: SplitCommandOptions): Promise<void> {
  const out = modelOutput(options.out, options.model, options.overwrite)
  const chunks = resolveChunks(chunkSpecs)
  const model = await SequentialSoftClustering.load(options.model)
  const progress = progressReporter(options.progress ?? false)
  try {
    const split = await model.split(options.cluster, options.into, chunks, { iterations: options.iterations, onProgress: progress.onProgress })
    progress.stop()
    await split.save(out)
    const op = split.summary!.operations.at(-1)!
    const added = Array.from({ length: op.nClusters - op.mapping.length }, (_, i) => op.mapping.length + i)
    if (options.json) return printJson({ model: out, nClusters: op.nClusters, split: options.cluster, parts: [options.cluster, ...added], mapping: op.mapping, iterations: op.iterations })
    console.log(`split cluster ${options.cluster} into clusters ${[options.cluster, ...added].join(', ')}: ${op.nClusters} clusters, then ${op.iterations} passes; wrote ${out}`)
  } finally {
    progress.stop()
  }
}
