// Token decoding for the report and the page's escaping, without a browser (demo.spec.ts opens it).
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { analyzeSequentialClusters, readChunk, SequentialSoftClustering } from '../ts'
import { idDecoder, tokenizerDecoder, vocabDecoder } from '../ts/decode'
import { renderReport } from '../ts/report'
import { fixture } from './helpers'

const dir = mkdtempSync(join(tmpdir(), 'sc-report-'))
const MINILM_TOKENIZER = join(__dirname, '..', 'examples', 'minilm', 'tokenizer.json')

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
      summary: { clusterMass: [1, 2], clusterCount: [1, 2], exemplars: [[{ value: 1, chunk: 0, batch: 0, position: 0, tokens: [1, 2, 3], contextMemberships: [0, 1, 0] }], []], history: [], chunks: [evil] },
      analysis,
      chunks: [evil],
      decoder: { description: evil, window: (ids) => ids.map(() => ({ text: evil, missing: false })), token: () => evil },
    })
    expect(html).not.toContain('<img')
    expect(html).toContain('&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;')
    expect(html.match(/<section class="cluster"/g)).toHaveLength(2)
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
      summary: { clusterMass: [1], clusterCount: [1], exemplars: [[{ value: 1, chunk: 0, batch: 0, position: 1, tokens: [1, 2, 3], contextMemberships: [0, 1, 0] }]], history: [], chunks: ['c'], warnings: [] },
      analysis,
      chunks: ['c'],
      decoder: { description: 'd', window: (ids) => ids.map(() => ({ text: rlo, missing: false })), token: () => rlo },
    })
    expect(html).toMatch(/\.tok\{[^}]*unicode-bidi:isolate/)
    expect(html).toMatch(/\.ctx\{[^}]*unicode-bidi:isolate/)
    expect(html).toContain(`>${rlo}</span>`)
  })
})
