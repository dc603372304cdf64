// The `soft-cluster` command line. Parsing turns argv into typed options, each command is a
// function, and one boundary prints a one-line error and sets the exit code.
import { Command, CommanderError } from 'commander'
import { join } from 'node:path'
import { readChunk, readNpy, SequentialSoftClustering } from './index'

const FIXTURES = join(__dirname, '..', 'fixtures')

/** Memberships of the bundled fixtures under the bundled starting centers, summarized. */
function demo(): void {
  const centers = readNpy(join(FIXTURES, 'planted_init_centers.npy'))
  const [k, d] = centers.shape as [number, number]
  const model = new SequentialSoftClustering({ nClusters: k, dModel: d, temperature: 0.25, initialCenters: centers.data })
  const mass = new Float64Array(k)
  let tokens = 0
  for (const name of ['planted_a_f32.npz', 'planted_b_f16_compressed.npz']) {
    const chunk = readChunk(join(FIXTURES, name))
    const out = model.transform(chunk.activations, { shape: chunk.shape, attentionMask: chunk.attentionMask, dense: false })
    out.indices.forEach((v, i) => {
      if (i % 3 === 2) mass[v]! += out.values[(i - 2) / 3]!
    })
    tokens += out.nRows
    console.log(`${name}: ${chunk.shape.join(' x ')} ${chunk.dtype}, ${out.nRows} real tokens, ${out.values.length} nonzero memberships`)
  }
  console.log(`\n${tokens} tokens over ${k} clusters (temperature 0.25):`)
  mass.forEach((m, c) => console.log(`  cluster ${c}: mass ${m.toFixed(2)} (${((100 * m) / tokens).toFixed(1)}%)`))
}

export function main(argv: string[]): void {
  const program = new Command()
    .name('soft-cluster')
    .description('Soft spherical k-means over neural-network activation chunks')
    .version(require('../package.json').version)
    .exitOverride()
  program.command('demo').description('cluster the bundled example chunks and print what was found').action(demo)
  try {
    program.parse(argv)
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode
      return
    }
    const err = e as Error & { code?: string }
    process.stderr.write(`soft-cluster: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`)
    process.exitCode = 1
  }
}
