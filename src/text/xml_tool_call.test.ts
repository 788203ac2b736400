import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type ToolDefinition, toolCallSyntaxOf } from './chat_template.js';
import { OutputParser } from './output_parser.js';
import { parseXmlToolCall, XmlCallReader, xmlParameterValue } from './xml_tool_call.js';

const tools: ToolDefinition[] = [
  {
    type: 'function',
    function: {
      name: 'write_file',
      parameters: {
        type: 'object',
        properties: {
          path: { type: 'string' },
          content: { type: 'string' },
          mode: { type: 'integer' },
          ratio: { type: 'number' },
          force: { type: 'boolean' },
          options: { type: 'object' },
          tags: { type: 'array', items: { type: 'string' } },
          limit: { type: ['integer', 'null'] },
          version: { anyOf: [{ type: 'number' }, { type: 'string' }] },
        },
      },
    },
  },
];

test('XML calls: values typed by the schema, newlines around values are layout, text inside stays', () => {
  const body =
    '\n<function=write_file>\n<parameter=path>\nsrc/a.ts\n</parameter>\n<parameter=content>\nif (a < b && c > d) {\n  return "x";\n}\n\n</parameter>\n' +
    '<parameter=mode>\n420\n</parameter>\n<parameter=ratio>\n0.5\n</parameter>\n<parameter=force>\nTrue\n</parameter>\n' +
    '<parameter=options>\n{"recursive": true}\n</parameter>\n<parameter=tags>\n["a", "b"]\n</parameter>\n<parameter=limit>\nnull\n</parameter>\n' +
    '<parameter=version>\n1.2.3\n</parameter>\n<parameter=unknown>\n42\n</parameter>\n</function>\n';
  const call = parseXmlToolCall(body, tools);
  assert.ok(call);
  assert.equal(call.name, 'write_file');
  assert.deepEqual(JSON.parse(call.arguments), {
    path: 'src/a.ts',
    content: 'if (a < b && c > d) {\n  return "x";\n}\n',
    mode: 420,
    ratio: 0.5,
    force: true,
    options: { recursive: true },
    tags: ['a', 'b'],
    limit: null,
    version: '1.2.3',
    // Not in the schema: text, as written.
    unknown: '42',
  });
});

test('XML calls: inline values, a missing </parameter>, no parameters; malformed ones are not calls', () => {
  assert.deepEqual(parseXmlToolCall('<function=write_file><parameter=mode>7</parameter></function>', tools), {
    name: 'write_file',
    arguments: '{"mode":7}',
  });
  assert.deepEqual(JSON.parse(parseXmlToolCall('<function=write_file>\n<parameter=path>\nx\n<parameter=mode>\n1\n</function>', tools)!.arguments), {
    path: 'x',
    mode: 1,
  });
  assert.deepEqual(parseXmlToolCall('\n<function=ls>\n</function>\n', tools), { name: 'ls', arguments: '{}' });
  for (const bad of [
    '{"name": "ls", "arguments": {}}',
    'text first <function=ls></function>',
    '<function=write_file>\n<parameter=path>\nx\n</parameter>\n',
    '<function=write_file>stray text<parameter=path>x</parameter></function>',
    '<function=>\n</function>',
    '<function=write_file></function> trailing',
  ]) {
    assert.equal(parseXmlToolCall(bad, tools), null, bad);
  }
});

test('values that do not fit their type stay text', () => {
  assert.equal(xmlParameterValue('12abc', { type: 'integer' }), '12abc');
  assert.equal(xmlParameterValue('yes', { type: 'boolean' }), 'yes');
  assert.equal(xmlParameterValue('{broken', { type: 'object' }), '{broken');
  assert.equal(xmlParameterValue('[1]', { type: 'object' }), '[1]');
  assert.equal(xmlParameterValue('3', { enum: [1, 2, 3] }), 3);
});

test('the template decides the syntax; the stream parser reads XML calls split anywhere', () => {
  assert.equal(toolCallSyntaxOf("{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}{{- '<parameter=' + k + '>' }}"), 'xml');
  assert.equal(toolCallSyntaxOf('{"name": <function-name>, "arguments": <args-json-object>}'), 'json');
  const text = 'Let me look.\n<tool_call>\n<function=write_file>\n<parameter=path>\nREADME.md\n</parameter>\n</function>\n</tool_call>';
  for (const size of [1, 3, 7, 50]) {
    const parser = new OutputParser({ thinking: false, tools: true, toolCallReader: () => new XmlCallReader(tools) });
    let content = '';
    const calls = [];
    for (let i = 0; i < text.length; i += size) {
      const d = parser.push(text.slice(i, i + size));
      content += d.content;
      calls.push(...d.toolCalls);
    }
    const end = parser.finish();
    content += end.content;
    calls.push(...end.toolCalls);
    assert.equal(content, 'Let me look.\n', `pieces of ${size}`);
    assert.deepEqual(calls, [{ name: 'write_file', arguments: '{"path":"README.md"}' }]);
  }
});

test('a streamed XML call begins at its function tag and grows a parameter at a time; the pieces join to its arguments', () => {
  const text =
    '<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n<parameter=mode>\n7\n</parameter>\n</function>\n</tool_call>';
  const parser = new OutputParser({ thinking: false, tools: true, toolCallReader: () => new XmlCallReader(tools) });
  const parts = [];
  let names = 0;
  for (const ch of text) {
    const d = parser.push(ch);
    for (const p of d.toolCallParts) {
      parts.push(p);
      if (p.name !== undefined) names++;
    }
  }
  parts.push(...parser.finish().toolCallParts);
  assert.equal(names, 1);
  assert.deepEqual(parts[0], { name: 'write_file', arguments: '', done: false });
  assert.deepEqual(
    parts.map((p) => p.arguments),
    ['', '{"path":"a.txt"', ',"mode":7', '}'],
  );
  assert.equal(parts.at(-1)!.done, true);
  // Cut short after it began: still a call, with the parameters that were whole.
  const cut = new OutputParser({ thinking: false, tools: true, toolCallReader: () => new XmlCallReader(tools) });
  const early = cut.push('<tool_call>\n<function=write_file>\n<parameter=path>\nb\n</parameter>\n<parameter=content>\nhal');
  const end = cut.finish();
  assert.deepEqual(end.toolCalls, [{ name: 'write_file', arguments: '{"path":"b"}' }]);
  assert.equal([...early.toolCallParts, ...end.toolCallParts].map((p) => p.arguments).join(''), '{"path":"b"}');
  // Never begun, and not a call: text.
  const text2 = new OutputParser({ thinking: false, tools: true, toolCallReader: () => new XmlCallReader(tools) });
  const r = text2.push('<tool_call>just words</tool_call>');
  assert.equal(r.content, '<tool_call>just words</tool_call>');
  assert.deepEqual(r.toolCallParts, []);
});
