// What the two conformance fixtures share: the content the scenarios ask for (the
// `test_*` tools' results, prompts, resources, completion values) and the HTTP plumbing
// (DNS rebinding protection, the `--port` argument, the "listening" line the test waits
// for, shutdown on a signal). `server.mjs` serves it on the stateful 2025 protocol,
// `server-2026.mjs` on the stateless 2026-07-28 one.

import { createServer } from 'node:http';
import { crc32, deflateSync } from 'node:zlib';

// ---------------------------------------------------------------------------------------
// Content

// A 1x1 PNG image: one opaque red pixel.
function redPixelPng() {
  const chunk = (type, data) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, 'ascii');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
    return Buffer.concat([head, data, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(1, 0); // width
  ihdr.writeUInt32BE(1, 4); // height
  ihdr[8] = 8; // bit depth
  ihdr[9] = 6; // colour type RGBA
  // compression, filter and interlace methods stay 0
  const scanline = Buffer.from([0, 0xff, 0x00, 0x00, 0xff]); // filter 0, then RGBA
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(scanline)),
    chunk('IEND', Buffer.alloc(0)),
  ]).toString('base64');
}
export const PNG_1X1 = redPixelPng();

// A short WAV: 8 kHz, 8-bit mono PCM, 80 samples (10 ms) of silence.
function silentWav() {
  const samples = 80;
  const buf = Buffer.alloc(44 + samples);
  buf.write('RIFF', 0, 'ascii');
  buf.writeUInt32LE(36 + samples, 4);
  buf.write('WAVE', 8, 'ascii');
  buf.write('fmt ', 12, 'ascii');
  buf.writeUInt32LE(16, 16); // fmt chunk size
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(8000, 24); // sample rate
  buf.writeUInt32LE(8000, 28); // byte rate
  buf.writeUInt16LE(1, 32); // block align
  buf.writeUInt16LE(8, 34); // bits per sample
  buf.write('data', 36, 'ascii');
  buf.writeUInt32LE(samples, 40);
  buf.fill(0x80, 44); // 8-bit PCM silence is the midpoint
  return buf.toString('base64');
}
export const WAV = silentWav();

export const text = (t) => ({ type: 'text', text: t });

// The results of the tools whose answer is fixed content, by tool name.
export const CONTENT_RESULTS = {
  test_simple_text: { content: [text('This is a simple text response for testing.')] },
  test_image_content: { content: [{ type: 'image', data: PNG_1X1, mimeType: 'image/png' }] },
  test_audio_content: { content: [{ type: 'audio', data: WAV, mimeType: 'audio/wav' }] },
  test_embedded_resource: {
    content: [
      {
        type: 'resource',
        resource: {
          uri: 'test://embedded-resource',
          mimeType: 'text/plain',
          text: 'This is an embedded resource content.',
        },
      },
    ],
  },
  test_multiple_content_types: {
    content: [
      text('Multiple content types test:'),
      { type: 'image', data: PNG_1X1, mimeType: 'image/png' },
      {
        type: 'resource',
        resource: {
          uri: 'test://mixed-content-resource',
          mimeType: 'application/json',
          text: JSON.stringify({ test: 'data', value: 123 }),
        },
      },
    ],
  },
  test_error_handling: {
    isError: true,
    content: [text('This tool intentionally returns an error for testing')],
  },
};

// The three log messages of test_tool_with_logging, 50 ms apart.
export const LOG_STEPS = ['Tool execution started', 'Tool processing data', 'Tool execution completed'];

// Prompt results.
export const PROMPT_RESULTS = {
  simple: () => ({ messages: [{ role: 'user', content: text('This is a simple prompt for testing.') }] }),
  withArguments: (arg1, arg2) => ({
    messages: [{ role: 'user', content: text(`Prompt with arguments: arg1='${arg1}', arg2='${arg2}'`) }],
  }),
  withEmbeddedResource: (uri) => ({
    messages: [
      {
        role: 'user',
        content: {
          type: 'resource',
          resource: { uri, mimeType: 'text/plain', text: 'Embedded resource content for testing.' },
        },
      },
      { role: 'user', content: text('Please process the embedded resource above.') },
    ],
  }),
  withImage: () => ({
    messages: [
      { role: 'user', content: { type: 'image', data: PNG_1X1, mimeType: 'image/png' } },
      { role: 'user', content: text('Please analyze the image above.') },
    ],
  }),
};

