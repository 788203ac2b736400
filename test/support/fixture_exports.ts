import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { exportModel } from '../../src/export/exporter.js';
import { FIXTURE_DIR } from './runner.js';

/**
 * The fixture's exports, written once per test run (`npm test` runs this file first) into
 * dist/, which every build wipes; a test file run on its own exports what it needs itself.
 */
export const FIXTURE_EXPORTS_DIR = new URL('../../fixture-exports/', import.meta.url).pathname;

export type FixtureLayout = 'fast' | 'standard';
export type FixtureDtype = 'fp32' | 'int4';

/** The variants the tests use, exported ahead of a run. */
export const FIXTURE_VARIANTS: ReadonlyArray<[FixtureLayout, FixtureDtype]> = [
  ['fast', 'fp32'],
  ['standard', 'fp32'],
  ['fast', 'int4'],
];

/** A digest of the compiled exporter: exports made by other code are not reused. */
function exporterDigest(): string {
  const dir = new URL('../../src/export/', import.meta.url).pathname;
  const hash = createHash('sha256');
  for (const name of readdirSync(dir).sort()) if (name.endsWith('.js')) hash.update(name).update(readFileSync(join(dir, name)));
  return hash.digest('hex');
}

const key = (layout: FixtureLayout, dtype: FixtureDtype) => `${layout}-${dtype}`;

/** The run's export of this variant, if `npm test` made one with the current exporter. */
export function preparedExport(layout: FixtureLayout, dtype: FixtureDtype): string | null {
  const dir = join(FIXTURE_EXPORTS_DIR, key(layout, dtype));
  const stamp = join(dir, 'exporter.sha256');
  return existsSync(stamp) && readFileSync(stamp, 'utf8') === exporterDigest() ? dir : null;
}

/** Exports every variant; each lands under its final name only once complete. */
export async function exportFixtures(): Promise<void> {
  const digest = exporterDigest();
  for (const [layout, dtype] of FIXTURE_VARIANTS) {
    const dir = join(FIXTURE_EXPORTS_DIR, key(layout, dtype));
    const partial = `${dir}.partial`;
    rmSync(partial, { recursive: true, force: true });
    await exportModel({ modelDir: FIXTURE_DIR, outDir: partial, layout, dtype });
    writeFileSync(join(partial, 'exporter.sha256'), digest);
    rmSync(dir, { recursive: true, force: true });
    renameSync(partial, dir);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await exportFixtures();
