// `soft-cluster demo` end to end, as in the README: it fits the bundled MiniLM activations and
// writes a report, which is then opened in headless Chromium (Debian's `chromium`, driven by
// playwright-core): plots drawn, clusters opened by address, search, next and previous, exemplars
// decoded, no console errors and no network requests. SOFT_CLUSTER_CHROMIUM names the browser; CI
// sets it, so there a missing browser fails the test. Without it, /usr/bin/chromium is used when
// present, else the browser part is skipped.
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { chromium } from 'playwright-core'
import { beforeAll, describe, expect, it } from 'vitest'
import { readReportData } from '../ts/report-data'

const BIN = join(__dirname, '..', 'bin', 'soft-cluster.js')
const CHROMIUM = process.env.SOFT_CLUSTER_CHROMIUM ?? (existsSync('/usr/bin/chromium') ? '/usr/bin/chromium' : undefined)
const N_CLUSTERS = 24

let out: string
let stdout: string
let seconds: number
beforeAll(() => {
  out = join(mkdtempSync(join(tmpdir(), 'sc-demo-')), 'demo')
  const started = Date.now()
  const r = spawnSync(process.execPath, [BIN, 'demo', '--out', out], { encoding: 'utf8' })
  seconds = (Date.now() - started) / 1000
  expect(r.status, r.stderr).toBe(0)
  stdout = r.stdout
}, 180_000)

