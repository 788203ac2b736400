#!/usr/bin/env node
/**
 * The README's screenshots of the chat page (light and dark, desktop and narrow):
 *   npm run docs:screenshots
 * A real server with the demo model and Debian's Chromium; the conversation shown is
 * put in the page's local storage first (the demo model's own answers are noise), and
 * rendered by the page as any stored conversation is.
 */
import { mkdirSync } from 'node:fs';
import { pino } from 'pino';
import { chromium } from 'playwright-core';
import { parseServeConfig, startServer } from '../../src/cli/serve_command.js';
import { tempDir } from './runner.js';

const out = new URL('../../../docs/images/', import.meta.url).pathname;
mkdirSync(out, { recursive: true });
const conversation = {
  id: 'example',
  title: 'Binary search in TypeScript',
  updatedAt: Date.now(),
  messages: [
    { role: 'user', content: 'Write a binary search over a sorted array of numbers, in TypeScript.' },
    {
      role: 'assistant',
      reasoning:
        'The user wants a binary search. Keep two bounds, halve the range each step, return the index or -1. Use unsigned shift for the midpoint.',
      content:
        'Here is an iterative version: it keeps the search range in `lo` and `hi` and halves it each step, so it takes **O(log n)** comparisons.\n\n```ts\nfunction search(xs: number[], x: number): number {\n  let lo = 0;\n  let hi = xs.length - 1;\n  while (lo <= hi) {\n    const mid = (lo + hi) >>> 1;\n    if (xs[mid] === x) return mid;\n    if (xs[mid] < x) lo = mid + 1;\n    else hi = mid - 1;\n  }\n  return -1;\n}\n```\n\nIt returns the index of `x`, or `-1` when it is absent.',
      stats: { promptTokens: 31, cachedTokens: 0, completionTokens: 171, ttftMs: 212, tokensPerSecond: 41.8 },
    },
  ],
};

const server = await startServer(
  parseServeConfig(['--port', '0', '--threads', '1', '--kv-cache-memory', '128MiB', '--cache-dir', tempDir('qwen3-shots-')], {})!,
  { logger: pino({ level: 'silent' }) },
);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
});
try {
  for (const scheme of ['light', 'dark'] as const) {
    for (const [name, viewport] of [
      ['desktop', { width: 1280, height: 800 }],
      ['narrow', { width: 390, height: 844 }],
    ] as const) {
      const page = await browser.newPage({ viewport, colorScheme: scheme });
      await page.addInitScript(`localStorage.setItem('qwen3-serve.conversations', ${JSON.stringify(JSON.stringify([conversation]))})`);
      await page.goto(`${server.url}/`);
      // The page's CSP forbids the eval Playwright's waitForFunction polls with.
      for (let i = 0; i < 200 && (await page.textContent('#model-name')) === 'qwen3-serve'; i++) await new Promise((r) => setTimeout(r, 50));
      await page.click('details.thinking summary');
      if (name === 'desktop') await page.click('#toggle-settings');
      await page.fill('#input', 'And a recursive one?');
      await page.screenshot({ path: `${out}chat-${scheme}-${name}.png` });
      await page.close();
    }
  }
} finally {
  await browser.close();
  await server.close();
}
process.stderr.write(`wrote ${out}chat-{light,dark}-{desktop,narrow}.png\n`);
