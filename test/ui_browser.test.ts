import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { type Browser, chromium, type Page } from 'playwright-core';
import { parseServeConfig, type RunningServer, startServer } from '../src/cli/serve_command.js';
import { TOKENIZER_ASSETS } from '../src/model/random_checkpoint.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { tempDir } from './support/runner.js';
import { chain, writeScriptedCheckpoint } from './support/scripted_checkpoint.js';

describe('test/ui_browser.test', () => {
  // The chat page in a real browser (Debian's Chromium, driven by playwright-core) against
  // real servers: the demo model, and a scripted model whose answers are known.
  const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
  const required = process.env.QWEN3_SERVE_REQUIRE_BROWSER === '1';
  const skip =
    !existsSync(CHROMIUM) && !required
      ? `no browser at ${CHROMIUM}: install Debian's chromium (or set CHROMIUM_PATH) to run the chat page's browser tests`
      : false;

  const tokenizer = QwenTokenizer.fromDir(TOKENIZER_ASSETS);
  const [NEWLINE] = tokenizer.encode('\n');
  const [BLANK] = tokenizer.encode('\n\n');
  /** Thinking on, the prompt ends with "assistant\n": the script thinks, then answers. */
  const THOUGHT = tokenizer.encode('<think>Weighing it up.</think>\n\n');
  /** Thinking off, it ends with the empty thinking block's "\n\n": the answer alone. */
  const ANSWER = tokenizer.encode('Plain **bold** text <img src=x onerror="alert(1)"> then<SCRIPT>window.pwned=2</script> end<|im_end|>');

  /**
   * Polls a condition from here: the page's CSP forbids eval, which Playwright's own
   * waitForFunction needs for polling.
   */
  async function until(condition: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!(await condition())) {
      if (Date.now() > end) throw new Error('timed out waiting for the page');
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Until the page shows the model's id from the server. */
  const modelShown = (page: Page, name?: string) =>
    until(async () => {
      const shown = await page.textContent('#model-name');
      return name ? shown === name : shown !== 'qwen3-serve';
    });

  interface Served {
    server: RunningServer;
    prompts: string[];
  }

  /** One cache for the file's servers: the demo model is built once, not once per server. */
  const cacheDir = tempDir('qwen3-ui-cache-');

  /** A server whose rendered prompts are recorded (--log-prompts), to see what the page asked for. */
  async function serve(flags: string[]): Promise<Served> {
    const prompts: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) {
          const entry = JSON.parse(line) as { prompt?: string };
          if (entry.prompt) prompts.push(entry.prompt);
        }
        done();
      },
    });
    const config = parseServeConfig(
      [
        '--port',
        '0',
        '--threads',
        '1',
        '--kv-cache-memory',
        '128MiB',
        '--prefix-cache-memory',
        '16MiB',
        '--cache-dir',
        cacheDir,
        '--log-prompts',
        '--log-level',
        'debug',
        ...flags,
      ],
      {},
    )!;
    const server = await startServer(config, { logger: pino({ level: 'debug' }, sink) });
    return { server, prompts };
  }

  let browser: Browser;
  let demo: Served;
  let scripted: Served;
  let keyed: Served;

  before(async () => {
    if (skip) return;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    const dir = join(tempDir(), 'scripted');
    writeScriptedCheckpoint(dir, [...chain(NEWLINE, THOUGHT), ...chain(BLANK, ANSWER)]);
    demo = await serve([]);
    scripted = await serve(['--model', dir, '--served-model-name', 'scripted']);
    keyed = await serve(['--api-key', 'sesame']);
  });

  after(async () => {
    await browser?.close();
    for (const s of [demo, scripted, keyed]) await s?.server.close();
  });

  /** A page on `server`, failing the test on any console error, page error, dialog or request to another origin. */
  async function open(server: RunningServer, viewport = { width: 1200, height: 800 }): Promise<{ page: Page; problems: string[] }> {
    const page = await browser.newPage({ viewport });
    const problems: string[] = [];
    const origin = new URL(server.url).origin;
    page.on('console', (m) => {
      // A refused API call is logged by the browser itself; the page handles it.
      if (m.type() === 'error' && !/status of 401/.test(m.text())) problems.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('dialog', (d) => {
      problems.push(`dialog: ${d.message()}`);
      void d.dismiss();
    });
    page.on('request', (r) => {
      if (!r.url().startsWith(origin) && !r.url().startsWith('blob:') && !r.url().startsWith('data:'))
        problems.push(`request outside the server: ${r.url()}`);
    });
    await page.goto(`${server.url}/`);
    return { page, problems };
  }

  /** Sends a message and waits for the whole answer (its stats line). */
  async function ask(page: Page, text: string): Promise<void> {
    await page.fill('#input', text);
    await page.keyboard.press('Enter');
    await page.waitForSelector('.message.assistant .stats', { timeout: 60_000 });
  }

  async function setNumber(page: Page, id: string, value: string): Promise<void> {
    await page.click('#toggle-settings');
    await page.fill(`#${id}`, value);
    await page.click('#toggle-settings');
  }

  async function metric(server: RunningServer, name: string): Promise<number> {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    return Number(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, 'm').exec(text)?.[1]);
  }

  test('the page loads with a strict CSP, no console errors and nothing from outside the server, and a message streams an answer', {
    skip,
  }, async () => {
    const res = await fetch(`${demo.server.url}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-security-policy') ?? '', /script-src 'self'.*connect-src 'self'/);
    const { page, problems } = await open(demo.server);
    await modelShown(page);
    await setNumber(page, 'max-tokens', '12');
    await ask(page, 'Hello there');
    const stats = await page.textContent('.message.assistant .stats');
    assert.match(stats!, /12 generated · first token \d+ ms · [\d.]+ tokens\/s/);
    assert.equal(await page.textContent('.message.user .content'), 'Hello there');
    // The conversation is kept in the browser and survives a reload.
    await page.reload();
    await page.waitForSelector('.message.assistant .stats');
    assert.equal(await page.locator('#conversations li').count(), 1);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('the thinking toggle changes the request, and the thinking block shows only with thinking on', { skip }, async () => {
    const { page, problems } = await open(scripted.server);
    await modelShown(page, 'scripted');
    await ask(page, 'Why?');
    assert.equal(await page.locator('.message.assistant details.thinking').count(), 1);
    assert.equal((await page.textContent('.message.assistant .thinking-text'))?.trim(), 'Weighing it up.');
    assert.doesNotMatch(scripted.prompts.at(-1)!, /<think>\n\n<\/think>/, 'thinking on: no empty thinking block in the prompt');
    await page.click('#new-chat');
    await page.uncheck('#thinking');
    await ask(page, 'Why not?');
    assert.match(scripted.prompts.at(-1)!, /<think>\n\n<\/think>\n\n$/, 'thinking off: the server rendered the empty thinking block');
    assert.equal(await page.locator('.message.assistant details.thinking').count(), 0);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('HTML and scripts the model writes are shown as text, never run; Markdown still renders', { skip }, async () => {
    const { page, problems } = await open(scripted.server);
    await modelShown(page, 'scripted');
    await page.uncheck('#thinking');
    await ask(page, 'Show me');
    const content = page.locator('.message.assistant .content');
    const text = await content.textContent();
    assert.match(text!, /<img src=x onerror="alert\(1\)">/);
    assert.match(text!, /<SCRIPT>window.pwned=2<\/script>/);
    assert.equal(await content.locator('img, script').count(), 0);
    assert.equal(await content.locator('strong').textContent(), 'bold');
    assert.equal(await page.evaluate('window.pwned === undefined'), true);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('Esc stops a running answer and the server frees it; edit and regenerate answer again', { skip }, async () => {
    const { page, problems } = await open(demo.server);
    await modelShown(page);
    await setNumber(page, 'max-tokens', '6000');
    await page.fill('#input', 'Talk for a long time');
    await page.keyboard.press('Enter');
    await until(
      async () =>
        ((await page.locator('.message.assistant .content').textContent()) ?? '').length > 20 ||
        (await page.locator('.message.assistant .thinking-text').count()) > 0,
    );
    assert.equal(await metric(demo.server, 'qwen3_serve_num_requests_running'), 1);
    await page.keyboard.press('Escape');
    await page.waitForSelector('#send:not([hidden])');
    for (let i = 0; i < 50 && (await metric(demo.server, 'qwen3_serve_num_requests_running')) !== 0; i++)
      await new Promise((r) => setTimeout(r, 100));
    assert.equal(await metric(demo.server, 'qwen3_serve_num_requests_running'), 0, 'the server freed the stopped request');
    // Edit the question and continue: the old answer goes, a new one comes.
    await setNumber(page, 'max-tokens', '5');
    await page.click('.message.user .actions button:has-text("Edit")');
    await page.fill('.message.user textarea', 'Short, please');
    await page.click('button:has-text("Save and continue")');
    await page.waitForSelector('.message.assistant .stats');
    assert.equal(await page.textContent('.message.user .content'), 'Short, please');
    assert.match((await page.textContent('.message.assistant .stats'))!, /5 generated/);
    await page.click('.message.assistant .actions button:has-text("Regenerate")');
    await page.waitForSelector('.message.assistant .stats');
    assert.equal(await page.locator('.message.assistant').count(), 1);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('with --api-key the page asks for the key, says clearly when it is wrong, and works with the right one', { skip }, async () => {
    const { page, problems } = await open(keyed.server);
    await page.waitForSelector('#key-dialog[open]');
    assert.match((await page.textContent('#status'))!, /API key is needed/);
    await page.fill('#key', 'wrong');
    await page.click('#key-form button');
    await until(
      async () => /refused/.test((await page.textContent('#key-message')) ?? '') && (await page.locator('#key-dialog[open]').count()) === 1,
    );
    await page.fill('#key', 'sesame');
    await page.click('#key-form button');
    await modelShown(page);
    await setNumber(page, 'max-tokens', '4');
    await ask(page, 'Hi');
    // The key lives in this tab's session only.
    assert.equal(await page.evaluate(`localStorage.getItem('qwen3-serve.api-key')`), null);
    assert.equal(await page.evaluate(`sessionStorage.getItem('qwen3-serve.api-key')`), 'sesame');
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('Shift+Enter writes a new line; a JSON schema holds the answer to it; a conversation exports as JSON', { skip }, async () => {
    const { page, problems } = await open(demo.server);
    await modelShown(page);
    await page.click('#toggle-settings');
    await page.check('#json-mode');
    await page.fill('#json-schema', JSON.stringify({ type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] }));
    await page.fill('#max-tokens', '40');
    await page.click('#toggle-settings');
    await page.uncheck('#thinking');
    await page.click('#input');
    await page.keyboard.type('first line');
    await page.keyboard.press('Shift+Enter');
    await page.keyboard.type('second line');
    assert.equal(await page.inputValue('#input'), 'first line\nsecond line');
    await page.keyboard.press('Enter');
    await page.waitForSelector('.message.assistant .stats');
    assert.equal(await page.textContent('.message.user .content'), 'first line\nsecond line');
    const answer = JSON.parse((await page.textContent('.message.assistant .content'))!) as { ok: unknown };
    assert.equal(typeof answer.ok, 'boolean');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
    const exported = JSON.parse(readFileSync((await download.path())!, 'utf8')) as { messages: Array<{ role: string; content: string }> };
    assert.deepEqual(
      exported.messages.map((m) => m.role),
      ['user', 'assistant'],
    );
    assert.equal(exported.messages[0].content, 'first line\nsecond line');
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('narrow screens: the conversation list and settings fold away', { skip }, async () => {
    const { page, problems } = await open(demo.server, { width: 380, height: 740 });
    assert.equal(await page.isVisible('#sidebar'), false);
    await page.click('#toggle-sidebar');
    assert.equal(await page.isVisible('#sidebar'), true);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test('--no-ui: no page at /', async () => {
    const s = await startServer(
      parseServeConfig(['--port', '0', '--threads', '1', '--no-ui', '--kv-cache-memory', '64MiB', '--cache-dir', cacheDir], {})!,
      { logger: pino({ level: 'silent' }) },
    );
    try {
      const res = await fetch(`${s.url}/`);
      assert.equal(res.status, 404);
      assert.equal(((await res.json()) as { error: { type: string } }).error.type, 'not_found_error');
    } finally {
      await s.close();
    }
  });
});
