import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { LabelSelector } from '@kubernetes-models/apimachinery/apis/meta/v1/LabelSelector';
import { ObjectMeta } from '@kubernetes-models/apimachinery/apis/meta/v1/ObjectMeta';
import { HTTPRoute } from '@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { Role } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import { RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { pino } from 'pino';
import { parse } from 'yaml';
import { parseServeConfig, SERVE_FLAGS, startServer } from '../src/cli/serve_command.js';
import { Keyring } from '../src/http/api_keys.js';
import { requireApiKey } from '../src/http/auth.js';
import { Drain } from '../src/http/drain.js';
import { fixtureExport } from './support/engine.js';
import { containersOf, type K8sObject, manifestDir, podSpecOf, renderKustomization } from './support/kustomize.js';
import { tempDir } from './support/runner.js';

// deploy/kubernetes, checked as a cluster would: rendered like `kubectl apply -k`,
// validated against Kubernetes' own schemas (kubernetes-models and its CRD packages),
// and every setting, route and metric it names checked against a real server.

type Validator = { validate(): void };
const MODELS: Record<string, new (data: never) => Validator> = {
  'apps/v1/Deployment': Deployment,
  'v1/Service': Service,
  'v1/ServiceAccount': ServiceAccount,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'rbac.authorization.k8s.io/v1/Role': Role,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
  'gateway.networking.k8s.io/v1/HTTPRoute': HTTPRoute,
};

/** Validates one object; an InferencePool (no npm package ships its CRD) by the Kubernetes types it is made of. */
function validate(o: K8sObject): void {
  const key = `${o.apiVersion}/${o.kind}`;
  if (key === 'inference.networking.k8s.io/v1/InferencePool') {
    new ObjectMeta(o.metadata as never).validate();
    const spec = o.spec as { selector: unknown; targetPorts: Array<{ number: unknown }>; extensionRef: { name: unknown; portNumber?: unknown } };
    new LabelSelector(spec.selector as never).validate();
    assert.equal(spec.targetPorts.length, 1, 'one target port (the CRD allows one)');
    for (const p of spec.targetPorts) assert.ok(Number.isInteger(p.number) && (p.number as number) > 0 && (p.number as number) < 65536);
    assert.equal(typeof spec.extensionRef.name, 'string');
    return;
  }
  const Model = MODELS[key];
  assert.ok(Model, `${key} has no schema here`);
  new Model(o as never).validate();
}

const rendered = {
  cpu: renderKustomization(manifestDir('overlays/cpu')),
  gpu: renderKustomization(manifestDir('overlays/gpu')),
  gateway: renderKustomization(manifestDir('inference-gateway')),
};
const find = (objects: K8sObject[], kind: string, name = 'qwen3-serve') => {
  const o = objects.find((x) => x.kind === kind && x.metadata.name === name);
  assert.ok(o, `${kind} ${name}`);
  return o;
};
const server = (objects: K8sObject[]) => containersOf(find(objects, 'Deployment')).find((c) => c.name === 'qwen3-serve')!;
const envOf = (objects: K8sObject[]) =>
  Object.fromEntries((server(objects).env ?? []).filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]));

test("every manifest renders and validates against Kubernetes' schemas, and the validator catches a broken one", () => {
  for (const [name, objects] of Object.entries(rendered)) {
    assert.ok(objects.length >= 3, name);
    for (const o of objects) assert.doesNotThrow(() => validate(o), `${name}: ${o.kind} ${o.metadata.name}`);
  }
  const kinds = rendered.cpu.map((o) => o.kind).sort();
  assert.deepEqual(kinds, ['Deployment', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'Service', 'ServiceMonitor']);
  const broken = structuredClone(find(rendered.cpu, 'Deployment'));
  (podSpecOf(broken)!.containers[0].ports![0] as { containerPort: unknown }).containerPort = 'http';
  assert.throws(() => validate(broken), /containerPort must be integer/);
  const badProbe = structuredClone(find(rendered.cpu, 'Deployment'));
  (podSpecOf(badProbe)!.containers[0] as unknown as { readinessProbe: unknown }).readinessProbe = { httpGet: { path: '/health' } };
  assert.throws(() => validate(badProbe), /port/);
});

test('every environment variable the manifests set is a real setting with a valid value', () => {
  const known = new Set(Object.values(SERVE_FLAGS).map((f) => (f as { env?: string }).env));
  for (const objects of [rendered.cpu, rendered.gpu]) {
    for (const e of server(objects).env ?? []) {
      assert.ok(known.has(e.name) || ['HF_TOKEN', 'HF_ENDPOINT'].includes(e.name), `${e.name} is not a setting`);
    }
    // The values parse as the server parses them.
    assert.ok(parseServeConfig([], envOf(objects)));
  }
  assert.equal(envOf(rendered.gpu).QWEN3_SERVE_DEVICE, 'cuda');
  assert.equal(envOf(rendered.cpu).QWEN3_SERVE_DEVICE, 'cpu');
});

