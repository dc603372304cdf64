// What the report page embeds (docs/formats.md "Report page"): every number and every decoded piece
// of text the dashboard shows, as gzip-compressed JSON in base64. The page decompresses the index
// (stats, top tokens, plots) at load and a block of clusters' examples when one of them is opened,
// so its size and load time grow with K but its DOM does not.
import { gunzipSync, gzipSync } from 'node:zlib'
import type { ClusterAnalysis } from './analysis'
import type { Exemplar, Hierarchy, ModelSummary } from './clustering'
import type { TokenDecoder } from './decode'

/** Up to this many clusters, the overview's heatmap shows every pair; above, means over blocks of the tree's order. */
export const SIMILARITY_FULL_LIMIT = 256
/** Closest other centers listed on a cluster's page. */
const CLOSEST = 5
/** Cells per side of the downsampled heatmap (K > SIMILARITY_FULL_LIMIT). */
export const SIMILARITY_BLOCKS = 128
/** The dendrogram draws at most this many merges, the highest (the top of the tree): 16383 U's in SVG are slow to draw and cannot be told apart. */
export const TREE_MERGES_LIMIT = 2047
/** Clusters per compressed block of examples: one block is decompressed to open one cluster. */
export const DETAIL_BLOCK = 64

/** A token the report shows: its id and the text it shows as (-1: padding or no id). */
export type Piece = [tokenId: number, text: string]

/**
 * One exemplar: membership x 1000, chunk index, sequence, position, the window as indices into
 * `pieces` (-1 where the id is -1), and the cluster's memberships x 1000 at those positions.
 * Thousandths are what the page prints (3 decimals), so rounding loses nothing shown.
 */
export type PackedExemplar = [value: number, chunk: number, batch: number, position: number, pieces: number[], memberships: number[]]

/** A token id ranked in a cluster: its piece, and its summed membership (top tokens). */
export type RankedToken = [piece: number, weight: number]
/** A token special to a cluster: its piece, lift, summed membership and occurrences. */
export type LiftToken = [piece: number, lift: number, weight: number, count: number]

/** What the overview and the index need of a cluster (all loaded at once). */
export interface ClusterIndexEntry {
  mass: number
  hardCount: number
  /** Null without metrics (a report without chunks). */
  meanCosine: number | null
  maxMembership: number | null
  meanMembership: number | null
  nonzeroFraction: number | null
  nearest: number | null
  nearestCosine: number | null
  /** The closest other centers, closest first: `[cluster, cosine]`. */
  closest: [number, number][]
  histogram: number[]
  top: RankedToken[]
  lift: LiftToken[]
  /** Without metrics (no top tokens): the pieces of its best 3 exemplars' own tokens, for the index and search. */
  exemplarTokens: number[]
}

/** What a cluster's own page needs besides its index entry (loaded per block). */
export interface ClusterDetail {
  exemplars: PackedExemplar[]
  /** Bin b of n holds memberships in [b/n, (b+1)/n); empty bins are empty lists. */
  bins: PackedExemplar[][]
}

export interface ReportIndex {
  nClusters: number
  /** Whether the report has metrics over tokens (CHUNKS were given). */
  hasTokens: boolean
  contextWindow: number
  /** Chunk file names, for an exemplar's "where". */
  chunks: string[]
  pieces: Piece[]
  clusters: ClusterIndexEntry[]
  /** The dendrogram: `order` of all the leaves, the U's of the highest merges (all when K - 1 <= TREE_MERGES_LIMIT). */
  tree: { order: number[]; icoord: number[][]; dcoord: number[][]; merges: number }
  /** Center similarities in the tree's order: every pair, or block means (`blockSize` clusters a side). */
  similarity: { z: number[][]; blockSize: number }
  map: [number, number][]
  /** Share of the centers' variance the map shows, as a percentage. */
  variance: string
  detailBlock: number
}

