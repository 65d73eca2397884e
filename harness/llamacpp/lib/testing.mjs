// Helpers for the harness's own tests (test/*.test.mjs): build a tiny GGUF with the project's
// CLI, run eval.mjs, start and stop server.mjs. Kept out of test/ so `node --test test/` does
// not try to run this file as a test.
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
export const HARNESS_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const REPO_DIR = resolve(HARNESS_DIR, "../..");

// The aloepri CLI: $ALOEPRI_BIN, else the default build tree's binary.
export function aloepriBin() {
  return process.env.ALOEPRI_BIN || join(REPO_DIR, "build", "aloepri");
}

// Reason to skip, or null: tests need the built CLI and a real vocabulary.
export function skipReason() {
  const bin = aloepriBin();
  if (!existsSync(bin)) return `aloepri CLI not found at ${bin} (build it, or set ALOEPRI_BIN)`;
  if (!existsSync(join(REPO_DIR, "vocab", "llama2", "tokenizer.json"))) return "vocab/llama2 missing (run ./setup.sh)";
  return null;
}

// A tiny llama (GQA, untied, llama2 vocabulary: 32000 tokens) as an f32 GGUF in a fresh temp
// dir. Returns {dir, gguf, cleanup}.
export async function tinyModel({ seed = 7 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "aloepri-harness-"));
  const hf = join(dir, "hf"), gguf = join(dir, "tiny.gguf");
  const bin = aloepriBin();
  await run(bin, ["synth", "--arch", "llama", "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
    "--vocab-from", join(REPO_DIR, "vocab", "llama2"), "--seed", String(seed), "--out", hf]);
  await run(bin, ["convert", hf, "--gguf", gguf, "--dtype", "f32"]);
  return { dir, hf, gguf, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

// Runs eval.mjs; resolves to the parsed JSON (rejects with stderr on failure).
export async function evalJson(args) {
  const { stdout } = await run(process.execPath, [join(HARNESS_DIR, "eval.mjs"), ...args], { maxBuffer: 1 << 30 });
  return JSON.parse(stdout);
}

// Runs eval.mjs expecting failure; resolves to {code, stderr}.
export async function evalFails(args) {
  try {
    await run(process.execPath, [join(HARNESS_DIR, "eval.mjs"), ...args]);
  } catch (e) {
    return { code: e.code, stderr: e.stderr };
  }
  throw new Error(`eval.mjs ${args.join(" ")} succeeded, expected a failure`);
}

// Starts server.mjs on a free port; resolves to {url, proc, stop()} once it listens.
export function startServer(args, { timeoutMs = 30000 } = {}) {
  return new Promise((resolveP, reject) => {
    const proc = spawn(process.execPath, [join(HARNESS_DIR, "server.mjs"), "--port", "0", ...args], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let err = "";
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`server did not start in ${timeoutMs} ms:\n${err}`));
    }, timeoutMs);
    proc.stderr.on("data", (d) => {
      err += d;
      const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        const exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
        resolveP({
          url: m[1],
          proc,
          exited,
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
      reject(new Error(`server exited with ${code} before listening:\n${err}`));
    });
  });
}

// POST JSON; resolves to {status, body} (body parsed when JSON).
export async function postJson(url, body) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch { /* SSE or plain text */ }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

// Parses an SSE body into the JSON objects of its "data: " events.
export function parseSse(text) {
  return text.split("\n\n").filter((e) => e.trim() !== "").map((e) => {
    if (!e.startsWith("data: ")) throw new Error(`not an SSE data event: ${JSON.stringify(e.slice(0, 80))}`);
    return JSON.parse(e.slice("data: ".length));
  });
}
