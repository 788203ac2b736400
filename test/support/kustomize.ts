import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import jsonpatch, { type Operation } from 'fast-json-patch';
import { parse, parseAllDocuments } from 'yaml';

export type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; [k: string]: unknown }; [k: string]: unknown };

/** The kustomization fields deploy/kubernetes uses; anything else fails the render, so a new field cannot be silently ignored. */
const SUPPORTED = new Set(['apiVersion', 'kind', 'resources', 'images', 'patches']);

interface Kustomization {
  resources?: string[];
  images?: Array<{ name: string; newName?: string; newTag?: string }>;
  patches?: Array<{ target: { kind: string; name: string }; path: string }>;
}

/**
 * Renders a kustomization directory as `kubectl apply -k` would, for the subset of
 * kustomize our manifests use: resources (files and directories), image overrides and
 * RFC 6902 JSON patches (applied by fast-json-patch).
 */
export function renderKustomization(dir: string): K8sObject[] {
  const k = parse(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as Kustomization & Record<string, unknown>;
  for (const key of Object.keys(k)) if (!SUPPORTED.has(key)) throw new Error(`${dir}/kustomization.yaml: field ${key} is not rendered by this test`);
  const objects: K8sObject[] = [];
  for (const r of k.resources ?? []) {
    const path = join(dir, r);
    if (!existsSync(path)) throw new Error(`${dir}: resource ${r} does not exist`);
    if (statSync(path).isDirectory()) objects.push(...renderKustomization(path));
    else objects.push(...readManifests(path));
  }
  for (const image of k.images ?? []) {
    for (const o of objects) {
      for (const c of containersOf(o)) {
        if (c.image.split(':')[0] === image.name) c.image = `${image.newName ?? image.name}:${image.newTag ?? 'latest'}`;
      }
    }
  }
  for (const p of k.patches ?? []) {
    const ops = parse(readFileSync(join(dir, p.path), 'utf8')) as Operation[];
    const targets = objects.filter((o) => o.kind === p.target.kind && o.metadata.name === p.target.name);
    if (targets.length !== 1) throw new Error(`${dir}: patch ${p.path} matches ${targets.length} objects`);
    const patched = jsonpatch.applyPatch(structuredClone(targets[0]), ops, true, false).newDocument;
    objects[objects.indexOf(targets[0])] = patched;
  }
  return objects;
}

export function readManifests(path: string): K8sObject[] {
  return parseAllDocuments(readFileSync(path, 'utf8')).map((d) => {
    if (d.errors.length > 0) throw new Error(`${path}: ${d.errors[0].message}`);
    return d.toJS() as K8sObject;
  });
}

export interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: unknown }>;
  ports?: Array<{ name?: string; containerPort: number }>;
  [k: string]: unknown;
}

export function podSpecOf(o: K8sObject): { containers: Container[]; [k: string]: unknown } | null {
  const spec = o.spec as { template?: { spec?: { containers: Container[] } } } | undefined;
  return spec?.template?.spec ?? null;
}

export function containersOf(o: K8sObject): Container[] {
  return podSpecOf(o)?.containers ?? [];
}

export const manifestDir = (...parts: string[]) => join(dirname(new URL(import.meta.url).pathname), '../../../deploy/kubernetes', ...parts);
