// Pure pieces of the harness (no model needed): argmax rules, argument and request parsing,
// the slot queue.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { argmax, argmaxOfTop, logitsMapToArray, parseArgs, parseIds } from "../lib/engine.mjs";
import { BadRequest, DEFAULTS, parseCompletion } from "../lib/request.mjs";
import { SlotPool } from "../lib/slots.mjs";

describe("argmax", () => {
  it("breaks ties towards the lowest id", () => {
    assert.equal(argmax(Float64Array.from([0, 3, 1, 3])), 1);
    assert.equal(argmax(Float64Array.from([-2, -5])), 0);
  });
  it("argmaxOfTop takes the lowest id among tied maxima and refuses an all-tied top", () => {
    assert.equal(argmaxOfTop(new Map([[9, 2.5], [4, 2.5], [7, 1]]), 3, 1), 4);
    assert.equal(argmaxOfTop(new Map([[9, 3], [4, 2.5]]), 2, 1), 9);
    assert.throws(() => argmaxOfTop(new Map([[9, 1], [4, 1]]), 2, 5), /greedy step 5: the top 2 logits tie/);
  });
  it("logitsMapToArray requires a dense vocabulary", () => {
    assert.deepEqual(Array.from(logitsMapToArray(new Map([[1, 0.5], [0, -1]]))), [-1, 0.5]);
    assert.throws(() => logitsMapToArray(new Map([[0, 1], [5, 2]])), /not a dense/);
  });
});

describe("argument parsing", () => {
  it("parses ids and flags", () => {
    assert.deepEqual(parseIds("1, 2,30"), [1, 2, 30]);
    assert.throws(() => parseIds(""), /--ids/);
    assert.throws(() => parseIds("1,-2"), /'-2' is not a non-negative integer/);
    const spec = { "--model": "string", "--greedy": "int", "--all-logits": "bool" };
    assert.deepEqual(parseArgs(["--model", "m", "--greedy=3", "--all-logits"], spec, "u"),
      { model: "m", greedy: 3, allLogits: true });
    assert.throws(() => parseArgs(["--greedy", "x"], spec, "u"), /--greedy: 'x' is not an integer/);
    assert.throws(() => parseArgs(["--model"], spec, "u"), /--model needs a value/);
    assert.throws(() => parseArgs(["--nope"], spec, "u"), /unknown option '--nope'/);
  });
});

describe("parseCompletion", () => {
  const ctx = { nVocab: 100, tokenize: (t) => [...t].map((c) => c.charCodeAt(0) % 100) };
  it("applies llama-server's defaults", () => {
    const p = parseCompletion({ prompt: [1, 2] }, ctx);
    assert.deepEqual(p.prompt, [1, 2]);
    for (const k of ["n_predict", "temperature", "top_k", "top_p", "min_p", "stream", "ignore_eos"]) assert.equal(p[k], DEFAULTS[k], k);
    assert.ok(Number.isInteger(p.seed) && p.seed >= 0, "seed -1 resolves to a concrete seed");
    assert.equal(parseCompletion({ prompt: [1], seed: 7 }, ctx).seed, 7);
  });
  it("tokenizes a string prompt", () => {
    assert.deepEqual(parseCompletion({ prompt: "AB" }, ctx).prompt, [65, 66]);
  });
  it("rejects bad fields with BadRequest", () => {
    for (const body of [null, [], { prompt: [] }, { prompt: [100] }, { prompt: [1.5] }, { prompt: 5 },
      { prompt: [1], n_predict: -2 }, { prompt: [1], top_k: 1.5 }, { prompt: [1], ignore_eos: 1 }, { prompt: [1], seed: -5 }]) {
      assert.throws(() => parseCompletion(body, ctx), BadRequest, JSON.stringify(body));
    }
  });
});

describe("SlotPool", () => {
  it("hands slots out, queues FIFO when all are busy, and rejects waiters on close", async () => {
    const pool = new SlotPool(["a", "b"]);
    const s1 = await pool.acquire(), s2 = await pool.acquire();
    assert.notEqual(s1.id, s2.id);
    assert.equal(pool.idle, 0);
    const order = [];
    const w1 = pool.acquire().then((s) => { order.push(1); return s; });
    const w2 = pool.acquire().then((s) => { order.push(2); return s; });
    assert.equal(pool.queued, 2);
    pool.release(s2);
    assert.equal((await w1).id, s2.id);
    pool.release(s1);
    assert.equal((await w2).id, s1.id);
    assert.deepEqual(order, [1, 2]);
    const w3 = pool.acquire();
    pool.close();
    await assert.rejects(w3, /shutting down/);
    await assert.rejects(pool.acquire(), /shutting down/);
  });
});
