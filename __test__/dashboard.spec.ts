// The report as a dashboard at K = 1024 (issue 18): a model fitted here on synthetic activations,
// its report opened in headless Chromium (as in demo.spec.ts): ready within a stated time, the
// index paged and sorted, search by id, top-token text and lift-token text, next/previous, deep
// links, and hostile token text shown as text. The file size and the time to data-ready are printed;
// benches/dashboard.mjs measures K = 16384.
import { existsSync, mkdtempSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { chromium, type Page } from 'playwright-core'
import { beforeAll, describe, expect, it } from 'vitest'
import { analyzeSequentialClusters, SequentialSoftClustering, type ClusterAnalysis } from '../ts'
import type { TokenDecoder } from '../ts/decode'
import { renderReport } from '../ts/report'
import { readReportData, type ReportIndex } from '../ts/report-data'
import { seeded } from './helpers'

const CHROMIUM = process.env.SOFT_CLUSTER_CHROMIUM ?? (existsSync('/usr/bin/chromium') ? '/usr/bin/chromium' : undefined)
const K = 1024
const [B, S, D] = [32, 128, 16]
/** Limits on this 2-core machine, with room for a loaded CI runner (measured: about 1.2 s, 0.1 s, 0.2 s). */
const READY_MS = 5_000
const OPEN_MS = 2_000
const SEARCH_MS = 2_000
const EVIL = '</script><img src=x onerror=alert(1)><b>bold</b>'
const LIFT_TEXT = 'zanzibarquux'

/** A safetensors chunk: activations `[B, S, D]` float32 and token ids `[B, S]` int32. */
function writeSafetensors(path: string, activations: Float32Array, tokenIds: Int32Array): void {
  const a = Buffer.from(activations.buffer, activations.byteOffset, activations.byteLength)
  const t = Buffer.from(tokenIds.buffer, tokenIds.byteOffset, tokenIds.byteLength)
  let header = JSON.stringify({ activations: { dtype: 'F32', shape: [B, S, D], data_offsets: [0, a.length] }, token_ids: { dtype: 'I32', shape: [B, S], data_offsets: [a.length, a.length + t.length] } })
  header += ' '.repeat((8 - (header.length % 8)) % 8)
  const size = Buffer.alloc(8)
  size.writeBigUInt64LE(BigInt(header.length))
  writeFileSync(path, Buffer.concat([size, Buffer.from(header), a, t]))
}

const word = (id: number): string => `${['ka', 'lo', 'mi', 'ne', 'ru', 'ta', 'vo', 'shi'][id % 8]}${['d', 'n', 'x', 'r'][Math.floor(id / 8) % 4]}${Math.floor(id / 32)}`

let file: string
let index: ReportIndex
let evilCluster: number
let liftCluster: number
beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sc-dashboard-'))
  // 96 directions, each with its own 8 token ids; every token a noisy copy of its direction.
  const { normal, uniform } = seeded(7)
  const directions = Array.from({ length: 96 }, () => Array.from({ length: D }, normal))
  const activations = new Float32Array(B * S * D)
  const tokenIds = new Int32Array(B * S)
  for (let t = 0; t < B * S; t++) {
    const g = Math.floor(uniform() * directions.length)
    tokenIds[t] = 8 * g + Math.floor(uniform() * 8)
    for (let j = 0; j < D; j++) activations[t * D + j] = directions[g]![j]! + 0.3 * normal()
  }
  const chunk = join(dir, 'synthetic.safetensors')
  writeSafetensors(chunk, activations, tokenIds)
  const model = new SequentialSoftClustering({ nClusters: K, dModel: D, temperature: 0.05, nIterations: 3, nExemplars: 5, contextWindow: 4, device: 'cpu' })
  await model.fitChunks([chunk], join(dir, 'fit'))
  const real = analyzeSequentialClusters(model, activations, tokenIds, { shape: [B, S, D] })
  // Hostile text for the top token of one cluster; on another, lift tokens replaced by two of our
  // own, one of them with a text no top token has.
  // (A cluster whose top token is also in one of its exemplars' windows, so that both places show it.)
  const inExemplars = (c: number, id: number) => model.summary!.exemplars[c]!.some((e) => e.tokens.includes(id))
  evilCluster = real.clusters.findIndex((s, c) => s.topTokens.length > 0 && inExemplars(c, s.topTokens[0]!.tokenId))
  const evilId = real.clusters[evilCluster]!.topTokens[0]!.tokenId
  liftCluster = real.clusters.findIndex((s, c) => c !== evilCluster && s.topTokens.length > 0)
  const analysis: ClusterAnalysis = { ...real, clusters: real.clusters.map((s, c) => (c === liftCluster ? { ...s, liftTokens: [{ tokenId: 100_000, lift: 42.5, weight: 3.5, count: 7 }, { tokenId: s.topTokens[0]!.tokenId, lift: 9, weight: 20, count: 30 }] } : s)) }
  const text = (id: number) => (id === evilId ? EVIL : id === 100_000 ? LIFT_TEXT : word(id))
  const decoder: TokenDecoder = { description: 'synthetic words', token: text, window: (ids) => ids.map((id, i) => (id < 0 ? { text: '', missing: true } : { text: (i === 0 ? '' : ' ') + text(id), missing: false })) }
  const html = renderReport({ modelPath: join(dir, 'fit', 'model.safetensors'), config: model.config, summary: model.summary!, analysis, chunks: [chunk], decoder, tree: model.hierarchy(), centers: model.centers! })
  file = join(dir, 'report.html')
  writeFileSync(file, html)
  index = readReportData(html).index
}, 60_000)

