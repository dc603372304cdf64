import * as native from '../native'

/** The memberships file a fit or transform writes for each chunk (docs/formats.md "Memberships file"), named by the core. */
export const membershipsFiles = (outputDir: string, chunks: readonly string[]): string[] =>
  chunks.map((c) => native.membershipsPathFor(outputDir, c))

/** `--json`: one JSON document on stdout, for scripts. */
export const printJson = (value: unknown): void => {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n')
}
