import { closeSync, openSync, writeSync } from 'node:fs';
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
export const DataType = onnx.TensorProto.DataType;
export type ElemType = onnxProto.onnx.TensorProto.DataType;

export type Attr =
  | { kind: 'int'; value: number }
  | { kind: 'float'; value: number }
  | { kind: 'ints'; value: number[] }
  | { kind: 'string'; value: string }
  | { kind: 'graph'; value: onnxProto.onnx.IGraphProto };

export const int = (value: number): Attr => ({ kind: 'int', value });
export const float = (value: number): Attr => ({ kind: 'float', value });
export const ints = (value: number[]): Attr => ({ kind: 'ints', value });
export const string = (value: string): Attr => ({ kind: 'string', value });
export const graph = (value: onnxProto.onnx.IGraphProto): Attr => ({ kind: 'graph', value });

const BYTES_PER_ELEMENT: Partial<Record<ElemType, number>> = {
  [DataType.FLOAT]: 4,
  [DataType.FLOAT16]: 2,
  [DataType.UINT8]: 1,
  [DataType.INT32]: 4,
  [DataType.INT64]: 8,
};

/**
 * Appends initializer bytes to `model.onnx.data` as they are produced, so an export never
 * holds more than one tensor in memory. Large tensors start on 64 KiB boundaries, which
 * lets ONNX Runtime memory-map them.
 */
export class ExternalDataWriter {
  private readonly fd: number;
  private offset = 0;
  bytesWritten = 0;

  constructor(
    readonly path: string,
    readonly location: string,
  ) {
    this.fd = openSync(path, 'w');
  }

  append(bytes: Uint8Array): { offset: number; length: number } {
    const align = bytes.byteLength >= 1 << 20 ? 65536 : 64;
    const pad = (align - (this.offset % align)) % align;
    if (pad) {
      writeSync(this.fd, new Uint8Array(pad));
      this.offset += pad;
    }
    const at = this.offset;
    let done = 0;
    while (done < bytes.byteLength) done += writeSync(this.fd, bytes, done, bytes.byteLength - done);
    this.offset += bytes.byteLength;
    this.bytesWritten += bytes.byteLength;
    return { offset: at, length: bytes.byteLength };
  }

  close(): void {
    closeSync(this.fd);
  }
}

type Dim = number | string;

function valueInfo(name: string, elemType: ElemType, dims: Dim[]): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function asBytes(data: ArrayBufferView): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * A small ONNX graph builder: nodes get unique output names, weights go to external
 * data, small constants stay inline. It knows nothing about Qwen3.
 */
export class GraphBuilder {
  private readonly nodes: onnxProto.onnx.INodeProto[] = [];
  private readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  private counter = 0;

  /** `prefix` keeps a subgraph's value names apart from its outer graph's, as ONNX requires. */
  constructor(
    private readonly data: ExternalDataWriter,
    private readonly prefix = '',
  ) {}

  /** A builder for a subgraph (a Loop or If body) whose names cannot clash with this graph's. */
  body(name: string): GraphBuilder {
    return new GraphBuilder(this.data, `${this.prefix}${name}_`);
  }

  /** This builder's nodes as a subgraph; it reads its outer graph's values by name. */
  toGraph(name: string): onnxProto.onnx.IGraphProto {
    return { name, node: this.nodes, input: this.inputs, output: this.outputs, initializer: this.initializers };
  }

  input(name: string, elemType: ElemType, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  output(name: string, elemType: ElemType, dims: Dim[]): void {
    this.outputs.push(valueInfo(name, elemType, dims));
  }

  /** Adds a node; returns its output names (fresh unless `outputNames` are given). */
  node(
    opType: string,
    inputs: string[],
    opts: { outputs?: number | string[]; attrs?: Record<string, Attr>; domain?: string; name?: string } = {},
  ): string[] {
    const id = this.counter++;
    const outs = Array.isArray(opts.outputs)
      ? opts.outputs
      : Array.from({ length: opts.outputs ?? 1 }, (_, i) => `${this.prefix}${opType.toLowerCase()}_${id}_${i}`);
    const attribute = Object.entries(opts.attrs ?? {}).map(([name, a]) => {
      switch (a.kind) {
        case 'int':
          return { name, type: onnx.AttributeProto.AttributeType.INT, i: a.value };
        case 'float':
          return { name, type: onnx.AttributeProto.AttributeType.FLOAT, f: a.value };
        case 'ints':
          return { name, type: onnx.AttributeProto.AttributeType.INTS, ints: a.value };
        case 'string':
          return { name, type: onnx.AttributeProto.AttributeType.STRING, s: new TextEncoder().encode(a.value) };
        case 'graph':
          return { name, type: onnx.AttributeProto.AttributeType.GRAPH, g: a.value };
      }
    });
    this.nodes.push({
      opType,
      input: inputs,
      output: outs,
      attribute,
      domain: opts.domain ?? '',
      name: opts.name ?? `${this.prefix}${opType}_${id}`,
    });
    return outs;
  }

  /** Single-output shorthand for `node`. */
  op(opType: string, inputs: string[], attrs?: Record<string, Attr>, domain?: string): string {
    return this.node(opType, inputs, { attrs, domain })[0];
  }

  /** A small constant stored inline in the model file. */
  constant(name: string, elemType: ElemType, dims: number[], data: ArrayBufferView): string {
    const full = `${this.prefix}${name}_${this.counter++}`;
    this.initializers.push({ name: full, dataType: elemType, dims, rawData: asBytes(data) });
    return full;
  }

  int64s(values: number[], name = 'const_i64'): string {
    return this.constant(name, DataType.INT64, [values.length], BigInt64Array.from(values.map(BigInt)));
  }

  int64Scalar(value: number, name = 'const_i64'): string {
    return this.constant(name, DataType.INT64, [], BigInt64Array.of(BigInt(value)));
  }

  /** A weight: its bytes go to the external data file now and leave memory. */
  weight(name: string, elemType: ElemType, dims: number[], data: ArrayBufferView): string {
    const expected = dims.reduce((a, d) => a * d, 1) * (BYTES_PER_ELEMENT[elemType] ?? 0);
    if (expected !== data.byteLength) {
      throw new Error(`weight ${name}: ${data.byteLength} bytes for dims [${dims}] (expected ${expected})`);
    }
    const { offset, length } = this.data.append(asBytes(data));
    this.initializers.push({
      name,
      dataType: elemType,
      dims,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: this.data.location },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(length) },
      ],
    });
    return name;
  }

  encode(opsets: Record<string, number>, producer: string): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: producer,
      opsetImport: Object.entries(opsets).map(([domain, version]) => ({ domain, version })),
      graph: {
        name: 'qwen3',
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        initializer: this.initializers,
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
