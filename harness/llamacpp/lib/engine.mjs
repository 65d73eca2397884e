// Loading a GGUF into llama.cpp (through node-llama-cpp) in the configuration the harness
// compares against aloepri's reference forward, and reading raw logits back.
//
// Why these settings: the reference accumulates in f64 from f32 weights, so every lossy step
// on the llama.cpp side must be switched off for logit-exact comparisons. llama.cpp defaults
// to flash attention and an F16 KV cache, which alone move logits by ~5e-3 relative; with
// flashAttention:false and an F32 KV cache the remaining difference is f32 rounding (~1e-6).

let llamaPromise = null;

// One Llama instance per process (the native backend is process-global). CPU only and never
// build or download: the prebuilt @node-llama-cpp/linux-x64 binary is pinned in package.json.
// Threads default to 1: ggml's worker threads spin-wait between ops, and on a small shared
// machine (2 cores, other jobs running) two spinning threads made each decode ~50x slower
// (2 s instead of 36 ms for a 16-token prompt). Pass --threads to use more on an idle machine.
export const DEFAULT_THREADS = 1;

export function loadLlama({ threads = DEFAULT_THREADS } = {}) {
  if (!llamaPromise) {
    // Imported lazily: loading node-llama-cpp takes ~1 s, argument errors should not wait for it.
    llamaPromise = import("node-llama-cpp").then(({ getLlama, LlamaLogLevel }) => getLlama({
      gpu: false,
      build: "never",
      skipDownload: true,
      progressLogs: false,
      maxThreads: threads,
      logLevel: LlamaLogLevel.warn,
      // llama.cpp's logs must never reach stdout: eval.mjs prints exactly one JSON object there.
      logger: (level, message) => {
        const text = String(message).trimEnd();
        if (text) process.stderr.write(`[llama.cpp ${level}] ${text}\n`);
      },
    }));
  }
  return llamaPromise;
}

// Exact-comparison context options: no flash attention, F32 K and V caches.
export function exactContextOptions({ contextSize, sequences = 1, threads = DEFAULT_THREADS, batchSize } = {}) {
  const o = {
    contextSize,
    sequences,
    flashAttention: false,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
    // Fail loudly instead of silently shrinking the context.
    failedCreationRemedy: false,
    ignoreMemorySafetyChecks: true,
  };
  o.threads = { ideal: threads, min: 1 };
  if (batchSize) o.batchSize = batchSize;
  return o;
}

export async function loadModel(modelPath, { threads = DEFAULT_THREADS, mmap = true } = {}) {
  const llama = await loadLlama({ threads });
  // gpuLayers 0: CPU only. mmap: the GGUF stays on (page-cache) disk pages; false reads it into
  // freshly allocated memory (decode speed depends on where the weights' pages sit in memory:
  // byte-identical files measured up to 16% apart, docs/RESULTS.md "Serving cost").
  const model = await llama.loadModel({ modelPath, gpuLayers: 0, useMmap: mmap });
  return { llama, model };
}

// Number of tokens in the GGUF's vocabulary (tokenizer.ggml.tokens), which llama.cpp uses as
// n_vocab; ids at or above it make llama_decode fail with an unhelpful "Eval has failed".
export function vocabSize(model) {
  const n = model.fileInfo?.metadata?.tokenizer?.ggml?.tokens?.length;
  if (!Number.isInteger(n) || n <= 0) throw new Error("GGUF has no tokenizer.ggml.tokens array");
  return n;
}

// A logits Map (token -> logit, as node-llama-cpp returns it, sorted by value) to a dense
// Float64Array indexed by token id. Every id must be present: a partial map means llama.cpp
// ran a sampler that dropped candidates, which would make the comparison meaningless.
export function logitsMapToArray(map) {
  const n = map.size;
  const out = new Float64Array(n);
  const seen = new Uint8Array(n);
  for (const [tok, v] of map) {
    if (!(tok >= 0 && tok < n) || seen[tok]) throw new Error(`logits map is not a dense 0..${n - 1} vocabulary (token ${tok})`);
    seen[tok] = 1;
    out[tok] = v;
  }
  return out;
}

// argmax with ties broken towards the lowest id (the reference's rule).
export function argmax(logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

// argmax (ties to the lowest id) from the top-k entries of a logits Map; throws when all k
// entries tie, since a lower id with the same value might have been cut off.
export function argmaxOfTop(top, k, step) {
  let best = -1, bestV = -Infinity, ties = 0;
  for (const [t, v] of top) {
    if (best < 0 || v > bestV) {
      best = t;
      bestV = v;
      ties = 1;
    } else if (v === bestV) {
      ties++;
      if (t < best) best = t;
    }
  }
  if (top.size >= k && ties >= top.size) throw new Error(`greedy step ${step}: the top ${k} logits tie (${bestV})`);
  return best;
}

// Parses "1,2,3" into token ids; throws a one-line error naming the flag.
export function parseIds(text, flag = "--ids") {
  if (typeof text !== "string" || text.trim() === "") throw new Error(`${flag}: expected comma-separated token ids`);
  return text.split(",").map((s) => {
    const t = s.trim();
    if (!/^\d+$/.test(t)) throw new Error(`${flag}: '${t}' is not a non-negative integer token id`);
    const v = Number(t);
    if (!Number.isSafeInteger(v) || v > 0x7fffffff) throw new Error(`${flag}: token id ${t} is out of range`);
    return v;
  });
}

// Minimal --flag value / --flag parser (no dependency): spec maps flag -> "string" | "int" | "bool".
export function parseArgs(argv, spec, usage) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "-h" || a === "--help") {
      process.stdout.write(usage + "\n");
      process.exit(0);
    }
    let name = a, value;
    const eq = a.indexOf("=");
    if (a.startsWith("--") && eq > 0) {
      name = a.slice(0, eq);
      value = a.slice(eq + 1);
    }
    const kind = spec[name];
    if (!kind) throw new Error(`unknown option '${a}'\n${usage}`);
    const key = name.replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (kind === "bool") {
      if (value !== undefined) throw new Error(`${name} takes no value`);
      out[key] = true;
      continue;
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new Error(`${name} needs a value`);
      value = argv[++i];
    }
    if (kind === "int") {
      if (!/^-?\d+$/.test(value)) throw new Error(`${name}: '${value}' is not an integer`);
      out[key] = Number(value);
    } else {
      out[key] = value;
    }
  }
  return out;
}
