// The `soft-cluster` command line. Parsing turns argv into typed options, each command is a
// function in ts/commands/, and one boundary prints a one-line error and sets the exit code.
import { Command, CommanderError, InvalidArgumentError } from 'commander'
import { demo } from './commands/demo'
import { fit } from './commands/fit'
import { transformCommand } from './commands/transform'

const number = (value: string): number => {
  const n = Number(value)
  if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError('not a number.')
  return n
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
  program
    .command('fit')
    .description('learn K clusters by streaming over chunk files; write memberships, exemplars and the model')
    .argument('<chunks...>', 'chunk files, directories (their *.npz, by name) or globs')
    .requiredOption('--clusters <K>', 'number of clusters', number)
    .requiredOption('--out <dir>', 'output folder')
    .option('--temperature <T>', 'softmax temperature on cosine similarities (1.0)', number)
    .option('--min-membership <M>', 'memberships below this are dropped (0.01)', number)
    .option('--iterations <N>', 'passes over the data (10)', number)
    .option('--exemplars <E>', 'exemplars kept per cluster (10)', number)
    .option('--context <W>', 'context tokens on each side of an exemplar (8)', number)
    .option('--device <D>', 'auto, cpu, cuda or cuda:N (auto)')
    .option('--precision <P>', 'CUDA matrix products: float32 or tf32 (float32)')
    .option('--seed <S>', 'seed of the k-means++ sample (0)', number)
    .option('--init-centers <file.npy>', 'start from these [K, D] centers instead of k-means++')
    .option('--tol <X>', 'stop when the largest center shift is below this; 0 = never (1e-7)', number)
    .option('--resume', 'continue from the checkpoint in --out, if there is one')
    .option('--progress', 'show progress on stderr even when it is not a terminal')
    .action(fit)
  program
    .command('transform')
    .description("write each chunk's memberships under a fitted model")
    .argument('<chunks...>', 'chunk files, directories (their *.npz, by name) or globs')
    .requiredOption('--model <file>', 'a model.safetensors written by fit')
    .requiredOption('--out <dir>', 'output folder')
    .option('--progress', 'show progress on stderr even when it is not a terminal')
    .action(transformCommand)
  program
    .command('demo')
    .description('fit the bundled example chunks and print what was found')
    .option('--out <dir>', 'where to write the outputs', 'soft-cluster-demo')
    .action(demo)
  program.parseAsync(argv).catch((e: unknown) => {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode
      return
    }
    const err = e as Error & { code?: string }
    process.stderr.write(`soft-cluster: ${err.message.split('\n')[0]}${err.code ? ` [${err.code}]` : ''}\n`)
    process.exitCode = 1
  })
}
