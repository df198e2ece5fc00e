#!/usr/bin/env node
// The conformance fixture: an MCP server over Streamable HTTP that implements what the
// server scenarios of @modelcontextprotocol/conformance 0.1.16 ask of a server (the
// `test_*` tools, prompts and resources, logging, progress, completion, sampling and
// elicitation through the client, SSE resumption). Written from the scenarios'
// documented requirements (`conformance list --server`, and each scenario's description).
//
// Usage: node server.mjs [--port N]   (N = 0, the default, picks an ephemeral port)
//
// Serves `/mcp` on 127.0.0.1 and prints `conformance-fixture listening http://ADDR/mcp`
// on stdout once it accepts connections. Stateful: one MCP server and transport per
// session (`Mcp-Session-Id`), with an in-memory event store so that a client whose SSE
// stream was closed can resume with `Last-Event-ID`.

import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListResourcesRequestSchema,
  ListToolsRequestSchema,
  LoggingLevelSchema,
  McpError,
  ErrorCode,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  isInitializeRequest,
} from '@modelcontextprotocol/sdk/types.js';

import {
  CONTENT_RESULTS,
  LOG_STEPS,
  PROMPT_RESULTS,
  RESOURCES,
  TEMPLATE,
  TEMPLATE_URI,
  completion,
  jsonError,
  localRequest,
  readStatic,
  readTemplate,
  serve,
  text,
} from './common.mjs';

const noArgs = { type: 'object', properties: {} };

// ---------------------------------------------------------------------------------------
// Tools

const TOOLS = [
  { name: 'test_simple_text', description: 'Returns a simple text response', inputSchema: noArgs },
  { name: 'test_image_content', description: 'Returns a 1x1 PNG image', inputSchema: noArgs },
  { name: 'test_audio_content', description: 'Returns a short WAV clip', inputSchema: noArgs },
  {
    name: 'test_embedded_resource',
    description: 'Returns an embedded text resource',
    inputSchema: noArgs,
  },
  {
    name: 'test_multiple_content_types',
    description: 'Returns text, image and resource content',
    inputSchema: noArgs,
  },
  {
    name: 'test_tool_with_logging',
    description: 'Sends three info log messages while it runs',
    inputSchema: noArgs,
  },
  { name: 'test_error_handling', description: 'Always fails (isError)', inputSchema: noArgs },
  {
    name: 'test_tool_with_progress',
    description: 'Reports progress 0, 50 and 100 of 100 when given a progress token',
    inputSchema: noArgs,
  },
  {
    name: 'test_sampling',
    description: 'Asks the client for an LLM completion of the prompt',
    inputSchema: {
      type: 'object',
      properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } },
      required: ['prompt'],
    },
  },
  {
    name: 'test_elicitation',
    description: 'Asks the client for a username and an email address',
    inputSchema: {
      type: 'object',
      properties: { message: { type: 'string', description: 'The message to show the user' } },
      required: ['message'],
    },
  },
  {
    name: 'test_elicitation_sep1034_defaults',
    description: 'Elicitation whose schema has a default for every primitive type (SEP-1034)',
    inputSchema: noArgs,
  },
  {
    name: 'test_elicitation_sep1330_enums',
    description: 'Elicitation whose schema has every enum variant (SEP-1330)',
    inputSchema: noArgs,
  },
  {
    name: 'json_schema_2020_12_tool',
    description: 'Tool with JSON Schema 2020-12 features',
    inputSchema: {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      type: 'object',
      $defs: {
        address: {
          type: 'object',
          properties: { street: { type: 'string' }, city: { type: 'string' } },
        },
      },
      properties: { name: { type: 'string' }, address: { $ref: '#/$defs/address' } },
      additionalProperties: false,
    },
  },
  {
    name: 'test_reconnection',
    description: 'Closes its SSE stream mid-call, then answers (the client resumes with Last-Event-ID)',
    inputSchema: noArgs,
  },
];

const SEP1034_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', description: 'Name', default: 'John Doe' },
    age: { type: 'integer', description: 'Age', default: 30 },
    score: { type: 'number', description: 'Score', default: 95.5 },
    status: {
      type: 'string',
      description: 'Status',
      enum: ['active', 'inactive', 'pending'],
      default: 'active',
    },
    verified: { type: 'boolean', description: 'Verified', default: true },
  },
};

const SEP1330_SCHEMA = {
  type: 'object',
  properties: {
    untitledSingle: { type: 'string', enum: ['option1', 'option2', 'option3'] },
    titledSingle: {
      type: 'string',
      oneOf: [
        { const: 'value1', title: 'First Option' },
        { const: 'value2', title: 'Second Option' },
        { const: 'value3', title: 'Third Option' },
      ],
    },
    legacyEnum: {
      type: 'string',
      enum: ['opt1', 'opt2', 'opt3'],
      enumNames: ['Option One', 'Option Two', 'Option Three'],
    },
    untitledMulti: {
      type: 'array',
      items: { type: 'string', enum: ['option1', 'option2', 'option3'] },
    },
    titledMulti: {
      type: 'array',
      items: {
        anyOf: [
          { const: 'value1', title: 'First Choice' },
          { const: 'value2', title: 'Second Choice' },
          { const: 'value3', title: 'Third Choice' },
        ],
      },
    },
  },
};

