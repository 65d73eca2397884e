// eval.mjs against a tiny GGUF built by the project's CLI: the JSON shape shared with
// `aloepri forward --json`, greedy = argmax of the printed logits, errors on bad input.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { evalFails, evalJson, skipReason, tinyModel } from "../lib/testing.mjs";

const skip = skipReason();
if (skip) process.stderr.write(`SKIP eval.mjs tests: ${skip}\n`);

const IDS = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889];

function argmaxLowest(v) {
  let b = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[b]) b = i;
  return b;
}

describe("eval.mjs", { skip: skip ?? false }, () => {
  let m, j;
  before(async () => {
    m = await tinyModel();
    j = await evalJson(["--model", m.gguf, "--ids", IDS.join(","), "--greedy", "6", "--all-logits",
      "--logits-out", join(m.dir, "logits.f32")]);
  });
  after(() => m?.cleanup());

  it("prints the forward --json schema, fields in order", () => {
    assert.deepEqual(Object.keys(j), ["engine", "model", "ids", "vocab_size", "last_logits", "greedy", "logits"]);
    assert.equal(j.engine, "llama.cpp");
    assert.equal(j.model, m.gguf);
    assert.deepEqual(j.ids, IDS);
    assert.equal(j.vocab_size, 32000);
    assert.equal(j.last_logits.length, 32000);
    assert.ok(j.last_logits.every(Number.isFinite));
    assert.equal(j.logits.length, IDS.length);
    for (const row of j.logits) assert.equal(row.length, 32000);
    assert.deepEqual(j.logits.at(-1), j.last_logits);
    // Different positions see different contexts: the rows must differ.
    assert.notDeepEqual(j.logits[0], j.logits[1]);
  });

  it("greedy starts with the argmax of the last logits and has the requested length", () => {
    assert.equal(j.greedy.length, 6);
    assert.equal(j.greedy[0], argmaxLowest(j.last_logits));
    for (const t of j.greedy) assert.ok(Number.isInteger(t) && t >= 0 && t < 32000);
  });

  it("greedy continuation equals re-evaluating the extended prompt", async () => {
    // Feeding prompt + greedy[0..4] as a prompt must put greedy[5] at the argmax.
    const ext = await evalJson(["--model", m.gguf, "--ids", [...IDS, ...j.greedy.slice(0, 5)].join(",")]);
    assert.equal(argmaxLowest(ext.last_logits), j.greedy[5]);
    assert.equal(ext.logits, undefined);
    assert.deepEqual(ext.greedy, []);
  });

  it("--logits-out writes the prompt logits as float32 [T x vocab]", () => {
    const buf = readFileSync(join(m.dir, "logits.f32"));
    assert.equal(buf.length, IDS.length * 32000 * 4);
    const f = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
    for (const t of [0, IDS.length - 1])
      for (const k of [0, 123, 31999]) assert.equal(f[t * 32000 + k], j.logits[t][k]);
  });

  it("fails with a one-line error on bad input", async () => {
    const cases = [
      [["--model", m.gguf, "--ids", "1,32000"], /token id 32000 is out of range for vocab_size 32000/],
      [["--model", m.gguf, "--ids", "1,x"], /--ids: 'x' is not a non-negative integer/],
      [["--model", join(m.dir, "missing.gguf"), "--ids", "1"], /missing\.gguf/],
      [["--ids", "1"], /--model is required/],
      [["--model", m.gguf, "--ids", "1", "--bogus"], /unknown option '--bogus'/],
      [["--model", m.gguf, "--ids", "1", "--logits-out", "x.f32"], /--logits-out needs --all-logits/],
    ];
    const results = await Promise.all(cases.map(([args]) => evalFails(args)));
    results.forEach((r, i) => {
      assert.equal(r.code, 1);
      assert.match(r.stderr, cases[i][1]);
      assert.equal(r.stderr.trim().split("\n").filter((l) => l.startsWith("eval.mjs:")).length, 1);
    });
  });
});
