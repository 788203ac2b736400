/**
 * ONNX Runtime's official Linux and macOS builds (1.29 and later) send usage telemetry to
 * Microsoft unless ORT_DISABLE_TELEMETRY is set before the library starts: a local server
 * must not talk to anyone its user did not ask for. src/runtime/ort.ts, the one module that
 * loads onnxruntime-node, imports this first; an operator's own setting (ORT_DISABLE_TELEMETRY=0) is kept.
 */
process.env.ORT_DISABLE_TELEMETRY ??= '1';
