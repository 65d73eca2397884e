#!/usr/bin/env node
// Serving cost of obfuscation on llama.cpp (issue 7): plaintext vs obfuscated models of growing
// width, served by the harness (harness/llamacpp/server.mjs, llama-server's /completion API),
// measured through HTTP like a client would.
//
//   node bench/serving/serving_bench.mjs [--aloepri BIN (default $ALOEPRI_BIN or build/aloepri)] [--shapes mini,512,896,1536,2048]
//        [--hs 0,64,128,256] [--runs 5] [--gen 128] [--prompts 128,512] [--threads 1] [--dtype f16]
//        [--exact-numerics] [--work /tmp/aloepri-serving] [--json] [--prepare-only] [--proxy] [--control] [--mmap] [--svg FILE] [--report results.json] [--no-restart]
//        [--homophones 8000,32000] [--homophone-counts build/corpus/train.bin]
//
// --homophones B,...: also an --exact obfuscation with a homophonic vocabulary of B extra ids per
// B (`obfuscate --homophones B`; counts --homophone-counts, default the shipped model's training
// text, which fits every shape here: all use the Llama-2 32k vocabulary). d' = d, so the model's
// "floor" column reads 1; what grows is the head (n + B columns) and the sampler's vocabulary.
//
// Per shape, one server per model (plaintext, and obfuscated with h in --hs: h = 0 is --exact,
// h > 0 the report's defaults with expansion h) is started (nice -n 10, --parallel 1, llama.cpp's
// default numerics unless --exact-numerics). Runs are interleaved: in run r every model is
// measured once, in an order rotated by r, so drifts in machine load hit all models alike.
// Each measurement: TTFT for each --prompts length (POST /completion, n_predict 1; the server's
// timings.prompt_ms = prompt evaluation + first sample, and the client's wall time), prompt
// processing tokens/s from the longest prompt, and TPOT over --gen generated tokens (n_predict
// --gen, ignore_eos; timings.predicted_per_token_ms). Reported: median and min..max over runs,
// and the ratio obfuscated / plaintext of medians next to its floor d'/d (every matrix has one
// side of width d, which becomes d' = d + 2h; attention scores and the KV cache do not grow).
// CPU time: the machine is shared (2 cores, other jobs), so wall times swing by several x; every
// request also records the server process's CPU time (sum over its threads of
// /proc/PID/task/*/schedstat, ns), which contention barely moves: cpuTtft{n} and cpuTpot (same
// subtraction as tpotWall) are the robust cost figures, reported next to the wall-clock ones.
// Ratios are paired: in run r, obf_r / plain_r (both measured in the same run), reported as the
// median over runs and a 95% bootstrap interval of that median (2,000 resamples, fixed seed);
// "within 3% of the floor" is yes only when the whole interval is <= 1.03 d'/d, no when all of
// it is above, otherwise "unresolved".
// --control adds an A/A pair: a second server on a fresh byte copy of the plaintext GGUF. Its
// ratio is the measurement's resolution: on this VM byte-identical weights at different places in
// memory decode up to 16% apart (bench/serving/decode_split.mjs, docs/RESULTS.md).
// Servers are restarted for every run, in the run's rotated order (--no-restart: started once,
// plaintext first), because the start order decides where weights land in memory.
// Weights are read into memory (--no-mmap in the harness) unless --mmap: every server then holds
// its weights in memory allocated at start-up, instead of page-cache pages of whatever age.
// --svg FILE: a figure of the measured ratios (paired median and 95% interval, server wall time)
// against the floor d'/d, prompt processing and decode side by side.
// Client-side wall times are kept too (wall = TTFT at the client; tpotWall = (wall of --gen
// tokens - wall of 1 token) / (--gen - 1) on a 16-token prompt).
// --proxy: also every obfuscated model through `aloepri proxy` (the client's privacy proxy, in
// front of the same server; OpenAI /v1/completions with the same token-id prompts, max_tokens
// instead of n_predict), measured at the client in the same interleaved runs. The proxy stops at
// the plaintext EOS, so its TPOT counts the tokens actually returned (usage.completion_tokens).
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { bootstrapMedianCI, median } from "./stats.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const { parseArgs } = await import(path.join(root, "harness/llamacpp/lib/engine.mjs"));

