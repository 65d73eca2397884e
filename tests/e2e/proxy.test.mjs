// End to end: the official `openai` npm client -> `aloepri proxy` -> (recording pass-through) ->
// the llama.cpp harness serving aloe-mini obfuscated with --exact, compared with the plaintext
// aloe-mini served directly by the same harness. Greedy chat and completion answers must be the
// plaintext model's, token for token, streamed and not; the engine must never receive the
// prompt's plaintext ids or text; the noisy `--profile noise` must work too (agreement
// is printed); 16 concurrent streaming clients for a few seconds must see no error.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import { startServer } from "../../harness/llamacpp/lib/testing.mjs";
import {
  ALOE_MINI, aloepri, decodeIds, detokenize, engineIds, skipReason, startProxy, startRecorder, tokenize,
} from "./lib.mjs";

const skip = skipReason();
if (skip) process.stderr.write(`SKIP e2e proxy tests: ${skip}\n`);

const N = 24;
const CHAT_MSG = "Who made the heaven and the earth?";
const COMPLETION_PROMPT = "In the beginning God created";
const ENGINE_ARGS = ["--ctx", "512", "--parallel", "4"];

// The plaintext model's own greedy answer to `ids`, served directly by the harness.
async function plainGreedy(url, ids, n) {
  const r = await fetch(`${url}/completion`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: ids, n_predict: n, temperature: 0 }),
  });
  assert.equal(r.status, 200);
  const b = await r.json();
  return { tokens: b.tokens, eos: b.stop_type === "eos" };
}

