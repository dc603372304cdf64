// Loads the native binary before anything else does (ts/index.ts and ts/cli.ts import this first).
// When none loads, the napi-rs loader's message blames an npm bug; ours names the platform, the
// binaries we publish and what to do, and keeps the loader's reasons.

/** `linux x64 (glibc 2.31)`: the platform a binary was looked for. */
function platformName(): string {
  let libc = ''
  if (process.platform === 'linux') {
    const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header
    libc = header?.glibcVersionRuntime ? ` (glibc ${header.glibcVersionRuntime})` : ' (musl)'
  }
  return `${process.platform} ${process.arch}${libc}`
}

/** First lines of the loader's error chain below its own message: why each candidate failed. */
function reasons(error: unknown): string[] {
  const out: string[] = []
  let e = (error as { cause?: unknown } | undefined)?.cause as { message?: unknown; cause?: unknown } | undefined
  for (; e && out.length < 8; e = e.cause as typeof e) {
    // The loader also tries a WebAssembly build, which we do not publish.
    if (typeof e.message === 'string' && e.message.length > 0 && !/wasi/.test(e.message)) out.push(e.message.split('\n')[0] ?? '')
  }
  return out
}

/** The error `require('soft-cluster')` throws when no native binary loads (`ERR_NO_BINARY`). */
export function noBinaryError(error: unknown): Error {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const targets: string[] = require('../package.json').napi?.targets ?? []
  const why = reasons(error)
  const message =
    `no soft-cluster native binary loads on ${platformName()}. ` +
    `Prebuilt binaries: ${targets.join(', ')} (Linux: glibc >= 2.17 or musl). ` +
    `To build one from source (needs Rust >= 1.85) see the README, "Build from source"; then set ` +
    `NAPI_RS_NATIVE_LIBRARY_PATH to the .node file.` +
    (why.length > 0 ? ` Loader: ${why.join('; ')}` : '')
  return Object.assign(new Error(message, { cause: error }), { code: 'ERR_NO_BINARY' })
}

try {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require('../index.js')
} catch (error) {
  throw noBinaryError(error)
}
