// The report dashboard at large K: file size, time to render it in Node, and in headless Chromium
// the time to data-ready (the overview drawn and the index shown), to open a cluster, and to search.
// The inputs are synthetic, of the shapes the core gives (no fit: a K = 16384 fit is not what is
// measured here): per cluster 10 exemplars and 10 bins x 5 examples, each a window of 17 tokens
// drawn from a Zipf law over a 50000-token vocabulary, 10 top and 10 lift tokens, a balanced tree.
//
//   npx tsc -p tsconfig.json && node benches/dashboard.mjs [K...]      (default: 1024 16384)
//
// SOFT_CLUSTER_CHROMIUM names the browser (default /usr/bin/chromium). Writes
// benches/dashboard-results.json.
import { mkdtempSync, statSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const require = createRequire(import.meta.url)
const here = dirname(fileURLToPath(import.meta.url))
const { renderReport } = require(join(here, '..', 'dist', 'report.js'))
const { chromium } = require('playwright-core')

const VOCAB = 50_000
const CONTEXT = 8
const EXEMPLARS = 10
const BINS = 10
const PER_BIN = 5

/** mulberry32: a seeded uniform in [0, 1). */
function uniform(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Token ids by a Zipf law (exponent 1.1), as words are used in text. */
function zipf(rand) {
  const cdf = new Float64Array(VOCAB)
  let sum = 0
  for (let r = 0; r < VOCAB; r++) cdf[r] = sum += 1 / (r + 1) ** 1.1
  return () => {
    const u = rand() * sum
    let lo = 0
    let hi = VOCAB - 1
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (cdf[mid] < u) lo = mid + 1
      else hi = mid
    }
    return lo
  }
}

const SYLLABLES = ['ka', 'lo', 'mi', 'ne', 'ru', 'ta', 'vo', 'shi', 'en', 'or', 'ph', 'st', 'qu', 'ar', 'ix', 'um', 'de', 'go', 'bi', 'za']
const word = (id) => {
  let s = ''
  for (let n = id + 1; n > 0; n = Math.floor(n / 20)) s += SYLLABLES[n % 20]
  return s
}
const decoder = {
  description: 'synthetic words',
  token: word,
  window: (ids) => ids.map((id, i) => (id < 0 ? { text: '', missing: true } : { text: (i === 0 ? '' : ' ') + word(id), missing: false })),
}

/** A balanced tree over the clusters in id order, with scipy's dendrogram coordinates. */
function balancedTree(k) {
  let level = Array.from({ length: k }, (_, c) => ({ id: c, x: 10 * c + 5, h: 0, n: 1 }))
  const linkage = []
  const icoord = []
  const dcoord = []
  let next = k
  let height = 0
  while (level.length > 1) {
    height += 0.05
    const up = []
    for (let i = 0; i + 1 < level.length; i += 2) {
      const [a, b] = [level[i], level[i + 1]]
      linkage.push([a.id, b.id, height, a.n + b.n])
      icoord.push([a.x, a.x, b.x, b.x])
      dcoord.push([a.h, height, height, b.h])
      up.push({ id: next++, x: (a.x + b.x) / 2, h: height, n: a.n + b.n })
    }
    if (level.length % 2) up.push(level[level.length - 1])
    level = up
  }
  return { linkage, order: Array.from({ length: k }, (_, c) => c), icoord, dcoord }
}

export function syntheticInput(k) {
  const rand = uniform(k)
  const token = zipf(rand)
  // As in the demo's report: half the examples' own token is one of the cluster's top tokens, and
  // 15% of the context tokens have a nonzero membership.
  const exemplar = (value, top) => {
    const tokens = Array.from({ length: 2 * CONTEXT + 1 }, (_, i) => (i === CONTEXT && rand() < 0.5 ? top[Math.floor(rand() * top.length)].tokenId : token()))
    const contextMemberships = tokens.map((_, i) => (i === CONTEXT ? value : rand() < 0.15 ? rand() : 0))
    return { value, chunk: Math.floor(rand() * 100), batch: Math.floor(rand() * 512), position: Math.floor(rand() * 128), tokens, contextMemberships }
  }
  const ranked = () => Array.from({ length: 10 }, (_, i) => ({ tokenId: token(), weight: 100 / (i + 1) }))
  const tops = Array.from({ length: k }, ranked)
  const exemplars = tops.map((top) => Array.from({ length: EXEMPLARS }, () => exemplar(0.9 + 0.1 * rand(), top)))
  const quantiles = tops.map((top) => Array.from({ length: BINS }, (_, b) => Array.from({ length: PER_BIN }, () => exemplar((b + rand()) / BINS, top))))
  const mass = Array.from({ length: k }, () => 1 + 1000 * rand() ** 3)
  const clusters = mass.map((m, c) => ({
    cluster: c, mass: m, hardCount: Math.round(m), meanCosine: 0.3 + 0.6 * rand(), maxMembership: 1, meanMembership: 0.2 + 0.7 * rand(), nonzeroFraction: 0.01 * rand(),
    histogram: Array.from({ length: 10 }, () => Math.floor(100 * rand())), topTokens: tops[c], nearestCenter: (c + 1) % k, nearestCenterCosine: 0.5 + 0.4 * rand(),
    nearestCenters: Array.from({ length: 10 }, (_, i) => ({ cluster: (c + 1 + i) % k, cosine: 0.9 - 0.05 * i })),
    liftTokens: Array.from({ length: 10 }, () => ({ tokenId: token(), lift: 1 + 50 * rand(), weight: 10 * rand(), count: 1 + Math.floor(50 * rand()) })),
  }))
  // Unit centers in D = 64; the core gives the K x K similarities only up to 1024 clusters (the
  // page reads them up to 256, and block means of the centers above).
  const D = 64
  const centers = new Float32Array(k * D).map(() => 2 * rand() - 1)
  for (let c = 0; c < k; c++) {
    const row = centers.subarray(c * D, (c + 1) * D)
    const norm = Math.hypot(...row)
    row.forEach((v, i) => (row[i] = v / norm))
  }
  const cosine = (a, b) => centers.subarray(a * D, (a + 1) * D).reduce((s, v, i) => s + v * centers[b * D + i], 0)
  const analysis = {
    nClusters: k,
    overall: { nTokens: 1_000_000, skipped: 0, partitionEntropy: 0.1, partitionCoefficient: 0.8, meanNonzeroPerToken: 2, xieBeni: 1, silhouette: 0.2, silhouetteSample: 2000, twins: 0 },
    clusters,
    centerSimilarity: k <= 1024 ? Array.from({ length: k }, (_, a) => Array.from({ length: k }, (_, b) => cosine(a, b))) : [],
    centerMap: Array.from({ length: k }, () => [rand() - 0.5, rand() - 0.5]),
    centerMapVariance: [0.1, 0.05],
  }
  const summary = {
    clusterMass: mass, clusterCount: mass.map(Math.round), exemplars, quantiles, history: [], chunks: Array.from({ length: 100 }, (_, i) => `chunk_${String(i).padStart(3, '0')}.npz`),
    warnings: [], hasStatistics: true, operations: [],
  }
  const config = { nClusters: k, dModel: D, temperature: 0.05, minMembership: 0.01, contextWindow: CONTEXT, nExemplars: EXEMPLARS }
  return { modelPath: `synthetic-${k}.safetensors`, config, summary, analysis, chunks: summary.chunks, decoder, tree: balancedTree(k), centers }
}

async function measure(browser, file, k) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = []
  page.on('pageerror', (e) => errors.push(e.message))
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()))
  const url = pathToFileURL(file).href
  const began = Date.now()
  await page.goto(url, { timeout: 120_000 })
  await page.waitForSelector('body[data-ready="1"]', { timeout: 120_000 })
  const wall = Date.now() - began
  const readyMs = Number(await page.getAttribute('body', 'data-ready-ms'))
  // When the data was decompressed and the index shown (the rest, to data-ready, is the plots).
  const marks = await page.evaluate(() => Object.fromEntries(performance.getEntriesByType('mark').map((m) => [m.name, Math.round(m.startTime)])))
  // A cluster in the last block, then its neighbour (same block: already decompressed).
  const c = k - 2
  let t = Date.now()
  await page.evaluate((c) => (location.hash = `cluster-${c}`), c)
  await page.waitForSelector(`body[data-cluster="${c}"]`)
  const openMs = Date.now() - t
  t = Date.now()
  await page.keyboard.press('j')
  await page.waitForSelector(`body[data-cluster="${c + 1}"]`)
  const nextMs = Date.now() - t
  await page.evaluate(() => (location.hash = 'overview'))
  await page.waitForSelector('#overview:not([hidden])')
  t = Date.now()
  await page.fill('#search', word(3)) // a frequent token: many clusters list it
  await page.waitForSelector('#search-results li a')
  const searchMs = Date.now() - t
  await page.close()
  return { readyMs, dataMs: marks['report-data'], indexMs: marks['report-index'], wallMs: wall, openClusterMs: openMs, nextClusterMs: nextMs, searchMs, errors }
}

async function main() {
const ks = process.argv.slice(2).map(Number)
const results = []
const dir = mkdtempSync(join(tmpdir(), 'sc-dashboard-'))
const browser = await chromium.launch({ executablePath: process.env.SOFT_CLUSTER_CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] })
try {
  for (const k of ks.length ? ks : [1024, 16384]) {
    const input = syntheticInput(k)
    const began = Date.now()
    const html = renderReport(input)
    const renderMs = Date.now() - began
    const file = join(dir, `report-${k}.html`)
    writeFileSync(file, html)
    const bytes = statSync(file).size
    const page = await measure(browser, file, k)
    const row = { k, megabytes: Number((bytes / 1e6).toFixed(1)), renderSeconds: Number((renderMs / 1000).toFixed(1)), ...page }
    console.log(JSON.stringify(row))
    results.push(row)
  }
} finally {
  await browser.close()
}
writeFileSync(join(here, 'dashboard-results.json'), JSON.stringify({ date: new Date().toISOString(), chromium: 'headless', results }, null, 2) + '\n')
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main()
