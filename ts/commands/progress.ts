import { SingleBar } from 'cli-progress'
import type { FitProgress } from '../clustering'

/**
 * Progress of a fit on stderr: a bar when stderr is a terminal, one line per chunk when forced
 * with --progress on a pipe, nothing otherwise.
 */
export function progressReporter(force: boolean): { onProgress?: (p: FitProgress) => void; stop: () => void } {
  if (process.stderr.isTTY) {
    const bar = new SingleBar(
      { format: '{phase} {iteration} |{bar}| chunk {chunk}/{nChunks} | {rate} tok/s | {eta_formatted} left', stream: process.stderr, hideCursor: true },
    )
    let started = false
    return {
      onProgress: (p) => {
        const payload = { phase: p.phase, iteration: p.phase === 'iterate' ? `${p.iteration}/${p.nIterations}` : '', chunk: p.chunk, nChunks: p.nChunks, rate: Math.round(p.tokensPerS) }
        if (!started || p.chunk === 1) {
          if (started) bar.stop()
          bar.start(p.nChunks, p.chunk, payload)
          started = true
        } else {
          bar.update(p.chunk, payload)
        }
      },
      stop: () => started && bar.stop(),
    }
  }
  if (!force) return { stop: () => {} }
  return {
    onProgress: (p) =>
      process.stderr.write(`progress ${p.phase}${p.phase === 'iterate' ? ` iteration ${p.iteration}/${p.nIterations}` : ''} chunk ${p.chunk}/${p.nChunks} tokens ${p.tokensDone} ${Math.round(p.tokensPerS)} tok/s\n`),
    stop: () => {},
  }
}
