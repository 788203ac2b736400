import './telemetry_off.js';
import ort from 'onnxruntime-node';

/**
 * onnxruntime-node as the runtime uses it. onnxruntime-common stores float16 tensors in a
 * Float16Array when that global exists (Node 24 has it), which onnxruntime-node's native
 * binding cannot read ("not enough space: expected N, got 0"). It decides once, at the
 * first tensor: made here with the global hidden, float16 stays Uint16Array as on Node 20.
 */
const scope = globalThis as { Float16Array?: unknown };
if (scope.Float16Array !== undefined) {
  const float16 = scope.Float16Array;
  delete scope.Float16Array;
  try {
    new ort.Tensor('float32', new Float32Array(1), [1]);
  } finally {
    scope.Float16Array = float16;
  }
}

export default ort;
