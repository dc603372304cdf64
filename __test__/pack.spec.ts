// The release as a user gets it: `npm run pack:local` packs the root package and this platform's
// binary package; they are installed into a clean folder with no Rust toolchain on PATH, and the
// CLI demo, an ES module script and a strict TypeScript script run from there. Then the binary
// package is removed, to check the message a user on an unsupported platform reads.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const repo = join(__dirname, '..')
const work = mkdtempSync(join(tmpdir(), 'soft-cluster-pack-'))
const app = join(work, 'app')

/** PATH without any folder that holds `cargo` or `rustc`, with node and npm kept. */
function pathWithoutRust(): string {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter((d) => d && !['cargo', 'rustc'].some((t) => existsSync(join(d, t))))
  const nodeDir = dirname(process.execPath)
  if (!dirs.includes(nodeDir)) {
    if (existsSync(join(nodeDir, 'cargo'))) throw new Error(`node's folder ${nodeDir} also holds cargo; cannot hide Rust`)
    dirs.push(nodeDir)
  }
  return dirs.join(delimiter)
}
const { NAPI_RS_NATIVE_LIBRARY_PATH: _override, ...inherited } = process.env
const env = { ...inherited, PATH: pathWithoutRust(), npm_config_audit: 'false', npm_config_fund: 'false' }

function run(cmd: string, args: string[], cwd: string, extra: Record<string, string> = {}): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, env: { ...env, ...extra }, encoding: 'utf8', timeout: 240_000 })
}
const ok = (r: SpawnSyncReturns<string>): SpawnSyncReturns<string> => {
  if (r.status !== 0) throw new Error(`exit ${r.status}: ${r.stderr}\n${r.stdout}`)
  return r
}

let tarballs: { root: string; platform: string }

beforeAll(() => {
  expect(run('cargo', ['--version'], work).error, 'cargo must not be reachable in the install test').toBeDefined()
  const packed = ok(run(process.execPath, [join(repo, 'scripts', 'pack-local.mjs'), '--out', join(work, 'pack')], repo))
  tarballs = JSON.parse(packed.stdout.trim().split('\n').pop()!)
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }))
  ok(run('npm', ['install', '--prefer-offline', '--no-package-lock', tarballs.root, tarballs.platform], app))
}, 300_000)

afterAll(() => rmSync(work, { recursive: true, force: true }))

describe('npm run pack:local, installed with no Rust on PATH', () => {
  it('ships no test fixtures, no prepare script, and source maps that carry their sources', () => {
    const installed = join(app, 'node_modules', 'soft-cluster')
    expect(existsSync(join(installed, 'fixtures'))).toBe(false)
    expect(existsSync(join(installed, 'examples', 'minilm'))).toBe(true)
    const pkg = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'))
    expect(pkg.scripts?.prepare).toBeUndefined()
    expect(pkg.repository?.url).toMatch(/github\.com/)
    const map = JSON.parse(readFileSync(join(installed, 'dist', 'clustering.js.map'), 'utf8'))
    expect(map.sourcesContent?.[0]).toContain('class SequentialSoftClustering')
  })

  it('runs the demo from the CLI', () => {
    const r = ok(run(join(app, 'node_modules', '.bin', 'soft-cluster'), ['demo', '--out', 'demo', '--json'], app))
    const out = JSON.parse(r.stdout)
    expect(existsSync(join(app, 'demo', 'report.html'))).toBe(true)
    expect(out.report ?? JSON.stringify(out)).toContain('report.html')
  }, 120_000)

  it('runs an ES module script and a strict TypeScript script against the installed package', () => {
    writeFileSync(
      join(app, 'use.mjs'),
      `import { SequentialSoftClustering, readChunk } from 'soft-cluster'
const model = await SequentialSoftClustering.load('demo/model.safetensors')
const chunk = readChunk('node_modules/soft-cluster/examples/minilm/minilm_000.npz')
const out = model.transform(chunk.activations, { shape: chunk.shape, attentionMask: chunk.attentionMask })
console.log(JSON.stringify({ k: model.config.nClusters, rows: out.nRows }))
`,
    )
    const esm = JSON.parse(ok(run(process.execPath, ['use.mjs'], app)).stdout)
    expect(esm.k).toBe(24)
    expect(esm.rows).toBeGreaterThan(0)
    writeFileSync(
      join(app, 'use.ts'),
      `import { SequentialSoftClustering, type TransformResult } from 'soft-cluster'
export async function rows(path: string): Promise<number> {
  const model = await SequentialSoftClustering.load(path)
  const out: TransformResult = model.transform(new Float32Array(model.config.dModel), { shape: [1, model.config.dModel] })
  return out.nRows
}
`,
    )
    const tsc = join(repo, 'node_modules', 'typescript', 'bin', 'tsc')
    ok(run(process.execPath, [tsc, '--strict', '--noEmit', '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2022', '--types', 'node', '--typeRoots', join(repo, 'node_modules', '@types'), 'use.ts'], app))
  }, 120_000)

  it('names the platform and what to do when no binary fits, and loads a self-built one', () => {
    const binaryDir = readdirSync(join(app, 'node_modules')).find((n) => n.startsWith('soft-cluster-'))!
    rmSync(join(app, 'node_modules', binaryDir), { recursive: true })
    const cli = join(app, 'node_modules', '.bin', 'soft-cluster')
    const r = run(cli, ['demo', '--out', 'demo2'], app)
    expect(r.status).toBe(1)
    const lines = r.stderr.trim().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toContain(`no soft-cluster native binary loads on ${process.platform} ${process.arch}`)
    expect(lines[0]).toContain('Prebuilt binaries: x86_64-unknown-linux-gnu')
    expect(lines[0]).toContain('Build from source')
    expect(lines[0]).toContain('[ERR_NO_BINARY]')
    expect(existsSync(join(app, 'demo2'))).toBe(false)
    // The documented way out: a binary built from source, named by NAPI_RS_NATIVE_LIBRARY_PATH.
    const built = readdirSync(repo).find((n) => /^soft-cluster\..*\.node$/.test(n))!
    ok(run(cli, ['demo', '--out', 'demo2', '--json'], app, { NAPI_RS_NATIVE_LIBRARY_PATH: join(repo, built) }))
    expect(existsSync(join(app, 'demo2', 'report.html'))).toBe(true)
  }, 120_000)
})
