// The `soft-cluster` command line. Parsing turns argv into typed options, each command is a
// function in ts/commands/, and one boundary prints a one-line error and sets the exit code.
import './binary'
import { Command, CommanderError, InvalidArgumentError } from 'commander'
import { analyzeCommand } from './commands/analyze'
import { demo } from './commands/demo'
import { fit } from './commands/fit'
import { reportCommand } from './commands/report'
import { exportCommand } from './commands/export'
import { mergeCommand } from './commands/merge'
import { splitCommand } from './commands/split'
import { transformCommand } from './commands/transform'
import { treeCommand } from './commands/tree'
import { updateCommand } from './commands/update'
import { processes, setActivationsKey, setMaxChunkBytes } from './index'

const number = (value: string): number => {
  const n = Number(value)
  if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError('not a number.')
  return n
}

/** `--temperature`: `auto` (the core chooses it from the data) or a number. */
const temperature = (value: string): number | 'auto' => (value.trim() === 'auto' ? 'auto' : number(value))
/** `--cache`: `auto`, `off` or a budget in bytes. */
const cache = (value: string): number | 'auto' | 'off' => (value.trim() === 'auto' || value.trim() === 'off' ? (value.trim() as 'auto' | 'off') : number(value))

const count = (value: string): number => {
  const n = number(value)
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('not a whole number >= 0.')
  return n
}

/** The limits of every command that reads chunks. */
const withReadOptions = (command: Command): Command =>
  command
    .option('--max-chunk-bytes <N>', 'refuse a chunk array that decodes to more bytes than this (half the available memory)', count)
    .option('--key <name>', 'the activations tensor (safetensors) or column (Arrow) of chunks (activations, or the only float one)')

/** The options of the metrics, shared by `analyze` and `report`. */
const withMetricOptions = (command: Command): Command =>
  withReadOptions(command)
    .option('--top-tokens <N>', 'token ids listed per cluster (10)', count)
    .option('--sample <N>', 'tokens in the silhouette sample (2000)', count)
    .option('--seed <S>', 'seed of the silhouette sample (0)', count)
    .option('--lift-smoothing <A>', 'pseudo-occurrences added to a token\'s observed and expected weight in its lift (1)', number)
    .option('--progress', 'show progress on stderr even when it is not a terminal')

/** The metrics' options and how token ids become text, shared by `report` and `export`. */
const withDecodeOptions = (command: Command): Command =>
  withMetricOptions(command)
    .option('--tokenizer <file>', 'a Hugging Face tokenizer.json to decode token ids')
    .option('--vocab <file>', 'a JSON list of token strings, indexed by id, to decode token ids')
    .option('--decode-timeout <seconds>', "time the tokenizer's decoding may take in all; past it, token ids are shown (30)", number)

/** This process's rank, 0 when it cannot be told. */
function rankOrZero(): number {
  try {
    return processes().rank
  } catch {
    return 0
  }
}

