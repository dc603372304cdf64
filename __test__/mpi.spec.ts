// A fit over several processes under `mpirun` (docs/scaling.md "Many servers"): the CLI and a
// TypeScript script on 3 ranks give the one-process fit; a bad chunk on one rank, a rank killed
// and a rank that hangs end every rank with a non-zero exit, naming the rank, and leave nothing
// under a final name; a killed run resumes on another number of ranks. Needs a build with MPI
// (`npm run build:mpi`) and `mpirun`: without them these tests skip and say so, unless
// SOFT_CLUSTER_REQUIRE_MPI=1 (set by .ci/run), where they fail instead.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { describe, expect, it } from 'vitest'
import { processes, readMemberships, SequentialSoftClustering } from '../ts'
import { runCli } from './helpers'

const ROOT = resolve(__dirname, '..')
const BIN = join(ROOT, 'bin', 'soft-cluster.js')
const minilm = ['minilm_000.npz', 'minilm_001.npz', 'minilm_002.npz'].map((n) => join(ROOT, 'examples', 'minilm', n))
const mpirun = spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status === 0
const built = processes().mpiBuild
const required = process.env.SOFT_CLUSTER_REQUIRE_MPI === '1'
const why = !built ? 'this build has no MPI (npm run build:mpi)' : !mpirun ? 'no mpirun on PATH' : ''
// Root in containers; shared-memory single copy needs ptrace rights containers often lack.
// `--bind-to none`: with no more ranks than cores mpirun binds each rank to one core, so a rank
// runs one thread where the one-process fit runs one per core, its chunks' sums are split
// differently and the fits differ in the last bits (docs/scaling.md "Same answer"); the tests
// compare ranks with the one-process fit at the same thread count.
const MPIRUN = ['--allow-run-as-root', '--oversubscribe', '--bind-to', 'none', '--mca', 'btl_vader_single_copy_mechanism', 'none']
const mpi = (n: number, args: string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync('mpirun', [...MPIRUN, '-n', String(n), process.execPath, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 })

/** The outputs two fits must share: centers within 1e-6 (cosine), memberships within 1e-5, exemplars, history but timings. */
async function expectSameFit(oneDir: string, manyDir: string, chunks: string[]): Promise<void> {
  const [one, many] = await Promise.all([SequentialSoftClustering.load(join(oneDir, 'model.safetensors')), SequentialSoftClustering.load(join(manyDir, 'model.safetensors'))])
  const k = one.config.nClusters
  const d = one.config.dModel
  const [a, b] = [one.centers!, many.centers!]
  for (let c = 0; c < k; c++) {
    let cos = 0
    for (let j = 0; j < d; j++) cos += a[c * d + j]! * b[c * d + j]!
    expect(1 - cos, `cluster ${c}`).toBeLessThan(1e-6)
  }
  const [s1, s2] = [one.summary!, many.summary!]
  expect(s2.clusterCount).toEqual(s1.clusterCount)
  const where = (lists: { chunk: number; batch: number; position: number }[][]) => lists.map((l) => l.map((e) => `${e.chunk}/${e.batch}/${e.position}`))
  expect(where(s2.exemplars)).toEqual(where(s1.exemplars))
  expect(s2.quantiles.map((c) => where(c))).toEqual(s1.quantiles.map((c) => where(c)))
  expect(s2.history.length).toBe(s1.history.length)
  s1.history.forEach((h, i) => {
    const g = s2.history[i]!
    expect([g.reseeds, g.twins, g.skipped]).toEqual([h.reseeds, h.twins, h.skipped])
    expect(Math.abs(g.objective - h.objective)).toBeLessThan(1e-6)
  })
  for (const chunk of chunks) {
    const name = chunk.split('/').pop()!.replace(/\.npz$/, '.memberships.npz')
    const [x, y] = [readMemberships(join(oneDir, name)), readMemberships(join(manyDir, name))]
    expect(Array.from(y.indices)).toEqual(Array.from(x.indices))
    let worst = 0
    x.values.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - y.values[i]!))))
    expect(worst).toBeLessThan(1e-5)
  }
}

const fitArgs = ['--clusters', '16', '--iterations', '4', '--tol', '0']

