#!/usr/bin/env node
// Latency the privacy proxy adds: time to first token and per-token latency, through
// `aloepri proxy` vs straight to the engine (not a test; numbers go to docs/RESULTS.md "The privacy proxy").
//
//   node bench/proxy_bench.mjs [--requests 100] [--tokens 32] [--interval-ms 1] [--real]
//
// Default mode: a fake llama-server in this process streams pre-chosen obfuscated ids at a fixed
// pace and stamps each token when it writes it; the client (same process, same clock) stamps it
// when it arrives, either directly (llama-server SSE) or through the proxy (OpenAI SSE). The
// difference is exactly the proxy's added latency per token (HTTP hop, tau^-1, detokenization,
// stop-string logic, SSE re-encoding). --real also measures against the llama.cpp harness
// serving the --exact obfuscated aloe-mini (TTFT and inter-token gaps, proxy vs direct).
// Needs the built CLI ($ALOEPRI_BIN or build/aloepri) and the harness (harness/llamacpp).
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { startServer } from "../harness/llamacpp/lib/testing.mjs";
import { ALOE_MINI, aloepri, aloepriBin, startProxy, tokenize } from "../tests/e2e/lib.mjs";

const run = promisify(execFile);
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const REQUESTS = opt("--requests", 100), TOKENS = opt("--tokens", 32), INTERVAL = opt("--interval-ms", 1);
const REAL = args.includes("--real");

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const stats = (xs) => ({ n: xs.length, p50: pct(xs, 50), p99: pct(xs, 99), mean: xs.reduce((a, b) => a + b, 0) / xs.length });
const fmt = (s) => `p50 ${s.p50.toFixed(3)} ms  p99 ${s.p99.toFixed(3)} ms  mean ${s.mean.toFixed(3)} ms  (n ${s.n})`;

// Streams a POST and calls onEvent(json, tArrive) for each SSE data event.
async function streamPost(url, body, onEvent) {
  const res = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}: ${await res.text()}`);
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of res.body) {
    const t = performance.now();
    buf += dec.decode(chunk, { stream: true });
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (!ev.startsWith("data: ") || ev === "data: [DONE]") continue;
      onEvent(JSON.parse(ev.slice(6)), t);
    }
  }
}

// A fake llama-server: /completion streams `ids` one every INTERVAL ms, stamping each write.
function fakeEngine(ids) {
  const sent = [];
  const server = http.createServer((req, res) => {
    if (req.url === "/health") return res.end('{"status":"ok"}');
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const n = Math.min(JSON.parse(body).n_predict, ids.length);
      res.writeHead(200, { "Content-Type": "text/event-stream" });
      res.socket.setNoDelay(true);
      let i = 0;
      const tick = () => {
        if (i < n) {
          sent.push(performance.now());
          res.write(`data: ${JSON.stringify({ index: 0, content: "", tokens: [ids[i]], stop: false, tokens_predicted: i + 1 })}\n\n`);
          i++;
          setTimeout(tick, INTERVAL);
        } else {
          res.end(`data: ${JSON.stringify({ index: 0, content: "", tokens: [], stop: true, stop_type: "limit" })}\n\n`);
        }
      };
      tick();
    });
  });
  return new Promise((r) => server.listen(0, "127.0.0.1", () => r({ url: `http://127.0.0.1:${server.address().port}`, sent, server })));
}

