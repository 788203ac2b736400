import { writeRandomCheckpoint } from '../../src/model/random_checkpoint.js';

/**
 * A real Qwen3 checkpoint whose weights encode a script: attention and MLP outputs are
 * zero, so each position's hidden state is its token's embedding, and the untied lm_head
 * maps token a to the next token b for every pair (a → b) given. Greedy decoding then
 * follows the script exactly: an honest way to make the real engine emit tool calls or
 * thinking blocks. Each token may have one successor only.
 */
export function writeScriptedCheckpoint(dir: string, transitions: Array<[number, number]>): void {
  const H = 64;
  const V = 151936;
  const successor = new Map<number, number>();
  for (const [a, b] of transitions) {
    if (successor.has(a) && successor.get(a) !== b) throw new Error(`token ${a} has two successors`);
    successor.set(a, b);
  }
  // Embeddings: deterministic pseudo-random unit-scale vectors.
  const embed = new Float32Array(V * H);
  let x = 12345;
  for (let i = 0; i < embed.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    embed[i] = (x / 2 ** 32) * 2 - 1;
  }
  const head = new Float32Array(V * H);
  for (const [a, b] of successor) {
    let norm = 0;
    for (let k = 0; k < H; k++) norm += embed[a * H + k] ** 2;
    const scale = 50 / Math.sqrt(norm);
    for (let k = 0; k < H; k++) head[b * H + k] += embed[a * H + k] * scale;
  }
  writeRandomCheckpoint(dir, {
    hiddenSize: H,
    intermediateSize: 64,
    numLayers: 1,
    numHeads: 2,
    numKvHeads: 1,
    headDim: 32,
    tieWordEmbeddings: false,
    dtype: 'f32',
    override: (name, shape) => {
      if (name === 'model.embed_tokens.weight') return embed;
      if (name === 'lm_head.weight') return head;
      const n = shape.reduce((a, d) => a * d, 1);
      if (name.endsWith('o_proj.weight') || name.endsWith('down_proj.weight')) return new Float32Array(n);
      if (name.endsWith('norm.weight')) return new Float32Array(n).fill(1);
      return null;
    },
  });
}

/** The transitions that make `ids` follow `start` token by token. */
export function chain(start: number, ids: number[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let prev = start;
  for (const id of ids) {
    out.push([prev, id]);
    prev = id;
  }
  return out;
}
