import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { KvBlockPool } from '../runtime/kv_block_pool.js';
import { HEADER_BYTES, openBlock, sealBlock } from './disk_block_file.js';
import { DiskBlockStore, type LoadedBlock } from './disk_block_store.js';

describe('src/engine/disk_block_store.test', () => {
  const dirs: string[] = [];
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  function scratch(): string {
    const d = mkdtempSync(join(tmpdir(), 'qwen3-serve-disk-unit-'));
    dirs.push(d);
    return d;
  }

  const fp = (s: string) => createHash('sha256').update(s).digest();
  const pool = () => {
    const p = new KvBlockPool({ layers: 2, planes: [{ type: 'float32', elements: 16 }] }, 4);
    for (let slot = 0; slot < 4; slot++) for (let l = 0; l < 2; l++) p.view(0, l, slot).fill(slot * 10 + l + 0.5);
    return p;
  };
  const PAYLOAD = 2 * 16 * 4;
  const FILE = HEADER_BYTES + PAYLOAD;

  let woken: (() => void) | null = null;

  function open(dir: string, o: { fingerprint?: Buffer; capacityBytes?: number; warnings?: string[]; writeQueueBytes?: number } = {}) {
    return DiskBlockStore.open({
      dir,
      capacityBytes: o.capacityBytes ?? 1 << 20,
      fingerprint: o.fingerprint ?? fp('a'),
      payloadBytes: PAYLOAD,
      warn: (m) => o.warnings?.push(m),
      wake: () => woken?.(),
      writeQueueBytes: o.writeQueueBytes,
    });
  }

  /** Reads `key` through the store, waiting on its wake-up as the engine does: the block, or 'missing'. */
  async function load(store: DiskBlockStore, key: string): Promise<LoadedBlock | 'missing'> {
    store.want([key]);
    for (;;) {
      const read = new Promise<void>((r) => (woken = r));
      const got = store.take(key);
      if (got !== 'pending') return got;
      await read;
    }
  }

  test('a block file opens only whole, with its own fingerprint and key', () => {
    const file = new Uint8Array(FILE);
    file.fill(7, HEADER_BYTES);
    const header = { tokens: 32, fingerprint: fp('a'), key: fp('k') };
    sealBlock(file, header);
    const expect = { fingerprint: fp('a'), key: fp('k'), payloadBytes: PAYLOAD };
    const opened = openBlock(file, expect);
    assert.ok(typeof opened !== 'string');
    assert.equal(opened.tokens, 32);
    assert.equal(openBlock(file.subarray(0, FILE - 1), expect), `${FILE - 1} bytes, not ${FILE}`);
    assert.equal(openBlock(file, { ...expect, fingerprint: fp('b') }), 'written by another export or setting');
    assert.equal(openBlock(file, { ...expect, key: fp('j') }), 'another block');
    file[FILE - 1] ^= 1;
    assert.equal(openBlock(file, expect), 'payload checksum mismatch');
    file[FILE - 1] ^= 1;
    file[9] ^= 1;
    assert.equal(openBlock(file, expect), 'header checksum mismatch');
  });

  test('blocks written are read back into the pool bit for bit, by a new store on the directory too', async () => {
    const dir = scratch();
    const p = pool();
    const store = open(dir);
    const key = store.keyOf('memory-key-1');
    store.write(key, 32, p, 2);
    await store.close();
    assert.equal(store.stats(0).writes, 1);
    const again = open(dir);
    assert.equal(again.stats(0).blocks, 1);
    const block = await load(again, key);
    assert.ok(block !== 'missing');
    assert.equal(block.tokens, 32);
    p.writeSlot(0, block.payload);
    assert.deepEqual([...p.view(0, 0, 0)], [...p.view(0, 0, 2)]);
    assert.deepEqual([...p.view(0, 1, 0)], [...p.view(0, 1, 2)]);
    again.release(block);
    assert.equal(again.stats(0).loads, 1);
    assert.equal(await load(again, again.keyOf('never written')), 'missing');
  });

  test('the bound in bytes deletes the least recently used blocks first; a load makes a block recent', async () => {
    const dir = scratch();
    const p = pool();
    const store = open(dir, { capacityBytes: 3 * FILE });
    const keys = ['a', 'b', 'c', 'd'].map((k) => store.keyOf(k));
    for (const key of keys.slice(0, 3)) {
      store.write(key, 32, p, 0);
      await store.close();
    }
    store.release((await load(store, keys[0])) as LoadedBlock);
    store.write(keys[3], 32, p, 1);
    await store.close();
    assert.deepEqual(
      keys.map((k) => store.has(k)),
      [true, false, true, true],
    );
    assert.equal(readdirSync(dir).length, 3);
    assert.equal(store.stats(0).bytes, 3 * FILE);
  });

  test('a writer behind drops writes rather than queue them without bound', async () => {
    const store = open(scratch(), { writeQueueBytes: 1 });
    const p = pool();
    for (let i = 0; i < 10; i++) store.write(store.keyOf(`k${i}`), 32, p, 0);
    const queued = store.stats(0);
    assert.equal(queued.writesDropped, 6, 'four blocks queue at least');
    await store.close();
    assert.equal(store.stats(0).writes, 4);
  });

  test("at start: another fingerprint's files and strangers are reported once and kept; unfinished writes and files of the wrong length are deleted", async () => {
    const dir = scratch();
    const p = pool();
    const theirs = open(dir, { fingerprint: fp('other export') });
    theirs.write(theirs.keyOf('x'), 32, p, 0);
    await theirs.close();
    const mine = open(dir);
    mine.write(mine.keyOf('y'), 32, p, 0);
    mine.write(mine.keyOf('z'), 32, p, 1);
    await mine.close();
    const prefix = fp('a').toString('hex').slice(0, 16);
    const z = `${prefix}-${mine.keyOf('z')}.kvb`;
    writeFileSync(join(dir, z), 'cut short');
    writeFileSync(join(dir, `${prefix}-${mine.keyOf('w')}.kvb.tmp-1-0`), 'torn');
    writeFileSync(join(dir, 'notes.txt'), 'hello');
    const warnings: string[] = [];
    const store = open(dir, { warnings });
    assert.deepEqual(store.stats(0).blocks, 1);
    assert.equal(store.stats(0).corrupt, 1);
    assert.equal(warnings.filter((w) => /2 files in .* are not blocks of this model export/.test(w)).length, 1, warnings.join('\n'));
    assert.ok(warnings.some((w) => /deleted 1 unfinished write/.test(w)));
    assert.deepEqual(readdirSync(dir).sort().length, 3, "mine, theirs and notes.txt: the others' are kept");
    assert.ok(!readdirSync(dir).includes(z));
    assert.ok(statSync(join(dir, 'notes.txt')).isFile());
  });
});
