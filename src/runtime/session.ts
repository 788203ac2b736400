import ort from 'onnxruntime-node';
import { join } from 'node:path';
import type { Manifest } from '../export/manifest.js';
import { raiseMallocThresholds } from './malloc_thresholds.js';

export type DeviceChoice = 'auto' | 'cuda' | 'cpu';

export interface SessionResult {
  session: ort.InferenceSession;
  device: 'cuda' | 'cpu';
  /** Why auto selection fell back to CPU, for the start log. */
  fallbackReason: string | null;
}

export interface SessionOptions {
  device: DeviceChoice;
  /** ONNX Runtime intra-op threads; 0 lets it choose. */
  threads: number;
}

function sessionOptions(ep: 'cuda' | 'cpu', threads: number): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [ep],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    // Input shapes change as the batch and the cache capacity change. With memory patterns
    // on, each new shape set paid a slow first run (47-172 ms spikes at capacity changes,
    // batch 1) for no steady-state gain (batch 8: the same 56-62 ms per step either way).
    enableMemPattern: false,
  };
}

/**
 * The execution-provider order a device choice means. `auto` tries CUDA only for graphs
 * exported for it (fp16 activations); a float32 GQA graph cannot run on CUDA.
 */
export function providerPlan(device: DeviceChoice, manifest: Pick<Manifest, 'kvDtype' | 'layout'>): Array<'cuda' | 'cpu'> {
  if (device === 'cpu') return ['cpu'];
  if (device === 'cuda') return ['cuda'];
  const cudaCapable = manifest.kvDtype === 'float16' || manifest.layout === 'standard';
  return cudaCapable ? ['cuda', 'cpu'] : ['cpu'];
}

/** Creates the one session this process keeps for the model (sessions leak when recreated). */
export async function createSession(dir: string, manifest: Manifest, opts: SessionOptions): Promise<SessionResult> {
  // Every step's outputs are fresh buffers: keep glibc from handing their memory back.
  await raiseMallocThresholds();
  const path = join(dir, manifest.model);
  const plan = providerPlan(opts.device, manifest);
  let fallbackReason: string | null = null;
  if (opts.device === 'auto' && plan.length === 1) {
    fallbackReason = `the model was exported for the CPU (${manifest.kvDtype} KV cache), which CUDA's GroupQueryAttention does not run; export with --dtype fp16 or --device cuda to use a GPU`;
  }
  for (const ep of plan) {
    try {
      const session = await ort.InferenceSession.create(path, sessionOptions(ep, opts.threads));
      return { session, device: ep, fallbackReason };
    } catch (err) {
      if (ep === plan[plan.length - 1]) throw err;
      fallbackReason = `CUDA execution provider unavailable: ${(err as Error).message.split('\n')[0]}`;
    }
  }
  throw new Error('unreachable: empty provider plan');
}