export function main(argv: string[]): void {
  // A file-size limit (or a full disk on some systems) raises SIGXFSZ, whose default action kills
  // the process mid-write; with a listener the write fails instead and is reported as an error.
  process.on('SIGXFSZ', () => {})
  const program = new Command()
    .name('soft-cluster')
    .description('Soft spherical k-means over neural-network activation chunks')
    .version(require('../package.json').version)
    .exitOverride()
    .configureOutput({ outputError: (message, write) => write(message.trim().split('\n')[0] + '\n') })
  // Read limits are process-wide: set once, before the command runs.
  program.hook('preAction', (_program, command) => {
    // Under mpirun/srun every rank runs this command: only a fit is one run over all of them.
    const { size } = processes()
    if (size > 1 && command.name() !== 'fit') {
      throw new Error(`${command.name()} runs in one process, but this is one of ${size} processes of an MPI launch; only fit runs on several (docs/scaling.md "Many servers")`)
    }
    const { maxChunkBytes, key } = command.opts() as { maxChunkBytes?: number; key?: string }
    if (maxChunkBytes !== undefined) setMaxChunkBytes(maxChunkBytes)
    if (key !== undefined) setActivationsKey(key)
  })
  withReadOptions(program
    .command('fit')
    .description('learn K clusters by streaming over chunk files; write memberships, exemplars and the model')
    .argument('<chunks...>', 'chunk files (.npz, .safetensors, .npy, .arrow), directories (their chunk files, by name) or globs')
    .requiredOption('--clusters <K>', 'number of clusters', number)
    .requiredOption('--out <dir>', 'output folder')
    .option('--temperature <T>', 'softmax temperature on cosine similarities: a number, or auto to choose it from the data (auto)', temperature)
    .option('--min-membership <M>', 'memberships below this are dropped (0.01)', number)
    .option('--iterations <N>', 'passes over the data (10)', number)
    .option('--warmup <N>', 'hard k-means iterations on the init sample after k-means++ (10)', number)
    .option('--exemplars <E>', 'exemplars kept per cluster (10)', number)
    .option('--context <W>', 'context tokens on each side of an exemplar (8)', number)
    .option('--quantile-bins <B>', 'bins of membership for the examples across the range (10)', number)
    .option('--quantile-examples <Q>', 'examples kept per bin (5)', number)
    .option('--distinct-contexts', 'no two exemplars of a cluster share most of their context: keep only tokens whose membership is the largest within --context positions')
    .option('--device <D>', 'auto, cpu, cuda, cuda:N, cuda:all or a list such as cuda:0,1 (auto)')
    .option('--precision <P>', 'CUDA matrix products: float32 or tf32 (float32)')
    .option('--cache <C>', 'host memory that keeps the decoded chunks after the first pass: auto (half the available memory), off, or bytes (auto)', cache)
    .option('--seed <S>', 'seed of the k-means++ sample (0)', number)
    .option('--init-centers <file.npy>', 'start from these [K, D] centers instead of k-means++')
    .option('--tol <X>', 'stop when the largest center shift is below this; 0 = never (1e-7)', number)
    .option('--resume', 'continue the unfinished fit whose checkpoint is in --out, if there is one')
    .option('--overwrite', "replace an earlier run's outputs in --out, once this fit is complete")
    .option('--progress', 'show progress on stderr even when it is not a terminal')
    .option('--json', 'print what was written, and the history, as JSON'))
    .action(fit)
  withReadOptions(program
    .command('transform')
    .description("write each chunk's memberships under a fitted model")
    .argument('<chunks...>', 'chunk files (.npz, .safetensors, .npy, .arrow), directories (their chunk files, by name) or globs')
    .requiredOption('--model <file>', 'a model.safetensors written by fit')
    .requiredOption('--out <dir>', 'output folder')
    .option('--level <N>', 'memberships of the N groups of the tree cut (soft-cluster tree) instead of the clusters', count)
    .option('--overwrite', "replace an earlier run's outputs in --out, once this run is complete")
    .option('--progress', 'show progress on stderr even when it is not a terminal')
    .option('--json', 'print what was written as JSON'))
    .action(transformCommand)
  program
    .command('tree')
    .description("the tree over a model's clusters (average linkage on cosine distance, weighted by mass), as scipy linkage rows")
    .requiredOption('--model <file>', 'a model.safetensors')
    .option('--json', 'print the linkage table as JSON')
    .action(treeCommand)
  withReadOptions(program
    .command('merge')
    .description('merge clusters of a model into one, from their summed statistics; write the new model')
    .requiredOption('--model <file>', 'a model.safetensors written by fit (format_version 2)')
    .requiredOption('--clusters <ids>', 'the clusters to merge, e.g. 3,7')
    .requiredOption('--out <file>', 'the new model file')
    .option('--refit <chunks...>', 'then run passes over these chunks (files, directories or globs)')
    .option('--iterations <N>', 'passes with --refit (3)', count)
    .option('--overwrite', 'replace --out if it exists')
    .option('--progress', 'show progress on stderr even when it is not a terminal')
    .option('--json', 'print the new ids (old -> new) as JSON'))
    .action(mergeCommand)
  withReadOptions(program
    .command('split')
    .description("split a cluster by its member tokens in the chunks, then run passes; write the new model")
    .argument('<chunks...>', 'chunk files, directories or globs')
    .requiredOption('--model <file>', 'a model.safetensors')
    .requiredOption('--cluster <id>', 'the cluster to split', count)
    .option('--into <N>', 'parts (2)', count, 2)
    .requiredOption('--out <file>', 'the new model file')
    .option('--iterations <N>', 'passes over the chunks after the split (3)', count)
    .option('--overwrite', 'replace --out if it exists')
    .option('--progress', 'show progress on stderr even when it is not a terminal')
    .option('--json', 'print the new clusters as JSON'))
    .action(splitCommand)
  withReadOptions(program
    .command('update')
    .description('fold new chunks into a fitted model: passes whose sums add to the stored ones, memberships of the new chunks')
    .argument('<chunks...>', 'new chunk files, directories or globs')
    .requiredOption('--model <file>', 'a model.safetensors written by fit (format_version 2)')
    .requiredOption('--out <dir>', 'output folder (model.safetensors and the new memberships files)')
    .option('--iterations <N>', 'passes over the new chunks (3)', count)
    .option('--decay <d>', 'weight of the stored statistics, in [0, 1] (1: all data weighs the same)', number)
    .option('--overwrite', "replace an earlier run's outputs in --out, once this run is complete")
    .option('--progress', 'show progress on stderr even when it is not a terminal')
    .option('--json', 'print what was written, and the history, as JSON'))
    .action(updateCommand)
  withMetricOptions(program
    .command('analyze')
    .description('quality metrics of a fitted model over chunk files: per cluster and overall')
    .argument('<chunks...>', 'chunk files (.npz, .safetensors, .npy, .arrow), directories (their chunk files, by name) or globs')
    .requiredOption('--model <file>', 'a model.safetensors written by fit')
    .option('--json', 'print the metrics as JSON'))
    .action(analyzeCommand)
  withDecodeOptions(program
    .command('report')
    .description('write one self-contained HTML report: overview plots, then every cluster with its exemplars')
    .argument('[chunks...]', 'chunks to compute the metrics on (files, directories or globs); without them, the model alone')
    .requiredOption('--model <file>', 'a model.safetensors written by fit')
    .requiredOption('--out <file>', 'the HTML file to write')
    .option('--json', 'print where the report was written as JSON'))
    .action(reportCommand)
  withDecodeOptions(program
    .command('export')
    .description('write one JSON file per cluster for other tools (Neuronpedia-like fields: activations, topkCosSim..., freq_hist...)')
    .argument('[chunks...]', 'chunks to compute the token tables and histograms on (files, directories or globs); without them, the model alone')
    .requiredOption('--model <file>', 'a model.safetensors written by fit')
    .requiredOption('--out <dir>', 'the folder to write (new or empty, or an earlier export with --overwrite)')
    .option('--format <F>', 'json (the only one so far)', 'json')
    .option('--vectors', 'put each center (dModel numbers) in its file as vector')
    .option('--overwrite', 'replace an earlier export in --out')
    .option('--json', 'print where the export was written as JSON'))
    .action(exportCommand)
  program
    .command('demo')
    .description('fit the bundled MiniLM activations, write the outputs and an HTML report, and say where they are')
    .option('--out <dir>', 'where to write the outputs (an earlier demo there is replaced)', 'soft-cluster-demo')
    .option('--progress', 'show progress on stderr even when it is not a terminal')
    .option('--json', 'print what was written as JSON')
    .action(demo)
  program.parseAsync(argv).catch((e: unknown) => {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode
      return
    }
    const err = e as Error & { code?: string }
    // An error every rank of an MPI run shares ("rank R of N: ...") is printed once, by rank 0.
    if (/^rank \d+ of \d+: /.test(err.message) && rankOrZero() !== 0) {
      process.exitCode = 1
      return
    }
    process.stderr.write(`soft-cluster: ${err.message.split('\n')[0]}${err.code ? ` [${err.code}]` : ''}\n`)
    process.exitCode = 1
  })
}
