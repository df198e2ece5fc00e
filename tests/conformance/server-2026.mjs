#!/usr/bin/env node
// The modern conformance fixture: an MCP server of the stateless 2026-07-28 revision only
// (every request self-contained, `_meta` per request, `server/discover`, results of type
// `input_required` for multi round-trip requests, `subscriptions/listen`), built on the
// TypeScript SDK v2 (`@modelcontextprotocol/server`, `createMcpHandler`). What
// `@modelcontextprotocol/conformance@0.2.0-alpha.12 server --requirements 2026-07-28`
// runs against, directly and through mcpgw (tests/e2e/conformance.rs). Requests of the
// 2025 protocol are refused (`legacy: 'reject'`): this fixture is the gateway's modern
// upstream, found by its answer to `server/discover`.
//
// Usage: node server-2026.mjs [--port N]   (N = 0, the default, picks an ephemeral port)
//
// Serves `/mcp` on 127.0.0.1 and prints `conformance-fixture listening http://ADDR/mcp`
// on stdout once it accepts connections.

import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import { toNodeHandler } from '@modelcontextprotocol/node';
import {
  CLIENT_CAPABILITIES_META_KEY,
  McpServer,
  ProtocolError,
  ProtocolErrorCode,
  ResourceTemplate,
  acceptedContent,
  createMcpHandler,
  createRequestStateCodec,
  inputRequired,
} from '@modelcontextprotocol/server';
import * as z from 'zod/v4';

import {
  CONTENT_RESULTS,
  LOG_STEPS,
  PROMPT_RESULTS,
  RESOURCES,
  TEMPLATE_URI,
  completion,
  jsonError,
  localRequest,
  readStatic,
  readTemplate,
  serve,
  text,
} from './common.mjs';

// `requestState` comes back from the client, so it is sealed (HMAC, with a key of this
// process) when minted and checked before a handler sees it; a retry with a state that
// fails the check is refused with -32602.
const stateCodec = createRequestStateCodec({ key: crypto.getRandomValues(new Uint8Array(32)) });

const noArgs = z.object({});

// Elicitation requests the multi round-trip tools make.
const askText = (message, field) =>
  inputRequired.elicit({
    message,
    requestedSchema: { type: 'object', properties: { [field]: { type: 'string' } }, required: [field] },
  });
const askConfirm = () =>
  inputRequired.elicit({
    message: 'Please confirm',
    requestedSchema: { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] },
  });
const askModel = (prompt, maxTokens) =>
  inputRequired.createMessage({ messages: [{ role: 'user', content: text(prompt) }], maxTokens });

