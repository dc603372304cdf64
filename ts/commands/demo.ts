import { join, resolve } from 'node:path'
import { SequentialSoftClustering } from '../clustering'

const FIXTURES = join(__dirname, '..', '..', 'fixtures')

export interface DemoOptions {
  out: string
}

/** Fits the bundled example chunks from scratch (k-means++) and prints what it found. */
export async function demo(options: DemoOptions): Promise<void> {
  const chunks = ['planted_a_f32.npz', 'planted_b_f16_compressed.npz'].map((n) => join(FIXTURES, n))
  const out = resolve(options.out)
  const model = new SequentialSoftClustering({ nClusters: 6, dModel: 64, temperature: 0.25, nIterations: 20, nExemplars: 3, contextWindow: 2 })
  console.log(`Fitting 6 clusters over ${chunks.length} example chunks (k-means++ init)...`)
  const history = await model.fitChunks(chunks, out)
  const last = history[history.length - 1]!
  console.log(`${history.length} iterations, objective ${history[0]!.objective.toFixed(4)} -> ${last.objective.toFixed(4)}, last shift ${last.maxShift.toExponential(1)}`)
  const summary = model.summary!
  const order = summary.clusterMass.map((m, c) => [m, c] as const).sort((a, b) => b[0] - a[0])
  const total = summary.clusterMass.reduce((a, b) => a + b, 0)
  for (const [mass, c] of order) {
    const best = summary.exemplars[c]![0]
    const where = best ? `best token: chunk ${summary.chunks[best.chunk]} seq ${best.batch} pos ${best.position} (p=${best.value.toFixed(3)}, context ids ${best.tokens.join(' ')})` : 'no exemplars'
    console.log(`  cluster ${c}: mass ${mass.toFixed(1)} (${((100 * mass) / total).toFixed(1)}%), ${summary.clusterCount[c]} tokens; ${where}`)
  }
  console.log(`\nWrote ${join(out, 'model.safetensors')} and one .memberships.npz per chunk into ${out}`)
}