describe.skipIf(!why ? false : !required)(`fits on several processes under mpirun${why ? ` (SKIPPED: ${why})` : ''}`, () => {
  it('the build and mpirun are there when CI requires them', () => {
    expect(why).toBe('')
  })

  it('soft-cluster fit on 3 ranks writes the one-process fit, and rank 0 alone prints', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-mpi-'))
    const one = runCli('fit', ...minilm, ...fitArgs, '--out', join(dir, 'one'))
    expect(one.status, one.stderr).toBe(0)
    const many = mpi(3, [BIN, 'fit', ...minilm, ...fitArgs, '--out', join(dir, 'many'), '--json'])
    expect(many.status, many.stderr).toBe(0)
    const printed = JSON.parse(many.stdout)
    expect(printed.device).toContain('on each of 3 ranks')
    expect(printed.memberships).toHaveLength(3)
    await expectSameFit(join(dir, 'one'), join(dir, 'many'), minilm)
    expect(readdirSync(join(dir, 'many')).sort()).toEqual(readdirSync(join(dir, 'one')).sort())
  })

  it('fitChunks in a TypeScript script on 3 ranks gives the one-process fit, and every rank gets the model', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-mpi-ts-'))
    const script = join(dir, 'fit.cjs')
    writeFileSync(
      script,
      `const { SequentialSoftClustering, processes } = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))})
const [out, ...chunks] = process.argv.slice(2)
const { rank, size } = processes()
const model = new SequentialSoftClustering({ nClusters: 16, dModel: 384, nIterations: 4, tol: 0 })
model.fitChunks(chunks, out).then((history) => {
  console.log(JSON.stringify({ rank, size, iterations: history.length, first: Array.from(model.centers.slice(0, 4)) }))
}, (e) => { console.error(e.message); process.exitCode = 1 })
`,
    )
    const many = mpi(3, [script, join(dir, 'many'), ...minilm])
    expect(many.status, many.stderr).toBe(0)
    const lines = many.stdout.trim().split('\n').map((l) => JSON.parse(l))
    expect(lines.map((l) => l.rank).sort()).toEqual([0, 1, 2])
    expect(new Set(lines.map((l) => l.size))).toEqual(new Set([3]))
    // Every rank holds the model rank 0 wrote.
    expect(new Set(lines.map((l) => JSON.stringify(l.first))).size).toBe(1)
    const one = new SequentialSoftClustering({ nClusters: 16, dModel: 384, nIterations: 4, tol: 0 })
    await one.fitChunks(minilm, join(dir, 'one'))
    await expectSameFit(join(dir, 'one'), join(dir, 'many'), minilm)
  })

  it('a bad chunk on one rank ends every rank with one line naming the rank and the file, and writes nothing', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-mpi-bad-'))
    // A good header over a NaN value: only the rank that reads the values finds out.
    const good = ['planted_a_f32.npz', 'planted_b_f16_compressed.npz'].map((n) => join(ROOT, 'fixtures', n))
    const bad = join(ROOT, 'fixtures', 'bad', 'nan_in_valid_token.npz')
    const r = mpi(3, [BIN, 'fit', ...good, bad, '--clusters', '3', '--temperature', '0.25', '--out', join(dir, 'out')])
    expect(r.status).not.toBe(0)
    const ours = r.stderr.split('\n').filter((l) => l.startsWith('soft-cluster:'))
    expect(ours, r.stderr).toHaveLength(1)
    expect(ours[0]).toMatch(/^soft-cluster: rank [0-2] of 3: .*nan_in_valid_token\.npz.*NaN.*\[ERR_NON_FINITE\]$/)
    expect(existsSync(join(dir, 'out'))).toBe(false)
  })

  it('an output one rank cannot write ends every rank with one line naming the rank, the file and the reason', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-mpi-write-'))
    const out = join(dir, 'out')
    const fit = [BIN, 'fit', ...minilm, ...fitArgs, '--out', out]
    const quoted = [process.execPath, ...fit].map((a) => `'${a}'`).join(' ')
    // Rank 2 may write no file over 20 KiB (a full disk on one node); TCP between the ranks, as
    // the shared-memory transport's own files would be too large for it.
    const r = spawnSync('mpirun', [...MPIRUN, '--mca', 'btl', 'self,tcp', '-n', '2', process.execPath, ...fit, ':', '-n', '1', 'bash', '-c', `ulimit -f 20; exec ${quoted}`], { encoding: 'utf8', timeout: 120_000 })
    expect(r.status).not.toBe(0)
    const ours = r.stderr.split('\n').filter((l) => l.startsWith('soft-cluster:'))
    expect(ours, r.stderr).toEqual([expect.stringMatching(/^soft-cluster: rank 2 of 3: .*\.memberships\.npz: File too large.*\[ERR_IO\]$/)])
    // The fit's own files are gone; the checkpoint of its last iteration stays for --resume.
    expect(readdirSync(out)).toEqual(['checkpoint.safetensors'])
  })

  it('a rank killed mid-run ends the run with nothing under a final name; it resumes on 2 ranks to the one-process fit', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-mpi-kill-'))
    const args = [...minilm, '--clusters', '64', '--iterations', '200', '--tol', '0']
    const out = join(dir, 'many')
    // Rank 0 reports iteration 3: stop rank 1 where it is (it cannot finish), then kill it.
    const { code, stderr, pid: victim } = await watchedFit([...args, '--out', out], {}, /iteration 3\//, (pid) => {
      process.kill(pid, 'SIGSTOP')
      process.kill(pid, 'SIGKILL')
    }, 1)
    expect(victim, stderr).toBeGreaterThan(0)
    expect(code).not.toBe(0)
    expect(stderr).toMatch(/rank 1 .*(signal 9|Killed)/)
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false)
    expect(existsSync(join(out, 'checkpoint.safetensors'))).toBe(true)
    expect(readdirSync(out).filter((f) => f.endsWith('.memberships.npz'))).toEqual([])
    const resumed = mpi(2, [BIN, 'fit', ...args, '--out', out, '--resume'])
    expect(resumed.status, resumed.stderr).toBe(0)
    const one = runCli('fit', ...args, '--out', join(dir, 'one'))
    expect(one.status, one.stderr).toBe(0)
    await expectSameFit(join(dir, 'one'), out, minilm)
  }, 120_000)

  it('a rank that hangs ends every rank after SOFT_CLUSTER_MPI_TIMEOUT, naming the wait', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sc-mpi-hang-'))
    const out = join(dir, 'out')
    const started = Date.now()
    const args = [...minilm, '--clusters', '64', '--iterations', '100000', '--tol', '0', '--out', out]
    const { code, stderr, pid: stopped } = await watchedFit(args, { SOFT_CLUSTER_MPI_TIMEOUT: '2' }, /iteration 2\//, (pid) => process.kill(pid, 'SIGSTOP'), 2)
    expect(stopped, stderr).toBeGreaterThan(0)
    expect(code).not.toBe(0)
    expect(stderr).toMatch(/rank [01] of 3: waited 2 s for the other ranks; one of them died or hangs \(SOFT_CLUSTER_MPI_TIMEOUT\)/)
    expect(Date.now() - started).toBeLessThan(60_000)
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false)
  }, 90_000)
})

