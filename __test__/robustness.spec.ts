// Interrupted runs, failures of the world and misuse, as a user meets them: through the CLI.
import { spawn, spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { readMemberships, SequentialSoftClustering } from '../ts'
import { fixture } from './helpers'

const BIN = join(__dirname, '..', 'bin', 'soft-cluster.js')
const tmp = () => mkdtempSync(join(tmpdir(), 'sc-robust-'))

/** A folder of `n` chunk files (copies of the planted fixtures), enough work for a few seconds. */
function chunkDir(n: number): string {
  const dir = tmp()
  for (let i = 0; i < n; i++) copyFileSync(fixture(i % 2 ? 'planted_b_f16_compressed.npz' : 'planted_a_f32.npz'), join(dir, `chunk_${String(i).padStart(3, '0')}.npz`))
  return dir
}

const FIT_ARGS = ['--clusters', '6', '--iterations', '150', '--tol', '0', '--temperature', '0.25', '--seed', '3']

/** Every final-named output must be complete: readable in full. */
function assertNoHalfWrittenFile(out: string): void {
  if (!existsSync(out)) return
  for (const name of readdirSync(out)) {
    if (name.startsWith('.')) continue // temporaries: never final
    if (name.endsWith('.memberships.npz')) readMemberships(join(out, name))
    if (name === 'model.safetensors') expect(readFileSync(join(out, name)).length).toBeGreaterThan(100)
  }
}

/** Runs the CLI fit, kills it with SIGKILL at the first stderr progress line that `when` accepts. */
function killedFit(chunks: string, out: string, when: (line: string) => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'fit', chunks, '--out', out, '--progress', ...FIT_ARGS], { stdio: ['ignore', 'ignore', 'pipe'] })
    let buffer = ''
    let killed = false
    const watcher = setInterval(() => {
      try {
        assertNoHalfWrittenFile(out)
      } catch (e) {
        child.kill('SIGKILL')
        reject(e)
      }
    }, 5)
    child.stderr.on('data', (data: Buffer) => {
      buffer += data.toString()
      const lines = buffer.split('\n')
      buffer = lines.pop() ?? ''
      if (!killed && lines.some(when)) {
        killed = true
        child.kill('SIGKILL')
      }
    })
    child.on('exit', (code, signal) => {
      clearInterval(watcher)
      if (signal === 'SIGKILL') resolve()
      else reject(new Error(`the fit ended (code ${code}) before it could be killed`))
    })
  })
}

function run(...args: string[]) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' })
}

async function modelWithoutTimings(path: string) {
  const m = await SequentialSoftClustering.load(path)
  const summary = m.summary!
  // Timings, and whether a pass read the files or the cache (a resumed fit's first pass reads
  // the files), depend on the run, not the data.
  summary.history.forEach((h) => ((h.seconds = 0), (h.data = '')))
  return { centers: m.centers, summary }
}

describe('interrupted fits resume', () => {
  const chunks = chunkDir(24)
  const reference = join(tmp(), 'whole')
  const whole = run('fit', chunks, '--out', reference, ...FIT_ARGS)

  it.each([
    ['mid-iteration', (l: string) => /progress iterate iteration (\d+)/.exec(l)?.[1] === '40'],
    ['mid-output-write', (l: string) => l.startsWith('progress output') && l.includes('chunk 5/')],
  ])('after SIGKILL %s, --resume gives the uninterrupted model', async (_label, when) => {
    expect(whole.status).toBe(0)
    const out = join(tmp(), 'out')
    await killedFit(chunks, out, when)
    assertNoHalfWrittenFile(out)
    expect(existsSync(join(out, 'checkpoint.safetensors'))).toBe(true)
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false)
    const resumed = run('fit', chunks, '--out', out, '--resume', ...FIT_ARGS)
    expect(resumed.stderr).toBe('')
    expect(resumed.status).toBe(0)
    expect(await modelWithoutTimings(join(out, 'model.safetensors'))).toEqual(await modelWithoutTimings(join(reference, 'model.safetensors')))
    expect(readdirSync(out).filter((n) => n.includes('.tmp-') || n === 'checkpoint.safetensors')).toEqual([])
    for (const name of readdirSync(reference).filter((n) => n.endsWith('.memberships.npz'))) {
      expect(readMemberships(join(out, name))).toEqual(readMemberships(join(reference, name)))
    }
  }, 60_000)

  it('refuses to resume over a changed chunk, naming it', async () => {
    const dir = chunkDir(24)
    const out = join(tmp(), 'out')
    await killedFit(dir, out, (l) => l.includes('iteration 3/'))
    const changed = join(dir, 'chunk_007.npz')
    utimesSync(changed, new Date(), new Date(Date.now() + 5000))
    const r = run('fit', dir, '--out', out, '--resume', ...FIT_ARGS)
    expect(r.status).not.toBe(0)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toContain(`${changed}: changed since the checkpoint`)
  }, 60_000)
})

describe('failures of the world', () => {
  it('a write that runs out of space is an error naming the file, with no half-written output', () => {
    const out = join(tmp(), 'out')
    // A 4 KiB file-size limit: the first memberships file cannot be written in full.
    const r = spawnSync('bash', ['-c', `ulimit -f 4; exec "${process.execPath}" "${BIN}" fit "${fixture('planted_a_f32.npz')}" --clusters 6 --out "${out}" --iterations 2 --temperature 0.25`], { encoding: 'utf8' })
    expect(r.signal).toBeNull()
    expect(r.status).toBe(1)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toMatch(/planted_a_f32\.memberships\.npz: File too large.*\[ERR_IO\]/)
    expect(readdirSync(out).filter((n) => !n.startsWith('checkpoint'))).toEqual([])
  })

  it('an output folder that cannot be created is named', () => {
    const blocker = join(tmp(), 'file')
    writeFileSync(blocker, 'x')
    const r = run('fit', fixture('planted_a_f32.npz'), '--clusters', '3', '--out', join(blocker, 'out'))
    expect(r.status).toBe(1)
    expect(r.stderr).toContain(join(blocker, 'out'))
    expect(r.stderr).toContain('[ERR_IO]')
  })

  it('K x D too large for memory is refused up front with the amount needed', () => {
    const r = run('fit', fixture('planted_a_f32.npz'), '--clusters', '100000000', '--out', join(tmp(), 'o'))
    expect(r.status).toBe(1)
    expect(r.stderr).toMatch(/nClusters x dModel = 100000000 x 64 with nExemplars = 10 and contextWindow = 8: needs about [\d.]+ GiB of memory.*\[ERR_TOO_LARGE\]/)
  })

  it('a bad flag value names the flag', () => {
    for (const [flag, value] of [['--clusters', 'abc'], ['--temperature', '0'], ['--min-membership', '1.5']] as const) {
      const r = run('fit', fixture('planted_a_f32.npz'), '--clusters', '3', '--out', join(tmp(), 'o'), flag, value)
      expect(r.status).not.toBe(0)
      expect(r.stderr.trim().split('\n')).toHaveLength(1)
      expect(r.stderr).toMatch(flag === '--clusters' ? /--clusters/ : flag === '--temperature' ? /temperature/ : /minMembership/)
    }
  })
})
