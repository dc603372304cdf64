import { analyzeChunks, type ClusterAnalysis } from '../analysis'
import { SequentialSoftClustering } from '../clustering'
import { resolveChunks } from '../chunks'
import { printJson } from './chunks'
import { progressReporter } from './progress'

export interface AnalyzeCommandOptions {
  model: string
  json?: boolean
  topTokens?: number
  sample?: number
  seed?: number
  liftSmoothing?: number
  progress?: boolean
}

/** Loads the model and computes the metrics over the chunks, with progress on stderr. */
export async function analyzeModel(
  chunkSpecs: readonly string[],
  options: Pick<AnalyzeCommandOptions, 'model' | 'topTokens' | 'sample' | 'seed' | 'liftSmoothing' | 'progress'>,
): Promise<{ model: SequentialSoftClustering; chunks: string[]; analysis: ClusterAnalysis | null }> {
  const chunks = resolveChunks(chunkSpecs)
  const model = await SequentialSoftClustering.load(options.model)
  if (chunks.length === 0) return { model, chunks, analysis: null }
  const progress = progressReporter(options.progress ?? false)
  try {
    const analysis = await analyzeChunks(model, chunks, { topTokens: options.topTokens, silhouetteSample: options.sample, seed: options.seed, liftSmoothing: options.liftSmoothing, onProgress: progress.onProgress })
    return { model, chunks, analysis }
  } finally {
    progress.stop()
  }
}

const f = (v: number | null, digits = 3) => (v === null ? '–' : v.toFixed(digits))

/** `soft-cluster analyze --model MODEL CHUNKS... [--json]`: quality metrics, per cluster and overall. */
export async function analyzeCommand(chunkSpecs: string[], options: AnalyzeCommandOptions): Promise<void> {
  const { chunks, analysis } = await analyzeModel(chunkSpecs, options)
  const a = analysis!
  if (options.json) return printJson(a)
  const o = a.overall
  console.log(`${a.nClusters} clusters over ${chunks.length} chunks, ${o.nTokens} tokens${o.skipped ? ` (${o.skipped} all-zero tokens skipped)` : ''}`)
  console.log(`normalized partition entropy ${f(o.partitionEntropy)}, partition coefficient ${f(o.partitionCoefficient)}, nonzero memberships per token ${f(o.meanNonzeroPerToken, 2)}`)
  console.log(`spherical Xie-Beni ${f(o.xieBeni, 4)}, cosine silhouette ${f(o.silhouette)} (sample of ${o.silhouetteSample} tokens)`)
  console.log(`twin center pairs (cosine > 0.99): ${o.twins}${o.twins > 0 ? ' -- centers collapsed onto one another; see "Temperature" in the README' : ''}`)
  console.log('')
  console.log('cluster      mass   hard  meanCos    max   mean  nonzero  nearest (cos)  top token ids | highest lift')
  const order = [...a.clusters].sort((x, y) => y.mass - x.mass || x.cluster - y.cluster)
  for (const s of order) {
    const nearest = s.nearestCenter === null ? '–' : `${s.nearestCenter} (${f(s.nearestCenterCosine, 2)})`
    console.log(
      `${String(s.cluster).padStart(7)} ${s.mass.toFixed(1).padStart(9)} ${String(s.hardCount).padStart(6)} ${f(s.meanCosine).padStart(8)} ${f(s.maxMembership).padStart(6)} ${f(s.meanMembership).padStart(6)} ${`${(100 * s.nonzeroFraction).toFixed(1)}%`.padStart(8)}  ${nearest.padEnd(13)}  ${s.topTokens.slice(0, 5).map((t) => t.tokenId).join(' ')} | ${s.liftTokens.slice(0, 5).map((t) => t.tokenId).join(' ')}`,
    )
  }
}
