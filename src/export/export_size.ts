import type { Qwen3Config } from '../model/config.js';
import { expectedTensors } from './exporter.js';
import type { ExportDtype } from './weights.js';

/**
 * Bytes an export's weights will take, from config.json alone (within a few percent: it
 * leaves out the graph file and alignment), so a model that cannot fit is refused before
 * minutes of exporting. It follows WeightEmitter: int4 linear weights as MatMulNBits
 * blocks (half a byte each, one scale per block in the activation type), float weights in
 * the activation type, the int4 embedding table in fp16, the router never quantized.
 */
export function estimateWeightBytes(cfg: Qwen3Config, dtype: ExportDtype, activationFp16: boolean, blockSize: number): number {
  const act = activationFp16 ? 2 : 4;
  let bytes = 0;
  for (const [name, shape] of expectedTensors(cfg)) {
    const [n, k = 1] = shape;
    const vector = shape.length === 1;
    const float = vector || name.endsWith('.mlp.gate.weight') || (name === 'model.embed_tokens.weight' && dtype !== 'int4');
    if (name === 'model.embed_tokens.weight' && dtype === 'int4') bytes += n * k * 2;
    else if (float || dtype !== 'int4') bytes += n * k * act;
    else bytes += n * (k / 2 + Math.ceil(k / blockSize) * act);
  }
  // A tied head is its own int4 copy of the embedding; the rotary tables hold cos and sin per position.
  if (cfg.tieWordEmbeddings && dtype === 'int4') bytes += cfg.vocabSize * (cfg.hiddenSize / 2 + Math.ceil(cfg.hiddenSize / blockSize) * act);
  return bytes + 2 * cfg.maxPositionEmbeddings * (cfg.headDim / 2) * act;
}