async function open(page: Page, hash = ''): Promise<number> {
  await page.goto(pathToFileURL(file).href + hash)
  await page.waitForSelector('body[data-ready="1"]', { timeout: 30_000 })
  return Number(await page.getAttribute('body', 'data-ready-ms'))
}

/** Milliseconds until `selector` shows after `act`. */
async function timed(page: Page, act: () => Promise<unknown>, selector: string): Promise<number> {
  const began = Date.now()
  await act()
  await page.waitForSelector(selector, { timeout: 30_000 })
  return Date.now() - began
}

describe(`the report dashboard at K = ${K}`, () => {
  it('embeds every cluster', () => {
    expect(index.nClusters).toBe(K)
    expect(index.clusters).toHaveLength(K)
    // Overview plots sized for large K: the heatmap is block means in the tree's order.
    expect(index.similarity.blockSize).toBe(8)
    expect(index.similarity.z).toHaveLength(K / 8)
  })

  it.skipIf(CHROMIUM === undefined)('opens in time, pages and sorts its index, searches, navigates, and shows hostile text as text', async () => {
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
      const errors: string[] = []
      const requests: string[] = []
      const url = pathToFileURL(file).href
      page.on('console', (m) => m.type() === 'error' && errors.push(m.text()))
      page.on('pageerror', (e) => errors.push(e.message))
      page.on('dialog', (d) => {
        errors.push(`dialog: ${d.message()}`)
        void d.dismiss()
      })
      page.on('request', (r) => r.url().split('#')[0] !== url && requests.push(r.url()))
      const readyMs = await open(page)
      console.log(`K = ${K}: ${(statSync(file).size / 1e6).toFixed(1)} MB, data-ready after ${readyMs} ms`)
      expect(readyMs).toBeLessThan(READY_MS)

      // The index: 100 rows a page, in the tree's order; then by mass, largest first.
      expect(await page.locator('#index-rows tr').count()).toBe(100)
      expect(await page.textContent('#index-range')).toBe(`clusters 1–100 of ${K} (page 1 of 11)`)
      await page.click('#index-next')
      expect(await page.locator('#index-rows tr:first-child a').getAttribute('href')).toBe(`#cluster-${index.tree.order[100]}`)
      await page.selectOption('#index-sort', 'mass')
      expect(await page.textContent('#index-range')).toBe(`clusters 1–100 of ${K} (page 1 of 11)`)
      const byMass = index.clusters.map((s, c) => [s.mass, c] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1])
      expect(await page.locator('#index-rows tr a').evaluateAll((els) => els.slice(0, 3).map((e) => e.getAttribute('href')))).toEqual(byMass.slice(0, 3).map(([, c]) => `#cluster-${c}`))

      // Search by the text of a top token: the cluster is among the results, and opens.
      const target = index.clusters.findIndex((s, c) => c !== evilCluster && c !== liftCluster && s.top.length > 0)
      const text = index.pieces[index.clusters[target]!.top[0]![0]]![1]
      const searchMs = await timed(page, () => page.fill('#search', text), `#search-results a[href="#cluster-${target}"]`)
      expect(searchMs).toBeLessThan(SEARCH_MS)
      const openMs = await timed(page, () => page.click(`#search-results a[href="#cluster-${target}"]`), `body[data-cluster="${target}"]`)
      expect(openMs).toBeLessThan(OPEN_MS)
      // Next and previous follow the index's order (now by mass).
      const at = byMass.findIndex(([, c]) => c === target)
      await page.locator('#search').blur()
      expect(await timed(page, () => page.keyboard.press('j'), `body[data-cluster="${byMass[at + 1]![1]}"]`)).toBeLessThan(OPEN_MS)
      await timed(page, () => page.click('nav.cluster-nav a.prev'), `body[data-cluster="${target}"]`)
      await page.goBack()
      await page.waitForSelector(`body[data-cluster="${byMass[at + 1]![1]}"]`)

      // Lift tokens: their line, and search by their text.
      await page.fill('#search', LIFT_TEXT.toUpperCase())
      await page.waitForSelector(`#search-results a[href="#cluster-${liftCluster}"]`)
      expect(await page.locator('#search-results li a').count()).toBe(1)
      await page.click(`#search-results a[href="#cluster-${liftCluster}"]`)
      await page.waitForSelector(`body[data-cluster="${liftCluster}"]`)
      expect(await page.textContent('section.cluster p.lift')).toMatch(new RegExp(`^Tokens special to this cluster \\(lift\\): ${LIFT_TEXT} \\S+ $`))
      expect(await page.getAttribute('section.cluster p.lift code', 'title')).toBe('id 100000, lift 42.50, weight 3.50, 7 occurrences')
      expect(await page.locator('section.cluster p.top').count()).toBe(1)

      // Hostile token text, in the cluster's top tokens, exemplars and the index: text, never markup.
      await page.evaluate((c) => (location.hash = `cluster-${c}`), evilCluster)
      await page.waitForSelector(`body[data-cluster="${evilCluster}"]`)
      expect(await page.locator('section.cluster p.top code').first().textContent()).toBe(EVIL)
      expect(await page.locator('section.cluster .tok', { hasText: EVIL }).count()).toBeGreaterThan(0)
      await page.evaluate(() => (location.hash = 'overview'))
      await page.fill('#search', 'bold')
      await page.waitForSelector(`#search-results a[href="#cluster-${evilCluster}"]`)
      expect(await page.locator('img, b').count()).toBe(0)

      // A deep link opens its cluster on load; a cluster that does not exist says so.
      const direct = await browser.newPage()
      direct.on('pageerror', (e) => errors.push(e.message))
      await open(direct, `#cluster-${K - 1}`)
      expect(await direct.getAttribute('body', 'data-cluster')).toBe(String(K - 1))
      await open(direct, `#cluster-${K}`)
      expect(await direct.textContent('#route-note')).toBe(`There is no cluster ${K}: this model has ${K} clusters (0 to ${K - 1}).`)
      expect(errors).toEqual([])
      expect(requests).toEqual([])
    } finally {
      await browser.close()
    }
  })

  it.skipIf(CHROMIUM === undefined)('without metrics or token ids: the index names clusters by exemplar tokens, and tokens without an id are boxes', async () => {
    const model = new SequentialSoftClustering({ nClusters: 2, dModel: 2, temperature: 1, contextWindow: 1, initialCenters: new Float32Array([1, 0, 0, 1]) })
    const analysis = analyzeSequentialClusters(model, new Float32Array(0), null, { shape: [0, 2] })
    const exemplar = (tokens: number[], contextMemberships: number[]) => ({ value: contextMemberships[1]!, chunk: 0, batch: 0, position: 1, tokens, contextMemberships })
    const html = renderReport({
      modelPath: 'm', config: model.config, analysis, chunks: [], tree: model.hierarchy(), centers: model.centers!,
      summary: { clusterMass: [1, 2], clusterCount: [1, 2], exemplars: [[exemplar([-1, -1, -1], [0, 0.5, 0.25])], [exemplar([4, 5, 6], [0, 0.9, 0])]], history: [], chunks: ['c'], warnings: [], hasStatistics: false, operations: [], quantiles: [] },
      decoder: { description: 'd', window: (ids) => ids.map((id) => ({ text: id < 0 ? '' : ` w${id}`, missing: id < 0 })), token: (id) => `w${id}` },
    })
    const boxes = join(mkdtempSync(join(tmpdir(), 'sc-boxes-')), 'report.html')
    writeFileSync(boxes, html)
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
    try {
      const page = await browser.newPage()
      const errors: string[] = []
      page.on('pageerror', (e) => errors.push(e.message))
      await page.goto(pathToFileURL(boxes).href)
      await page.waitForSelector('body[data-ready="1"]')
      expect(await page.locator('#index-rows tr td:last-child').allTextContents()).toEqual(expect.arrayContaining(['w5 ']))
      await page.fill('#search', 'w5')
      await page.waitForSelector('#search-results a[href="#cluster-1"]')
      await page.evaluate(() => (location.hash = 'cluster-0'))
      await page.waitForSelector('body[data-cluster="0"]')
      const toks = await page.locator('.tok').evaluateAll((els) => els.map((e) => [e.textContent, e.getAttribute('title'), e.classList.contains('center')]))
      expect(toks).toEqual([[' □', 'no token id, membership 0.500', true], [' □', 'no token id, membership 0.250', false]])
      expect(errors).toEqual([])
    } finally {
      await browser.close()
    }
  })
})
