import { join } from 'node:path';
import { TOKENIZER_ASSETS, writeRandomCheckpoint } from '../../src/model/random_checkpoint.js';
import { QwenTokenizer } from '../../src/text/tokenizer.js';
import { mulberry32 } from '../../src/util/random.js';
import { tempDir } from './runner.js';
import { startTestServer, type TestServer } from './server.js';

const V = 151936;

/** A context-dependent part of a script: what some tokens are followed by once `marker` has been seen. */
export interface ScriptBranch {
  /** The token whose presence anywhere earlier in the context sets the flag (e.g. `<tool_response>`). */
  marker: number;
  /** Successors that replace those of the plain transitions while the marker is in the context (tokens without a plain one take it always). */
  whenMarked: Array<[number, number]>;
}

export interface ScriptedCheckpointOptions {
  branch?: ScriptBranch;
}

/**
 * A real Qwen3 checkpoint whose weights encode a script: attention and MLP outputs are
 * zero, so each position's hidden state is its token's embedding, and the untied lm_head
 * maps token a to the next token b for every pair (a → b) given. Greedy decoding then
 * follows the script exactly: an honest way to make the real engine emit tool calls or
 * thinking blocks. Each token may have one successor only.
 *
 * With `branch`, tokens listed in `whenMarked` with another successor than in
 * `transitions` take that one when the marker occurs earlier in the context (for
 * example, a tool call on the first request and the answer once a `<tool_response>` is
 * in the history); see writeBranchingCheckpoint for how the real layer computes that.
 */