// Values offered by completion/complete for the arguments of test_prompt_with_arguments.
const COMPLETIONS = ['paris', 'park', 'party', 'test', 'testing', 'tested'];

// completion/complete's answer for a reference and the argument being completed.
export function completion(ref, argument) {
  const known =
    ref?.type === 'ref/prompt' &&
    ref.name === 'test_prompt_with_arguments' &&
    (argument?.name === 'arg1' || argument?.name === 'arg2');
  const values = known ? COMPLETIONS.filter((v) => v.startsWith(String(argument.value ?? ''))) : [];
  return { completion: { values, total: values.length, hasMore: false } };
}

export const RESOURCES = {
  'test://static-text': {
    name: 'static-text',
    description: 'A static text resource',
    mimeType: 'text/plain',
    text: 'This is the content of the static text resource.',
  },
  'test://static-binary': {
    name: 'static-binary',
    description: 'A static binary resource (a 1x1 PNG)',
    mimeType: 'image/png',
    blob: PNG_1X1,
  },
  'test://watched-resource': {
    name: 'watched-resource',
    description: 'A resource clients can subscribe to',
    mimeType: 'text/plain',
    text: 'Watched resource content.',
  },
};

// The result of reading one of RESOURCES.
export function readStatic(uri) {
  const r = RESOURCES[uri];
  const body = r.blob !== undefined ? { blob: r.blob } : { text: r.text };
  return { contents: [{ uri, mimeType: r.mimeType, ...body }] };
}

export const TEMPLATE_URI = 'test://template/{id}/data';
export const TEMPLATE = /^test:\/\/template\/([^/]+)\/data$/;

// The result of reading the template's resource for `id`.
export function readTemplate(uri, id) {
  return {
    contents: [
      {
        uri,
        mimeType: 'application/json',
        text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }),
      },
    ],
  };
}

// ---------------------------------------------------------------------------------------
// HTTP

const LOCAL_HOSTNAMES = new Set(['localhost', '127.0.0.1', '[::1]']);

// DNS rebinding protection: a local server only answers requests whose Host (and Origin,
// if any) name this machine.
export function localRequest(req) {
  const hostname = (value) => {
    try {
      return new URL(value.includes('://') ? value : `http://${value}`).hostname;
    } catch {
      return undefined;
    }
  };
  const host = req.headers.host;
  if (!host || !LOCAL_HOSTNAMES.has(hostname(host))) return false;
  const origin = req.headers.origin;
  return origin === undefined || LOCAL_HOSTNAMES.has(hostname(origin));
}

export function jsonError(res, status, code, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

function parsePort(argv) {
  const i = argv.indexOf('--port');
  const value = i >= 0 ? argv[i + 1] : '0';
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`usage: ${process.argv[1]} [--port N]; bad port ${value}`);
    process.exit(2);
  }
  return port;
}

// Serves `handle(req, res)` on 127.0.0.1 at the `--port` of the command line, prints
// `conformance-fixture listening http://ADDR/mcp` once it accepts connections, and on
// SIGINT/SIGTERM calls `onStop` and exits.
export function serve(handle, onStop = () => {}) {
  const httpServer = createServer((req, res) => {
    handle(req, res).catch((err) => {
      console.error('conformance-fixture: request failed:', err);
      if (!res.headersSent) jsonError(res, 500, -32603, 'Internal error');
      else res.end();
    });
  });
  httpServer.listen(parsePort(process.argv.slice(2)), '127.0.0.1', () => {
    const { address, port } = httpServer.address();
    console.log(`conformance-fixture listening http://${address}:${port}/mcp`);
  });
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
      onStop();
      httpServer.close(() => process.exit(0));
      httpServer.closeAllConnections();
    });
  }
}
