import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Manifest } from '../export/manifest.js';
import { raiseMallocThresholds } from './malloc_thresholds.js';
import ort from './ort.js';

export type DeviceChoice = 'auto' | 'cuda' | 'cpu';

export interface SessionResult {
  session: ort.InferenceSession;
  device: 'cuda' | 'cpu';
  /** Why auto selection runs on the CPU, for the start log. */
  fallbackReason: string | null;
  /** CUDA was tried and failed (a warning), rather than never tried (information). */
  cudaFailed: boolean;
}

export interface SessionOptions {
  device: DeviceChoice;
  /** ONNX Runtime intra-op threads; 0 lets it choose. */
  threads: number;
}

export function sessionOptions(ep: 'cuda' | 'cpu', threads: number): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [ep],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    // Input shapes change as the batch and the cache capacity change: with memory patterns
    // on, each new shape set paid a slow first run for no steady-state gain (docs/performance.md).
    enableMemPattern: false,
    // The pool's threads stop spinning when a run returns, leaving the cores to the engine
    // loop and the HTTP thread between steps (docs/performance.md, the server against the engine).
    extra: { session: { force_spinning_stop: '1' } },
  };
}

/** The execution providers to try, in order, and why auto selection settled for the CPU. */
export interface ProviderPlan {
  order: Array<'cuda' | 'cpu'>;
  cpuReason: string | null;
}

function onnxruntimeNodeRoot(): string {
  return dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
}

/**
 * Whether onnxruntime-node's CUDA provider library is installed next to its binary. The npm
 * package ships the CPU provider only; the CUDA one is downloaded at install time
 * (ONNXRUNTIME_NODE_INSTALL=cuda12, as the GPU Docker image does).
 */
export function cudaProviderInstalled(packageRoot: string = onnxruntimeNodeRoot()): boolean {
  const lib = { linux: 'libonnxruntime_providers_cuda.so', win32: 'onnxruntime_providers_cuda.dll' }[process.platform as string];
  if (!lib) return false;
  try {
    // bin/napi-v<N>/<platform>/<arch>/, where the install script puts what it downloads.
    const bin = join(packageRoot, 'bin');
    return readdirSync(bin).some((napi) => existsSync(join(bin, napi, process.platform, process.arch, lib)));
  } catch {
    return false;
  }
}

/**
 * The execution-provider order a device choice means. `auto` tries CUDA only for graphs
 * exported for it (fp16 activations; a float32 GQA graph cannot run on CUDA) and only when
 * its provider is installed: otherwise ONNX Runtime prints a load error on every start of a
 * CPU host. An explicit `cuda` always tries, so a broken GPU setup fails loudly.
 */
/** Whether CUDA can run here: its provider library is installed and ONNX Runtime lists the backend. */
export function cudaUsable(backends: Array<{ name: string }> = ort.listSupportedBackends(), installed: boolean = cudaProviderInstalled()): boolean {
  return installed && backends.some((b) => b.name === 'cuda');
}

export function providerPlan(device: DeviceChoice, manifest: Pick<Manifest, 'kvDtype' | 'layout'>, cudaInstalled: boolean): ProviderPlan {
  if (device === 'cpu') return { order: ['cpu'], cpuReason: null };
  if (device === 'cuda') return { order: ['cuda'], cpuReason: null };
  const cudaCapable = manifest.kvDtype === 'float16' || manifest.layout === 'standard';
  if (!cudaCapable) {
    return {
      order: ['cpu'],
      cpuReason: `the model was exported for the CPU (${manifest.kvDtype} KV cache), which CUDA's GroupQueryAttention does not run; export with --dtype fp16 or --device cuda to use a GPU`,
    };
  }
  if (!cudaInstalled) {
    return {
      order: ['cpu'],
      cpuReason:
        "onnxruntime-node's CUDA provider is not installed (install with ONNXRUNTIME_NODE_INSTALL=cuda12 on a CUDA 12 host, or use the GPU Docker image)",
    };
  }
  return { order: ['cuda', 'cpu'], cpuReason: null };
}

/**
 * Creates the one session this process keeps for the model (sessions leak when recreated).
 * `cudaInstalled` overrides the installation probe (tests use it to take the fallback path).
 */
export async function createSession(dir: string, manifest: Manifest, opts: SessionOptions & { cudaInstalled?: boolean }): Promise<SessionResult> {
  // Every step's outputs are fresh buffers: keep glibc from handing their memory back.
  await raiseMallocThresholds();
  const path = join(dir, manifest.model);
  const plan = providerPlan(opts.device, manifest, opts.cudaInstalled ?? cudaProviderInstalled());
  let fallbackReason = plan.cpuReason;
  let cudaFailed = false;
  for (const ep of plan.order) {
    try {
      const session = await ort.InferenceSession.create(path, sessionOptions(ep, opts.threads));
      return { session, device: ep, fallbackReason, cudaFailed };
    } catch (err) {
      if (ep === plan.order[plan.order.length - 1]) throw err;
      fallbackReason = `CUDA execution provider unavailable: ${(err as Error).message.split('\n')[0]}`;
      cudaFailed = true;
    }
  }
  throw new Error('unreachable: empty provider plan');
}