describe('soft-cluster demo', () => {
  it('fits the bundled activations and says where the outputs and the report are', () => {
    expect(stdout).toContain(`Fitting ${N_CLUSTERS} clusters`)
    expect(stdout).toContain(`Open ${join(out, 'report.html')} in a browser.`)
    expect(readdirSync(out).sort()).toEqual(['minilm_000.memberships.npz', 'minilm_001.memberships.npz', 'minilm_002.memberships.npz', 'model.safetensors', 'report.html', 'soft-cluster-run.json'])
    console.log(`demo took ${seconds.toFixed(1)} s`)
  })

  it('prints what it wrote as JSON with --json', () => {
    const dir = join(out, '..', 'json')
    const r = spawnSync(process.execPath, [BIN, 'demo', '--out', dir, '--json'], { encoding: 'utf8' })
    expect(r.status, r.stderr).toBe(0)
    const j = JSON.parse(r.stdout)
    expect(j.report).toBe(join(dir, 'report.html'))
    expect(j.memberships).toHaveLength(3)
    for (const file of [j.model, j.report, ...j.memberships]) expect(existsSync(file)).toBe(true)
  })

  it.skipIf(CHROMIUM === undefined)('writes a report that Chromium shows whole, offline and without errors: overview, search, deep links, next and previous', async () => {
    const file = join(out, 'report.html')
    const { index, details } = readReportData(readFileSync(file, 'utf8'))
    expect(index.nClusters).toBe(N_CLUSTERS)
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
      const errors: string[] = []
      const requests: string[] = []
      const url = pathToFileURL(file).href
      page.on('console', (m) => m.type() === 'error' && errors.push(m.text()))
      page.on('pageerror', (e) => errors.push(e.message))
      page.on('request', (r) => r.url().split('#')[0] !== url && requests.push(r.url()))
      await page.goto(url)
      await page.waitForSelector('body[data-ready="1"]', { timeout: 30_000 })
      const shot = join(out, 'report.png') // the overview, as a reader first sees it
      await page.screenshot({ path: shot })
      expect(statSync(shot).size).toBeGreaterThan(10_000)
      // The four overview plots are drawn by Plotly; the index lists every cluster (one page of 100).
      for (const id of ['plot-mass', 'plot-tree', 'plot-similarity', 'plot-map']) expect(await page.locator(`#${id} .main-svg`).count(), id).toBeGreaterThan(0)
      expect(await page.locator('#plot-similarity .hm, #plot-similarity image').count()).toBeGreaterThan(0)
      expect(await page.locator('#index-rows tr').count()).toBe(N_CLUSTERS)
      // No cluster is rendered until one is opened.
      expect(await page.locator('section.cluster').count()).toBe(0)

      // A few clusters, opened by address: each shows its exemplars, decoded (text, not ids), and
      // its examples in every bin of membership that has any, highest first, and its histogram.
      const opened = [index.tree.order[0]!, index.tree.order[N_CLUSTERS - 1]!, 17, 5]
      for (const c of opened) {
        await page.evaluate((c) => (location.hash = `cluster-${c}`), c)
        await page.waitForSelector(`body[data-cluster="${c}"]`)
        expect(await page.locator('section.cluster').count()).toBe(1)
        expect(await page.locator('section.cluster h3').textContent()).toBe(`cluster ${c}`)
        const centers = await page
          .locator('section.cluster > ol.exemplars > li .tok.center')
          .evaluateAll((els) => els.map((e) => ({ text: e.textContent!.trim(), id: /token id (\d+)/.exec(e.getAttribute('title')!)![1] })))
        expect(centers).toHaveLength(details[c]!.exemplars.length)
        expect(centers.filter((t) => t.text === '' || t.text === t.id)).toEqual([])
        const filled = details[c]!.bins.map((b, i) => [i, b.length] as const).filter(([, n]) => n > 0).reverse()
        expect(filled.length).toBeGreaterThanOrEqual(1)
        const shown = await page.locator('details.quantiles li.bin').evaluateAll((els) => els.map((e) => [e.querySelector('.range')!.textContent, e.querySelectorAll('ol.exemplars > li').length]))
        expect(shown).toEqual(filled.map(([b, n]) => [`${(b / 10).toFixed(1)}–${((b + 1) / 10).toFixed(1)}`, n]))
        await page.waitForSelector('section.cluster .hist[data-drawn="1"] .main-svg')
        // Its lift tokens (the core's liftTokens: every demo cluster has some) and closest centers.
        const lift = index.clusters[c]!.lift
        expect(lift.length).toBeGreaterThan(0)
        expect(await page.locator('section.cluster p.lift code').allTextContents()).toEqual(lift.map(([p]) => index.pieces[p]![1]))
        expect(await page.locator('section.cluster p.closest a').count()).toBe(5)
      }

      // Next and previous follow the index's order (the tree's, by default), by link and by key.
      const order = index.tree.order
      const at = order.indexOf(5)
      await page.click('nav.cluster-nav a.next')
      await page.waitForSelector(`body[data-cluster="${order[at + 1]}"]`)
      await page.keyboard.press('k')
      await page.waitForSelector('body[data-cluster="5"]')
      await page.keyboard.press('j')
      await page.waitForSelector(`body[data-cluster="${order[at + 1]}"]`)
      await page.click('nav.cluster-nav a.prev')
      await page.waitForSelector('body[data-cluster="5"]')
      // The back button goes back through them.
      await page.goBack()
      await page.waitForSelector(`body[data-cluster="${order[at + 1]}"]`)

      // Search by a token's text: a top token of cluster 11, as the page decoded it.
      const text = index.pieces[index.clusters[11]!.top[0]![0]]![1].trim()
      await page.fill('#search', text)
      await page.waitForSelector('#search-results li a')
      const found = await page.locator('#search-results li a').evaluateAll((els) => els.map((e) => e.getAttribute('href')))
      expect(found).toContain('#cluster-11')
      await page.click('#search-results a[href="#cluster-11"]')
      await page.waitForSelector('body[data-cluster="11"]')
      // By the text of a lift token that is none of the top tokens of its cluster.
      const liftHit = index.clusters.flatMap((s, c) => s.lift.filter(([p]) => !s.top.some(([q]) => index.pieces[q]![1] === index.pieces[p]![1])).map(([p]) => [c, index.pieces[p]![1].trim()] as const)).find(([, t]) => t.length > 2)!
      expect(liftHit).toBeDefined()
      await page.fill('#search', liftHit[1])
      await page.waitForSelector(`#search-results a[href="#cluster-${liftHit[0]}"]`)
      // By id.
      await page.fill('#search', 'c7')
      await page.waitForSelector('#search-results a[href="#cluster-7"]')
      expect(errors).toEqual([])

      // A deep link opens its cluster at once, in a new page.
      const direct = await browser.newPage({ viewport: { width: 1280, height: 900 } })
      direct.on('pageerror', (e) => errors.push(e.message))
      direct.on('request', (r) => r.url().split('#')[0] !== url && requests.push(r.url()))
      await direct.goto(`${url}#cluster-${opened[1]}`)
      await direct.waitForSelector('body[data-ready="1"]')
      expect(await direct.getAttribute('body', 'data-cluster')).toBe(String(opened[1]))
      expect(await direct.locator('#overview').isHidden()).toBe(true)
      // README's screenshots, when asked for (SOFT_CLUSTER_SCREENSHOTS=docs/images).
      const shots = process.env.SOFT_CLUSTER_SCREENSHOTS
      if (shots) {
        await page.evaluate(() => (location.hash = 'overview'))
        await page.fill('#search', '')
        await page.waitForSelector('#overview:not([hidden])')
        await page.waitForFunction(() => document.getElementById('search-results')!.childElementCount === 0)
        await page.evaluate(() => window.scrollTo(0, 0))
        await page.screenshot({ path: join(shots, 'report-overview.png') })
        await page.evaluate(() => (location.hash = 'cluster-0'))
        await page.waitForSelector('body[data-cluster="0"] .hist[data-drawn="1"]')
        await page.screenshot({ path: join(shots, 'report-cluster.png'), clip: { x: 80, y: 0, width: 1120, height: 1100 }, fullPage: true })
      }
      expect(errors).toEqual([])
      expect(requests).toEqual([])
    } finally {
      await browser.close()
    }
  })
})
