// The chat page served at `/`: plain DOM, no framework (the page is one view with a list
// of messages; a framework would be most of its size). Markdown through marked, whose
// raw HTML is shown as text, then DOMPurify, so nothing the model writes runs.
import { Marked } from './vendor/marked.js';
import DOMPurify from './vendor/purify.js';

interface ToolCall {
  name: string;
  arguments: string;
}

interface Stats {
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  ttftMs: number;
  tokensPerSecond: number;
}

interface Message {
  role: 'user' | 'assistant';
  content: string;
  reasoning?: string;
  toolCalls?: ToolCall[];
  stats?: Stats;
  error?: string;
}

interface Conversation {
  id: string;
  title: string;
  messages: Message[];
  updatedAt: number;
}

const STORE = 'qwen3-serve.conversations';
const SETTINGS = 'qwen3-serve.settings';
const KEY = 'qwen3-serve.api-key';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const els = {
  sidebar: $('sidebar'),
  conversations: $<HTMLUListElement>('conversations'),
  messages: $('messages'),
  input: $<HTMLTextAreaElement>('input'),
  composer: $<HTMLFormElement>('composer'),
  send: $<HTMLButtonElement>('send'),
  stop: $<HTMLButtonElement>('stop'),
  status: $('status'),
  model: $('model-name'),
  thinking: $<HTMLInputElement>('thinking'),
  settings: $('settings'),
  settingsError: $('settings-error'),
  keyDialog: $<HTMLDialogElement>('key-dialog'),
  keyForm: $<HTMLFormElement>('key-form'),
  key: $<HTMLInputElement>('key'),
  keyMessage: $('key-message'),
};

const markdown = new Marked({ gfm: true, breaks: true });
// Raw HTML in the model's output is shown as the text it is.
markdown.use({ renderer: { html: (token: { text: string }) => escapeHtml(token.text) } });

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function renderMarkdown(target: HTMLElement, text: string): void {
  const html = markdown.parse(text, { async: false }) as string;
  target.innerHTML = DOMPurify.sanitize(html, {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ['img', 'style', 'form', 'input', 'iframe'],
    FORBID_ATTR: ['style'],
  });
  for (const a of target.querySelectorAll('a')) {
    a.rel = 'noopener noreferrer';
    a.target = '_blank';
  }
}

// --- state ------------------------------------------------------------------------

let conversations: Conversation[] = load<Conversation[]>(STORE, []);
let current: Conversation = conversations[0] ?? newConversation();
let model = '';
let running: AbortController | null = null;

function load<T>(key: string, fallback: T): T {
  try {
    const raw = localStorage.getItem(key);
    return raw ? (JSON.parse(raw) as T) : fallback;
  } catch {
    return fallback;
  }
}

function save(): void {
  current.updatedAt = Date.now();
  if (!conversations.includes(current)) conversations.unshift(current);
  localStorage.setItem(STORE, JSON.stringify(conversations));
  renderConversations();
}

function newConversation(): Conversation {
  return { id: crypto.randomUUID(), title: 'New chat', messages: [], updatedAt: Date.now() };
}

const settingFields = ['system', 'thinking-budget', 'temperature', 'top-p', 'top-k', 'max-tokens', 'seed', 'json-schema', 'tools'] as const;

function loadSettings(): void {
  const s = load<Record<string, string | boolean>>(SETTINGS, {});
  for (const f of settingFields) if (typeof s[f] === 'string') $<HTMLInputElement>(f).value = s[f] as string;
  if (typeof s.thinking === 'boolean') els.thinking.checked = s.thinking;
  if (typeof s['json-mode'] === 'boolean') $<HTMLInputElement>('json-mode').checked = s['json-mode'];
}

function saveSettings(): void {
  const s: Record<string, string | boolean> = { thinking: els.thinking.checked, 'json-mode': $<HTMLInputElement>('json-mode').checked };
  for (const f of settingFields) s[f] = $<HTMLInputElement>(f).value;
  localStorage.setItem(SETTINGS, JSON.stringify(s));
}

// --- the server ---------------------------------------------------------------------

function headers(): Record<string, string> {
  const key = sessionStorage.getItem(KEY);
  return { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) };
}

