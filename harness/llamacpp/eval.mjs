#!/usr/bin/env node
// Raw-logit evaluation of a GGUF in llama.cpp, printing the JSON object of
// `aloepri forward --json` so the two engines can be compared field by field:
//   {"engine":"llama.cpp","model":path,"ids":[...],"vocab_size":n,"last_logits":[...],
//    "greedy":[...][,"logits":[[...],...]]}
// Greedy decoding is argmax over the raw logits with ties to the lowest id (the reference's
// rule), each chosen token fed back; it does not stop at EOS (neither does the reference).
import { writeFileSync } from "node:fs";
import { argmax, argmaxOfTop, DEFAULT_THREADS, exactContextOptions, loadModel, logitsMapToArray, parseArgs, parseIds, vocabSize } from "./lib/engine.mjs";

const USAGE = `usage: node eval.mjs --model M.gguf --ids 1,2,3 [--greedy N] [--greedy-top K] [--all-logits] [--threads N] [--logits-out FILE]
  --model F       GGUF file
  --ids LIST      prompt token ids, comma-separated
  --greedy N      also generate N tokens greedily (argmax of raw logits, ties to the lowest id)
  --greedy-top K  logits read back per greedy step (default 8); all K tying is an error, so a
                  homophonic vocabulary (copies of a token tie by construction) needs K > its most copies
  --all-logits    include the logits of every prompt position ("logits": [[...], ...])
  --threads N     CPU threads (default 1, see lib/engine.mjs)
  --logits-out F  also write the prompt logits as raw little-endian float32 [T x vocab] to F
                  (only with --all-logits; a compact alternative to parsing huge JSON)`;

async function main() {
  const args = parseArgs(process.argv.slice(2), {
    "--model": "string", "--ids": "string", "--greedy": "int", "--all-logits": "bool",
    "--threads": "int", "--logits-out": "string", "--greedy-top": "int",
  }, USAGE);
  if (!args.model) throw new Error(`--model is required\n${USAGE}`);
  const ids = parseIds(args.ids);
  const nGreedy = args.greedy ?? 0;
  if (nGreedy < 0) throw new Error("--greedy: must be >= 0");
  if (args.threads !== undefined && args.threads < 1) throw new Error("--threads: must be >= 1");
  if (args.logitsOut && !args.allLogits) throw new Error("--logits-out needs --all-logits");

  const threads = args.threads ?? DEFAULT_THREADS;
  const { model } = await loadModel(args.model, { threads });
  const nVocab = vocabSize(model);
  const nCtx = ids.length + nGreedy + 1;
  // The whole prompt goes in one batch so every position is computed by the same kernels.
  const context = await model.createContext(exactContextOptions({
    contextSize: Math.max(nCtx, 32), threads, batchSize: Math.max(ids.length, 1),
  }));
  for (const id of ids) if (id >= nVocab) throw new Error(`--ids: token id ${id} is out of range for vocab_size ${nVocab}`);
  const seq = context.getSequence();
  const want = { generateNext: { logits: true } };  // greedy sampler (temperature 0): raw logits
  const input = ids.map((t, i) => (args.allLogits || i === ids.length - 1 ? [t, want] : t));
  const out = await seq.controlledEvaluate(input);

  const rows = [];
  if (args.allLogits) {
    for (let i = 0; i < ids.length; i++) {
      if (!out[i]?.next?.logits) throw new Error(`llama.cpp returned no logits for position ${i}`);
      rows.push(logitsMapToArray(out[i].next.logits));
    }
  }
  const lastOut = out[ids.length - 1];
  if (!lastOut?.next?.logits) throw new Error("llama.cpp returned no logits for the last position");
  const last = args.allLogits ? rows[rows.length - 1] : logitsMapToArray(lastOut.next.logits);
  const n = last.length;
  if (n !== nVocab) throw new Error(`llama.cpp returned ${n} logits, the GGUF vocabulary has ${nVocab} tokens`);

  // Greedy steps read back only the top TOP logits (llama.cpp sorts them natively): moving a
  // whole 151k-entry logits row through N-API per step made a 32-token run take ~15 s. The
  // argmax is still taken here from raw logit values, ties to the lowest id; if all TOP values
  // tie, the tie cannot be resolved from what was returned and that is an error, not a guess.
  const TOP = args.greedyTop ?? 8;
  if (!Number.isInteger(TOP) || TOP < 2) throw new Error(`--greedy-top: must be an integer >= 2\n${USAGE}`);
  const wantTop = { generateNext: { logits: { filter: { includeTop: TOP } } } };
  const greedy = [];
  let tok = argmax(last);
  for (let i = 0; i < nGreedy; i++) {
    greedy.push(tok);
    if (i + 1 < nGreedy) {
      const r = await seq.controlledEvaluate([[tok, wantTop]]);
      const top = r[0]?.next?.logits;
      if (!top || top.size === 0) throw new Error(`llama.cpp returned no logits at greedy step ${i + 1}`);
      tok = argmaxOfTop(top, TOP, i + 1);
    }
  }

  if (args.logitsOut) {
    const buf = new Float32Array(ids.length * n);
    rows.forEach((r, t) => buf.set(r, t * n));
    writeFileSync(args.logitsOut, Buffer.from(buf.buffer));
  }

  // The logits are float32 values held exactly in doubles; JSON.stringify prints the shortest
  // decimal that round-trips the double, so no precision is lost.
  const parts = [
    `{"engine":"llama.cpp","model":${JSON.stringify(args.model)},"ids":${JSON.stringify(ids)}`,
    `,"vocab_size":${n},"last_logits":${JSON.stringify(Array.from(last))},"greedy":${JSON.stringify(greedy)}`,
  ];
  if (args.allLogits) parts.push(`,"logits":[${rows.map((r) => JSON.stringify(Array.from(r))).join(",")}]`);
  parts.push("}\n");
  await new Promise((resolve, reject) => process.stdout.write(parts.join(""), (e) => (e ? reject(e) : resolve())));
  await context.dispose();
  await model.dispose();
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`eval.mjs: ${e?.message ?? e}\n`);
    process.exit(1);
  },
);
