#!/usr/bin/env node
// An HTTP server over llama.cpp (node-llama-cpp) speaking the subset of llama-server's API that
// aloepri's client needs: token-id prompts in, token ids out. node-llama-cpp ships no server, so
// this is the stand-in for `llama-server` in the harness; field names and defaults follow
// llama.cpp's tools/server/README.md. See README.md for the exact subset.
//
// By default the context runs in the harness's exact configuration (no flash attention, F32
// KV cache), so temperature-0 output equals eval.mjs --greedy; --fast switches to llama.cpp's
// defaults (flash attention auto, F16 KV cache) for throughput measurements.
import http from "node:http";
import { basename } from "node:path";
import { DEFAULT_THREADS, exactContextOptions, loadModel, parseArgs, vocabSize } from "./lib/engine.mjs";
import { BadRequest, parseCompletion } from "./lib/request.mjs";
import { SlotPool } from "./lib/slots.mjs";

const USAGE = `usage: node server.mjs --model M.gguf [--host 127.0.0.1] [--port 8081] [--threads N] [--ctx 2048] [--parallel 4] [--fast] [--no-mmap]
  --model F      GGUF file
  --host H       address to listen on (default 127.0.0.1: local only)
  --port P       TCP port (default 8081; 0 picks a free one, printed on stderr)
  --threads N    CPU threads for evaluation (default 1: see lib/engine.mjs)
  --ctx N        context size per slot, in tokens (default 2048)
  --parallel N   slots: requests evaluated concurrently, more are queued (default 4)
  --fast         llama.cpp's default numerics (flash attention, F16 KV) instead of the exact ones
  --no-mmap      read the weights into memory instead of mapping the file (as llama-server --no-mmap);
                 benchmarks use it so that every model's weights sit in freshly allocated memory`;