export function writeScriptedCheckpoint(dir: string, transitions: Array<[number, number]>, options: ScriptedCheckpointOptions = {}): void {
  if (options.branch) writeBranchingCheckpoint(dir, planBranches(transitions, options.branch));
  else writeBigramCheckpoint(dir, successors(transitions, ''));
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

function successors(transitions: Array<[number, number]>, state: string): Map<number, number> {
  const successor = new Map<number, number>();
  for (const [a, b] of transitions) {
    if (successor.has(a) && successor.get(a) !== b) throw new Error(`token ${a} has two successors${state} (${successor.get(a)} and ${b})`);
    successor.set(a, b);
  }
  return successor;
}

/** One layer, two heads of 32 sharing one KV head, an untied head, float32: the shape both constructions fill in. */
function scriptedShape(hiddenSize: number) {
  return {
    hiddenSize,
    intermediateSize: 64,
    numLayers: 1,
    numHeads: 2,
    numKvHeads: 1,
    headDim: HEAD_DIM,
    tieWordEmbeddings: false,
    dtype: 'f32' as const,
  };
}

/** The original construction, kept bit for bit: tests rely on what it does off script too. */
function writeBigramCheckpoint(dir: string, successor: Map<number, number>): void {
  const H = 64;
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
    ...scriptedShape(H),
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

interface BranchPlan {
  /** Successors that hold with and without the marker. */
  plain: Map<number, number>;
  /** Branch tokens: their successor without (b0) and with (b1) the marker. */
  branches: Map<number, { b0: number; b1: number }>;
  marker: number;
}

function planBranches(transitions: Array<[number, number]>, branch: ScriptBranch): BranchPlan {
  const unmarked = successors(transitions, ' without the marker');
  const marked = successors(branch.whenMarked, ' with the marker');
  const plain = new Map(unmarked);
  const branches = new Map<number, { b0: number; b1: number }>();
  for (const [a, b1] of marked) {
    const b0 = unmarked.get(a);
    if (b0 === undefined || b0 === b1) plain.set(a, b1);
    else {
      plain.delete(a);
      branches.set(a, { b0, b1 });
    }
  }
  if (branches.has(branch.marker)) throw new Error(`the marker ${branch.marker} cannot itself be a branch token`);
  // One flag ranks every unmarked successor below every marked one: a token cannot be both.
  const lows = new Set([...branches.values()].map((b) => b.b0));
  for (const [a, { b1 }] of branches) {
    if (lows.has(b1))
      throw new Error(`token ${b1} follows branch token ${a} only with the marker and another branch token only without it; reword one of them`);
  }
  return { plain, branches, marker: branch.marker };
}

// The branching construction. Every embedding has norm 1: a token part (TOKEN_PART) in
// the first D dimensions, then four reserved dimensions: B (ROLE_PART in branch tokens),
// C (ROLE_PART in every other token), M (ROLE_PART in the marker) and F (the flag, zero in
// every embedding, written by attention).
const TOKEN_PART = Math.sqrt(3) / 2;
const ROLE_PART = 0.5;
/** Dimension F of a branch token's residual when it sees a marker. */
const FLAG = 1;
/** Attention score of a query on a marker: +SCORE from branch tokens, −SCORE from all others. */
const SCORE = 40;
/** The scripted successor's logit lead from the token part alone. */
const SUCCESSOR_LOGIT = 400;
/** How far a branch token's flag-free successor leads without a marker. */
const BRANCH_LOGIT = 160;
const HEAD_DIM = 32;

/** `n` orthonormal vectors of length `d` (Gram–Schmidt on random ones), so scripted rows never interfere. */
function orthonormal(n: number, d: number, rand: () => number): Float64Array[] {
  const out: Float64Array[] = [];
  while (out.length < n) {
    const v = Float64Array.from({ length: d }, () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand()));
    for (const u of out) {
      let dot = 0;
      for (let k = 0; k < d; k++) dot += v[k] * u[k];
      for (let k = 0; k < d; k++) v[k] -= dot * u[k];
    }
    const norm = Math.hypot(...v);
    if (norm < 1e-3) continue;
    out.push(v.map((x) => x / norm));
  }
  return out;
}

/**
 * Layer 0 attention computes the flag. q reads B and C only, so after q_norm it is
 * ±sqrt(32)·w on one dimension: positive in branch tokens, negative in all others; k and
 * v read M only, so they are exactly 0 except at markers. q and k sit on the head's
 * lowest-frequency RoPE pair (it turns by under 0.1 rad over 40k positions), so a marker
 * scores ≈ +SCORE from a branch token and ≈ −SCORE from any other, against 0 for the rest:
 * a branch token puts weight ≈ 1 on the markers when there are any (and outputs exactly 0
 * when there are none), other tokens ≈ e^−40 per marker. o_proj writes v into F.
 *
 * lm_head: successor rows read the (orthonormal) token parts of their predecessors, as
 * in the plain script; a branch token's unmarked successor row also reads B, its marked
 * successor row reads F, weighted so that the flag (F ≈ FLAG) overturns the B lead by as
 * much as that lead (both after the final RMSNorm, which scales by 1/√2 when flagged).
 */
function writeBranchingCheckpoint(dir: string, plan: BranchPlan): void {
  const sources = [...plan.plain.keys(), ...plan.branches.keys()];
  // Room for one orthonormal token part per source: 64 unless the script is long.
  const H = Math.max(64, HEAD_DIM * Math.ceil((sources.length + 4) / HEAD_DIM));
  const D = H - 4;
  const [B, C, M, F] = [D, D + 1, D + 2, D + 3];
  const scale = Math.sqrt(H); // RMSNorm maps a norm-1 vector to norm √H
  const rand = mulberry32(20240601);

  const embed = new Float32Array(V * H);
  const setTokenPart = (t: number, v: ArrayLike<number>, norm: number) => {
    let n2 = 0;
    for (let k = 0; k < D; k++) n2 += v[k] * v[k];
    for (let k = 0; k < D; k++) embed[t * H + k] = (v[k] * norm) / Math.sqrt(n2);
  };
  const noise = new Float64Array(D);
  for (let t = 0; t < V; t++) {
    for (let k = 0; k < D; k++) noise[k] = rand() * 2 - 1;
    setTokenPart(t, noise, TOKEN_PART);
    embed[t * H + (plan.branches.has(t) ? B : C)] = ROLE_PART;
  }
  const basis = orthonormal(sources.length, D, rand);
  const tokenPart = new Map<number, number>();
  sources.forEach((a, i) => {
    // The marker's M part comes out of its token part, so its norm stays 1.
    const part = a === plan.marker ? Math.sqrt(TOKEN_PART ** 2 - ROLE_PART ** 2) : TOKEN_PART;
    setTokenPart(a, basis[i], part);
    tokenPart.set(a, part);
  });
  if (!tokenPart.has(plan.marker))
    setTokenPart(plan.marker, embed.subarray(plan.marker * H, plan.marker * H + D), Math.sqrt(TOKEN_PART ** 2 - ROLE_PART ** 2));
  embed[plan.marker * H + M] = ROLE_PART;

  const head = new Float32Array(V * H);
  // A row reading token a's part gains SUCCESSOR_LOGIT there (less by the 1/√2 when flagged).
  const read = (b: number, a: number) => {
    const w = SUCCESSOR_LOGIT / (scale * tokenPart.get(a)! ** 2);
    for (let k = 0; k < D; k++) head[b * H + k] += w * embed[a * H + k];
  };
  for (const [a, b] of plan.plain) read(b, a);
  const byRole = BRANCH_LOGIT / (scale * ROLE_PART);
  const byFlag = (2 * BRANCH_LOGIT) / (scale * FLAG);
  for (const [a, { b0, b1 }] of plan.branches) {
    read(b0, a);
    read(b1, a);
    head[b0 * H + B] = byRole;
    head[b1 * H + F] = byFlag;
  }

  // q_norm / k_norm set the score: q·k/√32 = √32·w² on the shared dimension.
  const qkWeight = Math.sqrt(SCORE / Math.sqrt(HEAD_DIM));
  const pair = HEAD_DIM / 2 - 1; // rotate_half pairs (i, i + 16): i = 15 turns slowest
  writeRandomCheckpoint(dir, {
    ...scriptedShape(H),
    override: (name, shape) => {
      if (name === 'model.embed_tokens.weight') return embed;
      if (name === 'lm_head.weight') return head;
      const n = shape.reduce((a, d) => a * d, 1);
      const w = new Float32Array(n);
      const cols = shape[1];
      if (name.endsWith('q_proj.weight')) {
        w[pair * cols + B] = 1;
        w[pair * cols + C] = -1;
        return w;
      }
      if (name.endsWith('k_proj.weight')) {
        w[pair * cols + M] = 1;
        return w;
      }
      if (name.endsWith('v_proj.weight')) {
        w[M] = 1;
        return w;
      }
      if (name.endsWith('o_proj.weight')) {
        // A marker's v is √H·ROLE_PART after input_layernorm; F gets FLAG from full weight on markers.
        w[F * cols] = FLAG / (scale * ROLE_PART);
        return w;
      }
      if (name.endsWith('q_norm.weight') || name.endsWith('k_norm.weight')) {
        w.fill(1);
        w[pair] = qkWeight;
        return w;
      }
      if (name.endsWith('down_proj.weight')) return w;
      if (name.endsWith('norm.weight')) return w.fill(1);
      return null;
    },
  });
}

/** The designed logit margins of a branching checkpoint (scripted successor over the runner-up). */
export const BRANCHING_MARGINS = {
  plain: SUCCESSOR_LOGIT,
  branchUnmarked: BRANCH_LOGIT,
  branchMarked: BRANCH_LOGIT / Math.sqrt(1 + FLAG ** 2),
};

/**
 * A real server (model `scripted`) on a checkpoint that writes `script` after every
 * generation prompt: they end with "assistant\n" (thinking on) or "</think>\n\n" (off).
 */
export async function startScriptedServer(script: string, flags: string[] = []): Promise<TestServer> {
  const tokenizer = QwenTokenizer.fromDir(TOKENIZER_ASSETS);
  const ids = tokenizer.encode(script);
  if (new Set(ids).size !== ids.length) throw new Error(`the script needs distinct tokens: ${script}`);
  const dir = join(tempDir(), 'scripted');
  writeScriptedCheckpoint(dir, chain(tokenizer.encode('\n')[0], ids));
  return startTestServer(dir, ['--served-model-name', 'scripted', ...flags]);
}