/** Asks for the API key until the server takes one; resolves with the model id. */
async function connect(): Promise<void> {
  const res = await fetch('/v1/models', { headers: headers() });
  if (res.status === 401) {
    const had = sessionStorage.getItem(KEY) !== null;
    sessionStorage.removeItem(KEY);
    els.keyMessage.textContent = had ? 'The server refused that key. Try again.' : 'This server needs an API key. It is kept in this tab only.';
    setStatus('An API key is needed.', true);
    els.keyDialog.showModal();
    return;
  }
  if (!res.ok) {
    setStatus(`The server answered ${res.status}: ${await errorMessage(res)}`, true);
    return;
  }
  const body = (await res.json()) as { data: Array<{ id: string }> };
  model = body.data[0]?.id ?? '';
  els.model.textContent = model;
  setStatus('');
}

async function errorMessage(res: Response): Promise<string> {
  try {
    const body = (await res.json()) as { error?: { message?: string } };
    return body.error?.message ?? res.statusText;
  } catch {
    return res.statusText;
  }
}

function setStatus(text: string, error = false): void {
  els.status.textContent = text;
  els.status.classList.toggle('error', error);
}

function numberSetting(id: string): number | undefined {
  const v = $<HTMLInputElement>(id).value.trim();
  return v === '' ? undefined : Number(v);
}

/** The request body for the conversation so far, from the settings. */
function requestBody(messages: Message[]): Record<string, unknown> {
  els.settingsError.textContent = '';
  const system = $<HTMLTextAreaElement>('system').value.trim();
  const body: Record<string, unknown> = {
    model,
    stream: true,
    stream_options: { include_usage: true },
    messages: [
      ...(system ? [{ role: 'system', content: system }] : []),
      ...messages.map((m) =>
        m.role === 'assistant' && m.toolCalls?.length
          ? { role: 'assistant', content: m.content, tool_calls: m.toolCalls.map((t, i) => ({ id: `call_${i}`, type: 'function', function: t })) }
          : { role: m.role, content: m.content },
      ),
    ],
    chat_template_kwargs: { enable_thinking: els.thinking.checked },
  };
  const budget = numberSetting('thinking-budget');
  if (els.thinking.checked && budget !== undefined) body.thinking_token_budget = budget;
  const sampling: Array<[string, string]> = [
    ['temperature', 'temperature'],
    ['top_p', 'top-p'],
    ['top_k', 'top-k'],
    ['max_tokens', 'max-tokens'],
    ['seed', 'seed'],
  ];
  for (const [field, id] of sampling) {
    const v = numberSetting(id);
    if (v !== undefined) body[field] = v;
  }
  if ($<HTMLInputElement>('json-mode').checked) {
    const schema = parseJson($<HTMLTextAreaElement>('json-schema').value, 'The JSON schema');
    body.response_format = { type: 'json_schema', json_schema: { name: 'answer', schema } };
  }
  const tools = $<HTMLTextAreaElement>('tools').value.trim();
  if (tools) body.tools = parseJson(tools, 'The tools');
  return body;
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    const message = `${what} is not valid JSON: ${(err as Error).message}`;
    els.settingsError.textContent = message;
    throw new Error(message);
  }
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number };
}

interface Delta {
  content?: string | null;
  reasoning_content?: string | null;
  reasoning?: string | null;
  tool_calls?: Array<{ index: number; function?: { name?: string; arguments?: string } }>;
}