/** Decoded text of the windows and tokens the page shows, interned as pieces. */
class PieceTable {
  readonly pieces: Piece[] = []
  private readonly uses: number[] = []
  private readonly index = new Map<string, number>()
  add(tokenId: number, text: string): number {
    if (tokenId < 0) return -1
    const key = `${tokenId}\u0000${text}`
    let i = this.index.get(key)
    if (i === undefined) {
      i = this.pieces.length
      this.pieces.push([tokenId, text])
      this.uses.push(0)
      this.index.set(key, i)
    }
    this.uses[i]!++
    return i
  }
  /** The pieces, most used first, and where each old index went: frequent pieces get short numbers, which compress better. */
  byUse(): { pieces: Piece[]; moved: Int32Array } {
    const order = this.pieces.map((_, i) => i).sort((a, b) => this.uses[b]! - this.uses[a]! || a - b)
    const moved = new Int32Array(order.length)
    order.forEach((old, i) => (moved[old] = i))
    return { pieces: order.map((old) => this.pieces[old]!), moved }
  }
}

const round = (v: number, digits: number): number => {
  const f = 10 ** digits
  return Math.round(v * f) / f
}
const finiteOrNull = (v: number | null | undefined, digits: number): number | null => (v === null || v === undefined || !Number.isFinite(v) ? null : round(v, digits))

/**
 * Every pair in the tree's order, or the mean over blocks of it when K is large (the K x K grid
 * would not be readable, nor small; the core returns no K x K matrix above 1024 clusters). The
 * mean cosine of two blocks of unit centers is the dot product of their summed centers over the
 * number of pairs, so the grid costs one pass over the centers, not K^2 cosines.
 */
function similarityGrid(similarity: ClusterAnalysis['centerSimilarity'], centers: Float32Array, order: readonly number[]): ReportIndex['similarity'] {
  const k = order.length
  if (k <= SIMILARITY_FULL_LIMIT) return { z: order.map((j) => order.map((l) => round(similarity[j]![l]!, 3))), blockSize: 1 }
  const d = centers.length / k
  const blockSize = Math.ceil(k / SIMILARITY_BLOCKS)
  const n = Math.ceil(k / blockSize)
  const sums = Array.from({ length: n }, () => new Float64Array(d))
  order.forEach((c, a) => {
    const sum = sums[Math.floor(a / blockSize)]!
    for (let i = 0; i < d; i++) sum[i]! += centers[c * d + i]!
  })
  const size = (i: number) => Math.min(blockSize, k - i * blockSize)
  const dot = (x: Float64Array, y: Float64Array) => x.reduce((s, v, i) => s + v * y[i]!, 0)
  return { z: sums.map((x, i) => sums.map((y, j) => round(dot(x, y) / (size(i) * size(j)), 3))), blockSize }
}

/** The U's of the TREE_MERGES_LIMIT highest merges, in their rows' order; lower ones end in the air at their height. */
function highestMerges(tree: Hierarchy): { icoord: number[][]; dcoord: number[][] } {
  const rows = tree.dcoord.map((d, i) => [Math.max(...d), i] as const)
  const kept = rows.length <= TREE_MERGES_LIMIT ? rows : [...rows].sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, TREE_MERGES_LIMIT).sort((a, b) => a[1] - b[1])
  return { icoord: kept.map(([, i]) => tree.icoord[i]!), dcoord: kept.map(([, i]) => tree.dcoord[i]!.map((v) => round(v, 5))) }
}

export interface ReportDataInput {
  summary: ModelSummary
  analysis: ClusterAnalysis
  decoder: TokenDecoder
  tree: Hierarchy
  contextWindow: number
  /** The model's unit centers, `[K, D]` row-major (the heatmap's block means at large K). */
  centers: Float32Array
}