async function measure(label, doRequest, sentStamps) {
  const ttft = [], perTok = [], gaps = [];
  for (let r = 0; r < REQUESTS; r++) {
    const arrive = [];
    const startSent = sentStamps ? sentStamps.length : 0;
    const t0 = performance.now();
    await doRequest((t) => arrive.push(t));
    ttft.push(arrive[0] - t0);
    for (let i = 1; i < arrive.length; i++) gaps.push(arrive[i] - arrive[i - 1]);
    if (sentStamps) {
      const sent = sentStamps.slice(startSent);
      if (sent.length !== arrive.length) throw new Error(`${label}: ${sent.length} tokens sent, ${arrive.length} arrived`);
      for (let i = 0; i < sent.length; i++) perTok.push(arrive[i] - sent[i]);
    }
  }
  return { label, ttft: stats(ttft), gaps: stats(gaps), perTok: perTok.length ? stats(perTok) : null };
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), "aloepri-proxybench-"));
  const cleanup = [];
  try {
    const key = join(dir, "client.key");
    await aloepri(["keygen", "--out", key]);
    await aloepri(["obfuscate", ALOE_MINI, "--key", key, "--exact", "--dtype", "f32", "--out", join(dir, "obf"), "--gguf", join(dir, "obf.gguf")]);
    // Word tokens (each decodes to text at once, so one token = one SSE chunk through the proxy).
    const words = "the quick brown fox jumps over the lazy dog and then the cat sat on the mat while a bird sang in the tall green tree near the old house by the river";
    const text = Array(8).fill(words).join(" ");
    // A lone "▁" piece would decode to nothing at the start of the answer: leave such ids out.
    const plainIds = (await tokenize(text, false)).filter((id) => id !== 28705).slice(0, TOKENS);
    const { stdout } = await run(aloepriBin(), ["encode", "--key", key, "--ids", plainIds.join(",")]);
    const obfIds = stdout.trim().split(",").map(Number);
    const prompt = "Once upon a time";
    const promptIds = (await run(aloepriBin(), ["encode", "--key", key, "--ids", (await tokenize(prompt, true)).join(",")])).stdout.trim().split(",").map(Number);

    const fake = await fakeEngine(obfIds);
    cleanup.push(() => fake.server.close());
    const proxy = await startProxy(["--key", key, "--tokenizer", ALOE_MINI, "--backend", fake.url, "--model-name", "aloe-mini", "--quiet"]);
    cleanup.push(() => proxy.stop());
    const n = obfIds.length;
    const direct = (onTok) => streamPost(`${fake.url}/completion`, { prompt: promptIds, n_predict: n, temperature: 0, stream: true },
      (j, t) => { if (j.tokens?.length) onTok(t); });
    const viaProxy = (onTok) => streamPost(`${proxy.url}/v1/completions`, { model: "aloe-mini", prompt, max_tokens: n, temperature: 0, stream: true },
      (j, t) => { if (j.choices?.[0]?.text) onTok(t); });
    // Warm up both paths, then alternate blocks so drift hits both alike.
    await measure("warmup", direct, fake.sent);
    await measure("warmup", viaProxy, fake.sent);
    const d = await measure("direct (fake engine)", direct, fake.sent);
    const p = await measure("proxy  (fake engine)", viaProxy, fake.sent);
    const out = { machine: "2-core AMD EPYC (Zen 4) shared, Debian 12", date: new Date().toISOString(), requests: REQUESTS, tokens: n, interval_ms: INTERVAL, fake: { direct: d, proxy: p } };
    console.log(`fake engine, ${REQUESTS} requests x ${n} tokens, one token every ${INTERVAL} ms`);
    for (const m of [d, p]) {
      console.log(`  ${m.label}  TTFT        ${fmt(m.ttft)}`);
      console.log(`  ${m.label}  token delay ${fmt(m.perTok)}`);
    }
    console.log(`  added by the proxy: TTFT p50 ${(p.ttft.p50 - d.ttft.p50).toFixed(3)} ms, p99 ${(p.ttft.p99 - d.ttft.p99).toFixed(3)} ms; ` +
      `per token p50 ${(p.perTok.p50 - d.perTok.p50).toFixed(3)} ms, p99 ${(p.perTok.p99 - d.perTok.p99).toFixed(3)} ms`);

    if (REAL) {
      const eng = await startServer(["--model", join(dir, "obf.gguf"), "--ctx", "512", "--parallel", "1"]);
      cleanup.push(() => eng.stop());
      const proxy2 = await startProxy(["--key", key, "--tokenizer", ALOE_MINI, "--backend", eng.url, "--model-name", "aloe-mini", "--quiet"]);
      cleanup.push(() => proxy2.stop());
      const rd = (onTok) => streamPost(`${eng.url}/completion`, { prompt: promptIds, n_predict: TOKENS, temperature: 0, ignore_eos: true, stream: true },
        (j, t) => { if (j.tokens?.length) onTok(t); });
      // Through the proxy every token counts, text or not: use the stream's chunks plus the end.
      const rp = (onTok) => streamPost(`${proxy2.url}/v1/completions`, { model: "aloe-mini", prompt, max_tokens: TOKENS, temperature: 0, stream: true },
        (j, t) => { if (j.choices?.[0]?.text) onTok(t); });
      await measure("warmup", rd, null);
      await measure("warmup", rp, null);
      const a = await measure("direct (llama.cpp)", rd, null);
      const b = await measure("proxy  (llama.cpp)", rp, null);
      out.real = { direct: a, proxy: b };
      console.log(`llama.cpp harness, obfuscated aloe-mini (--exact, f32), ${REQUESTS} requests x up to ${TOKENS} tokens`);
      for (const m of [a, b]) {
        console.log(`  ${m.label}  TTFT          ${fmt(m.ttft)}`);
        console.log(`  ${m.label}  between tokens ${fmt(m.gaps)}`);
      }
    }
    console.log(JSON.stringify(out));
  } finally {
    for (const f of cleanup.reverse()) await f();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