test('the overlays: one GPU per replica on GPU hosts, threads matching the CPU request on CPU hosts, images and users as the Dockerfile builds them', () => {
  const dockerfile = readFileSync(manifestDir('../../Dockerfile'), 'utf8');
  const gpu = server(rendered.gpu);
  const resources = gpu.resources as { requests: Record<string, string>; limits: Record<string, string> };
  assert.equal(resources.limits['nvidia.com/gpu'], '1');
  assert.equal(server(rendered.gpu).image, 'qwen3-serve:gpu');
  assert.equal(server(rendered.cpu).image, 'qwen3-serve:cpu');
  assert.match(dockerfile, /AS gpu\b/);
  assert.match(dockerfile, /AS cpu\b/);
  const gpuUser = (podSpecOf(find(rendered.gpu, 'Deployment'))!.securityContext as { runAsUser: number }).runAsUser;
  assert.match(dockerfile, new RegExp(`--uid ${gpuUser}\\b`));
  const cpu = server(rendered.cpu).resources as { requests: Record<string, string> };
  assert.equal(envOf(rendered.cpu).QWEN3_SERVE_THREADS, cpu.requests.cpu);
});

test("the prefix cache's disk tier has a volume of its own, larger than its bound", () => {
  for (const objects of [rendered.cpu, rendered.gpu]) {
    const config = parseServeConfig([], envOf(objects))!;
    const spec = podSpecOf(find(objects, 'Deployment'))! as unknown as { volumes: Array<{ name: string; emptyDir?: { sizeLimit?: string } }> };
    const mounts = (server(objects) as unknown as { volumeMounts: Array<{ name: string; mountPath: string; readOnly?: boolean }> }).volumeMounts;
    const mount = mounts.find((m) => m.mountPath === config['prefix-cache-dir']);
    assert.ok(mount, 'mounted where --prefix-cache-dir points');
    assert.ok(!mount.readOnly);
    const volume = spec.volumes.find((v) => v.name === mount.name)!;
    const limit = /^(\d+)Gi$/.exec(volume.emptyDir?.sizeLimit ?? '')?.[1];
    assert.ok(limit && Number(limit) * 2 ** 30 > config['prefix-cache-disk'], `${volume.emptyDir?.sizeLimit} holds --prefix-cache-disk`);
  }
});

test('draining: the grace period covers preStop and --shutdown-timeout; liveness stays open while readiness refuses', () => {
  for (const objects of [rendered.cpu, rendered.gpu]) {
    const spec = podSpecOf(find(objects, 'Deployment'))! as unknown as { terminationGracePeriodSeconds: number };
    const c = server(objects) as unknown as { lifecycle: { preStop: { exec: { command: string[] } } } };
    const preStop = Number(c.lifecycle.preStop.exec.command[1]);
    const shutdown = parseServeConfig([], envOf(objects))!['shutdown-timeout'];
    assert.ok(spec.terminationGracePeriodSeconds > preStop + shutdown, `${spec.terminationGracePeriodSeconds} > ${preStop} + ${shutdown}`);
  }
  const drain = new Drain();
  drain.start();
  assert.doesNotThrow(() => drain.admit('/live', () => {}));
  assert.doesNotThrow(() => drain.admit('/metrics', () => {}));
  assert.throws(() => drain.admit('/health', () => {}), /shutting down/);
});

