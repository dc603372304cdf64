// `soft-cluster demo` end to end, as in the README: it fits the bundled MiniLM activations and
// writes a report, which is then opened in headless Chromium (Debian's `chromium`, driven by
// playwright-core): sections present, plots drawn, exemplars decoded, no console errors and no
// network requests. SOFT_CLUSTER_CHROMIUM names the browser; CI sets it, so there a missing
// browser fails the test. Without it, /usr/bin/chromium is used when present, else the browser
// part is skipped.
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { chromium } from 'playwright-core'
import { beforeAll, describe, expect, it } from 'vitest'

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

  it.skipIf(CHROMIUM === undefined)('writes a report that Chromium shows whole, offline and without errors', async () => {
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
      const errors: string[] = []
      const requests: string[] = []
      const url = pathToFileURL(join(out, 'report.html')).href
      page.on('console', (m) => m.type() === 'error' && errors.push(m.text()))
      page.on('pageerror', (e) => errors.push(e.message))
      page.on('request', (r) => r.url() !== url && requests.push(r.url()))
      await page.goto(url)
      await page.waitForSelector('body[data-ready="1"]', { timeout: 30_000 })
      const shot = join(out, 'report.png') // the overview, as a reader first sees it
      await page.screenshot({ path: shot })
      expect(statSync(shot).size).toBeGreaterThan(10_000)
      // The three overview plots are drawn by Plotly.
      for (const id of ['plot-mass', 'plot-tree', 'plot-similarity', 'plot-map']) expect(await page.locator(`#${id} .main-svg`).count(), id).toBeGreaterThan(0)
      expect(await page.locator('#plot-similarity .hm, #plot-similarity image').count()).toBeGreaterThan(0)
      // One section per cluster, each with exemplars whose center token is decoded text, not an id.
      expect(await page.locator('section.cluster').count()).toBe(N_CLUSTERS)
      const centers = await page
        .locator('section.cluster > ol.exemplars > li:first-child .tok.center')
        .evaluateAll((els) => els.map((e) => ({ text: e.textContent!.trim(), id: /token id (\d+)/.exec(e.getAttribute('title')!)![1] })))
      expect(centers).toHaveLength(N_CLUSTERS)
      expect(centers.filter((c) => c.text === '' || c.text === c.id)).toEqual([])
      // Every cluster shows examples across the range of its memberships, by bin.
      expect(await page.locator('section.cluster details.quantiles').count()).toBe(N_CLUSTERS)
      expect(await page.locator('section.cluster details.quantiles li.bin').count()).toBeGreaterThanOrEqual(2 * N_CLUSTERS)
      // Histograms are drawn as their sections scroll into view.
      await page.locator('section.cluster').last().scrollIntoViewIfNeeded()
      await page.waitForSelector('section.cluster:last-child .hist[data-drawn="1"] .main-svg', { timeout: 10_000 })
      expect(errors).toEqual([])
      expect(requests).toEqual([])
    } finally {
      await browser.close()
    }
  })
})
