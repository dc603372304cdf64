// The command line as a user runs it: the real binary, on the fixtures, exit codes and messages.
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { analyzeChunks, readMemberships, SequentialSoftClustering } from '../ts'
import { readReportData } from '../ts/report-data'
import { expectFailure, fixture, runCli } from './helpers'

const run = runCli
const a = fixture('planted_a_f32.npz')
const b = fixture('planted_b_f16_compressed.npz')


let dir: string
let model: string
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sc-cli-'))
  const r = run('fit', a, b, '--clusters', '6', '--out', join(dir, 'fit'), '--temperature', '0.25', '--exemplars', '3', '--context', '2')
  expect(r.status, r.stderr).toBe(0)
  model = join(dir, 'fit', 'model.safetensors')
})

describe('soft-cluster fit and transform', () => {
  it('transform writes the memberships the fit wrote', () => {
    expect(readFileSync(join(dir, 'fit', 'planted_a_f32.memberships.npz')).length).toBeGreaterThan(0)
    const r = run('transform', '--model', model, a, b, '--out', join(dir, 'tr'))
    expect(r.status).toBe(0)
    expect(r.stdout).toContain('wrote memberships of 215 tokens in 2 .memberships.npz files')
    for (const name of ['planted_a_f32.memberships.npz', 'planted_b_f16_compressed.memberships.npz']) {
      expect(readFileSync(join(dir, 'tr', name))).toEqual(readFileSync(join(dir, 'fit', name)))
    }
  })

  it('--cache keeps the chunks in memory after the first pass, or not, with the same memberships', () => {
    const on = run('fit', a, b, '--clusters', '6', '--out', join(dir, 'cache-on'), '--temperature', '0.25', '--cache', 'auto')
    expect(on.status, on.stderr).toBe(0)
    expect(on.stdout).toMatch(/passes read host cache, \d+ bytes/)
    const off = run('fit', a, b, '--clusters', '6', '--out', join(dir, 'cache-off'), '--temperature', '0.25', '--cache', 'off')
    expect(off.status, off.stderr).toBe(0)
    expect(off.stdout).toContain('passes read files (cache off)')
    const small = run('fit', a, b, '--clusters', '6', '--out', join(dir, 'cache-small'), '--temperature', '0.25', '--cache', '1000', '--json')
    expect(small.status, small.stderr).toBe(0)
    expect(JSON.parse(small.stdout).history[0].data).toBe('files (the chunks take more than the 1000-byte host cache)')
    for (const name of ['planted_a_f32.memberships.npz', 'planted_b_f16_compressed.memberships.npz']) {
      expect(readFileSync(join(dir, 'cache-on', name))).toEqual(readFileSync(join(dir, 'fit', name)))
      expect(readFileSync(join(dir, 'cache-off', name))).toEqual(readFileSync(join(dir, 'fit', name)))
      expect(readFileSync(join(dir, 'cache-small', name))).toEqual(readFileSync(join(dir, 'fit', name)))
    }
    expectFailure(run('fit', a, '--clusters', '6', '--out', join(dir, 'cache-bad'), '--cache', '-5'), 'cache')
  })

  it('accepts directories and globs as CHUNKS', () => {
    const r = run('transform', '--model', model, fixture('planted_*.npz'), '--out', join(dir, 'glob'))
    expect(r.status, r.stderr).toBe(0)
    expect(readdirSync(join(dir, 'glob')).sort()).toEqual(['planted_a_f32.memberships.npz', 'planted_b_f16_compressed.memberships.npz', 'soft-cluster-run.json'])
    const d = mkdtempSync(join(dir, 'chunks-'))
    writeFileSync(join(d, 'x.npz'), readFileSync(a))
    expect(run('transform', '--model', model, d, '--out', join(dir, 'dir')).status).toBe(0)
    expect(existsSync(join(dir, 'dir', 'x.memberships.npz'))).toBe(true)
  })
})