const LOG_LEVELS = LoggingLevelSchema.options; // debug … emergency, least severe first

// ---------------------------------------------------------------------------------------
// Prompts and resources

const PROMPTS = [
  { name: 'test_simple_prompt', description: 'A prompt without arguments' },
  {
    name: 'test_prompt_with_arguments',
    description: 'A prompt with two required arguments',
    arguments: [
      { name: 'arg1', description: 'First test argument', required: true },
      { name: 'arg2', description: 'Second test argument', required: true },
    ],
  },
  {
    name: 'test_prompt_with_embedded_resource',
    description: 'A prompt that embeds a resource',
    arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }],
  },
  { name: 'test_prompt_with_image', description: 'A prompt with an image' },
];

// ---------------------------------------------------------------------------------------
// One MCP server per session; `transport` is its Streamable HTTP transport.

function newServer(transport) {
  const server = new Server(
    { name: 'mcpgw-conformance-fixture', version: '1.0.0' },
    {
      capabilities: {
        tools: { listChanged: true },
        prompts: { listChanged: true },
        resources: { subscribe: true, listChanged: true },
        logging: {},
        completions: {},
      },
    },
  );
  let logLevel = 'info'; // until the client sets one
  const subscriptions = new Set();

  const log = async (extra, level, data) => {
    if (LOG_LEVELS.indexOf(level) >= LOG_LEVELS.indexOf(logLevel)) {
      await extra.sendNotification({
        method: 'notifications/message',
        params: { level, logger: 'conformance-fixture', data },
      });
    }
  };

  server.setRequestHandler(SetLevelRequestSchema, async (req) => {
    logLevel = req.params.level;
    return {};
  });

  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));

  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
    const args = req.params.arguments ?? {};
    const caps = server.getClientCapabilities() ?? {};
    switch (req.params.name) {
      case 'test_simple_text':
      case 'test_image_content':
      case 'test_audio_content':
      case 'test_embedded_resource':
      case 'test_multiple_content_types':
      case 'test_error_handling':
        return CONTENT_RESULTS[req.params.name];
      case 'test_tool_with_logging':
        for (const [i, step] of LOG_STEPS.entries()) {
          if (i > 0) await sleep(50);
          await log(extra, 'info', step);
        }
        return { content: [text('Tool with logging executed successfully')] };
      case 'test_tool_with_progress': {
        const token = req.params._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
          if (progress > 0) await sleep(50);
          if (token !== undefined) {
            await extra.sendNotification({
              method: 'notifications/progress',
              params: { progressToken: token, progress, total: 100 },
            });
          }
        }
        return { content: [text('Tool with progress executed successfully')] };
      }
      case 'test_sampling': {
        if (!caps.sampling) {
          return { isError: true, content: [text('The client does not support sampling')] };
        }
        const result = await extra.sendRequest(
          {
            method: 'sampling/createMessage',
            params: {
              messages: [{ role: 'user', content: text(String(args.prompt ?? '')) }],
              maxTokens: 100,
            },
          },
          CreateMessageResultSchema,
        );
        const answer = result.content?.type === 'text' ? result.content.text : JSON.stringify(result.content);
        return { content: [text(`LLM response: ${answer}`)] };
      }
      case 'test_elicitation': {
        if (!caps.elicitation) {
          return { isError: true, content: [text('The client does not support elicitation')] };
        }
        const result = await elicit(extra, String(args.message ?? ''), {
          type: 'object',
          properties: {
            username: { type: 'string', description: "User's response" },
            email: { type: 'string', description: "User's email address" },
          },
          required: ['username', 'email'],
        });
        return {
          content: [
            text(`User response: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`),
          ],
        };
      }
      case 'test_elicitation_sep1034_defaults':
      case 'test_elicitation_sep1330_enums': {
        if (!caps.elicitation) {
          return { isError: true, content: [text('The client does not support elicitation')] };
        }
        const sep1034 = req.params.name === 'test_elicitation_sep1034_defaults';
        const result = await elicit(
          extra,
          sep1034 ? 'Please confirm or change these defaults' : 'Please choose from these options',
          sep1034 ? SEP1034_SCHEMA : SEP1330_SCHEMA,
        );
        return {
          content: [
            text(
              `Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`,
            ),
          ],
        };
      }
      case 'json_schema_2020_12_tool':
        return { content: [text(`Received: ${JSON.stringify(args)}`)] };
      case 'test_reconnection':
        // Close this call's SSE stream mid-call and answer only after that: the answer
        // goes to the event store, and the client gets it by resuming with GET and
        // Last-Event-ID. A client on 2025-11-25 or later already holds an event id from
        // the priming event; an older one gets this log message first, so that it too
        // has an id to resume after (resumability is in 2025-03-26 already).
        await log(extra, 'notice', 'test_reconnection: closing the stream before answering');
        transport.closeSSEStream(extra.requestId);
        await sleep(100);
        return { content: [text('Reconnection test completed')] };
      default:
        throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${req.params.name}`);
    }
  });

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));

  server.setRequestHandler(GetPromptRequestSchema, async (req) => {
    const args = req.params.arguments ?? {};
    switch (req.params.name) {
      case 'test_simple_prompt':
        return PROMPT_RESULTS.simple();
      case 'test_prompt_with_arguments':
        for (const a of ['arg1', 'arg2']) {
          if (args[a] === undefined) throw new McpError(ErrorCode.InvalidParams, `Missing argument ${a}`);
        }
        return PROMPT_RESULTS.withArguments(args.arg1, args.arg2);
      case 'test_prompt_with_embedded_resource':
        if (args.resourceUri === undefined) {
          throw new McpError(ErrorCode.InvalidParams, 'Missing argument resourceUri');
        }
        return PROMPT_RESULTS.withEmbeddedResource(args.resourceUri);
      case 'test_prompt_with_image':
        return PROMPT_RESULTS.withImage();
      default:
        throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${req.params.name}`);
    }
  });

  server.setRequestHandler(CompleteRequestSchema, async (req) =>
    completion(req.params.ref, req.params.argument),
  );

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({
    resources: Object.entries(RESOURCES).map(([uri, r]) => ({
      uri,
      name: r.name,
      description: r.description,
      mimeType: r.mimeType,
    })),
  }));

  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [
      {
        uriTemplate: TEMPLATE_URI,
        name: 'template-data',
        description: 'Data for an id',
        mimeType: 'application/json',
      },
    ],
  }));

  server.setRequestHandler(ReadResourceRequestSchema, async (req) => {
    const uri = req.params.uri;
    if (RESOURCES[uri]) return readStatic(uri);
    const m = TEMPLATE.exec(uri);
    if (m) {
      return readTemplate(uri, decodeURIComponent(m[1]));
    }
    throw new McpError(-32002, `Resource not found: ${uri}`, { uri });
  });

  server.setRequestHandler(SubscribeRequestSchema, async (req) => {
    subscriptions.add(req.params.uri);
    return {};
  });

  server.setRequestHandler(UnsubscribeRequestSchema, async (req) => {
    subscriptions.delete(req.params.uri);
    return {};
  });

  return server;
}