/** The page's data: the index and the per-cluster details, text decoded. */
export function buildReportData(input: ReportDataInput): { index: ReportIndex; details: ClusterDetail[] } {
  const { summary, analysis, decoder, tree } = input
  const hasTokens = analysis.overall.nTokens > 0
  const k = analysis.nClusters
  // Everything the page shows decoded, asked for at once: a tokenizer's decoding runs under a time
  // limit, and past it the whole page shows ids (and the overview says why), not half of it.
  const allExemplars = [...summary.exemplars.flat(), ...summary.quantiles.flat(2)]
  const rankedIds = [
    ...analysis.clusters.flatMap((s) => [...s.topTokens.map((t) => t.tokenId), ...s.liftTokens.map((t) => t.tokenId)]),
    ...allExemplars.map((e) => e.tokens[input.contextWindow] ?? -1),
  ]
  decoder.prepare?.(
    allExemplars.map((e) => e.tokens),
    rankedIds,
  )
  const table = new PieceTable()
  const pack = (e: Exemplar): PackedExemplar => {
    const pieces = decoder.window(e.tokens)
    return [
      Math.round(e.value * 1000),
      e.chunk,
      e.batch,
      e.position,
      pieces.map((p, i) => table.add(e.tokens[i]!, p.text)),
      e.tokens.map((_, i) => Math.round((e.contextMemberships[i] ?? 0) * 1000)),
    ]
  }
  const clusters: ClusterIndexEntry[] = analysis.clusters.map((s, c) => ({
    mass: round(hasTokens ? s.mass : summary.clusterMass[c]!, 3),
    hardCount: hasTokens ? s.hardCount : summary.clusterCount[c]!,
    meanCosine: hasTokens ? finiteOrNull(s.meanCosine, 4) : null,
    maxMembership: hasTokens ? finiteOrNull(s.maxMembership, 4) : null,
    meanMembership: hasTokens ? finiteOrNull(s.meanMembership, 4) : null,
    nonzeroFraction: hasTokens ? finiteOrNull(s.nonzeroFraction, 5) : null,
    nearest: s.nearestCenter,
    closest: s.nearestCenters.slice(0, CLOSEST).map((n): [number, number] => [n.cluster, round(n.cosine, 3)]),
    nearestCosine: finiteOrNull(s.nearestCenterCosine, 4),
    histogram: hasTokens ? s.histogram : [],
    top: s.topTokens.map((t): RankedToken => [table.add(t.tokenId, decoder.token(t.tokenId)), round(t.weight, 2)]),
    lift: s.liftTokens.map((t): LiftToken => [table.add(t.tokenId, decoder.token(t.tokenId)), round(t.lift, 2), round(t.weight, 2), t.count]),
    exemplarTokens: hasTokens ? [] : (summary.exemplars[c] ?? []).slice(0, 3).map((e) => e.tokens[input.contextWindow] ?? -1).filter((id) => id >= 0).map((id) => table.add(id, decoder.token(id))),
  }))
  const details: ClusterDetail[] = analysis.clusters.map((_, c) => ({
    exemplars: (summary.exemplars[c] ?? []).map(pack),
    bins: (summary.quantiles[c] ?? []).map((bin) => bin.map(pack)),
  }))
  const { pieces, moved } = table.byUse()
  const move = (p: number) => (p < 0 ? p : moved[p]!)
  for (const s of clusters) {
    for (const t of s.top) t[0] = move(t[0])
    for (const t of s.lift) t[0] = move(t[0])
    s.exemplarTokens = s.exemplarTokens.map(move)
  }
  for (const d of details) for (const e of [...d.exemplars, ...d.bins.flat()]) e[4] = e[4].map(move)
  const index: ReportIndex = {
    nClusters: k,
    hasTokens,
    contextWindow: input.contextWindow,
    chunks: summary.chunks,
    pieces,
    clusters,
    tree: { order: tree.order, ...highestMerges(tree), merges: tree.dcoord.length },
    similarity: similarityGrid(analysis.centerSimilarity, input.centers, tree.order),
    map: analysis.centerMap.map(([x, y]) => [round(x, 4), round(y, 4)]),
    variance: `${(100 * (analysis.centerMapVariance[0] + analysis.centerMapVariance[1])).toFixed(0)}%`,
    detailBlock: DETAIL_BLOCK,
  }
  return { index, details }
}

/** JSON, gzip-compressed, in base64: the page's index element. */
export const packJson = (value: unknown): string => gzipSync(JSON.stringify(value), { level: 9 }).toString('base64')

/**
 * A block of clusters' examples as unsigned LEB128 varints, column by column (which gzip packs
 * about 30% smaller than the same numbers as JSON): the number of clusters; per cluster its
 * exemplars and bins and each bin's count; per example its value, chunk, sequence, position and
 * window length; then every window's pieces + 1 (0 = no id); then every window's memberships.
 */