describe('soft-cluster analyze', () => {
  it('prints the metrics, and with --json the same numbers as the TypeScript API', async () => {
    const text = run('analyze', '--model', model, a, b)
    expect(text.status, text.stderr).toBe(0)
    expect(text.stderr).toBe('') // no progress on a pipe unless asked
    expect(text.stdout).toContain('6 clusters over 2 chunks, 215 tokens')
    expect(text.stdout).toMatch(/normalized partition entropy \d\.\d{3}, partition coefficient \d\.\d{3}/)
    expect(text.stdout).toMatch(/cosine silhouette -?\d\.\d{3} \(sample of 215 tokens\)/)
    expect(text.stdout).toMatch(/twin center pairs \(cosine > 0\.99\): \d+/)
    expect(text.stdout.trim().split('\n')).toHaveLength(6 + 6)
    const json = run('analyze', '--model', model, a, b, '--json', '--top-tokens', '3')
    expect(json.status, json.stderr).toBe(0)
    const parsed = JSON.parse(json.stdout)
    const api = await analyzeChunks(await SequentialSoftClustering.load(model), [a, b], { topTokens: 3 })
    expect(parsed).toEqual(api)
    expect(parsed.clusters).toHaveLength(6)
    expect(parsed.clusters[0].topTokens.length).toBeLessThanOrEqual(3)
  })

  it('shows progress on a pipe with --progress', () => {
    const r = run('analyze', '--model', model, a, b, '--progress', '--json')
    expect(r.status).toBe(0)
    expect(r.stderr).toContain('progress analyze chunk 1/2')
    expect(r.stderr).toContain('chunk 2/2 tokens 215')
  })
})

describe('soft-cluster report', () => {
  it('writes a self-contained page, with and without chunks, decoding with --vocab', () => {
    const vocab = join(dir, 'vocab.json')
    writeFileSync(vocab, JSON.stringify(Array.from({ length: 1000 }, (_, i) => `tok<b>${i}`)))
    const out = join(dir, 'report.html')
    const r = run('report', '--model', model, a, b, '--vocab', vocab, '--out', out)
    expect(r.status, r.stderr).toBe(0)
    expect(r.stdout).toContain(out)
    const html = readFileSync(out, 'utf8')
    const data = readReportData(html)
    expect(data.details).toHaveLength(6)
    expect(data.index.clusters.every((s) => s.top.length > 0)).toBe(true)
    // Vocabulary text is in the embedded data as it is (compressed), never in the page as markup.
    expect(data.index.pieces.some(([, text]) => text.startsWith('tok<b>'))).toBe(true)
    expect(html).not.toContain('tok<b>')
    expect(html).toContain('partition coefficient')
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=/)
    const bare = run('report', '--model', model, '--out', join(dir, 'bare.html'))
    expect(bare.status, bare.stderr).toBe(0)
    const bareHtml = readFileSync(join(dir, 'bare.html'), 'utf8')
    const bareData = readReportData(bareHtml)
    expect(bareData.details).toHaveLength(6)
    expect(bareData.index.hasTokens).toBe(false)
    // Without metrics, the index names clusters by their best exemplars' tokens.
    expect(bareData.index.clusters.every((s) => s.top.length === 0 && s.exemplarTokens.length > 0)).toBe(true)
    expect(bareHtml).toContain('pass CHUNKS to compute them')
  })
})

describe('--json', () => {
  it('fit, transform and report print what they wrote as JSON', () => {
    const flat = fixture('flat_2d_f64.npz') // no token_ids, no mask
    const fit = run('fit', flat, '--clusters', '3', '--out', join(dir, 'json-fit'), '--temperature', '0.25', '--json')
    expect(fit.status, fit.stderr).toBe(0)
    const f = JSON.parse(fit.stdout)
    expect(f.model).toBe(join(dir, 'json-fit', 'model.safetensors'))
    expect(f.memberships).toEqual([join(dir, 'json-fit', 'flat_2d_f64.memberships.npz')])
    expect(f.history.length).toBeGreaterThan(0)
    for (const file of [f.model, ...f.memberships]) expect(existsSync(file)).toBe(true)
    const tr = JSON.parse(run('transform', '--model', f.model, flat, '--out', join(dir, 'json-tr'), '--json').stdout)
    expect(tr).toMatchObject({ rows: 32, memberships: [join(dir, 'json-tr', 'flat_2d_f64.memberships.npz')] })
    const rep = run('report', '--model', f.model, flat, '--out', join(dir, 'json.html'), '--json')
    expect(rep.status, rep.stderr).toBe(0)
    expect(JSON.parse(rep.stdout)).toEqual({ report: join(dir, 'json.html') })
    // Without token ids, exemplar tokens have no piece (-1: the page shows a box) and keep their membership.
    const exemplars = readReportData(readFileSync(join(dir, 'json.html'), 'utf8')).details.flatMap((d) => d.exemplars)
    expect(exemplars.length).toBeGreaterThan(0)
    expect(exemplars.every((e) => e[4].every((p) => p === -1))).toBe(true)
    expect(exemplars.some((e) => e[5].some((m) => m > 0))).toBe(true)
  })
})

