import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';

const glibc =
  process.platform === 'linux' && Boolean((process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime);

/**
 * A fresh process that churns buffers the way decode steps do (15 MiB allocated, used
 * and freed per round, by threads that come and go) and prints the page faults per round.
 */
function faultsPerRound(prime: boolean): number {
  const module = new URL('./malloc_thresholds.js', import.meta.url).href;
  const script = `
    import { Worker } from 'node:worker_threads';
    import { raiseMallocThresholds } from ${JSON.stringify(module)};
    const run = (code) => new Promise((res, rej) => new Worker(code, { eval: true }).once('exit', res).once('error', rej));
    if (${prime}) await raiseMallocThresholds();
    const churn = 'for (let i = 0; i < 3; i++) globalThis["b" + i] = new Uint8Array(5 * 2 ** 20).fill(1);';
    await run(churn);
    const before = process.resourceUsage().minorPageFault;
    for (let i = 0; i < 8; i++) await run(churn);
    console.log((process.resourceUsage().minorPageFault - before) / 8);
  `;
  const env = { ...process.env };
  delete env.GLIBC_TUNABLES;
  for (const k of Object.keys(env)) if (k.startsWith('MALLOC_')) delete env[k];
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return Number(r.stdout.trim());
}

test('raised malloc thresholds keep freed buffers in the process: no page faults to get them back', { skip: !glibc && 'glibc only' }, () => {
  const plain = faultsPerRound(false);
  const primed = faultsPerRound(true);
  // 15 MiB is 3,840 pages: with glibc's default thresholds every round faults them in again.
  assert.ok(plain - primed > 2500, `page faults per round: ${plain} with glibc's defaults, ${primed} raised`);
});
