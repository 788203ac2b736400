import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError } from '../errors.js';
import { checkFits } from './memory_plan.js';

const MiB = 2 ** 20;

test('a model whose weights pass the memory available is refused, naming both numbers', () => {
  assert.throws(
    () => checkFits(17_000 * MiB, 0.5, 16_000 * MiB, 'cpu'),
    (err: Error) => err instanceof ConfigError && /weights take 17000 MiB, more than the 16000 MiB of memory available/.test(err.message),
  );
});

test('weights plus a KV budget in bytes past the memory available are refused, with the budget that would fit', () => {
  assert.throws(
    () => checkFits(10_000 * MiB, 8_000 * MiB, 16_000 * MiB, 'cpu'),
    /weights \(10000 MiB\) and the KV cache \(--kv-cache-memory, 8000 MiB\) take 18000 MiB, more than the 16000 MiB.*at most 6000 MiB/,
  );
});

test('what fits passes: a fraction of memory for the KV cache is sized after loading; CUDA weights are in GPU memory', () => {
  checkFits(10_000 * MiB, 6_000 * MiB, 16_000 * MiB, 'cpu');
  checkFits(15_000 * MiB, 0.9, 16_000 * MiB, 'cpu');
  checkFits(40_000 * MiB, 0.9, 16_000 * MiB, 'cuda');
});