describe('soft-cluster errors', () => {
  const refused = readdirSync(fixture('bad')).filter((n) => n.endsWith('.npz') && !['all_masked.npz', 'empty_batch.npz', 'fortran_order.npz'].includes(n))

  it.each(refused)('bad/%s: fit and analyze exit non-zero with one line naming the file', (name) => {
    expectFailure(run('fit', a, fixture(`bad/${name}`), '--clusters', '2', '--out', join(dir, `bad-${name}`)), name)
    expectFailure(run('analyze', '--model', model, fixture(`bad/${name}`)), name)
    expect(existsSync(join(dir, `bad-${name}`, 'model.safetensors'))).toBe(false)
  })

  it('names the flag or file at fault', () => {
    const vocabBad = join(dir, 'vocab-bad.json')
    writeFileSync(vocabBad, '{"not": "a list"}')
    const notJson = join(dir, 'not.json')
    writeFileSync(notJson, 'nope')
    const cases: [string[], string[]][] = [
      [['fit', a, '--clusters', 'x', '--out', dir], ['--clusters', 'not a number']],
      [['fit', a, '--out', dir], ["'--clusters <K>'"]],
      [['fit', a, '--clusters', '0', '--out', join(dir, 'k0')], ['nClusters']],
      [['fit', a, '--clusters', '2', '--out', dir, '--bogus'], ['--bogus']],
      [['analyze', a], ["'--model <file>'"]],
      [['analyze', '--model', join(dir, 'nope.safetensors'), a], ['nope.safetensors']],
      [['analyze', '--model', a, a], ['planted_a_f32.npz', 'ERR_BAD_MODEL']],
      [['analyze', '--model', model, join(dir, 'nothing-*.npz')], ['nothing-*.npz']],
      [['analyze', '--model', model, a, '--sample', '-1'], ['--sample']],
      [['transform', '--model', a, a, '--out', join(dir, 'x')], ['ERR_BAD_MODEL']],
      [['report', '--model', model], ["'--out <file>'"]],
      [['report', '--model', model, '--out', join(dir, 'no', 'such', 'dir', 'r.html')], ['--out', 'r.html']],
      [['report', '--model', model, '--out', join(dir, 'r.html'), '--tokenizer', join(dir, 'missing.json')], ['--tokenizer', 'missing.json']],
      [['report', '--model', model, '--out', join(dir, 'r.html'), '--tokenizer', notJson], ['--tokenizer', 'not.json', 'is not JSON']],
      [['report', '--model', model, '--out', join(dir, 'r.html'), '--tokenizer', vocabBad], ['--tokenizer', 'vocab-bad.json']],
      [['report', '--model', model, '--out', join(dir, 'r.html'), '--vocab', vocabBad], ['--vocab', 'vocab-bad.json']],
      [['report', '--model', model, '--out', join(dir, 'r.html'), '--vocab', vocabBad, '--tokenizer', vocabBad], ['--tokenizer and --vocab']],
      [['bogus'], ["unknown command 'bogus'"]],
    ]
    for (const [args, needles] of cases) expectFailure(run(...args), ...needles)
  })

  it('prints its version and help with exit 0', () => {
    const v = run('--version')
    expect(v.status).toBe(0)
    expect(v.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/)
    const h = run('--help')
    expect(h.status).toBe(0)
    for (const c of ['fit', 'transform', 'analyze', 'report', 'demo']) expect(h.stdout).toContain(`  ${c}`)
    const rh = run('report', '--help')
    expect(rh.status).toBe(0)
    expect(rh.stdout).toContain('--tokenizer <file>')
  })
})

