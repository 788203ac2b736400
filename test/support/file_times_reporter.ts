import { readFileSync } from 'node:fs';

/**
 * A node:test reporter that writes, as one JSON object, the CPU seconds each test file took
 * (this process's and its ended children's): what `node dist/scripts/run_tests.js --record`
 * keeps in test/timings.json to deal files to processes. It runs in the process that runs
 * the tests (`--test-isolation=none`), whose files run one at a time, so the CPU spent
 * between one top-level test's end and the next's belongs to the next.
 */
interface TestEvent {
  type: string;
  data: { file?: string; nesting?: number };
}

/** CPU seconds of this process and of its children that have ended (/proc/self/stat cutime + cstime). */
function cpuS(): number {
  const own = process.cpuUsage();
  let children = 0;
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    children = (Number(f[13]) + Number(f[14])) / 100;
  } catch {
    // No /proc: this process's own time only.
  }
  return (own.user + own.system) / 1e6 + children;
}

export default async function* fileTimes(source: AsyncIterable<TestEvent>): AsyncGenerator<string> {
  const seconds: Record<string, number> = {};
  let last = cpuS();
  for await (const event of source) {
    if (event.type !== 'test:pass' && event.type !== 'test:fail') continue;
    const { file, nesting } = event.data;
    if (!file || nesting !== 0) continue;
    const now = cpuS();
    seconds[file] = (seconds[file] ?? 0) + (now - last);
    last = now;
  }
  yield JSON.stringify(seconds);
}
