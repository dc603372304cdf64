// Token decoding for the report and the page's escaping, without a browser (demo.spec.ts opens it).
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import type * as HfTokenizers from '@huggingface/tokenizers' with { 'resolution-mode': 'import' }
import { analyzeSequentialClusters, readChunk, SequentialSoftClustering } from '../ts'
import { DECODE_CONTEXT, idDecoder, mapBack, tokenizerDecoder, vocabDecoder, type TokenPiece } from '../ts/decode'
import { renderReport } from '../ts/report'
import { readReportData } from '../ts/report-data'
import { fixture } from './helpers'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Tokenizer } = require('@huggingface/tokenizers') as typeof HfTokenizers

const dir = mkdtempSync(join(tmpdir(), 'sc-report-'))
const MINILM = join(__dirname, '..', 'examples', 'minilm')
const MINILM_TOKENIZER = join(MINILM, 'tokenizer.json')
const BIN = join(__dirname, '..', 'bin', 'soft-cluster.js')

/** The real token ids of the MiniLM example chunks, in order (padding dropped). */
function minilmIds(): number[] {
  return [0, 1, 2].flatMap((c) => {
    const chunk = readChunk(join(MINILM, `minilm_00${c}.npz`))
    return Array.from(chunk.tokenIds!, Number).filter((_, i) => chunk.attentionMask![i] !== 0)
  })
}

/** An in-thread decode with a tokenizer.json, as the worker does it. */
function localDecode(file: string): (ids: number[]) => string {
  const tokenizer = new Tokenizer(JSON.parse(readFileSync(file, 'utf8')), {})
  return (ids) => tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false })
}

/** The rule against the whole window's decode, each prefix decoded (what the report did before it went local: O(n^2)). */
function wholeWindowMapBack(ids: readonly number[], decode: (ids: number[]) => string): TokenPiece[] {
  const common = (a: string, b: string) => {
    let i = 0
    while (i < a.length && i < b.length && a[i] === b[i]) i++
    return i
  }
  const real = ids.filter((id) => id >= 0)
  const full = real.length ? decode(real) : ''
  let settled = 0
  let n = 0
  return ids.map((id) => {
    if (id < 0) return { text: '', missing: true }
    n++
    const end = n === real.length ? full.length : Math.max(settled, common(decode(real.slice(0, n)), full))
    const text = full.slice(settled, end)
    settled = end
    return { text, missing: false }
  })
}

/**
 * MiniLM's tokenizer.json turned hostile: its decoder first applies a Replace whose regex
 * backtracks exponentially on tokens like 'aaaa…ab', and every ordinary token is such a token.
 */
function hostileTokenizer(): string {
  const json = JSON.parse(readFileSync(MINILM_TOKENIZER, 'utf8'))
  const special = new Set((json.added_tokens as { content: string }[]).map((t) => t.content))
  const vocab = json.model.vocab as Record<string, number>
  json.model.vocab = Object.fromEntries(Object.entries(vocab).map(([token, id]) => [special.has(token) ? token : `${'a'.repeat(64)}b${id}`, id]))
  json.decoder = { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { Regex: '^(a|aa)+$' }, content: '' }, json.decoder] }
  const file = join(dir, 'hostile.json')
  writeFileSync(file, JSON.stringify(json))
  return file
}

/** A byte-level BPE tokenizer.json (GPT-2's byte-to-character map) with no merges: one token per byte. */
function byteLevelTokenizer(): string {
  const printable = [...Array(256).keys()].filter((b) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
  const chars = new Map<number, string>(printable.map((b) => [b, String.fromCodePoint(b)]))
  let extra = 0
  for (let b = 0; b < 256; b++) if (!chars.has(b)) chars.set(b, String.fromCodePoint(256 + extra++))
  const vocab = Object.fromEntries([...chars.entries()].map(([b, c]) => [c, b]))
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }
  const file = join(dir, 'byte-level.json')
  writeFileSync(file, JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null, pre_tokenizer: byteLevel, post_processor: null, decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  }))
  return file
}

