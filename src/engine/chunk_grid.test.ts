import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ChunkGrid } from './chunk_grid.js';

const M = 7; // the message-start marker in these token lists
const A = 8; // after a marker, opens a message that joins the chunk before it (an assistant's)

/** Every chunk of `tokens` from the start, as [start, end) pairs. */
function chunks(grid: ChunkGrid, tokens: number[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let start = 0; start < tokens.length; ) {
    const end = grid.end(tokens, start);
    out.push([start, end]);
    start = end;
  }
  return out;
}

test('a chunk is at most the chunk size and ends where a message starts', () => {
  const grid = new ChunkGrid(4, new Set([M]));
  //             0  1  2  3  4  5  6  7  8  9 10 11 12
  const tokens = [M, 1, 1, 1, 1, 1, M, 2, M, 3, 3, 3, 3];
  assert.deepEqual(chunks(grid, tokens), [
    [0, 4],
    [4, 6],
    [6, 8],
    [8, 12],
    [12, 13],
  ]);
  // Without markers, the fixed grid.
  assert.deepEqual(chunks(new ChunkGrid(4), tokens), [
    [0, 4],
    [4, 8],
    [8, 12],
    [12, 13],
  ]);
});

test('a message start followed by a joined token does not end a chunk; a marker that is the last token waits for what follows', () => {
  const grid = new ChunkGrid(6, new Set([M]), new Set([A]));
  //             0  1  2  3  4  5  6  7  8  9
  const tokens = [M, 1, M, 2, M, A, 3, M, 4, M];
  assert.deepEqual(chunks(grid, tokens), [
    [0, 2],
    [2, 7],
    [7, 10],
  ]);
  // The trailing marker's chunk is cut short by the end either way: it is not whole.
  assert.equal(grid.whole(tokens, 7, 10), false);
  assert.deepEqual(chunks(grid, [...tokens, 5]), [
    [0, 2],
    [2, 7],
    [7, 9],
    [9, 11],
  ]);
  assert.deepEqual(chunks(grid, [...tokens, A]), [
    [0, 2],
    [2, 7],
    [7, 11],
  ]);
});

test('a chunk is whole unless the tokens end it short of the chunk size; a known message start after them makes it whole', () => {
  const grid = new ChunkGrid(4, new Set([M]));
  const tokens = [M, 1, 1, M, 2, 2];
  assert.equal(grid.whole(tokens, 0, 3), true, 'ended by a message start');
  assert.equal(grid.whole(tokens, 3, 6), false, 'cut short by the end: a longer prompt may run it longer');
  assert.equal(grid.whole(tokens, 3, 6, true), true, 'a message start follows');
  assert.equal(grid.whole([1, 1, 1, 1], 0, 4), true, 'a full chunk');
});

test('the chunks of a prompt are those of any longer prompt it begins, but for its cut-short last one', () => {
  const grid = new ChunkGrid(4, new Set([M]), new Set([A]));
  const long = [M, 1, 2, 3, 4, 5, M, 6, 7, M, A, 8, 9, 10, 11, 12, M, 13, M, A, M, M, 14];
  const all = chunks(grid, long);
  for (let n = 1; n <= long.length; n++) {
    const prefix = long.slice(0, n);
    const mine = chunks(grid, prefix);
    const whole = mine.filter(([s, e]) => grid.whole(prefix, s, e));
    assert.deepEqual(whole, all.slice(0, whole.length), `prefix of ${n}`);
    assert.ok(mine.length - whole.length <= 1);
  }
});
