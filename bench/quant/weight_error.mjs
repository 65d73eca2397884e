#!/usr/bin/env node
// Per-tensor weight quantization error of HF checkpoints (issue 7 diagnostics): for every 2-D
// tensor, the relative RMS error ||W - deq(quant(W))|| / ||W|| of ggml's Q8_0 and Q4_0 blocks
// (32 consecutive values of a row, i.e. along the input dimension, which is ggml's ne[0]), and
// the mean block "peakiness" max|w| / rms(w) over blocks (sqrt(3) ~ 1.7 for uniform values,
// ~2.3 for Gaussian ones; larger means outliers dominate their block's scale).
//
//   node bench/quant/weight_error.mjs MODEL_DIR [MODEL_DIR ...]
//
// Then the attention circuits, whose error is what the model feels: per query head i (kv head j),
// OV_i = W_v(j)^T W_o(:, i)^T and QK_i = W_q(i)^T W_k(j) (d x d, RoPE left out), and the relative
// Frobenius error of each when both factors are quantized. An orthogonal change of basis leaves
// these errors alone; an invertible but ill-conditioned one between two factors (the per-head
// U_j between W_v and W_o, the per-pair scales H_j between W_q and W_k) does not: the quantizer's
// noise is relative to the transformed factors, and the other factor amplifies it.
//
// The f16 rounding of the block scale is ignored here (it is below 1e-3 relative).
import { readFileSync } from "node:fs";
import path from "node:path";
import { readSafetensors } from "./safetensors.mjs";


// Error sums of one tensor (rows of `cols` values; cols must be a multiple of 32).
function quantError(v, cols) {
  let e8 = 0, e4 = 0, ss = 0, peak = 0, nb = 0;
  for (let b = 0; b + 32 <= v.length; b += 32) {
    let amax = 0, m = 0, sq = 0;
    for (let j = 0; j < 32; j++) {
      const x = v[b + j];
      sq += x * x;
      if (Math.abs(x) > amax) { amax = Math.abs(x); m = x; }
    }
    ss += sq;
    if (sq > 0) { peak += amax / Math.sqrt(sq / 32); nb++; }
    const d8 = amax / 127, i8 = d8 ? 1 / d8 : 0;
    const d4 = m / -8, i4 = d4 ? 1 / d4 : 0;
    for (let j = 0; j < 32; j++) {
      const x = v[b + j];
      const q8 = Math.sign(x * i8) * Math.round(Math.abs(x * i8));
      e8 += (x - q8 * d8) ** 2;
      const q4 = Math.min(15, Math.trunc(x * i4 + 8.5));
      e4 += (x - (q4 - 8) * d4) ** 2;
    }
  }
  return { e8, e4, ss, peak: nb ? peak / nb : 0 };
}