/** Streams an answer into `reply`, re-rendering it as it grows. */
async function stream(reply: Message, signal: AbortSignal, render: () => void): Promise<void> {
  const body = requestBody(current.messages.slice(0, current.messages.indexOf(reply)));
  const started = performance.now();
  let first = 0;
  const res = await fetch('/v1/chat/completions', { method: 'POST', headers: headers(), body: JSON.stringify(body), signal });
  if (res.status === 401) {
    reply.error = 'The server needs an API key.';
    void connect();
    return;
  }
  if (!res.ok || !res.body) {
    reply.error = `${res.status}: ${await errorMessage(res)}`;
    return;
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let usage = null as Usage | null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut: number;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event
        .split('\n')
        .find((l) => l.startsWith('data: '))
        ?.slice(6);
      if (!data || data === '[DONE]') continue;
      const chunk = JSON.parse(data) as { choices?: Array<{ delta: Delta }>; usage?: Usage | null; error?: { message: string } };
      if (chunk.error) {
        reply.error = chunk.error.message;
        continue;
      }
      if (chunk.usage) usage = chunk.usage;
      const d = chunk.choices?.[0]?.delta;
      if (!d) continue;
      const thought = d.reasoning_content ?? d.reasoning ?? '';
      if ((d.content || thought || d.tool_calls) && first === 0) first = performance.now();
      if (thought) reply.reasoning = (reply.reasoning ?? '') + thought;
      if (d.content) reply.content += d.content;
      for (const t of d.tool_calls ?? []) {
        reply.toolCalls ??= [];
        const call = (reply.toolCalls[t.index] ??= { name: '', arguments: '' });
        call.name += t.function?.name ?? '';
        call.arguments += t.function?.arguments ?? '';
      }
      render();
    }
  }
  if (usage) {
    const end = performance.now();
    reply.stats = {
      promptTokens: usage.prompt_tokens,
      cachedTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
      completionTokens: usage.completion_tokens,
      ttftMs: (first || end) - started,
      tokensPerSecond: first && end > first && usage.completion_tokens > 1 ? (usage.completion_tokens - 1) / ((end - first) / 1000) : 0,
    };
  }
}

/** Generates the assistant's answer after the last message. */
async function generate(): Promise<void> {
  if (running) return;
  if (!model) await connect();
  if (!model) return;
  const reply: Message = { role: 'assistant', content: '' };
  current.messages.push(reply);
  const controller = new AbortController();
  running = controller;
  setRunning(true);
  renderMessages();
  const view = els.messages.lastElementChild as HTMLElement;
  let pending = false;
  const render = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fillMessage(view, reply, current.messages.length - 1);
    });
  };
  try {
    await stream(reply, controller.signal, render);
  } catch (err) {
    if ((err as Error).name === 'AbortError') reply.error = reply.content || reply.reasoning ? undefined : 'Stopped.';
    else reply.error = (err as Error).message;
  } finally {
    running = null;
    setRunning(false);
    if (current.title === 'New chat') current.title = current.messages[0]?.content.slice(0, 60) || 'New chat';
    save();
    renderMessages();
  }
}

function setRunning(on: boolean): void {
  els.stop.hidden = !on;
  els.send.hidden = on;
}

function stop(): void {
  running?.abort();
}

// --- rendering ---------------------------------------------------------------------

function renderConversations(): void {
  els.conversations.replaceChildren(
    ...conversations.map((c) => {
      const li = document.createElement('li');
      const open = document.createElement('button');
      open.type = 'button';
      open.className = 'open';
      open.textContent = c.title;
      if (c === current) open.setAttribute('aria-current', 'true');
      open.addEventListener('click', () => {
        if (running) return;
        current = c;
        renderAll();
      });
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.className = 'remove';
      remove.textContent = '×';
      remove.setAttribute('aria-label', `Delete ${c.title}`);
      remove.addEventListener('click', () => {
        if (running && c === current) return;
        conversations = conversations.filter((x) => x !== c);
        if (c === current) current = conversations[0] ?? newConversation();
        localStorage.setItem(STORE, JSON.stringify(conversations));
        renderAll();
      });
      li.append(open, remove);
      return li;
    }),
  );
}

function renderMessages(): void {
  els.messages.replaceChildren(
    ...current.messages.map((m, i) => {
      const article = document.createElement('article');
      fillMessage(article, m, i);
      return article;
    }),
  );
  els.messages.lastElementChild?.scrollIntoView({ block: 'end' });
}

