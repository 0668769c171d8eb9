// One call through the official OpenRouter TypeScript SDK (@openrouter/sdk) against a Crossroads gateway, for
// tests/api/test_sdk_conformance.py. Argument: JSON {"url", "key", "call", "args"}. Output (stdout): the call's outcome
// as JSON; an SDK error class raised for an HTTP error is an outcome too ({"error": {"name", "status", "code"}}).
// Anything else the SDK throws (a validation error of our answer, say) exits non-zero with it on stderr.

import { OpenRouter } from "@openrouter/sdk";
import * as errors from "@openrouter/sdk/models/errors";

const { url, key, call, args } = JSON.parse(process.argv[2]);
const client = new OpenRouter({ apiKey: key, serverURL: url });

const unknownTypes = (events) => events.filter((e) => e.isUnknown).map((e) => e.raw?.type ?? "?");

const CALLS = {
  // `empty: true` sends no messages (no input): a request the SDK lets through and the gateway refuses (400).
  async chat({ model, empty }) {
    const messages = empty ? [] : [{ role: "user", content: "Hi" }];
    const result = await client.chat.send({ chatRequest: { model, messages } });
    return { text: result.choices[0].message.content };
  },

  async "chat-stream"({ model }) {
    const stream = await client.chat.send({
      chatRequest: { model, messages: [{ role: "user", content: "Hi" }], stream: true },
    });
    let text = "";
    let error = null;
    for await (const chunk of stream) {
      text += chunk.choices?.[0]?.delta?.content ?? "";
      if (chunk.error) error = { code: chunk.error.code, errorType: chunk.error.metadata?.errorType };
    }
    return { text, error };
  },

  async responses({ model, empty }) {
    const input = empty ? [] : "Hi";
    const result = await client.responses.send({ responsesRequest: { model, input, store: false } });
    const text = result.output.filter((item) => item.type === "message")
      .flatMap((item) => item.content.map((part) => part.text)).join("");
    return { status: result.status, text, total_tokens: result.usage?.totalTokens,
             types: result.output.map((item) => item.type) };
  },

  async "responses-stream"({ model, tools }) {
    const stream = await client.responses.send({
      responsesRequest: { model, input: "Hi", store: false, stream: true, ...(tools ? { tools } : {}) },
    });
    const events = [];
    for await (const event of stream) events.push(event);
    return {
      types: events.map((e) => e.type),
      unknown: unknownTypes(events),
      calls: events.filter((e) => e.type === "response.function_call_arguments.done")
        .map((e) => [e.name, e.arguments]),
    };
  },

  async endpoints({ author, slug }) {
    const result = await client.endpoints.list({ author, slug });
    return { id: result.data.id, endpoints: result.data.endpoints.length };
  },

  async "models-pages"({ limit }) {
    const ids = [];
    let pages = 0;
    for await (const page of await client.models.list({ limit })) {
      pages += 1;
      if (pages > 1000) throw new Error("paging does not end");
      ids.push(...page.result.data.map((model) => model.id));
    }
    return { ids, pages };
  },
};

// Not a typed error of an HTTP status: the SDK could not read the answer, or had no class for its status.
const UNTYPED = new Set(["OpenRouterError", "OpenRouterDefaultError", "ResponseValidationError"]);

try {
  process.stdout.write(JSON.stringify(await CALLS[call](args)));
} catch (err) {
  if (err instanceof errors.OpenRouterError && !UNTYPED.has(err.name)) {
    process.stdout.write(JSON.stringify({ error: { name: err.name, status: err.statusCode, code: err.error?.code } }));
  } else {
    const raw = err?.rawValue === undefined ? "" : `\nthe answer: ${JSON.stringify(err.rawValue).slice(0, 3000)}`;
    process.stderr.write(`${err?.name}: ${err?.stack ?? err}${raw}\n`);
    process.exit(1);
  }
}