describe('token decoding', () => {
  it('renders a character split over several byte tokens whole, on the token that completes it', () => {
    const d = tokenizerDecoder(byteLevelTokenizer())
    const ids = [...Buffer.from('café ✓')]
    const pieces = d.window([-1, ...ids, -1])
    expect(pieces.map((p) => p.text)).toEqual(['', 'c', 'a', 'f', '', 'é', ' ', '', '', '✓', ''])
    expect(pieces.map((p) => p.missing)).toEqual([true, ...ids.map(() => false), true])
  })

  it('decodes word pieces with the tokenizer’s own decoder (MiniLM’s tokenizer.json)', () => {
    const d = tokenizerDecoder(MINILM_TOKENIZER)
    // [CLS] the una ##ff ##ord ##able license [SEP], as the Python tokenizers package encodes it
    const ids = [101, 1996, 14477, 4246, 8551, 3085, 6105, 102]
    const pieces = d.window(ids)
    expect(pieces.map((p) => p.text).join('')).toBe('[CLS] the unaffordable license [SEP]')
    expect(pieces.map((p) => p.text)).toEqual(['[CLS]', ' the', ' una', 'ff', 'ord', 'able', ' license', ' [SEP]'])
    expect(d.token(6105)).toBe('license')
  })

  it('maps each token against a local decode: the same pieces as against the whole window (MiniLM, byte-level)', () => {
    // Windows of 2w + 1 > 2 DECODE_CONTEXT + 1 tokens, so several local blocks, padding included.
    const minilm = localDecode(MINILM_TOKENIZER)
    const ids = minilmIds()
    let windows = 0
    for (const w of [20, 50]) {
      for (let start = 0; start + 2 * w + 1 <= 1500; start += 83) {
        const window = ids.slice(start, start + 2 * w + 1).map((id, i) => (i % 29 === 28 ? -1 : id))
        expect(mapBack(window, minilm, DECODE_CONTEXT)).toEqual(wholeWindowMapBack(window, minilm))
        windows++
      }
    }
    expect(windows).toBeGreaterThan(20)
    // Characters of 1 to 4 bytes, so split over up to 4 tokens, wherever the blocks start.
    const bytes = localDecode(byteLevelTokenizer())
    const text = [...Array(60).keys()].map((i) => ['a', 'é', '✓', '𝄞', ' ', 'ж', '語', 'z'][(i * 5) % 8]).join('')
    const all = [...Buffer.from(text)]
    for (let start = 0; start < 30; start += 3) {
      const window = all.slice(start, start + 101)
      const pieces = mapBack(window, bytes, DECODE_CONTEXT)
      expect(pieces).toEqual(wholeWindowMapBack(window, bytes))
      expect(pieces.map((p) => p.text).join('')).toBe(bytes(window))
    }
    // No real token at all (a chunk without token ids): nothing to decode.
    expect(mapBack([-1, -1, -1], minilm, DECODE_CONTEXT)).toEqual([-1, -1, -1].map(() => ({ text: '', missing: true })))
  })

  it('decodes a window in time linear in its length (w = 800 vs w = 50)', () => {
    const d = tokenizerDecoder(MINILM_TOKENIZER)
    const ids = minilmIds()
    // Distinct windows each time (the decoder keeps what it decoded), the best of 3 rounds.
    let offset = 0
    const perWindow = (w: number, count: number): number => {
      let best = Infinity
      for (let round = 0; round < 3; round++) {
        const windows = [...Array(count).keys()].map(() => ids.slice((offset += 53), offset + 2 * w + 1))
        expect(windows.every((window) => window.length === 2 * w + 1)).toBe(true)
        const began = performance.now()
        for (const window of windows) d.window(window)
        best = Math.min(best, (performance.now() - began) / count)
      }
      return best
    }
    perWindow(50, 2) // warm-up: the worker starts, the code is compiled
    const t50 = perWindow(50, 16)
    const t800 = perWindow(800, 3)
    d.close?.()
    // 1601 / 101 ≈ 16 times the tokens; linear gives about 16 times the time (a whole-window decode
    // of every prefix gave about 250 times): 4 times the slack for noise.
    expect(t800 / t50, `w = 50: ${t50.toFixed(2)} ms, w = 800: ${t800.toFixed(2)} ms per window`).toBeLessThan(4 * 16)
  })

  it('falls back to the ids when the tokenizer’s decoder takes too long (a hostile regex)', () => {
    const d = tokenizerDecoder(hostileTokenizer(), { timeout: 1 })
    expect(d.description).toMatch(/^tokenizer .*hostile\.json$/)
    const began = performance.now()
    // Without the time limit, this call never returns.
    expect(d.window([101, 1996, 2000, -1]).map((p) => p.text)).toEqual(['101', ' 1996', ' 2000', ''])
    expect(performance.now() - began).toBeLessThan(10_000)
    expect(d.fallback).toBe("the tokenizer's decoder took over 1 s")
    expect(d.description).toMatch(/^token ids \(the tokenizer's decoder took over 1 s: .*hostile\.json\)$/)
    // From then on, ids at once.
    expect(d.token(2003)).toBe('2003')
    d.prepare?.([[2001, 102]], [1996])
    expect(d.window([2001, 102]).map((p) => p.text)).toEqual(['2001', ' 102'])
    expect(performance.now() - began).toBeLessThan(10_000)
    d.close?.()
    expect(() => tokenizerDecoder(MINILM_TOKENIZER, { timeout: 0 })).toThrow(/--decode-timeout 0: must be a number of seconds > 0/)
  })

  it('soft-cluster report with a hostile tokenizer finishes, shows ids and says why', () => {
    const model = join(dir, 'fit', 'model.safetensors')
    const fit = spawnSync(process.execPath, [BIN, 'fit', fixture('planted_a_f32.npz'), '--clusters', '3', '--out', join(dir, 'fit'), '--temperature', '0.25', '--exemplars', '2', '--context', '2'], { encoding: 'utf8' })
    expect(fit.status, fit.stderr).toBe(0)
    const out = join(dir, 'hostile.html')
    const began = performance.now()
    // Without the time limit this never ends: the spawn's own timeout stops it.
    const r = spawnSync(process.execPath, [BIN, 'report', '--model', model, fixture('planted_a_f32.npz'), '--tokenizer', hostileTokenizer(), '--decode-timeout', '1', '--out', out], { encoding: 'utf8', timeout: 50_000 })
    expect(r.status, r.stderr).toBe(0)
    expect(performance.now() - began).toBeLessThan(30_000)
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^soft-cluster: warning: --tokenizer .*hostile\.json: the tokenizer's decoder took over 1 s, so the report shows token ids \(--decode-timeout SECONDS gives it longer\)$/)])
    const html = readFileSync(out, 'utf8')
    expect(html).toMatch(/<th>tokens decoded with<\/th><td>token ids \(the tokenizer&#39;s decoder took over 1 s: [^<]*hostile\.json\)<\/td>/)
    // The exemplars show their ids: every piece of text the page holds is its token's id.
    const { index, details } = readReportData(html)
    expect(details.flatMap((d) => d.exemplars).length).toBeGreaterThan(0)
    expect(index.pieces.length).toBeGreaterThan(0)
    expect(index.pieces.filter(([id, text]) => text.trim() !== String(id))).toEqual([])
  })

  it('falls back to a vocabulary list or the ids themselves', () => {
    const vocab = join(dir, 'vocab.json')
    writeFileSync(vocab, JSON.stringify(['a', 'b', 'c']))
    const v = vocabDecoder(vocab)
    expect(v.window([0, -1, 2, 7]).map((p) => p.text)).toEqual(['a', '', ' c', ' #7'])
    expect(idDecoder.window([5, 6]).map((p) => p.text)).toEqual(['5', ' 6'])
  })
})

describe('renderReport', () => {
  it('escapes every string it puts in the page', async () => {
    const model = new SequentialSoftClustering({ nClusters: 2, dModel: 64, temperature: 1, initialCenters: new Float32Array(128).map((_, i) => (i === 0 || i === 65 ? 1 : 0)) })
    const chunk = readChunk(fixture('planted_a_f32.npz'))
    const analysis = analyzeSequentialClusters(model, chunk.activations, chunk.tokenIds, { shape: chunk.shape, attentionMask: chunk.attentionMask })
    const evil = '</script><img src=x onerror=alert(1)>'
    const html = renderReport({
      modelPath: evil,
      config: model.config,
      summary: { clusterMass: [1, 2], clusterCount: [1, 2], exemplars: [[{ value: 1, chunk: 0, batch: 0, position: 0, tokens: [1, 2, 3], contextMemberships: [0, 1, 0] }], []], history: [], chunks: [evil], warnings: [], hasStatistics: false,
        quantiles: [Array.from({ length: 10 }, (_, b) => (b === 1 ? [{ value: 0.15, chunk: 0, batch: 0, position: 0, tokens: [1, 2, 3], contextMemberships: [0, 0.15, 0] }] : [])), []],
        operations: [{ op: 'update', clusters: [], mapping: [0, 1], nClusters: 2, chunks: [evil], iterations: 1 }] },
      analysis,
      chunks: [evil],
      decoder: { description: evil, window: (ids) => ids.map(() => ({ text: evil, missing: false })), token: () => evil },
      tree: model.hierarchy(), centers: model.centers!,
    })
    expect(html).not.toContain('<img')
    expect(html).toContain('&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;')
    // The page's script tags: Plotly's, the client's, and the data's (base64, which holds no '<').
    expect(html.match(/<script/gi)).toHaveLength(html.match(/<\/script>/gi)!.length)
    // The data holds the text as it is (the page shows it through textContent: dashboard.spec.ts).
    const { index, details } = readReportData(html)
    expect(index.pieces.map((p) => p[1])).toContain(evil)
    expect(index.chunks).toEqual([evil])
    // The quantile example of cluster 0, in bin 1 of 10.
    expect(details).toHaveLength(2)
    expect(details[0]!.bins.map((b) => b.length)).toEqual([0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    expect(details[0]!.bins[1]![0]!.slice(0, 4)).toEqual([150, 0, 0, 0])
    // The twin pairs of the centers are in the overview (two orthogonal centers: none).
    expect(html).toContain(`twin center pairs (cosine &gt; 0.99)</th><td>${analysis.overall.twins}</td>`)
    expect(analysis.overall.twins).toBe(0)
  })

  it('isolates the direction of every token, so a right-to-left override cannot reverse the line', () => {
    const model = new SequentialSoftClustering({ nClusters: 1, dModel: 2, temperature: 1, initialCenters: new Float32Array([1, 0]) })
    const analysis = analyzeSequentialClusters(model, new Float32Array(0), null, { shape: [0, 2] })
    const rlo = 'abc\u202Edef'
    const html = renderReport({
      modelPath: 'm',
      config: model.config,
      summary: { clusterMass: [1], clusterCount: [1], exemplars: [[{ value: 1, chunk: 0, batch: 0, position: 1, tokens: [1, 2, 3], contextMemberships: [0, 1, 0] }]], history: [], chunks: ['c'], warnings: [], hasStatistics: false, operations: [], quantiles: [] },
      analysis,
      chunks: ['c'],
      decoder: { description: 'd', window: (ids) => ids.map(() => ({ text: rlo, missing: false })), token: () => rlo },
      tree: model.hierarchy(), centers: model.centers!,
    })
    expect(html).toMatch(/\.tok\{[^}]*unicode-bidi:isolate/)
    expect(html).toMatch(/\.ctx\{[^}]*unicode-bidi:isolate/)
    expect(html).toMatch(/code,\.where,td,li\{unicode-bidi:isolate\}/)
    expect(readReportData(html).index.pieces.map((p) => p[1])).toContain(rlo)
  })
})

describe('lift tokens', () => {
  it('are embedded per cluster as the core computed them, with their decoded text', () => {
    const model = new SequentialSoftClustering({ nClusters: 2, dModel: 64, temperature: 1, initialCenters: new Float32Array(128).map((_, i) => (i === 0 || i === 65 ? 1 : 0)) })
    const chunk = readChunk(fixture('planted_a_f32.npz'))
    const analysis = analyzeSequentialClusters(model, chunk.activations, chunk.tokenIds, { shape: chunk.shape, attentionMask: chunk.attentionMask })
    const html = renderReport({ modelPath: 'm', config: model.config, summary: model.summary!, analysis, chunks: ['c'], decoder: { description: 'd', window: (ids) => ids.map((id) => ({ text: `w${id}`, missing: id < 0 })), token: (id) => `t${id}` }, tree: model.hierarchy(), centers: model.centers! })
    const { index } = readReportData(html)
    const round = (v: number) => Math.round(v * 100) / 100
    for (const [c, s] of analysis.clusters.entries()) {
      expect(s.liftTokens.length).toBeGreaterThan(0)
      expect(index.clusters[c]!.lift.map(([p, lift, weight, count]) => [index.pieces[p], lift, weight, count])).toEqual(
        s.liftTokens.map((t) => [[t.tokenId, `t${t.tokenId}`], round(t.lift), round(t.weight), t.count]),
      )
    }
  })
})
