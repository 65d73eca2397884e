#!/usr/bin/env node
// Serving cost of obfuscation on llama.cpp (issue 7): plaintext vs obfuscated models of growing
// width, served by the harness (engine/llamacpp/server.mjs, llama-server's /completion API),
// measured through HTTP like a client would.
//
//   node bench/serving/serving_bench.mjs [--aloepri BIN (default $ALOEPRI_BIN or build/aloepri)] [--shapes mini,512,896,1536,2048]
//        [--hs 0,64,128,256] [--runs 5] [--gen 128] [--prompts 128,512] [--threads 1] [--dtype f16]
//        [--exact-numerics] [--work /tmp/aloepri-serving] [--json] [--prepare-only] [--proxy]
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
// Client-side wall times are kept too (wall = TTFT at the client; tpotWall = (wall of --gen
// tokens - wall of 1 token) / (--gen - 1) on a 16-token prompt).
// --proxy: also every obfuscated model through `aloepri proxy` (the client's privacy proxy, in
// front of the same server; OpenAI /v1/completions with the same token-id prompts, max_tokens
// instead of n_predict), measured at the client in the same interleaved runs. The proxy stops at
// the plaintext EOS, so its TPOT counts the tokens actually returned (usage.completion_tokens).
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const { parseArgs } = await import(path.join(root, "engine/llamacpp/lib/engine.mjs"));

const USAGE = "usage: node bench/serving/serving_bench.mjs [--aloepri BIN] [--shapes mini,512,...] [--hs 0,64,...] " +
  "[--runs N] [--gen N] [--prompts a,b] [--threads N] [--dtype f16|q8_0|q4_0|f32] [--exact-numerics] [--work DIR] [--json] [--prepare-only] [--proxy]";
const args = parseArgs(process.argv.slice(2), {
  "--aloepri": "string", "--shapes": "string", "--hs": "string", "--runs": "int", "--gen": "int", "--prompts": "string",
  "--threads": "int", "--dtype": "string", "--exact-numerics": "bool", "--work": "string", "--json": "bool",
  "--prepare-only": "bool", "--proxy": "bool",
}, USAGE);
const aloepri = path.resolve(args.aloepri ?? process.env.ALOEPRI_BIN ?? path.join(root, "build/aloepri"));
const shapes = (args.shapes ?? "mini,512,896,1536,2048").split(",");
const hs = (args.hs ?? "0,64,128,256").split(",").map(Number);
const runs = args.runs ?? 5, nGen = args.gen ?? 128, threads = args.threads ?? 1;
const prompts = (args.prompts ?? "128,512").split(",").map(Number);
const dtype = args.dtype ?? "f16";
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
if (!existsSync(key)) run(aloepri, ["keygen", "--out", key]);

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
  return { name, cfg, models, dir };
}

