// Helpers for the end-to-end tests: the aloepri CLI, the privacy proxy as a subprocess, and a
// recording pass-through that sits between the proxy and the engine and keeps every byte the
// engine received and sent. Kept out of the *.test.mjs glob.
import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import http from "node:http";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
export const E2E_DIR = dirname(fileURLToPath(import.meta.url));
export const REPO_DIR = resolve(E2E_DIR, "../..");
export const ALOE_MINI = join(REPO_DIR, "models", "aloe-mini");

export function aloepriBin() {
  return process.env.ALOEPRI_BIN || join(REPO_DIR, "build", "aloepri");
}

export function skipReason() {
  const bin = aloepriBin();
  if (!existsSync(bin)) return `aloepri CLI not found at ${bin} (build it, or set ALOEPRI_BIN)`;
  if (!existsSync(join(REPO_DIR, "engine", "llamacpp", "node_modules", "node-llama-cpp")))
    return "llama.cpp harness not installed (cd harness/llamacpp && npm install)";
  if (!existsSync(join(E2E_DIR, "node_modules", "openai"))) return "openai client not installed (cd tests/e2e && npm install)";
  if (!existsSync(join(ALOE_MINI, "model.safetensors"))) return "models/aloe-mini missing";
  return null;
}

// Runs the CLI; resolves to stdout.
export async function aloepri(args) {
  const { stdout } = await run(aloepriBin(), args, { maxBuffer: 1 << 28 });
  return stdout;
}

export async function tokenize(text, addSpecial) {
  const args = ["tokenize", "--tokenizer", ALOE_MINI, "--text", text, "--json"];
  if (addSpecial) args.push("--add-special");
  return JSON.parse(await aloepri(args)).ids;
}

export async function detokenize(ids) {
  if (ids.length === 0) return "";
  return JSON.parse(await aloepri(["detokenize", "--tokenizer", ALOE_MINI, "--skip-special", "--json", "--ids", ids.join(",")])).text;
}

// tau^-1 with the key (what the client does with the engine's ids).
export async function decodeIds(key, ids) {
  if (ids.length === 0) return [];
  return (await aloepri(["decode", "--key", key, "--ids", ids.join(",")])).trim().split(",").filter((s) => s !== "").map(Number);
}

// Starts `aloepri proxy`; resolves to {url, stop(), stderr()} once it listens.
export function startProxy(args, { timeoutMs = 30000 } = {}) {
  return new Promise((resolveP, reject) => {
    const proc = spawn(aloepriBin(), ["proxy", "--listen", "127.0.0.1:0", ...args], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "", ready = false;
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`proxy did not start in ${timeoutMs} ms:\n${err}`));
    }, timeoutMs);
    proc.stderr.on("data", (d) => {
      err += d;
      if (err.length > 1 << 20) err = err.slice(-(1 << 19));  // the proxy logs a line per request
      const m = ready ? null : /listening on (http:\/\/[\d.]+:\d+)/.exec(err);
      if (m) {
        ready = true;
        clearTimeout(timer);
        const exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
        resolveP({
          url: m[1],
          stderr: () => err,
          stop: async () => {
            if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
            return exited;
          },
        });
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`proxy exited with ${code} before listening:\n${err}`));
    });
  });
}

// A pass-through HTTP server in front of `target` that records each exchange:
// {method, path, request (body text), response (body text as streamed), status}.
export function startRecorder(target) {
  const log = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const entry = { method: req.method, path: req.url, request: body.toString("utf8"), response: "", status: 0 };
      log.push(entry);
      const headers = { ...req.headers };
      delete headers.host;
      delete headers.connection;
      const up = http.request(target + req.url, { method: req.method, headers }, (ur) => {
        entry.status = ur.statusCode;
        const h = { ...ur.headers };
        delete h.connection;
        delete h["keep-alive"];
        res.writeHead(ur.statusCode, h);
        ur.on("data", (d) => {
          entry.response += d.toString("utf8");
          res.write(d);
        });
        ur.on("end", () => res.end());
        ur.on("error", () => res.destroy());
      });
      up.on("error", (e) => {
        if (!res.headersSent) res.writeHead(502);
        res.end(String(e));
      });
      res.on("close", () => {
        if (!res.writableFinished) up.destroy();
      });
      up.end(body);
    });
  });
  return new Promise((resolveP) => {
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      resolveP({
        url: `http://127.0.0.1:${port}`,
        log,
        stop: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }),
      });
    });
  });
}

// The ids the engine generated in one recorded /completion exchange (stream or not).
export function engineIds(entry) {
  const text = entry.response.trim();
  if (text.startsWith("{")) return JSON.parse(text).tokens;
  const ids = [];
  for (const ev of text.split("\n\n")) {
    if (!ev.startsWith("data: ")) continue;
    const j = JSON.parse(ev.slice(6));
    ids.push(...(j.tokens ?? []));
  }
  return ids;
}