describe('soft-cluster tree, merge, split, update and transform --level', () => {
  it('prints the tree, merges with the id mapping, splits, updates, and cuts memberships at a level', () => {
    const tree = run('tree', '--model', model, '--json')
    expect(tree.status, tree.stderr).toBe(0)
    const t = JSON.parse(tree.stdout)
    expect(t.nClusters).toBe(6)
    expect(t.linkage).toHaveLength(5)
    expect(run('tree', '--model', model).stdout).toContain('tree of 6 clusters')

    const merged = join(dir, 'merged.safetensors')
    const m = run('merge', '--model', model, '--clusters', '5,2', '--out', merged, '--json')
    expect(m.status, m.stderr).toBe(0)
    expect(JSON.parse(m.stdout)).toMatchObject({ model: merged, nClusters: 5, merged: [2, 5], mapping: [0, 1, 2, 3, 4, 2], iterations: 0 })
    expectFailure(run('merge', '--model', model, '--clusters', '1,3', '--out', merged), '--out', 'exists; pass --overwrite', 'ERR_OUTPUT_EXISTS')
    expectFailure(run('merge', '--model', model, '--clusters', '1,3', '--out', model, '--overwrite'), 'is the input model')
    const r = run('report', '--model', merged, '--out', join(dir, 'merged.html'))
    expect(r.status, r.stderr).toBe(0)
    const html = readFileSync(join(dir, 'merged.html'), 'utf8')
    expect(html).toContain('merge of clusters 2, 5 into 2 (now 5 clusters)')
    expect(html).toContain('id="plot-tree"')
    const treeOrder = JSON.parse(run('tree', '--model', merged, '--json').stdout).order as number[]
    expect(readReportData(html).index.tree.order).toEqual(treeOrder)
    expectFailure(run('merge', '--model', model, '--clusters', '1,x', '--out', join(dir, 'm2.safetensors')), '--clusters 1,x', 'cluster ids')
    expectFailure(run('merge', '--model', model, '--clusters', '1,6', '--out', join(dir, 'm2.safetensors')), '6 is not a cluster id', 'ERR_INVALID_INPUT')
    expect(existsSync(join(dir, 'm2.safetensors'))).toBe(false)

    const split = join(dir, 'split.safetensors')
    const s = run('split', '--model', merged, '--cluster', '2', a, b, '--out', split, '--json')
    expect(s.status, s.stderr).toBe(0)
    expect(JSON.parse(s.stdout)).toMatchObject({ model: split, nClusters: 6, split: 2, parts: [2, 5], iterations: 3 })
    expectFailure(run('split', '--model', merged, '--cluster', '2', '--into', '5000', a, '--out', join(dir, 's2.safetensors')), 'fewer than the 5000 parts')
    expect(existsSync(join(dir, 's2.safetensors'))).toBe(false)

    const u = run('update', '--model', model, b, '--out', join(dir, 'upd'), '--iterations', '2', '--json')
    expect(u.status, u.stderr).toBe(0)
    const upd = JSON.parse(u.stdout)
    expect(upd.history).toHaveLength(5 + 2)
    expect(upd.memberships).toEqual([join(dir, 'upd', 'planted_b_f16_compressed.memberships.npz')])
    expectFailure(run('update', '--model', model, fixture('bad/wrong_d_model.npz'), '--out', join(dir, 'upd2')), 'wrong_d_model.npz', "the model's dModel is 64")
    expect(existsSync(join(dir, 'upd2'))).toBe(false)

    const lv = run('transform', '--model', model, a, '--level', '2', '--out', join(dir, 'level'), '--json')
    expect(lv.status, lv.stderr).toBe(0)
    const grouped = readMemberships(join(dir, 'level', 'planted_a_f32.memberships.npz'))
    expect(JSON.parse(grouped.metadata!).n_clusters).toBe(2)
    expect(Math.max(...Array.from(grouped.indices).filter((_, i) => i % 3 === 2))).toBe(1)
    expectFailure(run('transform', '--model', model, a, '--level', '9', '--out', join(dir, 'level9')), 'level: must be between 1 and the number of clusters (6), got 9')
  }, 60_000)
})
