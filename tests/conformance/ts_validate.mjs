// Validates JSON samples with the zod schemas of the official OpenRouter TypeScript SDK (@openrouter/sdk), the ones
// its client runs on every response. tests/api/test_sdk_conformance.py feeds it what a live Crossroads answered.
//
// Input (stdin): one JSON object per line, {"id": <label>, "schema": "<models|operations|errors>.<Name>", "sample":
// <the JSON body or SSE event>}. Output (stdout): one line per input line, {"id", "ok", "problems": [...]}, written
// as soon as the line is validated (so one process serves a whole test module). Exit status: 0 when every sample
// conformed, 1 when any did not (the failures are also written to stderr), 2 on bad input.
//
// Strictness beyond a plain parse: the SDK parses its discriminated unions leniently (an option that fails to parse
// becomes `{isUnknown: true, raw}` instead of an error) and its open enums accept any string. A variant that fell
// back to unknown is a failure here (the SDK user loses every typed field of it); an enum value the SDK does not
// list is a failure too (counted by the SDK's own `unrecognized` counter).

import * as readline from "node:readline";
import * as models from "@openrouter/sdk/models";
import * as errors from "@openrouter/sdk/models/errors";
import * as operations from "@openrouter/sdk/models/operations";
import { isUnknown } from "@openrouter/sdk/types/discriminatedUnion.js";
import { startCountingUnrecognized } from "@openrouter/sdk/types";

const NAMESPACES = { models, operations, errors };

function schemaFor(name) {
  const [space, type] = name.split(".", 2);
  const schema = NAMESPACES[space]?.[`${type}$inboundSchema`];
  if (!schema) throw new Error(`no schema ${type}$inboundSchema in @openrouter/sdk ${space}`);
  return schema;
}

// The SDK's error classes are parsed from the body plus the HTTP exchange it came in.
function input(space, sample) {
  if (space !== "errors") return sample;
  const text = JSON.stringify(sample);
  return { ...sample, request$: new Request("http://gateway.test/"), response$: new Response(text), body$: text };
}

function unknownVariants(value, path, found, seen = new Set()) {
  if (value === null || typeof value !== "object" || seen.has(value)) return found;
  seen.add(value);
  if (isUnknown(value)) {
    const raw = value.raw;
    const kind = raw && typeof raw === "object" ? raw.type ?? raw.object ?? "" : typeof raw;
    found.push(`${path || "(top)"}: parsed as an unknown variant (${kind}): ${JSON.stringify(raw).slice(0, 300)}`);
    return found;
  }
  if (value instanceof Error) value = value.data$ ?? {};
  for (const [key, child] of Object.entries(value)) unknownVariants(child, `${path}.${key}`, found, seen);
  return found;
}

function validate(schemaName, sample) {
  const schema = schemaFor(schemaName);
  const counter = startCountingUnrecognized();
  const result = schema.safeParse(input(schemaName.split(".")[0], sample));
  const unrecognized = counter.end();
  if (!result.success) {
    return result.error.issues.map((issue) => `${issue.path.join(".") || "(top)"}: ${issue.message}`);
  }
  const problems = unknownVariants(result.data, "", []);
  if (unrecognized) problems.push(`${unrecognized} enum value(s) the SDK does not list (typed as unrecognized)`);
  return problems;
}

let failures = 0;
const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try {
    request = JSON.parse(line);
  } catch (err) {
    process.stderr.write(`ts_validate: not JSON: ${line.slice(0, 200)}\n`);
    process.exit(2);
  }
  let problems;
  try {
    problems = validate(request.schema, request.sample);
  } catch (err) {
    problems = [String(err?.message ?? err)];
  }
  if (problems.length) {
    failures += 1;
    process.stderr.write(`${request.id} (${request.schema}):\n  ${problems.join("\n  ")}\n`);
  }
  process.stdout.write(JSON.stringify({ id: request.id, ok: problems.length === 0, problems }) + "\n");
}
process.exit(failures ? 1 : 0);
