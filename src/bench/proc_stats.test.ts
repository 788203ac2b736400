import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { loadBetween, loadSnapshot, treeUsage, waitForIdle } from './proc_stats.js';

/** Polls `condition` until it holds, failing after `timeoutMs`. */
async function until(condition: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test("/proc readings: this process's tree, its CPU time and the machine's load", () => {
  const before = loadSnapshot([process.pid])!;
  const me = treeUsage(process.pid)!;
  assert.ok(me.pids.includes(process.pid));
  assert.ok(me.rssBytes > 10 * 2 ** 20 && me.hwmBytes >= me.rssBytes, `${me.rssBytes} ${me.hwmBytes}`);
  // Spin until the kernel has charged this process 0.2 s of CPU, however busy the machine is.
  const cpu = process.cpuUsage();
  while (process.cpuUsage(cpu).user + process.cpuUsage(cpu).system < 200_000);
  const used = (process.cpuUsage(cpu).user + process.cpuUsage(cpu).system) / 1e6;
  const share = loadBetween(before, loadSnapshot([process.pid])!);
  // /proc counts in hundredths of a second.
  assert.ok(Math.abs(share.known[0] - used) < 0.05, `/proc says ${share.known[0]} s, getrusage ${used} s`);
  assert.ok(share.others >= 0 && share.others <= 1 && share.seconds > 0);
});

test('the wait for an idle machine is bounded, and a busy process other than the servers keeps it waiting', async () => {
  const busy = spawn(process.execPath, ['-e', 'for (;;);'], { stdio: 'ignore' });
  try {
    await until(() => (treeUsage(busy.pid!)?.cpuS ?? 0) > 0.05, 'the busy process running');
    const waited = (await waitForIdle([], 0.001, 1, 0.25))!;
    assert.equal(waited.idle, false);
    assert.ok(waited.waitedS >= 1 && waited.waitedS < 5, `${waited.waitedS} s`);
    assert.ok(waited.others > 0.001, `others ${waited.others}`);
    // Counted as a server, the same process's CPU time is the server's, not other processes'.
    const a = loadSnapshot([busy.pid!])!;
    await until(() => loadSnapshot([busy.pid!])!.known[0] - a.known[0] >= 0.1, 'the busy process using 0.1 s of CPU');
    const share = loadBetween(a, loadSnapshot([busy.pid!])!);
    assert.ok(share.known[0] >= 0.1 && share.others <= 1 - share.known[0] / share.seconds + 1e-9, JSON.stringify(share));
  } finally {
    busy.kill('SIGKILL');
  }
});