const dirs = process.argv.slice(2);
if (!dirs.length) {
  process.stderr.write("usage: node bench/quant/weight_error.mjs MODEL_DIR [MODEL_DIR ...]\n");
  process.exit(2);
}
const kinds = ["embed_tokens", "lm_head", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
process.stdout.write(`| model | tensor kind | q8_0 rel. RMS err | q4_0 rel. RMS err | block max/rms |\n|---|---|---|---|---|\n`);
for (const dir of dirs) {
  const ts = readSafetensors(dir);
  for (const k of kinds) {
    let e8 = 0, e4 = 0, ss = 0, peak = 0, n = 0;
    for (const [name, t] of ts) {
      if (!name.includes(k) || t.shape[1] % 32 !== 0) continue;
      const r = quantError(t.v, t.shape[1]);
      e8 += r.e8; e4 += r.e4; ss += r.ss; peak += r.peak; n++;
    }
    if (!n) continue;
    process.stdout.write(`| ${path.basename(dir)} | ${k} (${n}) | ${Math.sqrt(e8 / ss).toFixed(5)} | ${Math.sqrt(e4 / ss).toFixed(4)} | ${(peak / n).toFixed(2)} |\n`);
  }
}

// Quantize-dequantize a row-major matrix along its rows (blocks of 32 of each row).
function qdq(v, type) {
  const o = new Float32Array(v.length);
  for (let b = 0; b + 32 <= v.length; b += 32) {
    let amax = 0, m = 0;
    for (let j = 0; j < 32; j++) if (Math.abs(v[b + j]) > amax) { amax = Math.abs(v[b + j]); m = v[b + j]; }
    if (type === "q8_0") {
      const d = amax / 127, id = d ? 1 / d : 0;
      for (let j = 0; j < 32; j++) o[b + j] = Math.sign(v[b + j]) * Math.round(Math.abs(v[b + j] * id)) * d;
    } else {
      const d = m / -8, id = d ? 1 / d : 0;
      for (let j = 0; j < 32; j++) o[b + j] = (Math.min(15, Math.trunc(v[b + j] * id + 8.5)) - 8) * d;
    }
  }
  return o;
}
// C = A_rows^T B_rows: A rows [ra..ra+k) of width n, B rows [rb..rb+k) of width m -> n x m.
function atb(A, n, ra, B, m, rb, k) {
  const C = new Float64Array(n * m);
  for (let r = 0; r < k; r++) {
    const a = (ra + r) * n, b = (rb + r) * m;
    for (let i = 0; i < n; i++) {
      const x = A[a + i];
      if (x === 0) continue;
      const ci = i * m;
      for (let j = 0; j < m; j++) C[ci + j] += x * B[b + j];
    }
  }
  return C;
}
// W_o is d x qd (rows = output): column block i as rows -> transpose it first.
function transpose(v, rows, cols) {
  const t = new Float32Array(v.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = v[r * cols + c];
  return t;
}
function relErr(X, Y) {
  let e = 0, s = 0;
  for (let i = 0; i < X.length; i++) { e += (X[i] - Y[i]) ** 2; s += Y[i] ** 2; }
  return Math.sqrt(e / s);
}
process.stdout.write(`\n| model | circuit | q8_0 rel. error | q4_0 rel. error |\n|---|---|---|---|\n`);
for (const dir of dirs) {
  const cfg = JSON.parse(readFileSync(path.join(dir, "config.json"), "utf8"));
  const ts = readSafetensors(dir);
  const D = cfg.hidden_size, hd = cfg.head_dim ?? D / cfg.num_attention_heads;
  const nh = cfg.num_attention_heads, group = nh / cfg.num_key_value_heads;
  const acc = { ov: { q8_0: [], q4_0: [] }, qk: { q8_0: [], q4_0: [] } };
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const g = (n) => ts.get(`model.layers.${l}.self_attn.${n}.weight`).v;
    const Wq = g("q_proj"), Wk = g("k_proj"), Wv = g("v_proj"), Wo = g("o_proj");
    const WoT = transpose(Wo, D, nh * hd);
    const quant = { q8_0: {}, q4_0: {} };
    for (const t of ["q8_0", "q4_0"]) {
      quant[t] = { Wq: qdq(Wq, t), Wk: qdq(Wk, t), Wv: qdq(Wv, t), WoT: transpose(qdq(Wo, t), D, nh * hd) };
    }
    for (let i = 0; i < nh; i++) {
      const j = Math.floor(i / group);
      const ov = atb(Wv, D, j * hd, WoT, D, i * hd, hd), qk = atb(Wq, D, i * hd, Wk, D, j * hd, hd);
      for (const t of ["q8_0", "q4_0"]) {
        const Q = quant[t];
        acc.ov[t].push(relErr(atb(Q.Wv, D, j * hd, Q.WoT, D, i * hd, hd), ov));
        acc.qk[t].push(relErr(atb(Q.Wq, D, i * hd, Q.Wk, D, j * hd, hd), qk));
      }
    }
  }
  const mean = (a) => a.reduce((x, y) => x + y, 0) / a.length;
  for (const c of ["ov", "qk"])
    process.stdout.write(`| ${path.basename(dir)} | ${c.toUpperCase()} (mean of ${acc[c].q8_0.length} heads) | ` +
      `${mean(acc[c].q8_0).toFixed(5)} | ${mean(acc[c].q4_0).toFixed(4)} |\n`);
}
