import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { DockerfileParser } from 'dockerfile-ast';
import { validate } from 'dockerfile-utils';
import { parse } from 'yaml';
import { SERVE_FLAGS } from '../src/cli/serve_command.js';

// No Docker engine runs on our build machines: these are the static checks we can run.
const root = new URL('../../', import.meta.url);
const dockerfileText = readFileSync(new URL('Dockerfile', root), 'utf8');
const dockerfile = DockerfileParser.parse(dockerfileText);

function stage(name: string) {
  const froms = dockerfile.getFROMs();
  const i = froms.findIndex((f) => f.getBuildStage() === name);
  assert.ok(i >= 0, `stage ${name} exists`);
  const start = froms[i].getRange().start.line;
  const end = i + 1 < froms.length ? froms[i + 1].getRange().start.line : Infinity;
  return {
    from: froms[i],
    instructions: dockerfile.getInstructions().filter((ins) => ins.getRange().start.line >= start && ins.getRange().start.line < end),
  };
}

test('the Dockerfile lints clean', () => {
  const problems = validate(dockerfileText).filter((d) => d.severity === 1);
  assert.deepEqual(
    problems.map((p) => `${p.range.start.line + 1}: ${p.message}`),
    [],
  );
});

test('cpu and gpu targets: non-root, health-checked, port 8000, no weights inside', () => {
  for (const name of ['cpu', 'gpu']) {
    const s = stage(name);
    const kw = (k: string) => s.instructions.filter((i) => i.getKeyword() === k);
    const user = kw('USER').at(-1)?.getArgumentsContent() ?? 'root';
    assert.notEqual(user, 'root', `${name} runs as a non-root user`);
    assert.match(kw('HEALTHCHECK')[0]?.getArgumentsContent() ?? '', /\/health/);
    assert.match(kw('EXPOSE')[0]?.getArgumentsContent() ?? '', /8000/);
    for (const copy of kw('COPY')) assert.doesNotMatch(copy.getArgumentsContent() ?? '', /safetensors|\.onnx|models\//, `${name} copies no weights`);
    assert.match(kw('ENTRYPOINT')[0]?.getArgumentsContent() ?? '', /dist\/src\/cli\.js/);
  }
  const gpu = stage('gpu');
  assert.match(gpu.from.getImage() ?? '', /^nvidia\/cuda:12\.[\d.]+-cudnn-runtime/, 'CUDA 12 + cuDNN runtime base');
  const ep = stage('cuda-ep');
  assert.ok(
    ep.instructions.some((i) => i.getKeyword() === 'RUN' && /ONNXRUNTIME_NODE_INSTALL=cuda12/.test(i.getArgumentsContent() ?? '')),
    'the CUDA EP is installed at build time',
  );
  const build = stage('build');
  assert.ok(build.instructions.some((i) => i.getKeyword() === 'RUN' && /npm ci --ignore-scripts/.test(i.getArgumentsContent() ?? '')));
  const ignore = readFileSync(new URL('.dockerignore', root), 'utf8');
  for (const p of ['node_modules', 'test', 'models']) assert.match(ignore, new RegExp(`^${p}$`, 'm'));
});

test('docker-compose.yml: GPU service with a device reservation, a CPU profile, volumes, health, restart', () => {
  const text = readFileSync(new URL('docker-compose.yml', root), 'utf8');
  const compose = parse(text, { merge: true }) as {
    services: Record<string, Record<string, unknown>>;
    volumes: Record<string, unknown>;
  };
  const gpu = compose.services['qwen3-serve'] as {
    build: { target: string };
    deploy: { resources: { reservations: { devices: Array<{ driver: string; capabilities: string[] }> } } };
    volumes: string[];
    healthcheck: { test: string[] };
    restart: string;
    environment: Record<string, string>;
  };
  assert.equal(gpu.build.target, 'gpu');
  assert.equal(gpu.deploy.resources.reservations.devices[0].driver, 'nvidia');
  assert.deepEqual(gpu.deploy.resources.reservations.devices[0].capabilities, ['gpu']);
  const cpu = compose.services['qwen3-serve-cpu'] as typeof gpu & { profiles: string[] };
  assert.deepEqual(cpu.profiles, ['cpu']);
  assert.equal(cpu.build.target, 'cpu');
  for (const svc of [gpu, cpu]) {
    assert.ok(
      svc.volumes.some((v) => v.endsWith(':/cache')),
      'export cache on a volume',
    );
    assert.ok(
      svc.volumes.some((v) => v.includes(':/models')),
      'models on a volume',
    );
    assert.match(svc.healthcheck.test.join(' '), /\/health/);
    assert.equal(svc.restart, 'unless-stopped');
    // Every QWEN3_SERVE_* variable it sets is one the server reads.
    const known = new Set(Object.values(SERVE_FLAGS).map((f) => f.env));
    for (const key of Object.keys(svc.environment)) if (key.startsWith('QWEN3_SERVE_')) assert.ok(known.has(key), `${key} is a real setting`);
  }
  assert.ok('qwen3-cache' in compose.volumes);
  assert.match(text, /deploy\/kubernetes/, 'points to the manifests for more than one replica');
});

test('the README documents every serve flag and its environment variable', () => {
  const readme = readFileSync(new URL('README.md', root), 'utf8');
  for (const [name, f] of Object.entries(SERVE_FLAGS)) {
    assert.ok(readme.includes(`--${name}`), `README mentions --${name}`);
    if (f.env) assert.ok(readme.includes(f.env), `README mentions ${f.env}`);
  }
});