/**
 * `soft-cluster fit ARGS --progress` on 3 ranks; once rank 0's progress matches `when`, `act` gets
 * the pid of rank `rank`. Resolves when mpirun ends.
 */
async function watchedFit(args: string[], env: NodeJS.ProcessEnv, when: RegExp, act: (pid: number) => void, rank: number): Promise<{ code: number | null; stderr: string; pid: number }> {
  const run = spawn('mpirun', [...MPIRUN, '-n', '3', process.execPath, BIN, 'fit', ...args, '--progress'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
  let stderr = ''
  let pid = 0
  const ended = new Promise<number | null>((done) => run.on('close', (code) => done(code)))
  run.stderr.on('data', (b: Buffer) => {
    stderr += b.toString()
    if (!pid && when.test(stderr)) {
      pid = rankPid(run.pid!, rank)
      act(pid)
    }
  })
  const code = await ended
  return { code, stderr, pid }
}

/** The pid of rank `rank` among mpirun's children (by the OMPI_COMM_WORLD_RANK it gave them). */
function rankPid(mpirunPid: number, rank: number): number {
  for (let tries = 0; tries < 50; tries++) {
    const children = spawnSync('pgrep', ['-P', String(mpirunPid)], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean).map(Number)
    for (const pid of children) {
      const env = spawnSync('cat', [`/proc/${pid}/environ`], { encoding: 'utf8' }).stdout
      if (env.split('\0').includes(`OMPI_COMM_WORLD_RANK=${rank}`)) return pid
    }
  }
  throw new Error(`no rank ${rank} among the children of mpirun ${mpirunPid}`)
}