function fillMessage(article: HTMLElement, m: Message, index: number): void {
  article.className = `message ${m.role}`;
  const parts: HTMLElement[] = [];
  if (m.reasoning) {
    const details = document.createElement('details');
    details.className = 'thinking';
    details.open = running !== null && index === current.messages.length - 1 && !m.content;
    const summary = document.createElement('summary');
    summary.textContent = 'Thinking';
    const text = document.createElement('div');
    text.className = 'thinking-text';
    text.textContent = m.reasoning;
    details.append(summary, text);
    parts.push(details);
  }
  const body = document.createElement('div');
  body.className = 'content';
  if (m.role === 'assistant') renderMarkdown(body, m.content);
  else body.textContent = m.content;
  parts.push(body);
  for (const call of m.toolCalls ?? []) {
    const pre = document.createElement('pre');
    pre.className = 'tool-call';
    pre.textContent = `${call.name}(${call.arguments})`;
    parts.push(pre);
  }
  if (m.error) {
    const p = document.createElement('p');
    p.className = 'error';
    p.textContent = m.error;
    parts.push(p);
  }
  if (m.stats) {
    const s = m.stats;
    const p = document.createElement('p');
    p.className = 'stats';
    p.textContent = `${s.promptTokens} prompt tokens (${s.cachedTokens} cached) · ${s.completionTokens} generated · first token ${Math.round(s.ttftMs)} ms · ${s.tokensPerSecond.toFixed(1)} tokens/s`;
    parts.push(p);
  }
  parts.push(actions(m, index));
  article.replaceChildren(...parts);
}

function actions(m: Message, index: number): HTMLElement {
  const bar = document.createElement('div');
  bar.className = 'actions';
  const button = (label: string, onClick: () => void) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    b.addEventListener('click', () => {
      if (!running) onClick();
    });
    bar.append(b);
  };
  if (m.role === 'user') button('Edit', () => edit(index));
  if (m.role === 'assistant' && index === current.messages.length - 1) {
    button('Regenerate', () => {
      current.messages.pop();
      void generate();
    });
  }
  return bar;
}

/** Edits a user message in place; saving drops what followed it and answers again. */
function edit(index: number): void {
  const article = els.messages.children[index] as HTMLElement;
  const area = document.createElement('textarea');
  area.value = current.messages[index].content;
  area.rows = 3;
  area.setAttribute('aria-label', 'Edit message');
  const saveButton = document.createElement('button');
  saveButton.type = 'button';
  saveButton.textContent = 'Save and continue';
  const cancel = document.createElement('button');
  cancel.type = 'button';
  cancel.textContent = 'Cancel';
  const commit = () => {
    current.messages[index].content = area.value;
    current.messages.length = index + 1;
    save();
    void generate();
  };
  saveButton.addEventListener('click', commit);
  cancel.addEventListener('click', renderMessages);
  area.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      commit();
    } else if (e.key === 'Escape') renderMessages();
  });
  article.replaceChildren(area, saveButton, cancel);
  area.focus();
}

function renderAll(): void {
  renderConversations();
  renderMessages();
}

function exportConversation(): void {
  const blob = new Blob([JSON.stringify(current, null, 2)], { type: 'application/json' });
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = `${current.title.replace(/[^\w.-]+/g, '_').slice(0, 40) || 'conversation'}.json`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// --- events ------------------------------------------------------------------------

els.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = els.input.value.trim();
  if (!text || running) return;
  current.messages.push({ role: 'user', content: text });
  els.input.value = '';
  save();
  void generate();
});
els.input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    els.composer.requestSubmit();
  }
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && running) {
    e.preventDefault();
    stop();
  }
});
els.stop.addEventListener('click', stop);
$('new-chat').addEventListener('click', () => {
  if (running) return;
  current = newConversation();
  renderAll();
  els.input.focus();
});
$('export').addEventListener('click', exportConversation);
/** Shows or hides a panel (the settings; the conversation list on narrow screens). */
const toggle = (button: string, panel: HTMLElement) => {
  const b = $(button);
  b.addEventListener('click', () => {
    const show = !panel.classList.contains('open');
    panel.classList.toggle('open', show);
    b.setAttribute('aria-expanded', String(show));
  });
};
toggle('toggle-settings', els.settings);
toggle('toggle-sidebar', els.sidebar);
els.settings.addEventListener('input', saveSettings);
els.thinking.addEventListener('change', saveSettings);
els.keyForm.addEventListener('submit', () => {
  sessionStorage.setItem(KEY, els.key.value.trim());
  els.key.value = '';
  void connect();
});

loadSettings();
renderAll();
void connect();