async function collectStream(stream, chat) {
  let text = "", finish = null, usage = null, chunks = 0;
  for await (const c of stream) {
    if (c.usage) usage = c.usage;
    if (!c.choices?.length) continue;
    const ch = c.choices[0];
    const piece = chat ? ch.delta?.content : ch.text;
    if (piece) {
      text += piece;
      chunks++;
    }
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  return { text, finish, usage, chunks };
}

describe("openai client -> aloepri proxy -> llama.cpp on the obfuscated aloe-mini", { skip: skip ?? false }, () => {
  let dir, key, keyDefault, plainSrv, obfSrv, defSrv, rec, recDef, proxy, proxyDef, client, clientDef;
  let chatIds, complIds, chatRef, complRef;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "aloepri-e2e-"));
    key = join(dir, "exact.key");
    keyDefault = join(dir, "default.key");
    await Promise.all([aloepri(["keygen", "--out", key]), aloepri(["keygen", "--out", keyDefault])]);
    await Promise.all([
      aloepri(["convert", ALOE_MINI, "--gguf", join(dir, "plain.gguf"), "--dtype", "f32"]),
      aloepri(["obfuscate", ALOE_MINI, "--key", key, "--exact", "--dtype", "f32", "--out", join(dir, "obf"), "--gguf", join(dir, "obf.gguf")]),
      aloepri(["obfuscate", ALOE_MINI, "--key", keyDefault, "--profile", "noise", "--dtype", "f32", "--out", join(dir, "def"), "--gguf", join(dir, "def.gguf")]),
    ]);
    [plainSrv, obfSrv, defSrv] = await Promise.all([
      startServer(["--model", join(dir, "plain.gguf"), ...ENGINE_ARGS]),
      startServer(["--model", join(dir, "obf.gguf"), ...ENGINE_ARGS]),
      startServer(["--model", join(dir, "def.gguf"), ...ENGINE_ARGS]),
    ]);
    [rec, recDef] = await Promise.all([startRecorder(obfSrv.url), startRecorder(defSrv.url)]);
    const common = ["--tokenizer", ALOE_MINI, "--model-name", "aloe-mini"];
    [proxy, proxyDef] = await Promise.all([
      startProxy(["--key", key, "--backend", rec.url, ...common]),
      startProxy(["--key", keyDefault, "--backend", recDef.url, ...common]),
    ]);
    client = new OpenAI({ apiKey: "unused", baseURL: `${proxy.url}/v1`, maxRetries: 0, timeout: 120000 });
    clientDef = new OpenAI({ apiKey: "unused", baseURL: `${proxyDef.url}/v1`, maxRetries: 0, timeout: 120000 });
    // The plaintext reference: the Llama-2 chat format aloe-mini's tokenizer config implies, and
    // a BOS-prefixed completion prompt, answered greedily by the plaintext GGUF.
    [chatIds, complIds] = await Promise.all([tokenize(`<s>[INST] ${CHAT_MSG} [/INST]`, false), tokenize(COMPLETION_PROMPT, true)]);
    [chatRef, complRef] = await Promise.all([plainGreedy(plainSrv.url, chatIds, N), plainGreedy(plainSrv.url, complIds, N)]);
    for (const ref of [chatRef, complRef]) {
      const body = ref.eos ? ref.tokens.slice(0, -1) : ref.tokens;
      ref.text = await detokenize(body);
      ref.finish = ref.eos ? "stop" : "length";
    }
  });

  after(async () => {
    await Promise.allSettled([proxy?.stop(), proxyDef?.stop()]);
    await Promise.allSettled([rec?.stop(), recDef?.stop()]);
    await Promise.allSettled([plainSrv?.stop(), obfSrv?.stop(), defSrv?.stop()]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // The ids the engine generated in the last exchange, mapped back with the key.
  async function lastEngineAnswer(recorder, k) {
    const gen = recorder.log.filter((e) => e.path === "/completion");
    return decodeIds(k, engineIds(gen.at(-1)));
  }

  it("lists the model", async () => {
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ["aloe-mini"]);
  });

  it("greedy chat, non-streamed: the plaintext model's answer, token for token", async () => {
    const r = await client.chat.completions.create({
      model: "aloe-mini", messages: [{ role: "user", content: CHAT_MSG }], max_tokens: N, temperature: 0,
    });
    assert.equal(r.object, "chat.completion");
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(r.choices[0].message.content, chatRef.text);
    assert.equal(r.choices[0].finish_reason, chatRef.finish);
    assert.equal(r.usage.prompt_tokens, chatIds.length);
    assert.equal(r.usage.completion_tokens, chatRef.tokens.length);
    assert.deepEqual(await lastEngineAnswer(rec, key), chatRef.tokens);
    process.stderr.write(`chat answer (${chatRef.tokens.length} tokens, identical): ${JSON.stringify(r.choices[0].message.content)}\n`);
  });

  it("greedy chat, streamed: same answer, chunk by chunk", async () => {
    const s = await client.chat.completions.create({
      model: "aloe-mini", messages: [{ role: "user", content: CHAT_MSG }], max_tokens: N, temperature: 0,
      stream: true, stream_options: { include_usage: true },
    });
    const got = await collectStream(s, true);
    assert.equal(got.text, chatRef.text);
    assert.equal(got.finish, chatRef.finish);
    assert.ok(got.chunks >= Math.min(3, chatRef.tokens.length - 1), `only ${got.chunks} content chunks`);
    assert.equal(got.usage.completion_tokens, chatRef.tokens.length);
    assert.deepEqual(await lastEngineAnswer(rec, key), chatRef.tokens);
  });

  it("greedy completion, non-streamed and streamed: the plaintext model's answer", async () => {
    const r = await client.completions.create({ model: "aloe-mini", prompt: COMPLETION_PROMPT, max_tokens: N, temperature: 0 });
    assert.equal(r.choices[0].text, complRef.text);
    assert.equal(r.choices[0].finish_reason, complRef.finish);
    assert.equal(r.usage.prompt_tokens, complIds.length);
    assert.equal(r.usage.completion_tokens, complRef.tokens.length);
    assert.deepEqual(await lastEngineAnswer(rec, key), complRef.tokens);
    const s = await client.completions.create({ model: "aloe-mini", prompt: COMPLETION_PROMPT, max_tokens: N, temperature: 0, stream: true });
    const got = await collectStream(s, false);
    assert.equal(got.text, complRef.text);
    assert.equal(got.finish, complRef.finish);
    process.stderr.write(`completion (${complRef.tokens.length} tokens, identical): ${JSON.stringify(complRef.text)}\n`);
  });

  it("a stop string ends the answer early, on the plaintext", async () => {
    const words = complRef.text.trim().split(/\s+/);
    if (words.length < 3) return;  // the reference answer is too short to cut
    const stop = words[2];
    const r = await client.completions.create({ model: "aloe-mini", prompt: COMPLETION_PROMPT, max_tokens: N, temperature: 0, stop: [stop] });
    assert.equal(r.choices[0].text, complRef.text.slice(0, complRef.text.indexOf(stop)));
    assert.equal(r.choices[0].finish_reason, "stop");
  });

  it("the engine never saw the plaintext prompt: neither its ids nor its text", async () => {
    const gen = rec.log.filter((e) => e.path === "/completion");
    assert.ok(gen.length >= 4, `only ${gen.length} generation requests recorded`);
    const words = `${CHAT_MSG} ${COMPLETION_PROMPT}`.match(/[A-Za-z]{4,}/g);
    const answerWords = `${chatRef.text} ${complRef.text}`.match(/[A-Za-z]{5,}/g) ?? [];
    for (const e of gen) {
      const body = JSON.parse(e.request);
      assert.ok(Array.isArray(body.prompt) && body.prompt.every(Number.isInteger), "the engine gets token ids only");
      for (const plain of [chatIds, complIds]) {
        if (body.prompt.length !== plain.length) continue;
        const same = body.prompt.filter((id, i) => id === plain[i]).length;
        assert.ok(same <= 1, `${same} of ${plain.length} prompt ids sent in plaintext`);
      }
      const prompt = ` ${body.prompt.join(" ")} `;
      for (const plain of [chatIds, complIds])
        assert.ok(!prompt.includes(` ${plain.slice(1, 4).join(" ")} `), "a run of plaintext prompt ids reached the engine");
      for (const w of words) assert.ok(!e.request.includes(w), `the engine received the word ${w}`);
      for (const w of answerWords) assert.ok(!e.response.includes(w), `the engine's answer contained the plaintext word ${w}`);
    }
  });

  it("noisy obfuscation parameters (--profile noise): the same pipeline works; agreement is reported", async () => {
    const r = await clientDef.chat.completions.create({
      model: "aloe-mini", messages: [{ role: "user", content: CHAT_MSG }], max_tokens: N, temperature: 0,
    });
    assert.equal(typeof r.choices[0].message.content, "string");
    assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
    assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= N);
    const ids = await lastEngineAnswer(recDef, keyDefault);
    assert.equal(ids.length, r.usage.completion_tokens);
    let agree = 0;
    while (agree < ids.length && agree < chatRef.tokens.length && ids[agree] === chatRef.tokens[agree]) agree++;
    process.stderr.write(`--profile noise: ${agree} of ${chatRef.tokens.length} greedy tokens identical to the plaintext model's before the first difference\n` +
      `  plaintext: ${JSON.stringify(chatRef.text)}\n  noise    : ${JSON.stringify(r.choices[0].message.content)}\n`);
    const s = await clientDef.completions.create({ model: "aloe-mini", prompt: COMPLETION_PROMPT, max_tokens: 8, stream: true });
    const got = await collectStream(s, false);
    assert.ok(got.finish === "stop" || got.finish === "length");
  });

  it("bad requests come back as OpenAI errors", async () => {
    await assert.rejects(
      client.chat.completions.create({ model: "aloe-mini", messages: [{ role: "user", content: "x" }], temperature: 7 }),
      (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "temperature");
    await assert.rejects(
      client.chat.completions.create({ model: "gpt-9", messages: [{ role: "user", content: "x" }] }),
      (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
  });

  it("16 concurrent streaming clients for 3 s: no errors", async () => {
    const deadline = Date.now() + 3000;
    let done = 0, tokens = 0;
    const errors = [];
    await Promise.all(Array.from({ length: 16 }, async (_, i) => {
      while (Date.now() < deadline) {
        try {
          const chat = i % 2 === 0;
          const s = chat
            ? await client.chat.completions.create({ model: "aloe-mini", messages: [{ role: "user", content: `Tell me about day ${i}.` }], max_tokens: 8, stream: true, stream_options: { include_usage: true } })
            : await client.completions.create({ model: "aloe-mini", prompt: `On day ${i} the`, max_tokens: 8, stream: true, stream_options: { include_usage: true } });
          const got = await collectStream(s, chat);
          if (!got.finish || !got.usage) throw new Error("stream ended without finish_reason/usage");
          tokens += got.usage.completion_tokens;
          done++;
        } catch (e) {
          errors.push(String(e));
        }
      }
    }));
    process.stderr.write(`load: 16 streaming clients, ${done} requests, ${tokens} tokens, ${errors.length} errors in ~3 s\n`);
    assert.deepEqual(errors, []);
    assert.ok(done >= 16);
  });
});
