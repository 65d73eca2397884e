#!/usr/bin/env node
// Accuracy of quantized GGUF exports on llama.cpp (issue 7): plaintext vs obfuscated at f16, q8_0
// and q4_0, scored on held-out text against the f32 plaintext model.
//
//   node bench/quant/quant_accuracy.mjs [--aloepri BIN (default $ALOEPRI_BIN or build/aloepri)] [--model models/aloe-mini]
//        [--heldout build/corpus/heldout.bin] [--seqs 4] [--len 256] [--work /tmp/aloepri-quant-acc]
//        [--threads 1] [--settings exact,nonoise,defaults] [--dtypes f32,f16,q8_0,q4_0] [--json]
//
// What it does: `aloepri keygen`; the plaintext model goes to GGUF at every dtype (`aloepri
// convert`); for each obfuscation setting the model is obfuscated once in f32 (`aloepri obfuscate
// --dtype f32`, so the checkpoint itself adds no rounding) and converted at every dtype
// (`aloepri convert --opaque-vocab`, which is what `obfuscate --gguf --dtype q4_0` writes). Every
// GGUF is run in llama.cpp (node-llama-cpp, f32 KV cache, no flash attention: only the weights
// differ) on the same held-out windows (obfuscated ones on tau(ids); their logits are read back
// at tau(y), the client's tau^-1 mapping). Per model:
//   acc    next-token top-1 accuracy on the held-out text
//   agree  top-1 agreement with the f32 plaintext model
//   KL     mean KL(p_f32plain || p_model) per position (nats)
//   qKL    mean KL(p_same-model-f32 || p_model): the quantization's own damage, apart from the
//          obfuscation's (0 for the f32 rows)
// Settings: exact (--exact), nonoise (the defaults without embedding/head noise: lambda .3,
// h 128, beta 8 — the orthogonal mixing alone), defaults (the report's parameters). A suffix -K<k>
// adds `--value-cond k` (cond(U_j) of the value maps, docs/RESULTS.md "Well-conditioned value maps"): exact-K0 is
// --exact with the report's Gaussian U_j, nonoise-K4 the nonoise setting with cond(U_j) = 4.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const { exactContextOptions, loadModel, logitsMapToArray, parseArgs } = await import(
  path.join(root, "harness/llamacpp/lib/engine.mjs")
);

const USAGE = "usage: node bench/quant/quant_accuracy.mjs [--aloepri BIN] [--model DIR] [--heldout FILE] " +
  "[--seqs N] [--len N] [--work DIR] [--threads N] [--settings a,b] [--dtypes a,b] [--json]";
const args = parseArgs(process.argv.slice(2), {
  "--aloepri": "string", "--model": "string", "--heldout": "string", "--seqs": "int", "--len": "int",
  "--work": "string", "--threads": "int", "--settings": "string", "--dtypes": "string", "--json": "bool",
}, USAGE);
const aloepri = path.resolve(args.aloepri ?? process.env.ALOEPRI_BIN ?? path.join(root, "build/aloepri"));
const modelDir = path.resolve(args.model ?? path.join(root, "models/aloe-mini"));
const heldout = path.resolve(args.heldout ?? path.join(root, "build/corpus/heldout.bin"));
const nSeqs = args.seqs ?? 4, len = args.len ?? 256, threads = args.threads ?? 1;
const work = path.resolve(args.work ?? path.join(os.tmpdir(), "aloepri-quant-acc"));
const settings = (args.settings ?? "exact,nonoise,defaults").split(",");
const dtypes = (args.dtypes ?? "f32,f16,q8_0,q4_0").split(",");
if (dtypes[0] !== "f32") dtypes.unshift("f32");
const SETTING_FLAGS = {
  exact: ["--exact"],
  nonoise: ["--alpha-e", "0", "--alpha-h", "0"],
  defaults: [],
};
function settingFlags(s) {
  const m = /^([a-z]+)(?:-K([0-9]+(?:\.[0-9]+)?))?$/.exec(s);
  if (!m || !SETTING_FLAGS[m[1]]) throw new Error(`--settings: unknown '${s}' (exact, nonoise, defaults, each optionally -K<value-cond>)`);
  return [...SETTING_FLAGS[m[1]], ...(m[2] !== undefined ? ["--value-cond", m[2]] : [])];
}
for (const s of settings) settingFlags(s);

