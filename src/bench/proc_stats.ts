/**
 * CPU time and memory of processes and of the machine, from Linux's /proc: what a
 * benchmark needs to say how much each server used and how busy everything else was.
 * Elsewhere (no /proc) every reading is null and the reports say so.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';

/** USER_HZ: the unit of /proc's CPU times, 100 on every Linux architecture Node runs on. */
const TICKS_PER_SECOND = 100;

export const procAvailable = (): boolean => existsSync('/proc/stat') && existsSync('/proc/self/stat');

function read(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

/** The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses). */
function statFields(pid: number): string[] | null {
  const text = read(`/proc/${pid}/stat`);
  if (text === null) return null;
  return text.slice(text.lastIndexOf(')') + 2).split(' ');
}

/** Every process's parent, from one pass over /proc. */
function parents(): Map<number, number> {
  const out = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const f = statFields(Number(name));
    if (f) out.set(Number(name), Number(f[1]));
  }
  return out;
}

/** `pid` and every process descended from it that is still alive. */
export function processTree(pid: number): number[] {
  const byParent = new Map<number, number[]>();
  for (const [child, parent] of parents()) {
    const list = byParent.get(parent) ?? [];
    list.push(child);
    byParent.set(parent, list);
  }
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift()!;
    if (!existsSync(`/proc/${p}`)) continue;
    out.push(p);
    queue.push(...(byParent.get(p) ?? []));
  }
  return out;
}

/** CPU seconds of one process: all its threads, and its children that have ended (utime + stime + cutime + cstime). */
function cpuSecondsOf(pid: number, withChildren: boolean): number {
  const f = statFields(pid);
  if (!f) return 0;
  // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
  const ticks = Number(f[11]) + Number(f[12]) + (withChildren ? Number(f[13]) + Number(f[14]) : 0);
  return ticks / TICKS_PER_SECOND;
}

function statusKiB(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(read(`/proc/${pid}/status`) ?? '');
  return m ? Number(m[1]) : 0;
}

export interface TreeUsage {
  pids: number[];
  /** CPU seconds used so far by the tree (living processes, and the children they have reaped). */
  cpuS: number;
  /** Resident memory now, summed over the tree. */
  rssBytes: number;
  /** Each process's peak resident memory (VmHWM), summed over the tree. */
  hwmBytes: number;
}

/** What a process and its descendants use, or null when it has ended (or there is no /proc). */
export function treeUsage(pid: number): TreeUsage | null {
  if (!procAvailable() || !existsSync(`/proc/${pid}`)) return null;
  const pids = processTree(pid);
  let cpuS = 0;
  let rss = 0;
  let hwm = 0;
  for (const p of pids) {
    cpuS += cpuSecondsOf(p, true);
    rss += statusKiB(p, 'VmRSS');
    hwm += statusKiB(p, 'VmHWM');
  }
  return { pids, cpuS, rssBytes: rss * 1024, hwmBytes: hwm * 1024 };
}

/** A reading of the whole machine and of the processes a benchmark knows (the servers, itself). */
export interface LoadSnapshot {
  /** CPU seconds of all CPUs: busy, and in all. */
  busyS: number;
  totalS: number;
  /** CPU seconds each known process tree has used. */
  known: number[];
  /** CPU seconds this process has used (its own threads only: the servers are counted in `known`). */
  selfS: number;
}

/** The machine's CPU time so far and that of the given process trees, or null without /proc. */
export function loadSnapshot(pids: number[]): LoadSnapshot | null {
  const stat = read('/proc/stat');
  if (stat === null || !procAvailable()) return null;
  // cpu  user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
  const v = stat.split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  const idle = v[3] + v[4];
  return {
    busyS: (total - idle) / TICKS_PER_SECOND,
    totalS: total / TICKS_PER_SECOND,
    known: pids.map((p) => treeUsage(p)?.cpuS ?? 0),
    selfS: cpuSecondsOf(process.pid, false),
  };
}

export interface LoadShare {
  /** Fraction of the whole machine (all CPUs) used by processes other than the known ones and this one. */
  others: number;
  /** Fraction of the whole machine this process (the load generator) used. */
  self: number;
  /** CPU seconds each known tree used in between. */
  known: number[];
  seconds: number;
}

/** What the machine did between two snapshots. */
export function loadBetween(a: LoadSnapshot, b: LoadSnapshot): LoadShare {
  const total = b.totalS - a.totalS;
  const known = b.known.map((k, i) => Math.max(0, k - (a.known[i] ?? 0)));
  const self = Math.max(0, b.selfS - a.selfS);
  const others = b.busyS - a.busyS - known.reduce((x, y) => x + y, 0) - self;
  return {
    others: total > 0 ? Math.min(1, Math.max(0, others / total)) : 0,
    self: total > 0 ? self / total : 0,
    known,
    seconds: total,
  };
}

export interface IdleWait {
  /** Whether the machine went idle before the bound. */
  idle: boolean;
  waitedS: number;
  /** Other processes' share of the machine over the last window looked at. */
  others: number;
}

/**
 * Waits until processes other than the known ones and this one use at most `threshold`
 * of the machine over a window of `windowS`, for at most `maxWaitS`: a measurement taken
 * while something else runs says little about the servers.
 */
export async function waitForIdle(
  pids: number[],
  threshold: number,
  maxWaitS: number,
  windowS = 0.5,
  signal?: AbortSignal,
): Promise<IdleWait | null> {
  const started = performance.now();
  let before = loadSnapshot(pids);
  if (before === null) return null;
  for (;;) {
    await new Promise((r) => setTimeout(r, windowS * 1000));
    const after = loadSnapshot(pids);
    if (after === null) return null;
    const { others } = loadBetween(before, after);
    const waitedS = (performance.now() - started) / 1000;
    if (others <= threshold) return { idle: true, waitedS, others };
    if (waitedS >= maxWaitS || signal?.aborted) return { idle: false, waitedS, others };
    before = after;
  }
}

export interface TreeStats {
  pid: number;
  /** Resident memory when watching began (the server just ready). */
  rssAtStartBytes: number | null;
  /** The highest of: resident memory summed over the tree at a sample, and the processes' peaks (VmHWM) summed. */
  peakRssBytes: number | null;
  /** CPU seconds the tree used from when watching began to the last sample. */
  cpuS: number | null;
}

/**
 * Watches a process tree every `intervalMs` (its peak memory and CPU time) until stopped;
 * the kernel's own peak (VmHWM) catches what happens between two samples.
 */
export class TreeMonitor {
  readonly stats: TreeStats;
  private timer: NodeJS.Timeout;
  private readonly cpuAtStart: number;

  constructor(pid: number, intervalMs = 500) {
    const first = treeUsage(pid);
    this.cpuAtStart = first?.cpuS ?? 0;
    this.stats = { pid, rssAtStartBytes: first?.rssBytes ?? null, peakRssBytes: null, cpuS: null };
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  sample(): TreeStats {
    const u = treeUsage(this.stats.pid);
    if (u) {
      this.stats.peakRssBytes = Math.max(this.stats.peakRssBytes ?? 0, u.rssBytes, u.hwmBytes);
      this.stats.cpuS = u.cpuS - this.cpuAtStart;
    }
    return this.stats;
  }

  /** A last sample, and no more. */
  stop(): TreeStats {
    clearInterval(this.timer);
    return this.sample();
  }
}
