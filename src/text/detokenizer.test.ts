import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { IncrementalDetokenizer, StopStringMatcher } from './detokenizer.js';
import { QwenTokenizer } from './tokenizer.js';

const tokenizer = QwenTokenizer.fromDir(fileURLToPath(new URL('../../../assets/tokenizer/', import.meta.url)));

test('streamed text equals the whole decode, and never holds U+FFFD for split characters', () => {
  const text = 'héllo 世界 🎉 naïve — “quotes” <think>x</think> done';
  const ids = tokenizer.encode(text);
  const d = new IncrementalDetokenizer(tokenizer, false);
  const pieces = ids.map((id) => d.push(id));
  pieces.push(d.flush());
  assert.equal(pieces.join(''), text);
  assert.equal(tokenizer.decode(ids), text);
  for (const p of pieces) assert.ok(!p.includes('\uFFFD'), `piece ${JSON.stringify(p)}`);
});

test('a multi-byte character split over byte tokens is emitted once, whole', () => {
  // Find the ids of the single-byte tokens for 🎉's four UTF-8 bytes.
  const byteToken = (b: number) => {
    for (let id = 0; id < 300; id++) {
      const bytes = tokenizer.tokenBytes(id);
      if (bytes && bytes.length === 1 && bytes[0] === b) return id;
    }
    throw new Error(`no single-byte token for ${b}`);
  };
  const ids = [...new TextEncoder().encode('a🎉')].map(byteToken);
  const d = new IncrementalDetokenizer(tokenizer, false);
  assert.deepEqual(
    ids.map((id) => d.push(id)),
    ['a', '', '', '', '🎉'],
  );
});

test('special tokens are skipped on request; <think> is not special', () => {
  const ids = tokenizer.encode('<|im_start|>assistant\n<think>\nhi</think>ok<|im_end|>');
  const d = new IncrementalDetokenizer(tokenizer, true);
  assert.equal(ids.map((id) => d.push(id)).join(''), 'assistant\n<think>\nhi</think>ok');
  const keep = new IncrementalDetokenizer(tokenizer, false);
  assert.equal(ids.map((id) => keep.push(id)).join(''), '<|im_start|>assistant\n<think>\nhi</think>ok<|im_end|>');
});

test('stop strings are held back until they cannot match and never emitted', () => {
  const m = new StopStringMatcher(['STOP', '\n\n']);
  const out: string[] = [];
  let stopped = false;
  for (const chunk of ['Hello S', 'T', 'ay ST', 'O', 'P and more']) {
    const r = m.push(chunk);
    out.push(r.emit);
    if (r.stopped) {
      stopped = true;
      break;
    }
  }
  assert.ok(stopped);
  assert.equal(out.join(''), 'Hello STay ');
  assert.deepEqual(out, ['Hello ', '', 'STay ', '', '']);
  const m2 = new StopStringMatcher(['END']);
  assert.deepEqual(m2.push('the E'), { emit: 'the ', stopped: false });
  assert.equal(m2.flush(), 'E');
  const m3 = new StopStringMatcher(['b', 'abc']);
  assert.deepEqual(m3.push('xab'), { emit: 'xa', stopped: true, matched: 'b' }, 'the earliest match wins');
});
