import { resolve } from 'node:path'
import { SequentialSoftClustering } from '../clustering'
import { resolveChunks } from '../chunks'
import { membershipsFiles, printJson } from './chunks'
import { progressReporter } from './progress'

export interface UpdateCommandOptions {
  model: string
  out: string
  iterations?: number
  decay?: number
  overwrite?: boolean
  progress?: boolean
  json?: boolean
}

/** `soft-cluster update --model M NEW_CHUNKS... --out DIR [--iterations n] [--decay d]`. */
export async function updateCommand(chunkSpecs: string[], options: UpdateCommandOptions): Promise<void> {
  const chunks = resolveChunks(chunkSpecs)
  const model = await SequentialSoftClustering.load(options.model)
  const progress = progressReporter(options.progress ?? false)
  const out = resolve(options.out)
  try {
    const history = await model.partialFit(chunks, out, { iterations: options.iterations, decay: options.decay, overwrite: options.overwrite, onProgress: progress.onProgress })
    progress.stop()
    const op = model.summary!.operations.at(-1)!
    const modelPath = resolve(out, 'model.safetensors')
    if (options.json) return printJson({ outputDir: out, model: modelPath, memberships: membershipsFiles(out, chunks), chunks, iterations: op.iterations, history })
    console.log(`updated ${model.config.nClusters} clusters with ${chunks.length} chunks in ${op.iterations} passes (decay ${options.decay ?? 1}); wrote ${modelPath} and ${chunks.length} .memberships.npz files into ${out}`)
  } finally {
    progress.stop()
  }
}
