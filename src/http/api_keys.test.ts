import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { ConfigError } from '../errors.js';
import { Keyring, parseKeysFile } from './api_keys.js';

const sha = (k: string) => createHash('sha256').update(k).digest('hex');

test('a keys file: the object or the bare array, keys or their SHA-256, limits by their names', () => {
  const keys = parseKeysFile(
    JSON.stringify([
      { name: 'a', key: 'sk-aaaaaaaa', limits: { max_concurrent: 2, max_queued: 0, tokens_per_minute: 1000 } },
      { name: 'b.team@x', sha256: sha('sk-bbbbbbbb').toUpperCase() },
    ]),
    'f',
  );
  assert.deepEqual(
    keys.map((k) => [k.name, k.limits]),
    [
      ['a', { maxConcurrent: 2, maxQueued: 0, tokensPerMinute: 1000 }],
      ['b.team@x', { maxConcurrent: null, maxQueued: null, tokensPerMinute: null }],
    ],
  );
  assert.deepEqual(parseKeysFile(JSON.stringify({ keys: [] }), 'f'), []);
});

test('a keys file breaking a rule is refused, naming the entry and field', () => {
  const bad: Array<[unknown, RegExp]> = [
    [
      {
        keys: [
          { name: 'a', key: 'sk-aaaaaaaa' },
          { name: 'a', key: 'sk-bbbbbbbb' },
        ],
      },
      /keys\[1\]\.name: 'a' is named twice/,
    ],
    [
      {
        keys: [
          { name: 'a', key: 'sk-aaaaaaaa' },
          { name: 'b', sha256: sha('sk-aaaaaaaa') },
        ],
      },
      /keys\[1\]: the same key is given twice/,
    ],
    [{ keys: [{ name: 'a' }] }, /key or its sha256/],
    [{ keys: [{ name: 'a b', key: 'sk-aaaaaaaa' }] }, /keys\[0\]\.name/],
    [{ keys: [{ name: 'a', key: 'short' }] }, /keys\[0\]\.key/],
    // Keys no HTTP header can carry: spaces around or inside, control characters, non-ASCII.
    [{ keys: [{ name: 'a', key: '  sk-aaaaaaaa  ' }] }, /keys\[0\]\.key: use printable ASCII/],
    [{ keys: [{ name: 'a', key: 'sk-aaaa\naaaa' }] }, /keys\[0\]\.key: use printable ASCII/],
    [{ keys: [{ name: 'a', key: 'sk-ünïcødé🚀' }] }, /keys\[0\]\.key: use printable ASCII/],
    [{ keys: [{ name: 'a', key: 'sk-aaaaaaaa', limits: { max_running: 1 } }] }, /keys\[0\]\.limits/],
    [{ keys: [{ name: 'a', key: 'sk-aaaaaaaa', limits: { tokens_per_minute: 0 } }] }, /tokens_per_minute/],
    // Either form names the entry and field of a problem.
    [{ keys: [{ name: 'a', key: 'sk-aaaaaaaa', limits: { max_concurrent: 1.5 } }] }, /keys\[0\]\.limits\.max_concurrent: .*int/],
    [[{ name: 'a', key: 'sk-aaaaaaaa', limits: { max_concurrent: '2' } }], /keys\[0\]\.limits\.max_concurrent: /],
    [{ keys: {} }, /keys: .*array/],
  ];
  for (const [file, message] of bad)
    assert.throws(
      () => parseKeysFile(JSON.stringify(file), 'f'),
      (e: unknown) => e instanceof ConfigError && message.test(e.message),
    );
  assert.throws(() => parseKeysFile('{', 'f'), /not valid JSON/);
});

test('--api-key alone is the key named default; a key matches only itself', () => {
  const ring = new Keyring('sk-secret-1', null, { info() {}, error() {} });
  assert.equal(ring.enabled, true);
  assert.equal(ring.match('sk-secret-1')?.name, 'default');
  for (const wrong of ['sk-secret-2', 'sk-secret-1 ', sha('sk-secret-1'), '']) assert.equal(ring.match(wrong), null);
  assert.equal(new Keyring(null, null, { info() {}, error() {} }).enabled, false);
});