test('probes, ports and every metric the manifests and the InferencePool example name exist on a real server, with the right types', async () => {
  const objects = [...rendered.cpu, ...rendered.gateway];
  const container = server(objects);
  const port = container.ports!.find((p) => p.name === 'http')!;
  // The Service and the ServiceMonitor reach the container's named port.
  const svc = find(objects, 'Service').spec as { ports: Array<{ name: string; targetPort: string }>; selector: Record<string, string> };
  assert.equal(svc.ports[0].targetPort, 'http');
  const monitor = find(objects, 'ServiceMonitor').spec as { endpoints: Array<{ port: string; path: string }> };
  assert.equal(monitor.endpoints[0].port, svc.ports[0].name);
  const podLabels = (find(objects, 'Deployment').spec as { template: { metadata: { labels: Record<string, string> } } }).template.metadata.labels;
  assert.deepEqual(svc.selector, podLabels);
  // The InferencePool selects the server's pods on its port; its endpoint picker and route exist.
  const pool = find(objects, 'InferencePool').spec as {
    selector: { matchLabels: Record<string, string> };
    targetPorts: Array<{ number: number }>;
    extensionRef: { name: string; portNumber: number };
  };
  assert.deepEqual(pool.selector.matchLabels, podLabels);
  assert.equal(pool.targetPorts[0].number, port.containerPort);
  const epp = find(objects, 'Service', pool.extensionRef.name).spec as { ports: Array<{ port: number }> };
  assert.ok(epp.ports.some((p) => p.port === pool.extensionRef.portNumber));
  const route = find(objects, 'HTTPRoute').spec as { rules: Array<{ backendRefs: Array<{ kind: string; name: string }> }> };
  assert.deepEqual(
    route.rules[0].backendRefs.map((b) => [b.kind, b.name]),
    [['InferencePool', 'qwen3-serve']],
  );

  // A real server, configured by the manifest's own environment (model, device and port made local).
  const env: Record<string, string> = {
    ...envOf(objects),
    QWEN3_SERVE_MODEL: await fixtureExport('fast'),
    QWEN3_SERVE_DEVICE: 'cpu',
    QWEN3_SERVE_THREADS: '1',
    QWEN3_SERVE_KV_CACHE_MEMORY: '64MiB',
    QWEN3_SERVE_PREFIX_CACHE_MEMORY: '16MiB',
  };
  delete env.QWEN3_SERVE_CACHE;
  delete env.QWEN3_SERVE_DTYPE;
  assert.equal(env.QWEN3_SERVE_PREFIX_CACHE_DIR, '/prefix-cache');
  env.QWEN3_SERVE_PREFIX_CACHE_DIR = tempDir('qwen3-serve-deploy-prefix-');
  const s = await startServer(parseServeConfig(['--port', '0'], env)!, { logger: pino({ level: 'silent' }) });
  try {
    const c = container as unknown as Record<string, { httpGet: { path: string; port: string } }>;
    const keyring = new Keyring('a-secret', null, { info() {}, error() {} });
    const withKey = requireApiKey(keyring);
    for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      assert.equal(c[probe].httpGet.port, 'http');
      // Kubelet sends no API key: the probes' routes stay open when one is set.
      await withKey({ url: c[probe].httpGet.path, method: 'GET', headers: {} } as never);
      const res = await fetch(`${s.url}${c[probe].httpGet.path}`);
      assert.equal(res.status, 200, `${probe} ${c[probe].httpGet.path}`);
    }
    await withKey({ url: monitor.endpoints[0].path, method: 'GET', headers: {} } as never);
    const text = await (await fetch(`${s.url}${monitor.endpoints[0].path}`)).text();
    const types = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1], m[2]]));
    const gauges: string[] = [];
    // The HPA's metric, through the Prometheus adapter's rule.
    const hpa = find(objects, 'HorizontalPodAutoscaler').spec as { metrics: Array<{ pods: { metric: { name: string } } }> };
    gauges.push(hpa.metrics[0].pods.metric.name);
    const adapter = parse(readFileSync(manifestDir('prometheus-adapter/values.yaml'), 'utf8')) as {
      rules: { custom: Array<{ seriesQuery: string; name: { as: string } }> };
    };
    for (const rule of adapter.rules.custom) {
      gauges.push(/^(\w+)\{/.exec(rule.seriesQuery)![1]);
      assert.equal(rule.name.as, hpa.metrics[0].pods.metric.name);
    }
    // The endpoint picker's metric flags (the model-server protocol's metrics).
    const args = containersOf(find(objects, 'Deployment', 'qwen3-serve-epp'))[0].args!;
    const flag = (name: string) => args[args.indexOf(name) + 1];
    for (const f of [
      '--total-queued-requests-metric',
      '--total-running-requests-metric',
      '--kv-cache-usage-percentage-metric',
      '--cache-info-metric',
    ])
      gauges.push(flag(f));
    for (const name of gauges) assert.equal(types.get(name), 'gauge', name);
    // The vLLM names the picker reads by default exist too (QWEN3_SERVE_METRICS_COMPAT=vllm).
    for (const name of ['vllm:num_requests_waiting', 'vllm:num_requests_running', 'vllm:kv_cache_usage_perc', 'vllm:cache_config_info'])
      assert.equal(types.get(name), 'gauge', name);
    assert.match(text, new RegExp(`^${flag('--cache-info-metric')}\\{[^}]*block_size="64"[^}]*num_gpu_blocks="\\d+"`, 'm'));
  } finally {
    await s.close();
  }
});