const USAGE = "usage: node bench/serving/serving_bench.mjs [--aloepri BIN] [--shapes mini,512,...] [--hs 0,64,...] " +
  "[--runs N] [--gen N] [--prompts a,b] [--threads N] [--dtype f16|q8_0|q4_0|f32] [--exact-numerics] [--work DIR] [--json] [--prepare-only] [--proxy] [--control] [--mmap] [--svg FILE] [--report results.json] [--no-restart]";
const args = parseArgs(process.argv.slice(2), {
  "--aloepri": "string", "--shapes": "string", "--hs": "string", "--runs": "int", "--gen": "int", "--prompts": "string",
  "--threads": "int", "--dtype": "string", "--exact-numerics": "bool", "--work": "string", "--json": "bool",
  "--prepare-only": "bool", "--proxy": "bool", "--control": "bool", "--mmap": "bool", "--svg": "string", "--report": "string", "--no-restart": "bool",
  "--homophones": "string", "--homophone-counts": "string",
}, USAGE);
const homophones = args.homophones ? args.homophones.split(",").map(Number) : [];
const homophoneCounts = path.resolve(args.homophoneCounts ?? path.join(root, "build/corpus/train.bin"));
const aloepri = path.resolve(args.aloepri ?? process.env.ALOEPRI_BIN ?? path.join(root, "build/aloepri"));
const shapes = (args.shapes ?? "mini,512,896,1536,2048").split(",");
const hs = (args.hs ?? "0,64,128,256").split(",").map(Number);
let runs = args.runs ?? 5, nGen = args.gen ?? 128, threads = args.threads ?? 1;
let prompts = (args.prompts ?? "128,512").split(",").map(Number);
let dtype = args.dtype ?? "f16";
const work = path.resolve(args.work ?? path.join(os.tmpdir(), "aloepri-serving"));
mkdirSync(work, { recursive: true });

// Synthesized shapes (llama arch, Llama-2/Mistral 32k vocabulary, bf16 like a real checkpoint):
// widths of Qwen2.5-0.5B / 1.5B and Llama-3.2-1B with fewer layers, so a run fits 2 cores.
const SHAPES = {
  mini: { dir: path.join(root, "models/aloe-mini") },
  512: { hidden: 512, layers: 4, heads: 8, kv: 4, ffn: 1376 },
  896: { hidden: 896, layers: 4, heads: 14, kv: 2, ffn: 4864 },
  1536: { hidden: 1536, layers: 2, heads: 12, kv: 2, ffn: 8960 },
  2048: { hidden: 2048, layers: 2, heads: 32, kv: 8, ffn: 8192 },
};