function log(s) { process.stderr.write(s + "\n"); }
function run(cmd, argv) {
  const r = spawnSync(cmd, argv, { encoding: "utf8", maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(" ")} failed (${r.status}):\n${r.stderr}`);
  return r.stdout;
}

mkdirSync(work, { recursive: true });
const key = path.join(work, "client.key");
if (!existsSync(key)) run(aloepri, ["keygen", "--out", key]);

// Held-out windows: nSeqs windows of len ids starting at document starts (BOS), evenly spread.
const buf = readFileSync(heldout);
const all = new Uint16Array(buf.buffer, buf.byteOffset, buf.length >> 1);
const bos = [];
for (let i = 0; i + len < all.length; i++) if (all[i] === 1) bos.push(i);
if (bos.length < nSeqs) throw new Error(`${heldout}: only ${bos.length} documents long enough`);
const windows = [];
for (let s = 0; s < nSeqs; s++) windows.push(Array.from(all.subarray(bos[Math.floor(s * bos.length / nSeqs)], bos[Math.floor(s * bos.length / nSeqs)] + len)));

// Models to export.
const ggufs = [];  // {label, setting, dtype, file, obf}
for (const dt of dtypes) {
  const f = path.join(work, `plain.${dt}.gguf`);
  if (!existsSync(f)) run(aloepri, ["convert", modelDir, "--gguf", f, "--dtype", dt]);
  ggufs.push({ setting: "plaintext", dtype: dt, file: f, obf: false });
}
let tau = null;
for (const s of settings) {
  const od = path.join(work, `obf-${s}`);
  if (!existsSync(od)) run(aloepri, ["obfuscate", modelDir, "--key", key, "--out", od, "--dtype", "f32", ...settingFlags(s)]);
  for (const dt of dtypes) {
    const f = path.join(work, `obf-${s}.${dt}.gguf`);
    if (!existsSync(f)) run(aloepri, ["convert", od, "--gguf", f, "--dtype", dt, "--opaque-vocab"]);
    ggufs.push({ setting: s, dtype: dt, file: f, obf: true });
  }
}
if (settings.length) {
  // tau over the whole vocabulary, through the CLI (chunked: one argument must stay < 128 KiB).
  const n = JSON.parse(readFileSync(path.join(modelDir, "config.json"), "utf8")).vocab_size;
  tau = new Int32Array(n);
  for (let a = 0; a < n; a += 8000) {
    const ids = [];
    for (let i = a; i < Math.min(n, a + 8000); i++) ids.push(i);
    const out = JSON.parse(run(aloepri, ["encode", "--key", key, "--ids", ids.join(","), "--json"])).ids;
    out.forEach((v, k) => { tau[a + k] = v; });
  }
}

// Log-softmax of a row (Float64Array) in place; returns the argmax.
function logSoftmax(row) {
  let mx = -Infinity, am = 0;
  for (let i = 0; i < row.length; i++) if (row[i] > mx) { mx = row[i]; am = i; }
  let s = 0;
  for (let i = 0; i < row.length; i++) s += Math.exp(row[i] - mx);
  const lse = mx + Math.log(s);
  for (let i = 0; i < row.length; i++) row[i] -= lse;
  return am;
}
function kl(lp, lq) {  // KL(p || q) from log-probabilities
  let s = 0;
  for (let i = 0; i < lp.length; i++) if (lp[i] > -60) s += Math.exp(lp[i]) * (lp[i] - lq[i]);
  return s;
}

// Evaluates one GGUF on every window: per position log-probs in plaintext id order.
async function evaluate(g) {
  const { model } = await loadModel(g.file, { threads });
  const rows = [];  // [window][t] -> Float64Array log-probs, plus argmax
  for (const w of windows) {
    const ids = g.obf ? w.map((t) => tau[t]) : w;
    const ctx = await model.createContext(exactContextOptions({ contextSize: Math.max(len + 1, 32), threads, batchSize: len }));
    const seq = ctx.getSequence();
    const want = { generateNext: { logits: true } };
    const out = await seq.controlledEvaluate(ids.map((t) => [t, want]));
    const wr = [];
    for (let t = 0; t < ids.length; t++) {
      const raw = logitsMapToArray(out[t].next.logits);
      let row = raw;
      if (g.obf) {
        row = new Float64Array(tau.length);
        for (let y = 0; y < tau.length; y++) row[y] = raw[tau[y]];
      }
      const am = logSoftmax(row);
      wr.push({ lp: Float32Array.from(row), am });
    }
    rows.push(wr);
    await ctx.dispose();
  }
  await model.dispose();
  return rows;
}

const results = [];
let ref = null;
const sameF32 = {};
const t0 = Date.now();
for (const g of ggufs) {
  const t1 = Date.now();
  const rows = await evaluate(g);
  if (!ref) ref = rows;  // plaintext f32 comes first
  if (g.dtype === "f32") sameF32[g.setting] = rows;
  const base = sameF32[g.setting];
  let n = 0, acc = 0, agree = 0, klSum = 0, qklSum = 0, nll = 0;
  for (let w = 0; w < windows.length; w++) {
    for (let t = 0; t + 1 < len; t++) {
      const r = rows[w][t], y = windows[w][t + 1];
      n++;
      acc += r.am === y;
      agree += r.am === ref[w][t].am;
      klSum += kl(ref[w][t].lp, r.lp);
      qklSum += kl(base[w][t].lp, r.lp);
      nll -= r.lp[y];
    }
  }
  const bytes = readFileSync(g.file).length;
  const res = { setting: g.setting, dtype: g.dtype, positions: n, acc: acc / n, agree: agree / n, kl: klSum / n,
                qkl: qklSum / n, ppl: Math.exp(nll / n), mib: bytes / 2 ** 20, seconds: (Date.now() - t1) / 1000 };
  results.push(res);
  log(`${g.setting.padEnd(11)} ${g.dtype.padEnd(5)} acc ${res.acc.toFixed(4)} agree ${res.agree.toFixed(4)} ` +
      `KL ${res.kl.toExponential(3)} qKL ${res.qkl.toExponential(3)} ppl ${res.ppl.toFixed(2)} ` +
      `${res.mib.toFixed(1)} MiB (${res.seconds.toFixed(1)} s)`);
}
const meta = { model: modelDir, heldout, windows: nSeqs, len, threads, engine: "llama.cpp (node-llama-cpp 3.22.1), f32 KV, no flash attention",
               date: new Date().toISOString(), host: os.cpus()[0]?.model, seconds: (Date.now() - t0) / 1000 };
writeFileSync(path.join(work, "results.json"), JSON.stringify({ meta, results }, null, 1));
if (args.json) {
  process.stdout.write(JSON.stringify({ meta, results }) + "\n");
} else {
  process.stdout.write(`\n${meta.date} ${meta.host}; ${nSeqs} windows x ${len} tokens of ${path.basename(heldout)}; ${modelDir}\n\n`);
  process.stdout.write("| model | dtype | MiB | top-1 acc | agree w/ f32 plain | KL vs f32 plain | qKL vs own f32 | ppl |\n|---|---|---|---|---|---|---|---|\n");
  for (const r of results)
    process.stdout.write(`| ${r.setting} | ${r.dtype} | ${r.mib.toFixed(1)} | ${r.acc.toFixed(4)} | ${r.agree.toFixed(4)} | ` +
      `${r.kl.toExponential(2)} | ${r.qkl.toExponential(2)} | ${r.ppl.toFixed(2)} |\n`);
}
process.exit(0);
