// Drives a running `qserve serve` with the official `openai` npm package (a client nobody here wrote):
// completions and chat, streaming and not, usage counts, stop strings, errors, and a stream aborted mid-way
// (the server must abort the request: /metrics shows no running request and no KV pages used afterwards).
// Usage: node client_test.mjs PORT MODEL_NAME   (exit 0 when every check passes; prints "N passed, M failed").
import OpenAI from "openai";

const [port, model] = process.argv.slice(2);
if (!port || !model) {
  console.error("usage: node client_test.mjs PORT MODEL_NAME");
  process.exit(2);
}
const base = `http://127.0.0.1:${port}`;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0, timeout: 120000 });

let passed = 0, failed = 0;
function check(cond, what) {
  if (cond) { passed++; console.log(`ok   ${what}`); }
  else { failed++; console.log(`FAIL ${what}`); }
}
async function metric(name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = text.match(new RegExp(`^${name} (\\S+)$`, "m"));
  return m ? Number(m[1]) : NaN;
}

const prompt = "The history of the city";
const greedy = { temperature: 0, max_tokens: 12, seed: 1 };

// Models.
const models = await client.models.list();
check(models.data.some((m) => m.id === model), "models.list has the served model");

// Completions, not streaming.
const c = await client.completions.create({ model, prompt, ...greedy });
check(c.object === "text_completion" && c.id.startsWith("cmpl-"), "completion object and id");
const text = c.choices[0].text;
check(typeof text === "string" && text.length > 0, `completion text ${JSON.stringify(text)}`);
check(c.usage.prompt_tokens > 0 && c.usage.completion_tokens >= 1 && c.usage.completion_tokens <= 12,
      `usage ${JSON.stringify(c.usage)}`);
check(c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens, "usage total");
check(["length", "stop"].includes(c.choices[0].finish_reason), `finish_reason ${c.choices[0].finish_reason}`);
if (c.choices[0].finish_reason === "length") check(c.usage.completion_tokens === 12, "length => 12 tokens");

// Completions, streaming with usage: the same greedy text.
const s = await client.completions.create({ model, prompt, ...greedy, stream: true, stream_options: { include_usage: true } });
let streamed = "", finish = null, usage = null, chunks = 0;
for await (const ch of s) {
  chunks++;
  if (ch.usage) usage = ch.usage;
  for (const choice of ch.choices) {
    streamed += choice.text;
    if (choice.finish_reason) finish = choice.finish_reason;
  }
}
check(streamed === text, `streamed completion equals the non-streamed one (${chunks} chunks)`);
check(finish === c.choices[0].finish_reason, "streamed finish_reason");
check(usage && usage.completion_tokens === c.usage.completion_tokens && usage.prompt_tokens === c.usage.prompt_tokens,
      "streamed usage chunk");

// Stop strings: cut at the first occurrence, finish_reason "stop".
const words = text.trim().split(/\s+/);
if (words.length >= 3) {
  const stop = " " + words[2];
  const at = text.indexOf(stop);
  const st = await client.completions.create({ model, prompt, ...greedy, stop: [stop, "\u00a7never\u00a7"] });
  check(st.choices[0].text === text.slice(0, at), `stop string ${JSON.stringify(stop)} cuts the text`);
  check(st.choices[0].finish_reason === "stop", "stop => finish_reason stop");
} else {
  check(false, `greedy text too short for a stop-string check: ${JSON.stringify(text)}`);
}

// Chat, not streaming and streaming.
const messages = [{ role: "system", content: "You are terse." }, { role: "user", content: "Tell me about rivers." }];
const chat = await client.chat.completions.create({ model, messages, temperature: 0, max_completion_tokens: 10 });
check(chat.object === "chat.completion" && chat.choices[0].message.role === "assistant", "chat object and role");
const reply = chat.choices[0].message.content;
check(typeof reply === "string", `chat reply ${JSON.stringify(reply)}`);
check(chat.usage.completion_tokens >= 1 && chat.usage.completion_tokens <= 10, `chat usage ${JSON.stringify(chat.usage)}`);
const cs = await client.chat.completions.create({ model, messages, temperature: 0, max_completion_tokens: 10, stream: true,
                                                  stream_options: { include_usage: true } });
let creply = "", role = null, cusage = null;
for await (const ch of cs) {
  if (ch.usage) cusage = ch.usage;
  for (const choice of ch.choices) {
    if (choice.delta.role) role = choice.delta.role;
    if (choice.delta.content) creply += choice.delta.content;
  }
}
check(role === "assistant", "streamed chat role");
check(creply === reply, "streamed chat equals the non-streamed one");
check(cusage && cusage.completion_tokens === chat.usage.completion_tokens, "streamed chat usage");

// Errors surface as the SDK's typed errors.
try {
  await client.completions.create({ model: "no-such-model", prompt, max_tokens: 2 });
  check(false, "unknown model must fail");
} catch (e) {
  check(e instanceof OpenAI.NotFoundError && e.status === 404, `unknown model -> 404 (${e.status})`);
}
try {
  await client.completions.create({ model, prompt, max_tokens: 2, temperature: 7 });
  check(false, "temperature 7 must fail");
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "temperature", `temperature 7 -> 400 (${e.status})`);
}

// An aborted stream: read two chunks, abort; the server must abort the request and free its pages.
const ac = new AbortController();
const long = await client.completions.create({ model, prompt: "A long story begins", max_tokens: 400, temperature: 0,
                                               stream: true }, { signal: ac.signal });
let got = 0;
try {
  for await (const ch of long) {
    if (++got === 2) ac.abort();
  }
} catch (e) {
  check(e.name === "APIUserAbortError" || e.name === "AbortError", `stream aborted by the client (${e.name})`);
}
// Chunks already received may still be yielded after abort(); the stream must end well before its 400 tokens.
check(got >= 2 && got < 400, `the aborted stream ended early (${got} chunks)`);
let running = NaN, used = NaN;
for (let i = 0; i < 100; i++) {
  running = await metric("qserve_num_requests_running");
  used = await metric("qserve_kv_pages_used");
  if (running === 0 && used === 0) break;
  await new Promise((r) => setTimeout(r, 50));
}
check(running === 0 && used === 0, `after the abort: running ${running}, KV pages used ${used}`);
check((await metric("qserve_client_disconnects_total")) >= 1, "the server counted the disconnect");

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