function log(s) { process.stderr.write(s + "\n"); }
function run(cmd, argv) {
  const r = spawnSync(cmd, argv, { encoding: "utf8", maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(" ")} failed (${r.status}):\n${r.stderr}`);
  return r.stdout;
}

const key = path.join(work, "client.key");
if (!args.report && !existsSync(key)) run(aloepri, ["keygen", "--out", key]);

// Plaintext dir + GGUF, obfuscated GGUFs, for one shape.
function prepare(name) {
  const s = SHAPES[name];
  if (!s) throw new Error(`--shapes: unknown '${name}' (${Object.keys(SHAPES).join(", ")})`);
  let dir = s.dir;
  if (!dir) {
    dir = path.join(work, `synth-${name}`);
    if (!existsSync(dir))
      run(aloepri, ["synth", "--arch", "llama", "--hidden", String(s.hidden), "--layers", String(s.layers), "--heads",
                    String(s.heads), "--kv-heads", String(s.kv), "--ffn", String(s.ffn), "--vocab-from",
                    path.join(root, "vocab/llama2"), "--dtype", "bf16", "--seed", "7", "--out", dir]);
  }
  const cfg = JSON.parse(readFileSync(path.join(dir, "config.json"), "utf8"));
  const models = [];
  const plain = path.join(work, `${name}.plain.${dtype}.gguf`);
  if (!existsSync(plain)) run(aloepri, ["convert", dir, "--gguf", plain, "--dtype", dtype]);
  models.push({ label: "plain", h: null, file: plain, d: cfg.hidden_size, dObf: cfg.hidden_size });
  for (const h of hs) {
    const out = path.join(work, `${name}.obf-h${h}`), g = `${out}.${dtype}.gguf`;
    if (!existsSync(g)) {
      const flags = h === 0 ? ["--exact"] : ["--expansion", String(h)];
      run(aloepri, ["obfuscate", dir, "--key", key, "--out", out, "--gguf", g, "--dtype", dtype, "--force", ...flags]);
    }
    models.push({ label: `obf h=${h}`, h, file: g, d: cfg.hidden_size, dObf: cfg.hidden_size + 2 * h });
  }
  for (const B of homophones) {
    const out = path.join(work, `${name}.obf-exact-B${B}`), g = `${out}.${dtype}.gguf`;
    if (!existsSync(g))
      run(aloepri, ["obfuscate", dir, "--key", key, "--out", out, "--gguf", g, "--dtype", dtype, "--force", "--exact",
                    "--homophones", String(B), "--homophone-counts", homophoneCounts]);
    models.push({ label: `obf h=0 +${B} homophones`, h: 0, file: g, d: cfg.hidden_size, dObf: cfg.hidden_size });
  }
  if (args.control) {
    // Started last (the plaintext server first): the two plaintext placements bracket the others.
    // A fresh byte copy, so that (with --mmap) the two servers do not share page-cache pages.
    const copy = path.join(work, `${name}.plain-control.${dtype}.gguf`);
    rmSync(copy, { force: true });
    copyFileSync(plain, copy);
    models.push({ label: "plain A/A control", h: null, file: copy, d: cfg.hidden_size, dObf: cfg.hidden_size, control: true });
  }
  return { name, cfg, models, dir };
}

function startServer(file) {
  const argv = ["-n", "10", "node", path.join(root, "harness/llamacpp/server.mjs"), "--model", file, "--port", "0",
                "--threads", String(threads), "--ctx", String(Math.max(...prompts) + nGen + 64), "--parallel", "1"];
  if (!args.exactNumerics) argv.push("--fast");
  if (!args.mmap) argv.push("--no-mmap");
  const p = spawn("nice", argv, { stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve, reject) => {
    let err = "";
    const t = setTimeout(() => reject(new Error(`server for ${file} did not start:\n${err}`)), 180000);
    p.stderr.on("data", (c) => {
      err += c;
      const m = /listening on (http:\/\/[^\s]+)/.exec(err);
      if (m) {
        clearTimeout(t);
        resolve({ proc: p, url: m[1] });
      }
    });
    p.on("exit", (code) => reject(new Error(`server for ${file} exited (${code}):\n${err}`)));
  });
}

// CPU time of a process (all threads), ms.
function cpuMs(pid) {
  let ns = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try { ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, "utf8").split(" ")[0]); } catch { /* thread gone */ }
  }
  return ns / 1e6;
}
const pidOf = new Map();  // server url -> pid
async function completion(url, body) {
  const pid = pidOf.get(url);
  const c0 = pid ? cpuMs(pid) : 0;
  const t0 = performance.now();
  const r = await fetch(`${url}/completion`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const j = await r.json();
  const wall = performance.now() - t0;
  const cpu = pid ? cpuMs(pid) - c0 : NaN;
  if (!r.ok) throw new Error(`${url}: ${JSON.stringify(j)}`);
  return { j, wall, cpu };
}

// Fixed pseudo-random prompt ids (speed does not depend on which ids; no tau needed).
function promptIds(n, vocab) {
  let x = 12345;
  const ids = [1];
  while (ids.length < n) { x = (x * 1103515245 + 12345) % 2147483648; ids.push(3 + (x % (vocab - 3))); }
  return ids;
}

async function measure(url, vocab) {
  const m = {};
  {
    const a = await completion(url, { prompt: promptIds(16, vocab), n_predict: 1, temperature: 0 });
    const b = await completion(url, { prompt: promptIds(16, vocab), n_predict: nGen, temperature: 0, ignore_eos: true });
    m.tpotWall = (b.wall - a.wall) / Math.max(1, b.j.tokens_predicted - 1);
    m.cpuTpot = (b.cpu - a.cpu) / Math.max(1, b.j.tokens_predicted - 1);
  }
  for (const n of prompts) {
    const { j, wall, cpu } = await completion(url, { prompt: promptIds(n, vocab), n_predict: 1, temperature: 0, cache_prompt: false });
    m[`ttft${n}`] = j.timings.prompt_ms;
    m[`cpuTtft${n}`] = cpu;
    m[`wall${n}`] = wall;
    m[`pp${n}`] = j.timings.prompt_n / j.timings.prompt_ms * 1000;
  }
  const { j } = await completion(url, { prompt: promptIds(16, vocab), n_predict: nGen, temperature: 0, ignore_eos: true });
  if (j.timings.predicted_n + 1 < nGen) throw new Error(`${url}: generated only ${j.timings.predicted_n} tokens`);
  m.tpot = j.timings.predicted_per_token_ms;
  return m;
}

// Through the proxy; cpu = the server's plus the proxy's CPU time.
async function proxyCompletion(px, body) {
  const c0 = cpuMs(px.serverPid) + cpuMs(px.proc.pid);
  const t0 = performance.now();
  const r = await fetch(`${px.url}/v1/completions`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const j = await r.json();
  const wall = performance.now() - t0;
  const cpu = cpuMs(px.serverPid) + cpuMs(px.proc.pid) - c0;
  if (!r.ok) throw new Error(`${px.url}: ${JSON.stringify(j)}`);
  return { j, wall, cpu };
}
async function measureProxy(px, vocab) {
  const m = {};
  for (const n of prompts) {
    const { wall, cpu } = await proxyCompletion(px, { prompt: promptIds(n, vocab), max_tokens: 1, temperature: 0 });
    m[`wall${n}`] = wall;
    m[`cpuTtft${n}`] = cpu;
  }
  const a = await proxyCompletion(px, { prompt: promptIds(16, vocab), max_tokens: 1, temperature: 0 });
  const b = await proxyCompletion(px, { prompt: promptIds(16, vocab), max_tokens: nGen, temperature: 0 });
  const k = b.j.usage?.completion_tokens ?? nGen;
  m.tpotWall = k > 1 ? (b.wall - a.wall) / (k - 1) : NaN;
  m.cpuTpot = k > 1 ? (b.cpu - a.cpu) / (k - 1) : NaN;
  m.genTokens = k;
  return m;
}
function startProxy(backendUrl, tokenizerDir) {
  const p = spawn("nice", ["-n", "10", aloepri, "proxy", "--key", key, "--tokenizer", tokenizerDir, "--backend", backendUrl,
                           "--backend-kind", "llamacpp", "--listen", "127.0.0.1:0", "--quiet"], { stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve, reject) => {
    let err = "";
    const t = setTimeout(() => reject(new Error(`proxy did not start:\n${err}`)), 60000);
    p.stderr.on("data", (c) => {
      err += c;
      const m = /listening on (http:\/\/[^\s]+)/.exec(err);
      if (m) { clearTimeout(t); resolve({ proc: p, url: m[1] }); }
    });
    p.on("exit", (code) => reject(new Error(`proxy exited (${code}):\n${err}`)));
  });
}

// Against the goal "within 3% of the floor": decided only when the interval is on one side.
const verdict = (ci, floor) => (ci[1] <= 1.03 * floor ? "yes" : ci[0] > 1.03 * floor ? "no" : "unresolved");
// Two panels (prompt TTFT at the longest prompt, decode TPOT): x = floor d'/d, y = measured ratio.
function ratioFigure(rep, mt) {
  const P = Math.max(...prompts), W = 920, H = 420, pw = 400, ph = 300, top = 60, left = [70, 530];
  const pts = rep.flatMap((s) => s.stats.filter((st) => st.ratio).map((st) => ({ shape: s.shape, st })));
  const hi = Math.max(1.2, ...pts.flatMap(({ st }) => [st.floor * 1.03, st.ratioCI[`ttft${P}`][1], st.ratioCI.tpot[1]])) * 1.05;
  const lo = Math.min(0.8, ...pts.flatMap(({ st }) => [st.ratioCI[`ttft${P}`][0], st.ratioCI.tpot[0]])) * 0.95;
  const xmax = Math.max(...pts.map(({ st }) => st.floor)) * 1.05;
  const colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
  const shapeNames = rep.map((s) => s.shape);
  const r1 = (v) => Math.round(v * 10) / 10;
  const X = (v, i) => r1(left[i] + ((v - 0.9) / (xmax - 0.9)) * pw), Y = (v) => r1(top + ph - ((v - lo) / (hi - lo)) * ph);
  let o = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">\n`;
  o += `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">Obfuscated / plaintext on llama.cpp (${dtype}, ${threads} thread): ` +
       `paired median and 95% CI vs the floor d'/d</text>\n<text x="${W / 2}" y="38" text-anchor="middle" fill="#555">${mt.date.slice(0, 16)} UTC, ` +
       `${mt.host}, ${runs} interleaved runs; solid: floor, dashed: floor + 3%; open marker: A/A control</text>\n`;
  [[`ttft${P}`, `prompt processing (TTFT, ${P}-token prompt)`], ["tpot", "decode (TPOT)"]].forEach(([k, title], i) => {
    o += `<rect x="${left[i]}" y="${top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>\n`;
    o += `<text x="${left[i] + pw / 2}" y="${top - 6}" text-anchor="middle">${title}</text>\n`;
    o += `<line x1="${X(0.9, i)}" y1="${Y(0.9)}" x2="${X(xmax, i)}" y2="${Y(xmax)}" stroke="#444" clip-path="url(#c${i})"/>\n`;
    o += `<line x1="${X(0.9, i)}" y1="${Y(0.9 * 1.03)}" x2="${X(xmax, i)}" y2="${Y(xmax * 1.03)}" stroke="#444" stroke-dasharray="5,4" clip-path="url(#c${i})"/>\n`;
    o += `<clipPath id="c${i}"><rect x="${left[i]}" y="${top}" width="${pw}" height="${ph}"/></clipPath>\n`;
    const step = hi - lo > 1.5 ? 0.5 : 0.1;
    for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi; t += step)
      o += `<text x="${left[i] - 6}" y="${Y(t) + 4}" text-anchor="end">${t.toFixed(1)}</text><line x1="${left[i]}" x2="${left[i] + 4}" y1="${Y(t)}" y2="${Y(t)}" stroke="#888"/>\n`;
    for (let t = 1; t <= xmax; t += xmax > 2 ? 0.5 : 0.25)
      o += `<text x="${X(t, i)}" y="${top + ph + 16}" text-anchor="middle">${t.toFixed(2)}</text>\n`;
    o += `<text x="${left[i] + pw / 2}" y="${top + ph + 34}" text-anchor="middle">floor d'/d</text>\n`;
    o += `<text transform="translate(${left[i] - 44},${top + ph / 2}) rotate(-90)" text-anchor="middle">obf / plain</text>\n`;
    for (const { shape, st } of pts) {
      const c = colors[shapeNames.indexOf(shape) % colors.length], x = X(st.floor, i) + (st.label.includes("control") ? -4 : 0);
      o += `<line x1="${x}" x2="${x}" y1="${Y(st.ratioCI[k][0])}" y2="${Y(st.ratioCI[k][1])}" stroke="${c}"/>\n`;
      o += `<circle cx="${x}" cy="${Y(st.ratio[k])}" r="3.5" fill="${st.label.includes("control") ? "white" : c}" stroke="${c}"><title>${shape} ${st.label}: ` +
           `${st.ratio[k].toFixed(3)} [${st.ratioCI[k][0].toFixed(3)}..${st.ratioCI[k][1].toFixed(3)}], floor ${st.floor.toFixed(3)}</title></circle>\n`;
    }
  });
  shapeNames.forEach((n, j) => {
    const s = rep[j];
    o += `<circle cx="${80 + j * 150}" cy="${H - 12}" r="4" fill="${colors[j % colors.length]}"/><text x="${88 + j * 150}" y="${H - 8}">${n === "mini" ? "aloe-mini" : "synth"} d ${s.hidden}, L ${s.layers}</text>\n`;
  });
  return o + "</svg>\n";
}

