import cliProgress from 'cli-progress';

/** Progress of a long job measured in bytes, e.g. an export or a download. */
export interface Progress {
  start(totalBytes: number, label: string): void;
  advance(bytes: number, item: string): void;
  stop(): void;
}

function mib(n: number): string {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/** A bar on a terminal; a plain line every 10% (and at the end) anywhere else. */
export function createProgress(stream: NodeJS.WriteStream = process.stderr): Progress {
  if (stream.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream,
        format: '{label} [{bar}] {percentage}% | {done}/{all} | {item}',
        hideCursor: true,
        clearOnComplete: false,
      },
      cliProgress.Presets.shades_classic,
    );
    let total = 0;
    let done = 0;
    let label = '';
    return {
      start(t, l) {
        total = t;
        label = l;
        bar.start(t, 0, { label, done: mib(0), all: mib(t), item: '' });
      },
      advance(bytes, item) {
        done += bytes;
        bar.update(Math.min(done, total), { label, done: mib(done), all: mib(total), item });
      },
      stop() {
        bar.stop();
      },
    };
  }
  let total = 0;
  let done = 0;
  let nextReport = 0;
  let label = '';
  return {
    start(t, l) {
      total = t;
      label = l;
      stream.write(`${label}: ${mib(total)} to process\n`);
      nextReport = 0.1;
    },
    advance(bytes, item) {
      done += bytes;
      const frac = total > 0 ? done / total : 1;
      if (frac >= nextReport) {
        stream.write(`${label}: ${Math.floor(frac * 100)}% (${mib(done)}/${mib(total)}) ${item}\n`);
        while (nextReport <= frac) nextReport += 0.1;
      }
    },
    stop() {
      stream.write(`${label}: done (${mib(done)})\n`);
    },
  };
}

export const silentProgress: Progress = { start() {}, advance() {}, stop() {} };
