#!/usr/bin/env node
// Where does a decode step's time go, and does it differ between two GGUFs of the same shape?
// (issue 7: the obfuscated model at h = 0 has the same shapes and bytes as the plaintext one, so
// any decode gap must come from a value-dependent path or from the machine.)
//
//   node bench/serving/decode_split.mjs MODEL.gguf [MODEL.gguf ...] [--rounds 12] [--tokens 64]
//        [--threads 1] [--exact-numerics] [--json] [--out results.json]
//
// All models are loaded into one process (one llama.cpp backend, one context each, llama.cpp's
// default numerics unless --exact-numerics). The first model is the baseline; pass the same file
// twice to get an A/A control, whose ratio is the resolution of the measurement on this machine.
// One round measures every model once, in an order rotated by the round, three ways, each over
// --tokens decode steps after a 16-token prompt (same ids for every model: the cost does not
// depend on which ids are fed):
//   body  = controlledEvaluate of one token per step with no output requested: llama.cpp skips
//           the output head, so this is embedding lookup + every transformer layer;
//   step  = the same with generateNext {token}: + final norm, output head (vocab x d' matrix) and
//           a greedy sample, no detokenization;
//   gen   = sequence.evaluate (greedy, temperature 0) as a server generates: step + node-llama-cpp's
//           per-token bookkeeping. Stops early at EOS; per-token time uses the tokens produced.
// Wall time (performance.now) and process CPU time (process.cpuUsage) are both recorded.
// Reported per model: median over rounds of ms/token, and the paired ratio (model / baseline in the
// same round): median and a 95% bootstrap interval of that median (2,000 resamples, fixed seed).
import path from "node:path";
import os from "node:os";
import { existsSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { bootstrapMedianCI, median } from "./stats.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const { loadLlama, exactContextOptions, parseArgs } = await import(path.join(root, "harness/llamacpp/lib/engine.mjs"));

const USAGE = "usage: node bench/serving/decode_split.mjs MODEL.gguf [MODEL.gguf ...] [--rounds N] [--tokens N] [--threads N] " +
  "[--exact-numerics] [--no-mmap] [--json] [--out FILE]";
const argv = process.argv.slice(2);
const files = argv.filter((a, i) => !a.startsWith("--") && !(i > 0 && ["--rounds", "--tokens", "--threads", "--out"].includes(argv[i - 1])));
const args = parseArgs(argv.filter((a) => !files.includes(a)), {
  "--rounds": "int", "--tokens": "int", "--threads": "int", "--exact-numerics": "bool", "--json": "bool", "--out": "string",
  "--no-mmap": "bool",
}, USAGE);
if (files.length < 2) {
  process.stderr.write(`${USAGE}\nerror: give at least two GGUF files (the first is the baseline)\n`);
  process.exit(2);
}
const rounds = args.rounds ?? 12, N = args.tokens ?? 64, threads = args.threads ?? 1;
for (const f of files)
  if (!existsSync(f)) {
    process.stderr.write(`error: ${f}: no such GGUF file\n`);
    process.exit(2);
  }

const llama = await loadLlama({ threads });
const models = [];
for (const f of files) {
  const file = path.resolve(f);
  const model = await llama.loadModel({ modelPath: file, gpuLayers: 0, useMmap: !args.noMmap });
  const ctxOpts = args.exactNumerics ? exactContextOptions({ contextSize: 256, threads })
                                     : { contextSize: 256, threads: { ideal: threads, min: 1 } };
  const ctx = await model.createContext(ctxOpts);
  models.push({ file, label: path.basename(file), ctx, seq: ctx.getSequence(), body: [], step: [], gen: [] });
}
const nVocab = Math.min(...models.map((m) => m.ctx.model.tokens.nTokens ?? 32000));
let x = 12345;
const ids = Array.from({ length: 16 + N }, () => { x = (x * 1103515245 + 12345) % 2147483648; return 3 + (x % (nVocab - 3)); });

function clock() { const c = process.cpuUsage(); return { wall: performance.now(), cpu: (c.user + c.system) / 1000 }; }
function since(t, n) { const c = clock(); return { wall: (c.wall - t.wall) / n, cpu: (c.cpu - t.cpu) / n }; }

async function measureOnce(m) {
  const seq = m.seq;
  await seq.clearHistory();
  await seq.controlledEvaluate(ids.slice(0, 16));
  let t = clock();
  for (let i = 16; i < 16 + N; i++) await seq.controlledEvaluate([ids[i]]);
  m.body.push(since(t, N));

  await seq.clearHistory();
  await seq.controlledEvaluate(ids.slice(0, 16));
  t = clock();
  for (let i = 16; i < 16 + N; i++) await seq.controlledEvaluate([[ids[i], { generateNext: { token: true } }]]);
  m.step.push(since(t, N));

  await seq.clearHistory();
  t = clock();
  let n = 0;
  for await (const _ of seq.evaluate(ids.slice(0, 16), { temperature: 0 })) if (++n >= N) break;
  const g = since(t, Math.max(1, n));
  g.tokens = n;
  m.gen.push(g);
}

for (const m of models) await measureOnce(m);  // warm-up: page the weights in
for (const m of models) { m.body = []; m.step = []; m.gen = []; }
for (let r = 0; r < rounds; r++) {
  for (let k = 0; k < models.length; k++) await measureOnce(models[(k + r) % models.length]);
  process.stderr.write(`round ${r + 1}/${rounds}\n`);
}

const parts = ["body", "step", "gen"];
const result = models.map((m, i) => {
  const o = { label: m.label, file: m.file };
  for (const p of parts)
    for (const c of ["wall", "cpu"]) {
      const v = m[p].map((s) => s[c]);
      o[`${p}_${c}`] = { median: median(v), min: Math.min(...v), max: Math.max(...v) };
      if (i > 0) {
        const ratios = v.map((y, r) => y / models[0][p][r][c]);
        o[`${p}_${c}`].ratio = { median: median(ratios), ci95: bootstrapMedianCI(ratios) };
      }
    }
  // head + sample = step - body, per round (paired within the model's own round).
  const head = m.step.map((s, r) => s.wall - m.body[r].wall);
  o.head_wall = { median: median(head) };
  if (i > 0) {
    const base = models[0].step.map((s, r) => s.wall - models[0].body[r].wall);
    const ratios = head.map((y, r) => y / base[r]);
    o.head_wall.ratio = { median: median(ratios), ci95: bootstrapMedianCI(ratios) };
  }
  o.gen_tokens = m.gen.map((g) => g.tokens);
  return o;
});
const meta = { date: new Date().toISOString(), host: `${os.cpus()[0]?.model} x${os.cpus().length}`, load: os.loadavg(), rounds, tokens: N,
               threads, numerics: args.exactNumerics ? "exact (f32 KV, no flash attention)" : "llama.cpp defaults",
               engine: "node-llama-cpp 3.22.1 in-process", weights: args.noMmap ? "read into memory (--no-mmap)" : "mmap" };
if (args.out) writeFileSync(args.out, JSON.stringify({ meta, result }, null, 1));
if (args.json) {
  process.stdout.write(JSON.stringify({ meta, result }) + "\n");
} else {
  const f = (v, d = 2) => v.toFixed(d);
  const rc = (o) => (o.ratio ? `${f(o.ratio.median, 3)} [${f(o.ratio.ci95[0], 3)}..${f(o.ratio.ci95[1], 3)}]` : "-");
  process.stdout.write(`\n${meta.date}, ${meta.host}, load ${meta.load.map((v) => v.toFixed(2)).join(" ")}; ${threads} thread(s), ` +
    `${rounds} rounds x ${N} tokens, ${meta.numerics}, weights ${meta.weights}. ms/token, median over rounds; ratio = paired (model / first model, same round), ` +
    `median [95% bootstrap CI]\n\n`);
  process.stdout.write("| model | body ms | body ratio | head+sample ms | head ratio | step ms | step ratio | gen ms | gen ratio | gen CPU ratio |\n" +
                       "|---|---|---|---|---|---|---|---|---|---|\n");
  for (const o of result)
    process.stdout.write(`| ${o.label} | ${f(o.body_wall.median)} | ${rc(o.body_wall)} | ${f(o.head_wall.median)} | ${rc(o.head_wall)} | ` +
      `${f(o.step_wall.median)} | ${rc(o.step_wall)} | ${f(o.gen_wall.median)} | ${rc(o.gen_wall)} | ${rc(o.gen_cpu)} |\n`);
}
process.exit(0);