export function encodeDetailBlock(details: readonly ClusterDetail[]): Buffer {
  const out: number[] = []
  const put = (n: number) => {
    for (; n >= 128; n = Math.floor(n / 128)) out.push((n % 128) | 128)
    out.push(n)
  }
  const examples: PackedExemplar[] = []
  put(details.length)
  for (const d of details) {
    put(d.exemplars.length)
    put(d.bins.length)
    for (const bin of d.bins) put(bin.length)
    examples.push(...d.exemplars, ...d.bins.flat())
  }
  for (const e of examples) for (const n of [e[0], e[1], e[2], e[3], e[4].length]) put(n)
  for (const e of examples) for (const p of e[4]) put(p + 1)
  for (const e of examples) for (const m of e[5]) put(m)
  return Buffer.from(out)
}

/**
 * The inverse of `encodeDetailBlock`. The page runs this same function (its source is inlined
 * there), so it must use nothing outside itself.
 */
export function decodeDetailBlock(bytes: Uint8Array): ClusterDetail[] {
  let at = 0
  const get = (): number => {
    let n = 0
    let scale = 1
    for (;;) {
      const b = bytes[at++]!
      n += (b & 127) * scale
      if (b < 128) return n
      scale *= 128
    }
  }
  const details: ClusterDetail[] = []
  const examples: PackedExemplar[] = []
  const make = (): PackedExemplar => {
    const e: PackedExemplar = [0, 0, 0, 0, [], []]
    examples.push(e)
    return e
  }
  for (let c = get(); c > 0; c--) {
    const nExemplars = get()
    const counts: number[] = []
    for (let b = get(); b > 0; b--) counts.push(get())
    details.push({ exemplars: [], bins: counts.map(() => []) })
    const d = details[details.length - 1]!
    for (let i = 0; i < nExemplars; i++) d.exemplars.push(make())
    counts.forEach((n, b) => {
      for (let i = 0; i < n; i++) d.bins[b]!.push(make())
    })
  }
  const lengths = examples.map((e) => {
    e[0] = get()
    e[1] = get()
    e[2] = get()
    e[3] = get()
    return get()
  })
  examples.forEach((e, i) => {
    for (let j = 0; j < lengths[i]!; j++) e[4].push(get() - 1)
  })
  examples.forEach((e, i) => {
    for (let j = 0; j < lengths[i]!; j++) e[5].push(get())
  })
  return details
}

/** The data elements of a page: the index, then one element per block of `DETAIL_BLOCK` clusters. */
export function dataElements(data: { index: ReportIndex; details: ClusterDetail[] }): string {
  const blocks: string[] = []
  for (let first = 0; first < data.details.length; first += DETAIL_BLOCK) {
    const block = gzipSync(encodeDetailBlock(data.details.slice(first, first + DETAIL_BLOCK)), { level: 9 }).toString('base64')
    blocks.push(`<script type="application/octet-stream" class="report-block" data-first="${first}">${block}</script>`)
  }
  return `<script type="application/octet-stream" id="report-index">${packJson(data.index)}</script>\n${blocks.join('\n')}`
}

/** The data a report page embeds, read back from its HTML (for tests and tools). */
export function readReportData(html: string): { index: ReportIndex; details: ClusterDetail[] } {
  const gunzip = (b64: string): Buffer => gunzipSync(Buffer.from(b64, 'base64'))
  const index = /<script type="application\/octet-stream" id="report-index">([^<]*)<\/script>/.exec(html)
  if (!index) throw new Error('not a soft-cluster report page: no report-index element')
  const details: ClusterDetail[] = []
  // The blocks are in the order of their first cluster.
  for (const m of html.matchAll(/<script type="application\/octet-stream" class="report-block" data-first="\d+">([^<]*)<\/script>/g)) {
    details.push(...decodeDetailBlock(gunzip(m[1]!)))
  }
  return { index: JSON.parse(gunzip(index[1]!).toString('utf8')) as ReportIndex, details }
}