// Paired ratios, run r of a model against run r of the baseline. The baseline is the plaintext
// server, or with --control the geometric mean of the two plaintext servers (started first and
// last: two placements of the same weights in memory); the control's own ratio is against the
// first plaintext server alone (the A/A figure). pp (tokens/s): cost ratio = baseline / model.
function addRatios(stats, metrics) {
  const plain = stats[0].samples, ctl = stats.find((st) => st.control)?.samples;
  const base = (r, k) => (ctl ? Math.sqrt(plain[r][k] * ctl[r][k]) : plain[r][k]);
  const ratiosOf = (mine, k, b) => mine.map((x, r) => (k.startsWith("pp") ? b(r, k) / x[k] : x[k] / b(r, k)));
  stats.forEach((st, i) => {
    if (i === 0) return;
    const b = st.control ? (r, k) => plain[r][k] : base;
    st.ratio = {};
    st.ratioCI = {};
    for (const k of metrics) {
      const v = ratiosOf(st.samples, k, b);
      st.ratio[k] = median(v);
      st.ratioCI[k] = bootstrapMedianCI(v);
    }
    if (st.proxySamples) {
      st.proxyRatio = {};  // through the proxy vs the plaintext model served directly
      st.proxyRatioCI = {};
      for (const k of [...prompts.map((n) => `wall${n}`), "tpotWall", ...prompts.map((n) => `cpuTtft${n}`), "cpuTpot"]) {
        const v = ratiosOf(st.proxySamples, k, base);
        st.proxyRatio[k] = median(v);
        st.proxyRatioCI[k] = bootstrapMedianCI(v);
      }
    }
  });
}

