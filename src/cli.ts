#!/usr/bin/env node
import { enableCompileCache } from 'node:module';
import { AppError, ConfigError } from './errors.js';
import { PACKAGE_VERSION } from './version.js';

// V8 keeps what it compiled on disk (the OS temp folder), so later starts compile less; a
// read-only disk only turns it off.
enableCompileCache();

interface Command {
  run(argv: string[]): Promise<void>;
  summary: string;
}

// Commands load their modules on use: `--help` and small commands start fast.
const COMMANDS: Record<string, Command> = {
  serve: {
    run: async (a) => (await import('./cli/serve_command.js')).serveCommand(a),
    summary: 'Serve a model over the OpenAI API (the default command)',
  },
  export: { run: async (a) => (await import('./cli/export_command.js')).exportCommand(a), summary: 'Export a Hugging Face Qwen3 checkpoint to ONNX' },
  generate: { run: async (a) => (await import('./cli/generate_command.js')).generateCommand(a), summary: 'Generate from a prompt in the terminal' },
  bench: {
    run: async (a) => (await import('./cli/bench_command.js')).benchCommand(a),
    summary: 'Benchmark an OpenAI-compatible server (TTFT, TPOT, ITL, throughput)',
  },
  compare: {
    run: async (a) => (await import('./cli/compare_command.js')).compareCommand(a),
    summary: 'Benchmark our server and another one alternately; print the ratios',
  },
};

function mainHelp(): string {
  const rows = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`);
  return `qwen3-serve ${PACKAGE_VERSION}: an OpenAI-compatible server for Qwen3 on ONNX Runtime\n\nUsage: qwen3-serve <command> [options]\n\nCommands:\n${rows.join('\n')}\n\nRun 'qwen3-serve <command> --help' for a command's options.\n`;
}

/** Runs the CLI; resolves to the process exit code (2 for bad flags or values). */
export async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  if (first === '--help' || first === '-h' || first === 'help') {
    process.stdout.write(mainHelp());
    return 0;
  }
  if (first === '--version') {
    process.stdout.write(`${PACKAGE_VERSION}\n`);
    return 0;
  }
  // No command, or options only: serve.
  if (first === undefined || (first.startsWith('-') && first !== '--help')) return main(['serve', ...argv]);
  const command = COMMANDS[first];
  if (!command) {
    process.stderr.write(`qwen3-serve: unknown command ${JSON.stringify(first ?? '')}\n\n${mainHelp()}`);
    return 2;
  }
  try {
    await command.run(rest);
    return 0;
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`qwen3-serve ${first}: ${err.message}\n`);
      return 2;
    }
    if (err instanceof AppError) {
      process.stderr.write(`qwen3-serve ${first}: ${err.message}\n`);
      return 1;
    }
    process.stderr.write(`qwen3-serve ${first}: internal error: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
}

// Run when executed directly (bin or `node dist/src/cli.js`), not when imported by tests.
const invoked = process.argv[1] ? new URL(`file://${process.argv[1]}`).pathname : '';
if (invoked.endsWith('/cli.js') || invoked.endsWith('/qwen3-serve')) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
