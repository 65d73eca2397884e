// server.mjs against a tiny GGUF built by the project's CLI: llama-server's /completion subset
// over token ids, temperature 0 equal to eval.mjs's greedy, streaming, n_predict, seeds,
// errors, concurrency and a clean SIGTERM shutdown.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { evalJson, parseSse, postJson, skipReason, startServer, tinyModel } from "../lib/testing.mjs";

const skip = skipReason();
if (skip) process.stderr.write(`SKIP server.mjs tests: ${skip}\n`);

const PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366];
const N = 10;

describe("server.mjs", { skip: skip ?? false }, () => {
  let m, srv, ref;
  before(async () => {
    m = await tinyModel({ seed: 11 });
    [srv, ref] = await Promise.all([
      startServer(["--model", m.gguf, "--ctx", "256", "--parallel", "4"]),
      evalJson(["--model", m.gguf, "--ids", PROMPT.join(","), "--greedy", String(N)]),
    ]);
  });
  after(async () => {
    await srv?.stop();
    m?.cleanup();
  });

  it("GET /health, /props, /v1/models", async () => {
    let r = await fetch(`${srv.url}/health`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { status: "ok" });
    r = await fetch(`${srv.url}/props`);
    const props = await r.json();
    assert.equal(props.total_slots, 4);
    assert.equal(props.n_vocab, 32000);
    assert.equal(props.default_generation_settings.n_ctx, 256);
    r = await fetch(`${srv.url}/v1/models`);
    const models = await r.json();
    assert.equal(models.object, "list");
    assert.equal(models.data[0].id, "tiny.gguf");
    r = await fetch(`${srv.url}/nope`);
    assert.equal(r.status, 404);
    assert.equal((await r.json()).error.code, 404);
  });

  it("--no-mmap (weights read into memory) serves the same greedy ids", async () => {
    const s2 = await startServer(["--model", m.gguf, "--ctx", "256", "--parallel", "1", "--no-mmap"]);
    try {
      const r = await postJson(`${s2.url}/completion`, { prompt: PROMPT, n_predict: N, temperature: 0, ignore_eos: true });
      assert.equal(r.status, 200);
      assert.deepEqual(r.body.tokens, ref.greedy);
    } finally {
      await s2.stop();
    }
  });

  it("temperature 0 returns eval.mjs's greedy ids", async () => {
    const r = await postJson(`${srv.url}/completion`, { prompt: PROMPT, n_predict: N, temperature: 0, ignore_eos: true });
    assert.equal(r.status, 200);
    const b = r.body;
    assert.deepEqual(b.tokens, ref.greedy);
    assert.equal(b.tokens_predicted, N);
    assert.equal(b.tokens_evaluated, PROMPT.length);
    assert.equal(b.stop, true);
    assert.equal(b.stop_type, "limit");
    assert.equal(b.stopped_limit, true);
    assert.equal(b.stopped_eos, false);
    assert.equal(typeof b.content, "string");
    assert.equal(b.timings.prompt_n, PROMPT.length);
    assert.equal(b.timings.predicted_n, N);
    for (const k of ["prompt_ms", "predicted_ms", "prompt_per_second", "predicted_per_second"])
      assert.ok(Number.isFinite(b.timings[k]) && b.timings[k] >= 0, k);
  });

  it("stream: SSE chunks of one token each, then a final stop chunk, same ids", async () => {
    const r = await postJson(`${srv.url}/completion`, { prompt: PROMPT, n_predict: N, temperature: 0, ignore_eos: true, stream: true });
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type"), /^text\/event-stream/);
    const events = parseSse(r.text);
    assert.equal(events.length, N + 1);
    const chunks = events.slice(0, -1), last = events.at(-1);
    chunks.forEach((c, i) => {
      assert.equal(c.stop, false);
      assert.equal(c.tokens.length, 1);
      assert.equal(c.tokens_predicted, i + 1);
    });
    assert.deepEqual(chunks.map((c) => c.tokens[0]), ref.greedy);
    assert.equal(last.stop, true);
    assert.equal(last.stop_type, "limit");
    assert.equal(last.tokens_predicted, N);
  });

  it("honours n_predict", async () => {
    for (const n of [0, 1, 3]) {
      const r = await postJson(`${srv.url}/completion`, { prompt: PROMPT, n_predict: n, temperature: 0, ignore_eos: true });
      assert.equal(r.status, 200);
      assert.equal(r.body.tokens.length, n);
      assert.deepEqual(r.body.tokens, ref.greedy.slice(0, n));
      assert.equal(r.body.stop_type, "limit");
    }
  });

  it("stops at the context size when n_predict is -1", async () => {
    const prompt = Array.from({ length: 250 }, (_, i) => 100 + i);
    const r = await postJson(`${srv.url}/completion`, { prompt, n_predict: -1, temperature: 0, ignore_eos: true });
    assert.equal(r.status, 200);
    assert.equal(r.body.tokens.length, 256 - 250);
    assert.equal(r.body.stop_type, "limit");
  });

  it("same seed, same sample at temperature > 0; different seeds differ", async () => {
    const req = (seed) => postJson(`${srv.url}/completion`,
      { prompt: PROMPT, n_predict: 8, temperature: 1.5, top_k: 0, top_p: 1, min_p: 0, seed, ignore_eos: true });
    const a = await req(42), b = await req(42);
    assert.deepEqual(a.body.tokens, b.body.tokens);
    assert.equal(a.body.generation_settings.seed, 42);
    // A near-uniform distribution over 32000 tokens: four seeds cannot all agree.
    const others = await Promise.all([1, 2, 3].map(req));
    const distinct = new Set([a, ...others].map((r) => r.body.tokens.join(",")));
    assert.ok(distinct.size >= 2, `seeds 42,1,2,3 all gave ${[...distinct]}`);
  });

  it("400 with llama-server's error shape on bad requests", async () => {
    const bad = [
      "{not json",
      "[1,2,3]",
      { n_predict: 3 },
      { prompt: [] },
      { prompt: [1, -2] },
      { prompt: [1, 2.5] },
      { prompt: [1, 32000] },
      { prompt: { a: 1 } },
      { prompt: [1], n_predict: "5" },
      { prompt: [1], temperature: -1 },
      { prompt: [1], top_p: 2 },
      { prompt: [1], stream: "yes" },
      { prompt: Array(300).fill(5) },
    ];
    const rs = await Promise.all(bad.map((b) => postJson(`${srv.url}/completion`, b)));
    rs.forEach((r, i) => {
      assert.equal(r.status, 400, `case ${i}: ${r.text}`);
      assert.equal(r.body.error.code, 400);
      assert.equal(r.body.error.type, "invalid_request_error");
      assert.equal(typeof r.body.error.message, "string");
    });
    // The server still works afterwards.
    const ok = await postJson(`${srv.url}/completion`, { prompt: PROMPT, n_predict: 2, temperature: 0, ignore_eos: true });
    assert.deepEqual(ok.body.tokens, ref.greedy.slice(0, 2));
  });

  it("serves 4 simultaneous requests (and a 5th queued) with the solo results", async () => {
    const prompts = [PROMPT, PROMPT.slice(0, 6), [1, 3000, 4000], [1, 29871, 13, 13], PROMPT.slice(2)];
    const solo = [];
    for (const p of prompts)
      solo.push((await postJson(`${srv.url}/completion`, { prompt: p, n_predict: 6, temperature: 0, ignore_eos: true })).body.tokens);
    const together = await Promise.all(prompts.map((p, i) =>
      postJson(`${srv.url}/completion`, { prompt: p, n_predict: 6, temperature: 0, ignore_eos: true, stream: i % 2 === 1 })));
    together.forEach((r, i) => {
      assert.equal(r.status, 200);
      const toks = i % 2 === 1 ? parseSse(r.text).slice(0, -1).map((c) => c.tokens[0]) : r.body.tokens;
      assert.deepEqual(toks, solo[i], `request ${i}`);
    });
    const slots = new Set(together.filter((_, i) => i % 2 === 0).map((r) => r.body.id_slot));
    for (const s of slots) assert.ok(s >= 0 && s < 4);
  });

  it("frees the slot when a streaming client disconnects", async () => {
    const ac = new AbortController();
    const res = await fetch(`${srv.url}/completion`, {
      method: "POST", signal: ac.signal,
      body: JSON.stringify({ prompt: PROMPT, n_predict: -1, temperature: 0, ignore_eos: true, stream: true }),
    });
    const reader = res.body.getReader();
    await reader.read();  // at least one chunk arrived: the generation is running
    ac.abort();
    let busy = 1;
    for (let i = 0; i < 100 && busy > 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      busy = (await (await fetch(`${srv.url}/slots`)).json()).filter((s) => s.is_processing).length;
    }
    assert.equal(busy, 0, "a slot is still processing after the client left");
    const ok = await postJson(`${srv.url}/completion`, { prompt: PROMPT, n_predict: 3, temperature: 0, ignore_eos: true });
    assert.deepEqual(ok.body.tokens, ref.greedy.slice(0, 3));
  });

  it("exits cleanly on SIGTERM", async () => {
    const { code, signal } = await srv.stop();
    assert.equal(signal, null);
    assert.equal(code, 0);
    assert.match(srv.stderr(), /SIGTERM, shutting down/);
  });
});
