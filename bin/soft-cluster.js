#!/usr/bin/env node
let cli
try {
  cli = require('../dist/cli.js')
} catch (err) {
  // No native binary for this machine: one line, as for every other CLI error.
  if (err && err.code === 'ERR_NO_BINARY') {
    process.stderr.write(`soft-cluster: ${err.message} [${err.code}]\n`)
    process.exit(1)
  }
  throw err
}
cli.main(process.argv)