// --report FILE: print the tables (and --svg) of an earlier run's results JSON, measuring nothing.
const loaded = args.report ? JSON.parse(readFileSync(args.report, "utf8")) : null;
if (loaded) {
  ({ runs, gen: nGen, threads, prompts, dtype } = loaded.meta);
  // Recompute the ratios from the per-run samples (results files older than this field keep theirs).
  for (const s of loaded.report) if (s.stats[0].samples) addRatios(s.stats, Object.keys(s.stats[0].samples[0]));
}
const t0 = Date.now();
const report = loaded ? loaded.report : [];
for (const name of loaded ? [] : shapes) {
  const shape = prepare(name);
  if (args.prepareOnly) { log(`${name}: prepared`); continue; }
  const vocab = shape.cfg.vocab_size;
  const nm = shape.models.length;
  let servers = [], proxies = [];  // servers[i] for model i; proxies: [model index, proxy]
  // Start every server (and proxy) in the given model order: where a server's weights land in
  // memory depends on when it starts, and that moves decode speed by up to ~20% (A/A control).
  async function startAll(order) {
    servers = new Array(nm);
    for (const i of order) {
      servers[i] = await startServer(shape.models[i].file);
      pidOf.set(servers[i].url, servers[i].proc.pid);
    }
    proxies = [];
    if (args.proxy)
      for (const i of order) {
        if (i === 0 || shape.models[i].control) continue;  // the proxy needs the key's model
        const px = await startProxy(servers[i].url, shape.dir);
        px.serverPid = servers[i].proc.pid;
        proxies.push([i, px]);
      }
  }
  async function stopAll() {
    const procs = [...proxies.map(([, p]) => p.proc), ...servers.filter(Boolean).map((s) => s.proc)];
    await Promise.all(procs.map((p) => new Promise((res) => {
      if (p.exitCode !== null || p.signalCode !== null) return res();
      p.removeAllListeners("exit");
      p.once("exit", res);
      p.kill("SIGTERM");
    })));
    servers = [];
    proxies = [];
  }
  try {
    const samples = shape.models.map(() => []);
    const proxySamples = shape.models.map(() => []);
    for (let r = 0; r < runs; r++) {
      // Run r: models in an order rotated by r; with restarts (the default) the servers are
      // started afresh in that order too, so no model keeps the best or worst placement.
      const order = Array.from({ length: nm }, (_, k) => (k + r) % nm);
      if (r === 0 || !args.noRestart) {
        await stopAll();
        await startAll(order);
        for (const i of order) await completion(servers[i].url, { prompt: promptIds(16, vocab), n_predict: 4, temperature: 0 });  // warm-up
        for (const [, p] of proxies) await proxyCompletion(p, { prompt: promptIds(16, vocab), max_tokens: 4, temperature: 0 });
      }
      for (const i of order) {
        samples[i].push(await measure(servers[i].url, vocab));
        const px = proxies.find(([j]) => j === i);
        if (px) proxySamples[i].push(await measureProxy(px[1], vocab));
      }
      log(`${name}: run ${r + 1}/${runs} done (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
    }
    const metrics = [...prompts.map((n) => `ttft${n}`), ...prompts.map((n) => `wall${n}`), `pp${Math.max(...prompts)}`, "tpot", "tpotWall",
                     ...prompts.map((n) => `cpuTtft${n}`), "cpuTpot"];
    const summary = (arr, k) => { const v = arr.map((x) => x[k]); return { median: median(v), min: Math.min(...v), max: Math.max(...v) }; };
    const stats = shape.models.map((m, i) => {
      const st = { label: m.label, control: !!m.control, h: m.h, d: m.d, dObf: m.dObf, floor: m.dObf / m.d };
      for (const k of metrics) st[k] = summary(samples[i], k);
      if (proxySamples[i].length) {
        st.proxy = {};
        for (const k of [...prompts.map((n) => `wall${n}`), "tpotWall", "genTokens", ...prompts.map((n) => `cpuTtft${n}`), "cpuTpot"])
          st.proxy[k] = summary(proxySamples[i], k);
      }
      return st;
    });
    stats.forEach((st, i) => { st.samples = samples[i]; if (proxySamples[i].length) st.proxySamples = proxySamples[i]; });
    addRatios(stats, metrics);
    report.push({ shape: name, hidden: shape.cfg.hidden_size, layers: shape.cfg.num_hidden_layers,
                  ffn: shape.cfg.intermediate_size, vocab, stats });
  } finally {
    await stopAll();
  }
}

if (args.prepareOnly) process.exit(0);
const meta = loaded ? loaded.meta : { date: new Date().toISOString(), host: `${os.cpus()[0]?.model} x${os.cpus().length}`, load: os.loadavg(),
               dtype, threads, runs, gen: nGen, prompts, numerics: args.exactNumerics ? "exact (f32 KV)" : "llama.cpp defaults (--fast)",
               engine: "harness/llamacpp/server.mjs (node-llama-cpp 3.22.1)",
               weights: args.mmap ? "weights mmap'ed" : "weights read into memory (--no-mmap)",
               servers: args.noRestart ? "started once" : "restarted every run in the run's order", seconds: (Date.now() - t0) / 1000 };
if (!loaded) writeFileSync(path.join(work, `results-${dtype}-${shapes.join("_")}.json`), JSON.stringify({ meta, report }, null, 1));
if (args.svg) writeFileSync(args.svg, ratioFigure(report, meta));
if (args.json) {
  process.stdout.write(JSON.stringify({ meta, report }) + "\n");
} else {
  const P = Math.max(...prompts);
  const f = (x, d = 1) => x.toFixed(d);
  const cell = (o, k, d = 1) => `${f(o[k].median, d)} [${f(o[k].min, d)}..${f(o[k].max, d)}]`;
  // A paired ratio, its interval and the verdict against the floor, for a list of metrics.
  const ratioCells = (r, ci, ks) => ks.map((k) => `${f(r[k], 3)} [${f(ci[k][0], 3)}..${f(ci[k][1], 3)}]`).join(" / ");
  const verdicts = (ci, ks, floor) => ks.map((k) => verdict(ci[k], floor)).join(" / ");
  process.stdout.write(`\n${meta.date}, ${meta.host}, load ${meta.load.map((x) => x.toFixed(2)).join(" ")}; ${dtype}, ${threads} thread(s), ` +
    `${runs} interleaved runs, ${meta.weights}, servers ${meta.servers ?? "started once"}; times: median [min..max] over runs; ratio: paired per run, obf / ${report.some((x) => x.stats.some((st) => st.control)) ? "geometric mean of the two plaintext servers (A/A row: control / first plaintext)" : "plaintext"}, ` +
    `median [95% bootstrap CI]; floor d'/d; within 3%: yes = whole CI <= 1.03 floor, no = whole CI above\n`);
  const table = (title, keys, names, dec) => {
    process.stdout.write(`\n${title}\n\n| shape | model | d' | ${names.join(" | ")} | ratio ${names.join(" / ")} | floor d'/d | within 3% of floor? |\n` +
      `|${"---|".repeat(6 + names.length)}\n`);
    for (const s of report)
      for (const st of s.stats)
        process.stdout.write(`| ${s.shape} (d ${s.hidden}, L ${s.layers}) | ${st.label} | ${st.dObf} | ${keys.map((k, x) => cell(st, k, dec[x])).join(" | ")} | ` +
          `${st.ratio ? ratioCells(st.ratio, st.ratioCI, keys) : "-"} | ${f(st.floor, 3)} | ${st.ratio ? verdicts(st.ratioCI, keys, st.floor) : "-"} |\n`);
  };
  const ttftKeys = prompts.map((n) => `ttft${n}`), cpuKeys = prompts.map((n) => `cpuTtft${n}`);
  table("Server wall time (llama.cpp timings, ms): TTFT = prompt evaluation + first token; TPOT over the generated tokens",
        [...ttftKeys, "tpot"], [...prompts.map((n) => `TTFT ${n}`), "TPOT"], [...prompts.map(() => 1), 2]);
  table("Server CPU time per request (ms, all threads of the server process)",
        [...cpuKeys, "cpuTpot"], [...prompts.map((n) => `CPU TTFT ${n}`), "CPU TPOT"], [...prompts.map(() => 1), 2]);
  process.stdout.write(`\nPrompt processing: pp${P} tok/s median [min..max] (ratio = plain/obf tokens per second, paired)\n\n| shape | model | pp${P} tok/s | ratio |\n|---|---|---|---|\n`);
  for (const s of report)
    for (const st of s.stats)
      process.stdout.write(`| ${s.shape} | ${st.label} | ${cell(st, `pp${P}`, 0)} | ${st.ratio ? ratioCells(st.ratio, st.ratioCI, [`pp${P}`]) : "-"} |\n`);
  const wallKeys = [...prompts.map((n) => `wall${n}`), "tpotWall"];
  process.stdout.write(`\nClient-side wall times (ms; TTFT at the client, TPOT from (wall of ${nGen} tokens - wall of 1) / ${nGen - 1}); ` +
    `paired ratios vs plaintext direct${args.proxy ? "; 'via proxy' = through aloepri proxy (/v1/completions), its CPU = server + proxy" : ""}\n\n`);
  process.stdout.write(`| shape | model | ${prompts.map((n) => `wall TTFT ${n}`).join(" | ")} | wall TPOT | ratios | floor d'/d |\n|${"---|".repeat(5 + prompts.length)}\n`);
  for (const s of report) {
    for (const st of s.stats) {
      process.stdout.write(`| ${s.shape} | ${st.label} | ${wallKeys.map((k, x) => cell(st, k, x === prompts.length ? 2 : 1)).join(" | ")} | ` +
        `${st.ratio ? ratioCells(st.ratio, st.ratioCI, wallKeys) : "-"} | ${f(st.floor, 3)} |\n`);
      if (st.proxy) {
        process.stdout.write(`| ${s.shape} | ${st.label} via proxy (${f(st.proxy.genTokens.median, 0)} tok) | ` +
          `${wallKeys.map((k, x) => cell(st.proxy, k, x === prompts.length ? 2 : 1)).join(" | ")} | ${ratioCells(st.proxyRatio, st.proxyRatioCI, wallKeys)} | ${f(st.floor, 3)} |\n`);
        process.stdout.write(`| ${s.shape} | ${st.label} via proxy, CPU | ${[...cpuKeys, "cpuTpot"].map((k, x) => cell(st.proxy, k, x === prompts.length ? 2 : 1)).join(" | ")} | ` +
          `${ratioCells(st.proxyRatio, st.proxyRatioCI, [...cpuKeys, "cpuTpot"])} | ${f(st.floor, 3)} |\n`);
      }
    }
  }
}
process.exit(0);