function startServer(file) {
  const argv = ["-n", "10", "node", path.join(root, "engine/llamacpp/server.mjs"), "--model", file, "--port", "0",
                "--threads", String(threads), "--ctx", String(Math.max(...prompts) + nGen + 64), "--parallel", "1"];
  if (!args.exactNumerics) argv.push("--fast");
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

const median = (a) => { const s = [...a].sort((x, y) => x - y); const k = s.length >> 1; return s.length % 2 ? s[k] : (s[k - 1] + s[k]) / 2; };
const t0 = Date.now();
const report = [];
for (const name of shapes) {
  const shape = prepare(name);
  if (args.prepareOnly) { log(`${name}: prepared`); continue; }
  const vocab = shape.cfg.vocab_size;
  const servers = [];
  for (const m of shape.models) servers.push(await startServer(m.file));
  for (const s of servers) pidOf.set(s.url, s.proc.pid);
  const proxies = [];  // [model index, proxy]
  try {
    if (args.proxy)
      for (let i = 1; i < shape.models.length; i++) {
        const px = await startProxy(servers[i].url, shape.dir);
        px.serverPid = servers[i].proc.pid;
        proxies.push([i, px]);
      }
    for (const s of servers) await measure(s.url, vocab);  // warm-up: page in the weights
    for (const [, p] of proxies) await measureProxy(p, vocab);
    const samples = shape.models.map(() => []);
    const proxySamples = shape.models.map(() => []);
    for (let r = 0; r < runs; r++) {
      for (let k = 0; k < shape.models.length; k++) {
        const i = (k + r) % shape.models.length;
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
      const st = { label: m.label, h: m.h, d: m.d, dObf: m.dObf, floor: m.dObf / m.d };
      for (const k of metrics) st[k] = summary(samples[i], k);
      if (proxySamples[i].length) {
        st.proxy = {};
        for (const k of [...prompts.map((n) => `wall${n}`), "tpotWall", "genTokens", ...prompts.map((n) => `cpuTtft${n}`), "cpuTpot"])
          st.proxy[k] = summary(proxySamples[i], k);
      }
      return st;
    });
    for (const st of stats.slice(1)) {
      st.ratio = {};
      for (const k of metrics) {
        // pp (tokens/s): cost ratio is plain / obf; times: obf / plain.
        st.ratio[k] = k.startsWith("pp") ? stats[0][k].median / st[k].median : st[k].median / stats[0][k].median;
      }
      if (st.proxy) {
        st.proxyRatio = {};  // through the proxy vs the plaintext model served directly (client wall times)
        for (const k of [...prompts.map((n) => `wall${n}`), "tpotWall", ...prompts.map((n) => `cpuTtft${n}`), "cpuTpot"])
          st.proxyRatio[k] = st.proxy[k].median / stats[0][k].median;
      }
    }
    report.push({ shape: name, hidden: shape.cfg.hidden_size, layers: shape.cfg.num_hidden_layers,
                  ffn: shape.cfg.intermediate_size, vocab, stats });
  } finally {
    for (const [, p] of proxies) p.proc.kill("SIGTERM");
    for (const s of servers) s.proc.kill("SIGTERM");
  }
}

const meta = { date: new Date().toISOString(), host: `${os.cpus()[0]?.model} x${os.cpus().length}`, load: os.loadavg(),
               dtype, threads, runs, gen: nGen, prompts, numerics: args.exactNumerics ? "exact (f32 KV)" : "llama.cpp defaults (--fast)",
               engine: "engine/llamacpp/server.mjs (node-llama-cpp 3.22.1)", seconds: (Date.now() - t0) / 1000 };
writeFileSync(path.join(work, `results-${dtype}-${shapes.join("_")}.json`), JSON.stringify({ meta, report }, null, 1));
if (args.json) {
  process.stdout.write(JSON.stringify({ meta, report }) + "\n");
} else {
  const P = Math.max(...prompts);
  const f = (x, d = 1) => x.toFixed(d);
  process.stdout.write(`\n${meta.date}, ${meta.host}, load ${meta.load.map((x) => x.toFixed(2)).join(" ")}; ${dtype}, ${threads} thread(s), ` +
    `${runs} interleaved runs, median [min..max]; ratio = obf/plain of medians, floor d'/d\n\n`);
  const heads = prompts.map((n) => `TTFT ${n} ms`);
  process.stdout.write(`| shape | model | d' | ${heads.join(" | ")} | pp${P} tok/s | TPOT ms | ratio TTFT${prompts.join("/")} | ratio pp | ratio TPOT | floor d'/d |\n`);
  process.stdout.write(`|${"---|".repeat(9 + prompts.length)}\n`);
  for (const s of report) {
    for (const st of s.stats) {
      const cell = (k, d = 1) => `${f(st[k].median, d)} [${f(st[k].min, d)}..${f(st[k].max, d)}]`;
      const r = st.ratio;
      process.stdout.write(`| ${s.shape} (d ${s.hidden}, L ${s.layers}) | ${st.label} | ${st.dObf} | ${prompts.map((n) => cell(`ttft${n}`)).join(" | ")} | ` +
        `${cell(`pp${P}`, 0)} | ${cell("tpot", 2)} | ${r ? prompts.map((n) => f(r[`ttft${n}`], 3)).join(" / ") : "-"} | ` +
        `${r ? f(r[`pp${P}`], 3) : "-"} | ${r ? f(r.tpot, 3) : "-"} | ${f(st.floor, 3)} |\n`);
    }
  }
  process.stdout.write(`\nServer CPU time per request (ms, all threads; robust to the machine's load): median [min..max], ratio obf/plain of medians\n\n`);
  process.stdout.write(`| shape | model | d' | ${prompts.map((n) => `CPU TTFT ${n}`).join(" | ")} | CPU TPOT | ratio ${prompts.map((n) => `TTFT${n}`).join(" / ")} / TPOT | floor d'/d | within 3% of floor? |\n|${"---|".repeat(7 + prompts.length)}\n`);
  for (const s of report) {
    for (const st of s.stats) {
      const cell = (k, d = 1) => `${f(st[k].median, d)} [${f(st[k].min, d)}..${f(st[k].max, d)}]`;
      const rs = st.ratio ? [...prompts.map((n) => st.ratio[`cpuTtft${n}`]), st.ratio.cpuTpot] : null;
      const ok = rs ? (rs.every((x) => x <= 1.03 * st.floor) ? "yes" : "no") : "-";
      process.stdout.write(`| ${s.shape} (d ${s.hidden}, L ${s.layers}) | ${st.label} | ${st.dObf} | ${prompts.map((n) => cell(`cpuTtft${n}`)).join(" | ")} | ${cell("cpuTpot", 2)} | ` +
        `${rs ? rs.map((x) => f(x, 3)).join(" / ") : "-"} | ${f(st.floor, 3)} | ${ok} |\n`);
      if (st.proxy) {
        const pc = (k, d = 1) => `${f(st.proxy[k].median, d)} [${f(st.proxy[k].min, d)}..${f(st.proxy[k].max, d)}]`;
        const pr = [...prompts.map((n) => st.proxyRatio[`cpuTtft${n}`]), st.proxyRatio.cpuTpot];
        process.stdout.write(`| ${s.shape} (d ${s.hidden}, L ${s.layers}) | ${st.label} via proxy (server + proxy CPU) | ${st.dObf} | ` +
          `${prompts.map((n) => pc(`cpuTtft${n}`)).join(" | ")} | ${pc("cpuTpot", 2)} | ${pr.map((x) => f(x, 3)).join(" / ")} | ${f(st.floor, 3)} | ` +
          `${pr.every((x) => x <= 1.03 * st.floor) ? "yes" : "no"} |\n`);
      }
    }
  }
  process.stdout.write(`\nClient-side wall times (ms; TTFT at the client, TPOT from (wall of ${nGen} tokens - wall of 1) / ${nGen - 1}); ` +
    `ratios vs plaintext direct${args.proxy ? "; 'via proxy' = through aloepri proxy (/v1/completions)" : ""}\n\n`);
  process.stdout.write(`| shape | model | ${prompts.map((n) => `wall TTFT ${n}`).join(" | ")} | wall TPOT | ratios | floor d'/d |\n|${"---|".repeat(5 + prompts.length)}\n`);
  for (const s of report) {
    for (const st of s.stats) {
      const cell = (o, k, d = 1) => `${f(o[k].median, d)} [${f(o[k].min, d)}..${f(o[k].max, d)}]`;
      const ratios = st.ratio ? [...prompts.map((n) => f(st.ratio[`wall${n}`], 3)), f(st.ratio.tpotWall, 3)].join(" / ") : "-";
      process.stdout.write(`| ${s.shape} | ${st.label} | ${prompts.map((n) => cell(st, `wall${n}`)).join(" | ")} | ${cell(st, "tpotWall", 2)} | ${ratios} | ${f(st.floor, 3)} |\n`);
      if (st.proxy) {
        const pr = [...prompts.map((n) => f(st.proxyRatio[`wall${n}`], 3)), f(st.proxyRatio.tpotWall, 3)].join(" / ");
        process.stdout.write(`| ${s.shape} | ${st.label} via proxy (${f(st.proxy.genTokens.median, 0)} tok) | ${prompts.map((n) => cell(st.proxy, `wall${n}`)).join(" | ")} | ` +
          `${cell(st.proxy, "tpotWall", 2)} | ${pr} | ${f(st.floor, 3)} |\n`);
      }
    }
  }
}
process.exit(0);
