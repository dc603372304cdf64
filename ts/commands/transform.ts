import { resolve } from 'node:path'
import { SequentialSoftClustering } from '../clustering'
import { resolveChunks } from '../chunks'
import { membershipsFiles, printJson } from './chunks'
import { progressReporter } from './progress'

export interface TransformCommandOptions {
  model: string
  out: string
  level?: number
  overwrite?: boolean
  progress?: boolean
  json?: boolean
}

/** `soft-cluster transform --model MODEL CHUNKS... --out DIR`: memberships of new chunks. */
export async function transformCommand(chunkSpecs: string[], options: TransformCommandOptions): Promise<void> {
  const chunks = resolveChunks(chunkSpecs)
  const model = await SequentialSoftClustering.load(options.model)
  const progress = progressReporter(options.progress ?? false)
  const out = resolve(options.out)
  try {
    const rows = await model.transformChunks(chunks, out, { onProgress: progress.onProgress, overwrite: options.overwrite, level: options.level })
    progress.stop()
    if (options.json) return printJson({ outputDir: out, rows, memberships: membershipsFiles(out, chunks), chunks })
    console.log(`wrote memberships of ${rows} tokens in ${chunks.length} .memberships.npz files into ${out}`)
  } finally {
    progress.stop()
  }
}
