// The report page's script: it decompresses the embedded data (ts/report-data.ts) and renders the
// overview, a paged and sortable index of the clusters, search, and one cluster's page at a time
// (`#cluster-N`), with DOM APIs only: text from the data goes in through `textContent` and
// attributes, never as HTML. Its source is this function's text (inlined by ts/report.ts), so it
// uses nothing from outside itself but types, the page's `Plotly` and `decodeDetailBlock`.
import type { ClusterDetail, ClusterIndexEntry, PackedExemplar, ReportIndex } from './report-data'

// The Plotly bundle inlined before this script.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
declare const Plotly: any
// ts/report-data.ts's, inlined before this function.
declare const decodeDetailBlock: (bytes: Uint8Array) => ClusterDetail[]

export function reportClient(): void {
  /** Rows of the cluster index per page. */
  const PAGE_ROWS = 100
  /** The mass bar chart shows the largest this many clusters (a bar per cluster stops being readable past it). */
  const MASS_BARS = 200
  /** Names under the dendrogram's leaves and beside the map's points up to this K. */
  const LABEL_LIMIT = 100
  /** Leaves of the dendrogram that can be hovered and clicked, up to this K (one SVG point each). */
  const LEAF_POINTS_LIMIT = 4096
  /** Search results listed at most. */
  const SEARCH_RESULTS = 50
  const plotConfig = { displaylogo: false, responsive: true }

  const body = document.body
  const el = <K extends keyof HTMLElementTagNameMap>(tag: K, props: { className?: string; text?: string; href?: string; title?: string } = {}, ...children: (Node | string)[]): HTMLElementTagNameMap[K] => {
    const e = document.createElement(tag)
    if (props.className) e.className = props.className
    if (props.text !== undefined) e.textContent = props.text
    if (props.href !== undefined) e.setAttribute('href', props.href)
    if (props.title !== undefined) e.title = props.title
    for (const c of children) e.append(c)
    return e
  }
  const byId = (id: string): HTMLElement => document.getElementById(id)!
  const fmt = (v: number | null | undefined, digits = 3): string => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits))
  /** Text that Plotly shows in hover labels and titles, where it reads a few HTML tags: escaped. */
  const plotText = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
  const clusterLink = (c: number, text = `cluster ${c}`): HTMLAnchorElement => el('a', { href: `#cluster-${c}`, text })

  /** An element's base64 text, gunzipped. */
  async function gunzip(element: Element): Promise<Uint8Array> {
    const text = element.textContent ?? ''
    const fromBase64 = (Uint8Array as unknown as { fromBase64?: (s: string) => Uint8Array<ArrayBuffer> }).fromBase64
    let bytes: Uint8Array<ArrayBuffer>
    if (fromBase64) bytes = fromBase64.call(Uint8Array, text)
    else {
      const binary = atob(text)
      bytes = new Uint8Array(binary.length)
      for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i)
    }
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'))
    return new Uint8Array(await new Response(stream).arrayBuffer())
  }

  let data: ReportIndex
  /** Lower-cased, trimmed text of each piece: what search matches. */
  let pieceKeys: string[]
  const blocks = new Map<number, Promise<ClusterDetail[]>>()
  function detail(c: number): Promise<ClusterDetail> {
    const first = c - (c % data.detailBlock)
    let block = blocks.get(first)
    if (!block) {
      block = gunzip(document.querySelector(`script.report-block[data-first="${first}"]`)!).then(decodeDetailBlock)
      // Keep a few blocks decompressed: going back and forth between neighbours stays instant.
      if (blocks.size >= 8) blocks.delete(blocks.keys().next().value!)
      blocks.set(first, block)
    }
    return block.then((list) => list[c - first]!)
  }

  const pieceText = (p: number): string => data.pieces[p]![1]
  /** What names a cluster in the index and hover labels: its top 5 tokens, or without metrics its best exemplars' tokens. */
  const namingPieces = (s: ClusterIndexEntry): number[] => (data.hasTokens ? s.top.slice(0, 5).map((t) => t[0]) : s.exemplarTokens)
  const hover = (c: number): string => {
    const s = data.clusters[c]!
    return `cluster ${c}: mass ${s.mass.toFixed(1)}<br>${plotText(`${data.hasTokens ? 'top' : 'exemplars'}: ${namingPieces(s).map(pieceText).join(' ')}`)}`
  }

  // ---- Sorting: the index's order, which next/previous also follow.
  interface SortKey {
    label: string
    order: () => number[]
  }
  const byValue = (value: (s: ClusterIndexEntry) => number | null, descending: boolean) => (): number[] => {
    const ids = data.clusters.map((_, c) => c)
    const v = data.clusters.map((s) => value(s) ?? -Infinity)
    return ids.sort((a, b) => (descending ? v[b]! - v[a]! : v[a]! - v[b]!) || a - b)
  }
  let sortKeys: Record<string, SortKey>
  let sortName = 'tree'
  let order: number[] = []
  let position: number[] = []
  let page = 0
  function setSort(name: string): void {
    sortName = sortKeys[name] ? name : 'tree'
    order = sortKeys[sortName]!.order()
    position = []
    order.forEach((c, i) => (position[c] = i))
  }

  // ---- The overview: plots (drawn the first time it is shown) and the index.
  let overviewDrawn: Promise<unknown> | null = null
  function drawOverview(): Promise<unknown> {
    const k = data.nClusters
    const byMass = byValue((s) => s.mass, true)().slice(0, MASS_BARS)
    const open = (c: number | undefined) => {
      if (c !== undefined && c >= 0 && c < k) location.hash = `cluster-${c}`
    }
    const onClick = (id: string, cluster: (point: { pointNumber: number; x: unknown; customdata?: unknown }) => number | undefined) =>
      (byId(id) as unknown as { on: (e: string, f: (ev: { points: { pointNumber: number; x: unknown; customdata?: unknown }[] }) => void) => void }).on('plotly_click', (ev) => open(ev.points[0] && cluster(ev.points[0])))
    const treeLabels = data.tree.order.map((c) => `c${c}`)
    const plots: Promise<unknown>[] = []
    plots.push(
      Plotly.newPlot('plot-mass', [{ type: 'bar', x: byMass.map((c) => `c${c}`), y: byMass.map((c) => data.clusters[c]!.mass), customdata: byMass, hovertext: byMass.map(hover), hoverinfo: 'text', marker: { color: '#e67814' } }],
        { title: { text: k > MASS_BARS ? `Cluster mass (sum of memberships): the ${MASS_BARS} largest of ${k}` : 'Cluster mass (sum of memberships), largest first' }, xaxis: { type: 'category', showticklabels: byMass.length <= LABEL_LIMIT }, margin: { t: 40 } }, plotConfig),
    )
    // The dendrogram: one U per merge, as scipy draws it (leaf i of the order at x = 10 i + 5), in one trace.
    const xs: (number | null)[] = []
    const ys: (number | null)[] = []
    data.tree.icoord.forEach((ix, i) => {
      const d = data.tree.dcoord[i]!
      xs.push(ix[0]!, ix[1]!, ix[2]!, ix[3]!, null)
      ys.push(d[0]!, d[1]!, d[2]!, d[3]!, null)
    })
    const treeTraces: object[] = [{ type: 'scatter', mode: 'lines', x: xs, y: ys, line: { color: '#4a78b0', width: 1 }, hoverinfo: 'skip' }]
    if (k <= LEAF_POINTS_LIMIT) {
      treeTraces.push({ type: 'scatter', mode: 'markers', x: data.tree.order.map((_, i) => 10 * i + 5), y: data.tree.order.map(() => 0), customdata: data.tree.order, marker: { size: 6, color: '#e67814' }, hovertext: data.tree.order.map(hover), hoverinfo: 'text' })
    }
    plots.push(
      Plotly.newPlot('plot-tree', treeTraces,
        { title: { text: `Tree of the clusters (average linkage on cosine distance, weighted by mass)${data.tree.icoord.length < data.tree.merges ? `: its ${data.tree.icoord.length} highest merges of ${data.tree.merges}` : ''}` }, showlegend: false, margin: { t: 40, b: k <= LABEL_LIMIT ? 60 : 20 },
          xaxis: k <= LABEL_LIMIT ? { tickvals: data.tree.order.map((_, i) => 10 * i + 5), ticktext: treeLabels, tickangle: -90, zeroline: false } : { showticklabels: false, zeroline: false },
          yaxis: { title: { text: '1 - cosine' }, rangemode: 'tozero' } }, plotConfig),
    )
    const sim = data.similarity
    const simLabels = sim.blockSize === 1 ? treeLabels : sim.z.map((_, i) => `tree ${i * sim.blockSize}–${Math.min(k, (i + 1) * sim.blockSize) - 1}`)
    plots.push(
      Plotly.newPlot('plot-similarity', [{ type: 'heatmap', x: simLabels, y: simLabels, z: sim.z, colorscale: 'RdBu', zmin: -1, zmax: 1 }],
        { title: { text: sim.blockSize === 1 ? 'Center-to-center cosine similarity, in the order of the tree' : `Center similarity, mean over blocks of ${sim.blockSize} clusters in the tree's order` },
          xaxis: { type: 'category', showticklabels: simLabels.length <= LABEL_LIMIT }, yaxis: { type: 'category', autorange: 'reversed', showticklabels: simLabels.length <= LABEL_LIMIT }, margin: { t: 40 } }, plotConfig),
    )
    const maxMass = Math.max(1e-12, ...data.clusters.map((s) => s.mass))
    const ids = data.clusters.map((_, c) => c)
    plots.push(
      Plotly.newPlot('plot-map', [{ type: 'scatter', mode: k <= LABEL_LIMIT ? 'markers+text' : 'markers', x: data.map.map((p) => p[0]), y: data.map.map((p) => p[1]), customdata: ids,
        text: ids.map((c) => `c${c}`), textposition: 'top center', hovertext: ids.map(hover), hoverinfo: 'text',
        marker: { size: data.clusters.map((s) => (k <= LABEL_LIMIT ? 8 : 3) + (k <= LABEL_LIMIT ? 30 : 12) * Math.sqrt(s.mass / maxMass)), color: '#e67814', opacity: 0.7 } }],
        { title: { text: `Centers on their first two principal components (${data.variance} of variance)` }, xaxis: { title: { text: 'PC 1' } }, yaxis: { title: { text: 'PC 2' } }, margin: { t: 40 } }, plotConfig),
    )
    return Promise.all(plots).then(() => {
      onClick('plot-mass', (p) => p.customdata as number)
      onClick('plot-tree', (p) => p.customdata as number | undefined)
      onClick('plot-map', (p) => p.customdata as number)
    })
  }

  /** Each cluster's rank by mass, 1 = the largest. */
  let massRank: number[] | undefined
  function renderIndex(): void {
    const pages = Math.max(1, Math.ceil(order.length / PAGE_ROWS))
    page = Math.min(Math.max(0, page), pages - 1)
    if (!massRank) {
      const ranks: number[] = []
      byValue((s) => s.mass, true)().forEach((c, r) => (ranks[c] = r + 1))
      massRank = ranks
    }
    const ranks = massRank
    const rows = order.slice(page * PAGE_ROWS, (page + 1) * PAGE_ROWS).map((c) => {
      const s = data.clusters[c]!
      const tokens = namingPieces(s).map((p) => el('code', { text: pieceText(p) }))
      return el('tr', {}, el('td', {}, clusterLink(c)), el('td', { text: `${s.mass.toFixed(1)} (#${ranks[c]})` }), el('td', { text: fmt(s.meanCosine) }), el('td', { text: fmt(s.meanMembership) }), el('td', {}, ...tokens.flatMap((t) => [t, ' '])))
    })
    byId('index-rows').replaceChildren(...rows)
    const first = page * PAGE_ROWS
    byId('index-range').textContent = `clusters ${Math.min(first + 1, order.length)}–${Math.min(first + PAGE_ROWS, order.length)} of ${order.length} (page ${page + 1} of ${pages})`
    ;(byId('index-prev') as HTMLButtonElement).disabled = page === 0
    ;(byId('index-next') as HTMLButtonElement).disabled = page >= pages - 1
  }

  // ---- Search: a cluster id, or text among a cluster's top and lift tokens.
  function search(query: string): void {
    const out = byId('search-results')
    const q = query.trim().toLowerCase()
    if (q === '') {
      out.replaceChildren()
      return
    }
    const hits: { c: number; why: string; exact: boolean; weight: number }[] = []
    const id = /^c?(\d+)$/.exec(q)
    if (id && Number(id[1]) < data.nClusters) hits.push({ c: Number(id[1]), why: 'cluster id', exact: true, weight: Infinity })
    data.clusters.forEach((s, c) => {
      let best: { why: string; exact: boolean; weight: number } | null = null
      const consider = (piece: number, weight: number, kind: string) => {
        const key = pieceKeys[piece]!
        if (!key.includes(q)) return
        const exact = key === q
        if (!best || (exact && !best.exact) || (exact === best.exact && weight > best.weight)) best = { why: `${kind} “${pieceText(piece).trim()}”`, exact, weight }
      }
      s.top.forEach((t) => consider(t[0], t[1], 'top token'))
      s.lift.forEach((t) => consider(t[0], t[2], 'special token'))
      s.exemplarTokens.forEach((p, i) => consider(p, -i, 'exemplar token'))
      if (best) hits.push({ c, ...(best as { why: string; exact: boolean; weight: number }) })
    })
    hits.sort((a, b) => Number(b.exact) - Number(a.exact) || b.weight - a.weight || a.c - b.c)
    const items = hits.slice(0, SEARCH_RESULTS).map((h) => el('li', {}, clusterLink(h.c), ' ', el('span', { className: 'why', text: h.why })))
    const more = hits.length > SEARCH_RESULTS ? [el('li', { className: 'why', text: `and ${hits.length - SEARCH_RESULTS} more` })] : []
    out.replaceChildren(hits.length ? el('ol', {}, ...items, ...more) : el('p', { className: 'why', text: 'No cluster matches.' }))
  }

  // ---- One cluster's page.
  function exemplarItem(e: PackedExemplar): HTMLLIElement {
    const [value, chunk, batch, pos, pieces, memberships] = e
    const ctx = el('span', { className: 'ctx' })
    pieces.forEach((piece, i) => {
      const p = memberships[i]! / 1000
      // -1 is padding or outside the sequence (membership 0), or a real token of a chunk without
      // token_ids (membership > 0): that one is shown as a box.
      if (piece < 0 && p === 0) return
      const text = piece < 0 ? (i === 0 ? '□' : ' □') : pieceText(piece)
      const title = piece < 0 ? `no token id, membership ${p.toFixed(3)}` : `token id ${data.pieces[piece]![0]}, membership ${p.toFixed(3)}`
      const tok = el('span', { className: i === data.contextWindow ? 'tok center' : 'tok', text, title })
      tok.style.background = `rgba(230,120,20,${Math.min(1, p).toFixed(3)})`
      ctx.append(tok)
    })
    const where = `${data.chunks[chunk] ?? `chunk ${chunk}`} · seq ${batch} · pos ${pos}`
    return el('li', {}, el('span', { className: 'val', text: (value / 1000).toFixed(3) }), ctx, el('span', { className: 'where', text: where }))
  }

  function tokenLine(className: string, label: string, tokens: HTMLElement[]): HTMLElement[] {
    return tokens.length ? [el('p', { className }, `${label}: `, ...tokens.flatMap((t) => [t, ' ']))] : []
  }

  let shown: number | null = null
  async function showCluster(c: number): Promise<void> {
    shown = c
    const d = await detail(c)
    if (shown !== c) return // another navigation came first
    const s = data.clusters[c]!
    const view = byId('cluster-view')
    for (const old of Array.from(view.querySelectorAll('.js-plotly-plot'))) Plotly.purge(old)
    const kv = el('table', { className: 'kv' })
    const row = (k: string, ...v: (Node | string)[]) => kv.append(el('tr', {}, el('th', { text: k }), el('td', {}, ...v)))
    row('mass', fmt(s.mass, 1))
    row('hard count', String(s.hardCount))
    row('nearest center', ...(s.nearest === null ? ['–'] : [clusterLink(s.nearest, String(s.nearest)), ` (cos ${fmt(s.nearestCosine)})`]))
    if (data.hasTokens) {
      row('mean cosine to center', fmt(s.meanCosine))
      row('max membership', fmt(s.maxMembership))
      row('mean nonzero membership', fmt(s.meanMembership))
      row('tokens with nonzero membership', s.nonzeroFraction === null ? '–' : `${(100 * s.nonzeroFraction).toFixed(1)}%`)
    }
    const hist = data.hasTokens ? [el('div', { className: 'plot hist' })] : []
    const top = tokenLine('top', 'Top tokens', s.top.map((t) => el('code', { text: pieceText(t[0]), title: `id ${data.pieces[t[0]]![0]}, weight ${t[1].toFixed(2)}` })))
    const lift = tokenLine('lift', 'Tokens special to this cluster (lift)', s.lift.map((t) => el('code', { text: pieceText(t[0]), title: `id ${data.pieces[t[0]]![0]}, lift ${t[1].toFixed(2)}, weight ${t[2].toFixed(2)}, ${t[3]} occurrences` })))
    // Its neighbours in the tree's leaf order: the clusters the dendrogram draws beside it.
    const leaf = data.tree.order.indexOf(c)
    const near = data.tree.order.slice(Math.max(0, leaf - 3), leaf + 4).filter((n) => n !== c)
    const neighbours = near.length ? [el('p', { className: 'neighbours' }, 'Beside it in the tree: ', ...near.flatMap((n) => [clusterLink(n, `c${n}`), ' ']))] : []
    const closest = s.closest.length ? [el('p', { className: 'closest' }, 'Closest centers: ', ...s.closest.flatMap(([n, cos]) => [clusterLink(n, `c${n}`), ` (cos ${cos.toFixed(2)}) `]))] : []
    // Bin edges in tenths when the bins are (10 bins: 0.3–0.4), in hundredths otherwise (4: 0.25–0.50).
    const edge = (b: number, n: number) => (b / n).toFixed(10 % n === 0 ? 1 : 2)
    const bins = d.bins
      .map((list, b) => ({ list, b }))
      .filter(({ list }) => list.length > 0)
      .reverse()
      .map(({ list, b }) => el('li', { className: 'bin' }, el('span', { className: 'range', text: `${edge(b, d.bins.length)}–${edge(b + 1, d.bins.length)}` }), el('ol', { className: 'exemplars' }, ...list.map(exemplarItem))))
    const range = bins.length
      ? [(() => {
          const details = el('details', { className: 'quantiles' }, el('summary', { text: 'Across the range of memberships (a sample per bin)' }), el('ul', { className: 'bins' }, ...bins))
          details.open = true
          return details
        })()]
      : []
    const rank = position[c]!
    const prev = order[rank - 1]
    const next = order[rank + 1]
    const nav = el('nav', { className: 'cluster-nav' },
      el('a', { href: '#overview', text: '↑ overview' }),
      prev === undefined ? el('span', { className: 'off', text: '← previous' }) : el('a', { href: `#cluster-${prev}`, text: `← previous (c${prev})`, className: 'prev' }),
      el('span', { text: `${rank + 1} of ${order.length} in ${sortKeys[sortName]!.label}` }),
      next === undefined ? el('span', { className: 'off', text: 'next →' }) : el('a', { href: `#cluster-${next}`, text: `next (c${next}) →`, className: 'next' }),
    )
    const exemplars = d.exemplars.length ? el('ol', { className: 'exemplars' }, ...d.exemplars.map(exemplarItem)) : el('p', { text: 'No exemplars.' })
    const section = el('section', { className: 'cluster' }, el('h3', { text: `cluster ${c}` }), el('div', { className: 'row' }, kv, ...hist), ...top, ...lift, ...closest, ...neighbours, el('h4', { text: 'Exemplars' }), exemplars, ...range)
    section.id = `cluster-${c}`
    view.replaceChildren(nav, section)
    byId('overview').hidden = true
    view.hidden = false
    window.scrollTo(0, 0)
    if (hist[0]) {
      const bars = s.histogram
      const x = bars.map((_, b) => `${(b / bars.length).toFixed(2)}–${((b + 1) / bars.length).toFixed(2)}`)
      await Plotly.newPlot(hist[0], [{ type: 'bar', x, y: bars, marker: { color: '#4a78b0' } }],
        { title: { text: 'Nonzero memberships', font: { size: 12 } }, xaxis: { type: 'category', tickangle: -45 }, yaxis: { title: { text: 'tokens' } }, margin: { t: 30, b: 70, l: 50, r: 10 } }, { displaylogo: false, staticPlot: true })
      hist[0].setAttribute('data-drawn', '1')
    }
    if (shown === c) body.setAttribute('data-cluster', String(c))
  }

  async function showOverview(note?: string): Promise<void> {
    shown = null
    const view = byId('cluster-view')
    for (const old of Array.from(view.querySelectorAll('.js-plotly-plot'))) Plotly.purge(old)
    view.replaceChildren()
    view.hidden = true
    byId('overview').hidden = false
    byId('route-note').textContent = note ?? ''
    body.removeAttribute('data-cluster')
    overviewDrawn ??= drawOverview()
    await overviewDrawn
  }

  /** The view the address names: `#cluster-N`, else the overview. */
  function route(): Promise<void> {
    const m = /^#cluster-(\d+)$/.exec(location.hash)
    if (!m) return showOverview()
    const c = Number(m[1])
    return c < data.nClusters ? showCluster(c) : showOverview(`There is no cluster ${m[1]}: this model has ${data.nClusters} clusters (0 to ${data.nClusters - 1}).`)
  }

  function step(by: number): void {
    if (shown === null) return
    const c = order[position[shown]! + by]
    if (c !== undefined) location.hash = `cluster-${c}`
  }

  async function start(): Promise<void> {
    data = JSON.parse(new TextDecoder().decode(await gunzip(byId('report-index')))) as ReportIndex
    pieceKeys = data.pieces.map((p) => p[1].trim().toLowerCase())
    performance.mark('report-data') // benches/dashboard.mjs reads these marks
    // The spread measure: mean nonzero membership (low = tokens belong to the cluster only in part).
    const spread = (s: ClusterIndexEntry) => s.meanMembership
    sortKeys = {
      tree: { label: 'the order of the tree', order: () => data.tree.order.slice() },
      mass: { label: 'mass, largest first', order: byValue((s) => s.mass, true) },
      'mass-asc': { label: 'mass, smallest first', order: byValue((s) => s.mass, false) },
      id: { label: 'cluster id', order: () => data.clusters.map((_, c) => c) },
    }
    if (data.hasTokens) {
      Object.assign(sortKeys, {
        cosine: { label: 'mean cosine to center, highest first', order: byValue((s) => s.meanCosine, true) },
        'cosine-asc': { label: 'mean cosine to center, lowest first', order: byValue((s) => s.meanCosine, false) },
        sharp: { label: 'mean nonzero membership, highest first (sharpest)', order: byValue(spread, true) },
        diffuse: { label: 'mean nonzero membership, lowest first (most diffuse)', order: byValue(spread, false) },
      })
    }
    const select = byId('index-sort') as HTMLSelectElement
    select.replaceChildren(...Object.entries(sortKeys).map(([name, key]) => {
      const option = el('option', { text: key.label })
      option.value = name
      return option
    }))
    select.addEventListener('change', () => {
      setSort(select.value)
      page = 0
      renderIndex()
    })
    byId('index-prev').addEventListener('click', () => {
      page--
      renderIndex()
    })
    byId('index-next').addEventListener('click', () => {
      page++
      renderIndex()
    })
    const box = byId('search') as HTMLInputElement
    let timer: ReturnType<typeof setTimeout> | undefined
    box.addEventListener('input', () => {
      clearTimeout(timer)
      timer = setTimeout(() => search(box.value), 80)
    })
    box.disabled = false
    document.addEventListener('keydown', (e) => {
      const target = e.target as HTMLElement
      if (e.ctrlKey || e.metaKey || e.altKey || /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) return
      if (e.key === 'j' || e.key === 'ArrowRight') step(1)
      else if (e.key === 'k' || e.key === 'ArrowLeft') step(-1)
      else if (e.key === 'Escape' && shown !== null) location.hash = 'overview'
      else if (e.key === '/') {
        e.preventDefault()
        box.focus()
      } else return
    })
    setSort('tree')
    renderIndex()
    performance.mark('report-index')
    window.addEventListener('hashchange', () => void route())
    await route()
    body.setAttribute('data-ready', '1')
    body.setAttribute('data-ready-ms', String(Math.round(performance.now())))
  }

  start().catch((e: unknown) => {
    byId('route-note').textContent = `This page could not read its data: ${String((e as Error)?.message ?? e)}`
    throw e
  })
}
