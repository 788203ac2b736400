import { createWriteStream, existsSync, mkdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ModelFormatError } from '../errors.js';
import type { Progress } from '../util/progress.js';

export interface HubOptions {
  /** "Qwen/Qwen3-0.6B" */
  repo: string;
  revision?: string;
  /** Folder the files land in (one per repo). */
  cacheDir: string;
  /** HF_ENDPOINT, default https://huggingface.co. */
  endpoint?: string;
  /** HF_TOKEN, sent as a Bearer token. */
  token?: string;
  progress: Progress;
  log: (msg: string) => void;
  /** Attempts per file; each resumes where the last stopped. */
  attempts?: number;
}

export const HUB_REPO_ID = /^[A-Za-z0-9][\w.-]*\/[\w.-]+(@[\w./-]+)?$/;

/** Files a Qwen3 checkpoint needs; everything else in the repo is skipped. */
function wanted(name: string): boolean {
  return (
    /^(config|generation_config|tokenizer|tokenizer_config|special_tokens_map)\.json$/.test(name) ||
    /^model.*\.safetensors(\.index\.json)?$/.test(name) ||
    name === 'vocab.json' ||
    name === 'merges.txt' ||
    name === 'chat_template.jinja'
  );
}

function headers(o: HubOptions, extra: Record<string, string> = {}): Record<string, string> {
  return { 'user-agent': 'qwen3-serve', ...(o.token ? { authorization: `Bearer ${o.token}` } : {}), ...extra };
}

async function listFiles(o: HubOptions, endpoint: string, revision: string): Promise<Array<{ name: string; size: number | null }>> {
  const url = `${endpoint}/api/models/${o.repo}/revision/${encodeURIComponent(revision)}`;
  const res = await fetch(url, { headers: headers(o) });
  if (res.status === 401 || res.status === 403)
    throw new ModelFormatError(`the Hub refused ${o.repo} (${res.status}): set HF_TOKEN for gated or private models.`);
  if (res.status === 404) throw new ModelFormatError(`the Hub has no model ${o.repo} at revision ${revision}.`);
  if (!res.ok) throw new ModelFormatError(`listing ${o.repo} on the Hub failed: HTTP ${res.status}.`);
  const info = (await res.json()) as { siblings?: Array<{ rfilename: string; size?: number }> };
  const files = (info.siblings ?? []).filter((s) => wanted(s.rfilename)).map((s) => ({ name: s.rfilename, size: s.size ?? null }));
  if (!files.some((f) => f.name === 'config.json')) throw new ModelFormatError(`${o.repo} has no config.json: not a Transformers checkpoint.`);
  return files;
}

/** Downloads one file, resuming a partial `.incomplete` from where it stopped. */
async function downloadFile(o: HubOptions, endpoint: string, revision: string, name: string, dest: string): Promise<void> {
  const partial = `${dest}.incomplete`;
  mkdirSync(dirname(dest), { recursive: true });
  const attempts = o.attempts ?? 5;
  for (let attempt = 1; ; attempt++) {
    const have = existsSync(partial) ? statSync(partial).size : 0;
    try {
      const res = await fetch(`${endpoint}/${o.repo}/resolve/${encodeURIComponent(revision)}/${name}`, {
        headers: headers(o, have > 0 ? { range: `bytes=${have}-` } : {}),
      });
      if (res.status === 416) {
        // Nothing left to fetch: the partial file is complete.
        renameSync(partial, dest);
        return;
      }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      const resumed = res.status === 206;
      if (have > 0 && !resumed) o.log(`${name}: the server ignored the resume request; starting over`);
      else if (have > 0) o.progress.advance(0, `${name} (resumed at ${have} bytes)`);
      const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>);
      body.on('data', (chunk: Buffer) => o.progress.advance(chunk.length, name));
      await pipeline(body, createWriteStream(partial, { flags: resumed ? 'a' : 'w' }));
      const expected = Number(res.headers.get('content-length') ?? NaN);
      const got = statSync(partial).size - (resumed ? have : 0);
      if (Number.isFinite(expected) && got !== expected) throw new Error(`connection closed after ${got} of ${expected} bytes`);
      renameSync(partial, dest);
      return;
    } catch (err) {
      if (attempt >= attempts) throw new ModelFormatError(`downloading ${name} from ${o.repo} failed: ${(err as Error).message}`);
      o.log(`${name}: ${(err as Error).message}; retrying (${attempt}/${attempts - 1})`);
      await new Promise((r) => setTimeout(r, Math.min(200 * 2 ** attempt, 5000)));
    }
  }
}

/**
 * Downloads a checkpoint from the Hugging Face Hub (or a mirror at HF_ENDPOINT) into
 * `cacheDir`, resuming interrupted files; a complete download is reused.
 */
export async function downloadFromHub(o: HubOptions): Promise<string> {
  const endpoint = (o.endpoint ?? 'https://huggingface.co').replace(/\/+$/, '');
  const revision = o.revision ?? 'main';
  const dir = join(o.cacheDir, o.repo.replace('/', '--'), revision);
  const done = join(dir, '.complete');
  if (existsSync(done)) return dir;
  const files = await listFiles(o, endpoint, revision);
  const total = files.reduce((n, f) => n + (f.size ?? 0), 0);
  o.log(`downloading ${o.repo} (${files.length} files) from ${endpoint} to ${dir}`);
  o.progress.start(total, `download ${o.repo}`);
  try {
    for (const f of files) {
      const dest = join(dir, f.name);
      if (existsSync(dest)) {
        o.progress.advance(statSync(dest).size, f.name);
        continue;
      }
      await downloadFile(o, endpoint, revision, f.name, dest);
    }
  } finally {
    o.progress.stop();
  }
  writeFileSync(done, new Date().toISOString());
  return dir;
}
