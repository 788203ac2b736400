import { readFileSync, writeFileSync } from 'node:fs';
import { markdownFlagTable } from './flags.js';
import { SERVE_FLAGS } from './serve_flags.js';

const START = '<!-- serve flags: generated from src/cli/serve_command.ts by `npm run docs:flags` -->';
const END = '<!-- end of serve flags -->';

/** The README with its configuration table made from the serve flags. */
export function readmeWithFlagTable(readme: string): string {
  const a = readme.indexOf(START);
  const b = readme.indexOf(END);
  if (a < 0 || b < a) throw new Error(`README.md has no ${START} … ${END} section`);
  return `${readme.slice(0, a + START.length)}\n${markdownFlagTable(SERVE_FLAGS)}\n${readme.slice(b)}`;
}

/** Rewrites README.md's configuration table (`npm run docs:flags`). */
export function updateReadme(path: string): void {
  writeFileSync(path, readmeWithFlagTable(readFileSync(path, 'utf8')));
}
