import { readdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { SequentialSoftClustering } from '../clustering'
import { membershipsFiles, printJson } from './chunks'
import { progressReporter } from './progress'
import { writeReport } from './report'

/** Hidden states of all-MiniLM-L6-v2 over English text, made by scripts/dump_minilm.py. */
const EXAMPLES = join(__dirname, '..', '..', 'examples', 'minilm')

export interface DemoOptions {
  out: string
  progress?: boolean
  json?: boolean
}

/** Fits the bundled real activations, writes the outputs and a report, and says where they are. */
export async function demo(options: DemoOptions): Promise<void> {
  const chunks = readdirSync(EXAMPLES).filter((n) => n.endsWith('.npz')).sort().map((n) => join(EXAMPLES, n))
  const tokenizer = join(EXAMPLES, 'tokenizer.json')
  const out = resolve(options.out)
  const modelPath = join(out, 'model.safetensors')
  const nClusters = 24
  // The defaults, temperature included ("auto"): what a new user gets on their own data.
  const model = new SequentialSoftClustering({ nClusters, dModel: 384, nExemplars: 8 })
  const say = (line: string) => options.json || console.log(line)
  say(`Fitting ${nClusters} clusters to layer-3 hidden states of all-MiniLM-L6-v2 over ${chunks.length} chunks of English license text...`)
  const progress = progressReporter(options.progress ?? false)
  let history
  try {
    // The demo's folder is the demo's: a rerun replaces the last one's outputs.
    history = await model.fitChunks(chunks, out, { onProgress: progress.onProgress, overwrite: true })
  } finally {
    progress.stop()
  }
  const last = history[history.length - 1]!
  say(`${history.length} iterations, objective ${history[0]!.objective.toFixed(4)} -> ${last.objective.toFixed(4)}, temperature ${Number((model.config.temperature as number).toPrecision(3))} (auto)`)
  for (const w of model.summary?.warnings ?? []) console.error(`soft-cluster: warning: ${w}`)
  const report = await writeReport(chunks, { model: modelPath, out: join(out, 'report.html'), tokenizer, progress: options.progress })
  if (options.json) return printJson({ outputDir: out, model: modelPath, memberships: membershipsFiles(out, chunks), report, history })
  console.log(`\nWrote into ${out}:`)
  console.log(`  model.safetensors            the centers, statistics and exemplars`)
  console.log(`  <chunk>.memberships.npz      each token's memberships (${chunks.length} files)`)
  console.log(`  report.html                  plots and every cluster with its exemplars, decoded`)
  console.log(`  soft-cluster-run.json        which files the fit wrote (a rerun replaces them)`)
  console.log(`\nOpen ${report} in a browser.`)
}
