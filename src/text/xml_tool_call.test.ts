import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type ToolDefinition, toolCallSyntaxOf } from './chat_template.js';
import { OutputParser } from './output_parser.js';
import { parseXmlToolCall, xmlParameterValue } from './xml_tool_call.js';

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
    const parser = new OutputParser({ thinking: false, tools: true, parseToolCall: (b) => parseXmlToolCall(b, tools) });
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