// A fresh server per request: the 2026-07-28 revision keeps no state between requests.
function newServer() {
  const server = new McpServer(
    { name: 'mcpgw-conformance-fixture-2026', version: '1.0.0' },
    {
      capabilities: {
        tools: { listChanged: true },
        prompts: { listChanged: true },
        resources: { listChanged: true },
        completions: {},
      },
      requestState: { verify: stateCodec.verify },
    },
  );
  const tool = (name, description, handler) =>
    server.registerTool(name, { description, inputSchema: noArgs }, handler);

  // Fixed content.
  for (const [name, result] of Object.entries(CONTENT_RESULTS)) {
    tool(name, `Answers ${name.replace('test_', '').replaceAll('_', ' ')}`, async () => result);
  }

  tool('test_tool_with_logging', 'Sends three info log messages while it runs', async (_args, ctx) => {
    for (const [i, step] of LOG_STEPS.entries()) {
      if (i > 0) await sleep(50);
      await ctx.mcpReq.notify({ method: 'notifications/message', params: { level: 'info', data: step } });
    }
    return { content: [text('Tool with logging executed successfully')] };
  });

  tool(
    'test_tool_with_progress',
    'Reports progress 0, 50 and 100 of 100 when given a progress token',
    async (_args, ctx) => {
      const progressToken = ctx.mcpReq._meta?.progressToken;
      for (const progress of [0, 50, 100]) {
        if (progress > 0) await sleep(50);
        if (progressToken !== undefined) {
          await ctx.mcpReq.notify({
            method: 'notifications/progress',
            params: { progressToken, progress, total: 100 },
          });
        }
      }
      return { content: [text('Tool with progress executed successfully')] };
    },
  );

  // What the server-stateless scenario calls by name.
  tool('test_missing_capability', 'Asks the client for sampling (needs that capability)', async (_args, ctx) =>
    ctx.mcpReq.inputResponses?.llm_answer === undefined
      ? inputRequired({ inputRequests: { llm_answer: askModel('Reply with the single word: pong', 16) } })
      : { content: [text('sampling round trip complete')] },
  );
  tool('test_streaming_elicitation', 'Answers with a result and nothing else', async () => ({
    content: [text('a result, and no request of the server on the stream')],
  }));
  tool('test_logging_tool', 'Logs through the request (only with _meta.logLevel)', async (_args, ctx) => {
    await ctx.mcpReq.log('info', 'test_logging_tool ran');
    return { content: [text('logged, if the request asked for a log level')] };
  });
  tool('test_trigger_tool_change', 'Publishes notifications/tools/list_changed to listeners', async () => {
    handler.notify.toolsChanged();
    return { content: [text('tools list_changed published')] };
  });
  tool('test_trigger_prompt_change', 'Publishes notifications/prompts/list_changed to listeners', async () => {
    handler.notify.promptsChanged();
    return { content: [text('prompts list_changed published')] };
  });

  // Multi round-trip requests (SEP-2322): each tool answers input_required until the
  // retry carries the input responses (and state) it asked for.
  tool('test_input_required_result_elicitation', 'Asks for a name by elicitation', async (_args, ctx) => {
    const name = acceptedContent(ctx.mcpReq.inputResponses, 'user_name')?.name;
    return typeof name === 'string'
      ? { content: [text(`Hello, ${name}!`)] }
      : inputRequired({ inputRequests: { user_name: askText('What is your name?', 'name') } });
  });
  tool('test_input_required_result_sampling', 'Asks the client model a question', async (_args, ctx) => {
    const answer = ctx.mcpReq.inputResponses?.capital_question;
    if (answer === undefined) {
      return inputRequired({
        inputRequests: { capital_question: askModel('What is the capital of France?', 100) },
      });
    }
    const said = typeof answer?.content?.text === 'string' ? answer.content.text : JSON.stringify(answer);
    return { content: [text(`Sampling response: ${said}`)] };
  });
  tool('test_input_required_result_list_roots', "Asks for the client's roots", async (_args, ctx) => {
    const roots = ctx.mcpReq.inputResponses?.client_roots?.roots;
    if (!Array.isArray(roots)) {
      return inputRequired({ inputRequests: { client_roots: inputRequired.listRoots() } });
    }
    return { content: [text(`The client has ${roots.length} root(s): ${roots.map((r) => r?.uri).join(', ')}`)] };
  });
  tool('test_input_required_result_request_state', 'Asks for a confirmation, with sealed state', async (_args, ctx) => {
    if (acceptedContent(ctx.mcpReq.inputResponses, 'confirm') === undefined) {
      return inputRequired({
        inputRequests: { confirm: askConfirm() },
        requestState: await stateCodec.mint({ tool: 'request_state', nonce: randomUUID() }),
      });
    }
    if (ctx.mcpReq.requestState() === undefined) {
      throw new ProtocolError(ProtocolErrorCode.InvalidParams, 'requestState is missing');
    }
    return { content: [text('state-ok: requestState verified and confirmation received')] };
  });
  tool('test_input_required_result_multiple_inputs', 'Asks for three inputs in one round', async (_args, ctx) => {
    const responses = ctx.mcpReq.inputResponses;
    const name = acceptedContent(responses, 'user_name')?.name;
    const greeting = responses?.greeting?.content?.text;
    const roots = responses?.client_roots?.roots;
    if (typeof name !== 'string' || typeof greeting !== 'string' || !Array.isArray(roots)) {
      return inputRequired({
        inputRequests: {
          user_name: askText('What is your name?', 'name'),
          greeting: askModel('Generate a greeting', 50),
          client_roots: inputRequired.listRoots(),
        },
        requestState: await stateCodec.mint({ tool: 'multiple_inputs', nonce: randomUUID() }),
      });
    }
    return { content: [text(`${greeting} ${name}, with ${roots.length} root(s)`)] };
  });
  tool('test_input_required_result_multi_round', 'Two rounds of elicitation, state between them', async (_args, ctx) => {
    const state = ctx.mcpReq.requestState();
    const round = state?.tool === 'multi_round' && typeof state.round === 'number' ? state.round : 0;
    if (round === 0) {
      return inputRequired({
        inputRequests: { step1: askText('Step 1: What is your name?', 'name') },
        requestState: await stateCodec.mint({ tool: 'multi_round', round: 1, nonce: randomUUID() }),
      });
    }
    if (round === 1) {
      const name = acceptedContent(ctx.mcpReq.inputResponses, 'step1')?.name ?? 'unknown';
      return inputRequired({
        inputRequests: { step2: askText('Step 2: What is your favorite color?', 'color') },
        requestState: await stateCodec.mint({ tool: 'multi_round', round: 2, name, nonce: randomUUID() }),
      });
    }
    const color = acceptedContent(ctx.mcpReq.inputResponses, 'step2')?.color ?? 'unknown';
    return { content: [text(`Multi-round complete: ${String(state.name)} likes ${color}`)] };
  });
  tool('test_input_required_result_tampered_state', 'Refuses a retry whose state was altered', async (_args, ctx) => {
    if (ctx.mcpReq.requestState() !== undefined && acceptedContent(ctx.mcpReq.inputResponses, 'confirm') !== undefined) {
      return { content: [text('integrity-ok: requestState verified')] };
    }
    return inputRequired({
      inputRequests: { confirm: askConfirm() },
      requestState: await stateCodec.mint({ tool: 'tampered_state', nonce: randomUUID() }),
    });
  });
  tool('test_input_required_result_capabilities', 'Asks only for what the client declared', async (_args, ctx) => {
    if (ctx.mcpReq.inputResponses !== undefined) {
      return { content: [text('the declared kinds of input were answered')] };
    }
    const declared = ctx.mcpReq.envelope?.[CLIENT_CAPABILITIES_META_KEY] ?? {};
    const inputRequests = {};
    if (declared.elicitation !== undefined) inputRequests.user_name = askText('What is your name?', 'name');
    if (declared.sampling !== undefined) inputRequests.greeting = askModel('Generate a short greeting', 50);
    if (declared.roots !== undefined) inputRequests.client_roots = inputRequired.listRoots();
    return Object.keys(inputRequests).length === 0
      ? { content: [text('the client declared no capability to ask with')] }
      : inputRequired({ inputRequests });
  });

  // Resources.
  for (const [uri, r] of Object.entries(RESOURCES)) {
    server.registerResource(r.name, uri, { description: r.description, mimeType: r.mimeType }, async () =>
      readStatic(uri),
    );
  }
  server.registerResource(
    'template-data',
    new ResourceTemplate(TEMPLATE_URI, { list: undefined }),
    { description: 'Data for an id', mimeType: 'application/json' },
    async (uri, { id }) => readTemplate(uri.toString(), String(id)),
  );

  // Prompts.
  server.registerPrompt('test_simple_prompt', { description: 'A prompt without arguments' }, async () =>
    PROMPT_RESULTS.simple(),
  );
  server.registerPrompt(
    'test_prompt_with_arguments',
    {
      description: 'A prompt with two required arguments',
      argsSchema: z.object({
        arg1: z.string().describe('First test argument'),
        arg2: z.string().describe('Second test argument'),
      }),
    },
    async ({ arg1, arg2 }) => PROMPT_RESULTS.withArguments(arg1, arg2),
  );
  server.registerPrompt(
    'test_prompt_with_embedded_resource',
    {
      description: 'A prompt that embeds a resource',
      argsSchema: z.object({ resourceUri: z.string().describe('URI of the resource to embed') }),
    },
    async ({ resourceUri }) => PROMPT_RESULTS.withEmbeddedResource(resourceUri),
  );
  server.registerPrompt('test_prompt_with_image', { description: 'A prompt with an image' }, async () =>
    PROMPT_RESULTS.withImage(),
  );
  server.registerPrompt(
    'test_input_required_result_prompt',
    { description: 'Asks for context by elicitation before it renders' },
    async (ctx) => {
      const context = acceptedContent(ctx.mcpReq.inputResponses, 'user_context')?.context;
      return typeof context === 'string'
        ? { messages: [{ role: 'user', content: text(`Use the following context: ${context}`) }] }
        : inputRequired({ inputRequests: { user_context: askText('What context should the prompt use?', 'context') } });
    },
  );

  server.server.setRequestHandler('completion/complete', async (req) =>
    completion(req.params.ref, req.params.argument),
  );
  return server;
}

const handler = createMcpHandler(newServer, {
  legacy: 'reject',
  onerror: (err) => console.error('conformance-fixture-2026:', err.message),
});
const nodeHandler = toNodeHandler(handler);

serve(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== '/mcp') return jsonError(res, 404, -32601, 'Not found');
  if (!localRequest(req)) return jsonError(res, 403, -32000, 'Host or Origin is not local');
  await nodeHandler(req, res);
});