// elicitation/create on the stream of the call that asked.
async function elicit(extra, message, requestedSchema) {
  return extra.sendRequest(
    { method: 'elicitation/create', params: { message, requestedSchema } },
    ElicitResultSchema,
  );
}

// ---------------------------------------------------------------------------------------
// Resumability: every SSE event is kept (per stream) so a client can resume after it.

class MemoryEventStore {
  constructor() {
    this.events = new Map(); // eventId -> { streamId, message }
    this.seq = 0;
  }

  async storeEvent(streamId, message) {
    const eventId = `${streamId}_${++this.seq}`;
    this.events.set(eventId, { streamId, message });
    return eventId;
  }

  async getStreamIdForEventId(eventId) {
    return this.events.get(eventId)?.streamId;
  }

  async replayEventsAfter(lastEventId, { send }) {
    const last = this.events.get(lastEventId);
    if (!last) return '';
    let after = false;
    for (const [eventId, { streamId, message }] of this.events) {
      if (eventId === lastEventId) {
        after = true;
        continue;
      }
      if (after && streamId === last.streamId) await send(eventId, message);
    }
    return last.streamId;
  }
}

// ---------------------------------------------------------------------------------------
// HTTP

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

const transports = new Map(); // session id -> transport

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== '/mcp') return jsonError(res, 404, -32601, 'Not found');
  if (!localRequest(req)) return jsonError(res, 403, -32000, 'Host or Origin is not local');

  const sessionId = req.headers['mcp-session-id'];
  if (sessionId !== undefined) {
    const transport = transports.get(sessionId);
    if (!transport) return jsonError(res, 404, -32001, 'Session not found');
    return transport.handleRequest(req, res);
  }
  if (req.method !== 'POST') return jsonError(res, 400, -32000, 'Mcp-Session-Id required');

  let body;
  try {
    body = await readJson(req);
  } catch {
    return jsonError(res, 400, -32700, 'Parse error');
  }
  if (!isInitializeRequest(body)) {
    return jsonError(res, 400, -32000, 'Mcp-Session-Id required');
  }
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    eventStore: new MemoryEventStore(),
    retryInterval: 200,
    onsessioninitialized: (id) => transports.set(id, transport),
  });
  transport.onclose = () => {
    if (transport.sessionId) transports.delete(transport.sessionId);
  };
  await newServer(transport).connect(transport);
  await transport.handleRequest(req, res, body);
}

serve(handle, () => {
  for (const t of transports.values()) t.close().catch(() => {});
});
