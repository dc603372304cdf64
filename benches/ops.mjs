// `npm run bench:ops`: wall time of each operation on a fitted model (issue 17) at K = 1024,
// D = 768, on the harness's planted data (`npm run bench` writes it to benches/data/harness/;
// --chunks names another folder). Each operation is one CLI process, as a user runs it; the
// times include process start and reading the model. Prints a markdown table and writes
// benches/ops-results.json.
import { spawnSync } from 'node:child_process'
import { cpus } from 'node:os'
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'

const here = import.meta.dirname
const { values } = parseArgs({
  options: {
    chunks: { type: 'string', default: join(here, 'data', 'harness', 'd768-10x16x512-float16-s0', 'chunks') },
    clusters: { type: 'string', default: '1024' },
    out: { type: 'string', default: join(here, 'out', 'ops') },
  },
})
const chunkDir = resolve(values.chunks)
if (!existsSync(chunkDir)) {
  process.stderr.write(`bench:ops: ${chunkDir} is missing; run \`npm run bench -- --clusters 1024\` once to generate the harness data, or pass --chunks DIR\n`)
  process.exit(1)
}
const chunks = readdirSync(chunkDir).filter((n) => n.endsWith('.npz')).sort().map((n) => join(chunkDir, n))
const half = Math.ceil(chunks.length / 2)
const out = resolve(values.out)
rmSync(out, { recursive: true, force: true })
mkdirSync(out, { recursive: true })
const cli = join(here, '..', 'bin', 'soft-cluster.js')

const rows = []
function time(name, args, note) {
  const started = process.hrtime.bigint()
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' })
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  if (r.status !== 0) {
    process.stderr.write(`bench:ops: ${name} failed: ${r.stderr}`)
    process.exit(1)
  }
  rows.push({ operation: name, seconds, note, command: `soft-cluster ${args.map((a) => a.replace(out, '$OUT').replace(chunkDir, '$CHUNKS')).join(' ')}` })
  process.stderr.write(`${name}: ${seconds.toFixed(2)} s\n`)
  return r.stdout
}

const k = values.clusters
const model = join(out, 'fit', 'model.safetensors')
time('fit (reference)', ['fit', ...chunks, '--clusters', k, '--iterations', '5', '--temperature', '0.1', '--out', join(out, 'fit')], `K = ${k}, 5 iterations, all ${chunks.length} chunks`)
time('tree', ['tree', '--model', model, '--json'], 'read the stored linkage, print it')
time('merge', ['merge', '--model', model, '--clusters', '0,1', '--out', join(out, 'merged.safetensors')], 'no passes')
time('merge --refit', ['merge', '--model', model, '--clusters', '0,1', '--out', join(out, 'merged-refit.safetensors'), '--refit', chunkDir, '--iterations', '1'], '1 pass + output pass over all chunks')
time('split', ['split', '--model', model, '--cluster', '0', '--into', '2', chunkDir, '--out', join(out, 'split.safetensors'), '--iterations', '1'], 'members pass + 1 pass + output pass over all chunks')
const halfModel = join(out, 'half', 'model.safetensors')
spawnSync(process.execPath, [cli, 'fit', ...chunks.slice(0, half), '--clusters', k, '--iterations', '5', '--temperature', '0.1', '--out', join(out, 'half')])
time('update', ['update', '--model', halfModel, ...chunks.slice(half), '--out', join(out, 'updated'), '--iterations', '3'], `3 passes + output pass over the other ${chunks.length - half} chunks`)
time('transform --level 32', ['transform', '--model', model, chunkDir, '--level', '32', '--out', join(out, 'level')], 'memberships of 32 groups, all chunks')

const machine = `${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores`
writeFileSync(join(here, 'ops-results.json'), JSON.stringify({ machine, clusters: Number(k), chunks: chunks.length, rows }, null, 2) + '\n')
console.log(`Machine: ${machine}. Data: ${chunks.length} chunks of ${chunkDir}.\n`)
console.log('| operation | seconds | what it does |\n| --- | --- | --- |')
for (const r of rows) console.log(`| \`${r.operation}\` | ${r.seconds.toFixed(2)} | ${r.note} |`)