const MAX_BODY = 16 << 20;

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { "Content-Type": "application/json; charset=utf-8", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

// llama-server's error shape.
function sendError(res, status, message, type) {
  sendJson(res, status, { error: { code: status, message, type } });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new BadRequest(`request body larger than ${MAX_BODY} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

async function readJson(req) {
  const text = await readBody(req);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new BadRequest(`request body is not valid JSON: ${e.message}`);
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2), {
    "--model": "string", "--host": "string", "--port": "int", "--threads": "int", "--ctx": "int",
    "--parallel": "int", "--fast": "bool", "--no-mmap": "bool",
  }, USAGE);
  if (!args.model) throw new Error(`--model is required\n${USAGE}`);
  const host = args.host ?? "127.0.0.1";
  const port = args.port ?? 8081;
  const nCtx = args.ctx ?? 2048;
  const nParallel = args.parallel ?? 4;
  if (nCtx < 16) throw new Error("--ctx: must be >= 16");
  if (nParallel < 1) throw new Error("--parallel: must be >= 1");
  if (args.threads !== undefined && args.threads < 1) throw new Error("--threads: must be >= 1");

  const threads = args.threads ?? DEFAULT_THREADS;
  const { model } = await loadModel(args.model, { threads, mmap: !args.noMmap });
  const ctxOptions = args.fast
    ? { contextSize: nCtx, sequences: nParallel, failedCreationRemedy: false, threads: { ideal: threads, min: 1 } }
    : exactContextOptions({ contextSize: nCtx, sequences: nParallel, threads });
  const context = await model.createContext(ctxOptions);
  const sequences = [];
  for (let i = 0; i < nParallel; i++) sequences.push(context.getSequence());
  const pool = new SlotPool(sequences);
  const slotCtx = context.contextSize;

  // Out-of-range ids in requests are refused with a 400 rather than failing the decode.
  const nVocab = vocabSize(model);
  const modelName = basename(args.model);
  const inflight = new Set();

  // Text prompts: the GGUF's tokenizer with special tokens parsed, and BOS prepended when the
  // vocabulary asks for it (llama-server's add_special) since node-llama-cpp never adds it.
  const tokenize = (text, addSpecial = true) => {
    const ids = Array.from(model.tokenize(text, true));
    const bos = model.tokens.bos;
    if (addSpecial && model.tokens.shouldPrependBosToken && bos != null && ids[0] !== bos) ids.unshift(bos);
    return ids;
  };
  const detok = (toks, last) => {
    try {
      return model.detokenize(toks, false, last);
    } catch {
      return "";
    }
  };

  async function completion(req, res) {
    const body = await readJson(req);
    const p = parseCompletion(body, { nVocab, tokenize });
    if (p.prompt.length >= slotCtx)
      throw new BadRequest(`the prompt (${p.prompt.length} tokens) exceeds the context size (${slotCtx})`);

    const slot = await pool.acquire();
    const ac = new AbortController();
    inflight.add(ac);
    let closed = false;
    res.on("close", () => {
      if (!res.writableFinished) {
        closed = true;
        ac.abort();
      }
    });
    try {
      await slot.seq.clearHistory();
      // Generation stops at n_predict, or when the slot's context is full (no context shift).
      const budget = slotCtx - p.prompt.length;
      const limit = p.n_predict < 0 ? budget : Math.min(p.n_predict, budget);
      const t0 = performance.now();
      let tFirst = t0;
      const tokens = [];
      let stopType = "limit";
      if (p.stream) {
        res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache", Connection: "keep-alive" });
      }
      if (limit === 0) {
        await slot.seq.evaluateWithoutGeneratingNewTokens(p.prompt);
        tFirst = performance.now();
      } else {
        const gen = slot.seq.evaluate(p.prompt, {
          temperature: p.temperature, topK: p.top_k, topP: p.top_p, minP: p.min_p, seed: p.seed,
          yieldEogToken: true,  // we decide: EOG stops unless ignore_eos
        });
        try {
          for await (const tok of gen) {
            if (tokens.length === 0) tFirst = performance.now();
            tokens.push(tok);
            if (p.stream && !closed) {
              const chunk = {
                index: 0, content: detok([tok], tokens.slice(-9, -1)), tokens: [tok], stop: false, id_slot: slot.id,
                tokens_predicted: tokens.length, tokens_evaluated: p.prompt.length,
              };
              res.write(`data: ${JSON.stringify(chunk)}\n\n`);
            }
            if (closed || ac.signal.aborted) { stopType = "none"; break; }
            if (!p.ignore_eos && model.isEogToken(tok)) { stopType = "eos"; break; }
            if (tokens.length >= limit) { stopType = "limit"; break; }
          }
        } finally {
          await gen.return?.();
        }
      }
      const tEnd = performance.now();
      const promptMs = tFirst - t0, predMs = tEnd - tFirst;
      const predictedN = tokens.length;
      const result = {
        index: 0,
        content: p.stream ? "" : detok(tokens),
        tokens: p.stream ? [] : tokens,
        id_slot: slot.id,
        stop: true,
        model: modelName,
        tokens_predicted: predictedN,
        tokens_evaluated: p.prompt.length,
        generation_settings: {
          n_ctx: slotCtx, n_predict: p.n_predict, temperature: p.temperature, top_k: p.top_k, top_p: p.top_p,
          min_p: p.min_p, seed: p.seed, ignore_eos: p.ignore_eos, stream: p.stream,
        },
        has_new_line: false,
        truncated: false,
        stop_type: stopType,
        stopped_eos: stopType === "eos",
        stopped_word: false,
        stopped_limit: stopType === "limit",
        stopping_word: "",
        tokens_cached: p.prompt.length + Math.max(0, predictedN - 1),
        timings: {
          prompt_n: p.prompt.length,
          prompt_ms: promptMs,
          prompt_per_token_ms: promptMs / p.prompt.length,
          prompt_per_second: (1000 * p.prompt.length) / Math.max(promptMs, 1e-9),
          predicted_n: predictedN,
          predicted_ms: predMs,
          predicted_per_token_ms: predictedN > 0 ? predMs / predictedN : 0,
          predicted_per_second: predictedN > 0 ? (1000 * predictedN) / Math.max(predMs, 1e-9) : 0,
        },
      };
      if (closed) return;
      if (p.stream) {
        res.end(`data: ${JSON.stringify(result)}\n\n`);
      } else {
        sendJson(res, 200, result);
      }
    } finally {
      inflight.delete(ac);
      pool.release(slot);
    }
  }

  async function route(req, res) {
    const url = new URL(req.url, "http://x");
    const path = url.pathname;
    if (req.method === "GET" && path === "/health") return sendJson(res, 200, { status: "ok" });
    if (req.method === "GET" && path === "/props") {
      return sendJson(res, 200, {
        default_generation_settings: { n_ctx: slotCtx, params: { n_predict: -1, temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, seed: -1 } },
        total_slots: pool.total,
        model_path: args.model,
        n_vocab: nVocab,
        bos_token: model.tokens.bos,
        eos_token: model.tokens.eos,
        build_info: "node-llama-cpp 3.22.1 (aloepri harness)",
        exact_numerics: !args.fast,
      });
    }
    if (req.method === "GET" && (path === "/v1/models" || path === "/models")) {
      return sendJson(res, 200, {
        object: "list",
        data: [{ id: modelName, object: "model", created: Math.floor(Date.now() / 1000), owned_by: "llamacpp",
          meta: { n_vocab: nVocab, n_ctx: slotCtx } }],
      });
    }
    if (req.method === "GET" && path === "/slots") {
      return sendJson(res, 200, pool.slots.map((s) => ({ id: s.id, is_processing: s.busy, n_ctx: slotCtx })));
    }
    if (req.method === "POST" && (path === "/completion" || path === "/completions")) return completion(req, res);
    if (req.method === "POST" && path === "/tokenize") {
      const b = await readJson(req);
      if (typeof b?.content !== "string") throw new BadRequest(`"content" must be a string`);
      return sendJson(res, 200, { tokens: tokenize(b.content, b.add_special === true) });
    }
    if (req.method === "POST" && path === "/detokenize") {
      const b = await readJson(req);
      if (!Array.isArray(b?.tokens) || !b.tokens.every((t) => Number.isInteger(t) && t >= 0 && t < nVocab))
        throw new BadRequest(`"tokens" must be an array of token ids below ${nVocab}`);
      return sendJson(res, 200, { content: detok(b.tokens) });
    }
    return sendError(res, 404, "File Not Found", "not_found_error");
  }

  const server = http.createServer((req, res) => {
    route(req, res).catch((e) => {
      const status = e instanceof BadRequest ? 400 : 500;
      if (status === 500) process.stderr.write(`server.mjs: ${req.method} ${req.url}: ${e?.stack ?? e}\n`);
      if (res.headersSent) {
        // Mid-stream failure: report it in-band as llama-server does, then close.
        res.end(`error: ${JSON.stringify({ error: { code: status, message: String(e?.message ?? e), type: "server_error" } })}\n\n`);
      } else {
        sendError(res, status, String(e?.message ?? e), status === 400 ? "invalid_request_error" : "server_error");
      }
    });
  });
  server.keepAliveTimeout = 5000;

  let shuttingDown = false;
  const shutdown = async (sig) => {
    if (shuttingDown) return;
    shuttingDown = true;
    process.stderr.write(`server.mjs: ${sig}, shutting down\n`);
    pool.close();  // queued requests get a 500
    server.close();
    server.closeIdleConnections?.();
    for (const ac of inflight) ac.abort();
    // In-flight generations stop at their next token; give them a moment, then free the model.
    const deadline = Date.now() + 5000;
    while (pool.idle < pool.total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    server.closeAllConnections?.();
    await context.dispose();
    await model.dispose();
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, resolve);
  });
  const addr = server.address();
  // One machine-readable line on stderr: tests and scripts wait for it to learn the port.
  process.stderr.write(`server.mjs: listening on http://${addr.address}:${addr.port} (slots ${nParallel}, n_ctx ${slotCtx}, vocab ${nVocab})\n`);
}

main().catch((e) => {
  process.stderr.write(`server.mjs: ${e?.message ?? e}\n`);
  process.exit(1);
});
