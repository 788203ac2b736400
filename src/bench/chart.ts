import { Resvg } from '@resvg/resvg-js';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { LevelResult } from './load_bench.js';

/**
 * Throughput and latency against concurrency, as a PNG: Vega-Lite draws the SVG, resvg
 * rasterizes it (no native canvas needed).
 */
export async function renderChart(levels: LevelResult[], title: string): Promise<Buffer> {
  const values = levels.flatMap((l) => [
    { concurrency: l.concurrency ?? 0, metric: 'output tokens/s', panel: 'throughput', value: l.outputThroughput },
    { concurrency: l.concurrency ?? 0, metric: 'TTFT median (ms)', panel: 'latency (ms)', value: l.ttftMs.median },
    { concurrency: l.concurrency ?? 0, metric: 'TPOT median (ms)', panel: 'latency (ms)', value: l.tpotMs.median },
    { concurrency: l.concurrency ?? 0, metric: 'E2E median (ms)', panel: 'latency (ms)', value: l.e2eMs.median },
  ]);
  const layer = (panel: string): Record<string, unknown> => ({
    width: 320,
    height: 240,
    title: panel,
    transform: [{ filter: { field: 'panel', equal: panel } }],
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'concurrency', type: 'quantitative', title: 'concurrent requests' },
      y: { field: 'value', type: 'quantitative', title: panel },
      color: { field: 'metric', type: 'nominal', title: null },
    },
  });
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    background: 'white',
    data: { values },
    hconcat: [layer('throughput'), layer('latency (ms)')],
  } as unknown as TopLevelSpec;
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  return new Resvg(svg, { fitTo: { mode: 'zoom', value: 2 }, font: { loadSystemFonts: true } }).render().asPng();
}
