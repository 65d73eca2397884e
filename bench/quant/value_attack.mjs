#!/usr/bin/env node
// Value-path attack (issue 7 privacy check, docs/RESULTS.md "Well-conditioned value maps"): how much does the
// conditioning of the per-head value map U_j give away? Not part of `aloepri audit` (whose
// weight attacks never read W_v / W_o); a diagnostic for choosing --value-cond.
//
//   node bench/quant/value_attack.mjs --plain models/aloe-mini --obf OBF --key K --alpha-e A
//        [--aloepri BIN] [--victim build/corpus/heldout.bin] [--victim-tokens 10000] [--sample 1000]
//
// The attacker knows the public model and alpha_e, not the seed. Per layer l and kv head j the
// obfuscated embedding against the obfuscated value projection cancels the key matrices
// (P_emb Q_v = I): Y = emb~ W~_v(slot)^T = Pi (E + N) Diag(w) W_v(j)^T U_j, n x d_h. Its Gram
// matrix Y^T Y = U_j^T G U_j with G = W_v(j) Diag(w) (E + N)^T (E + N) Diag(w) W_v(j)^T, which
// the attacker predicts by adding the published noise to the public model himself. When U_j is
// orthogonal, the eigenvectors of the two Grams determine it up to one sign per eigenvector
// (fixed by the sign of the third moment of the projections): U^ = V D W^T. A non-orthogonal U_j
// leaves a continuous ambiguity (any G^-1/2 O (Y^T Y)^1/2 fits) and the same estimate is wrong.
// Heads are paired with slots by their Gram spectra (tau_kv is a permutation of 4). With U^ for
// all 16 (layer, head) maps, the 512 value features of a token are a known linear map of its
// noisy embedding row (E + N)[t] Diag(w_l) W_v^T: least squares gives the row back and the
// nearest plaintext embedding row is the guess (the audit's "NN, embedding row alone", reached
// through the value path instead of the FFN).
// With --anchors N the attacker instead knows N (plaintext id, obfuscated id) pairs from some
// other leak (here: N random ids with their true tau) and fits each U_j by least squares on
// them, whatever its conditioning; the rest of the attack is the same.
// Reported: share of sampled vocabulary ids and of victim token occurrences recovered.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { readSafetensors } from "./safetensors.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const argv = process.argv.slice(2);
const opt = { aloepri: path.join(root, "build/aloepri"), victim: path.join(root, "build/corpus/heldout.bin"),
              "victim-tokens": 10000, sample: 1000, anchors: 0, refine: 0, keep: 0.3 };
for (let i = 0; i < argv.length; i += 2) {
  const k = argv[i].replace(/^--/, "");
  if (!(k in opt) && !["plain", "obf", "key", "alpha-e"].includes(k)) throw new Error(`unknown option ${argv[i]}`);
  opt[k] = argv[i + 1];
}
for (const k of ["plain", "obf", "key", "alpha-e"]) if (opt[k] === undefined) throw new Error(`--${k} is required`);
const alphaE = Number(opt["alpha-e"]);


const cfg = JSON.parse(readFileSync(path.join(opt.plain, "config.json"), "utf8"));
const n = cfg.vocab_size, d = cfg.hidden_size, L = cfg.num_hidden_layers, mkv = cfg.num_key_value_heads;
const dh = cfg.head_dim ?? d / cfg.num_attention_heads;
const P = readSafetensors(opt.plain), O = readSafetensors(opt.obf);
const E = P.get("model.embed_tokens.weight").v, Eo = O.get("model.embed_tokens.weight").v;
const dp = O.get("model.embed_tokens.weight").shape[1];

// tau through the CLI (chunked).
const tau = new Int32Array(n);
for (let a = 0; a < n; a += 8000) {
  const ids = [];
  for (let i = a; i < Math.min(n, a + 8000); i++) ids.push(i);
  const r = spawnSync(opt.aloepri, ["encode", "--key", opt.key, "--ids", ids.join(","), "--json"], { encoding: "utf8", maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(r.stderr);
  JSON.parse(r.stdout).ids.forEach((v, k) => { tau[a + k] = v; });
}

// The attacker's noisy copy of the embedding (global std, his own randomness).
let s1 = 0, s2 = 0;
for (const x of E) { s1 += x; s2 += x * x; }
const sigma = Math.sqrt(s2 / E.length - (s1 / E.length) ** 2);
let st = 12345;
const urand = () => { st = (st + 0x6d2b79f5) | 0; let t = Math.imul(st ^ (st >>> 15), 1 | st); t ^= t + Math.imul(t ^ (t >>> 7), 61 | t); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
const gauss = () => Math.sqrt(-2 * Math.log(urand() + 1e-300)) * Math.cos(2 * Math.PI * urand());
const En = new Float32Array(E.length);
for (let i = 0; i < E.length; i++) En[i] = E[i] + alphaE * sigma * gauss();

// X (rows x k) = A (rows x c) B^T with B (k x c) given as rows [r0, r0 + k) of a matrix with c columns, scaled by w.
function projRows(A, rows, c, B, r0, k, w) {
  const X = new Float64Array(rows * k);
  const Bw = new Float64Array(k * c);
  for (let i = 0; i < k; i++) for (let q = 0; q < c; q++) Bw[i * c + q] = B[(r0 + i) * c + q] * (w ? w[q] : 1);
  for (let r = 0; r < rows; r++) {
    const a = r * c;
    for (let i = 0; i < k; i++) {
      let s = 0;
      const b = i * c;
      for (let q = 0; q < c; q++) s += A[a + q] * Bw[b + q];
      X[r * k + i] = s;
    }
  }
  return X;
}
function gram(X, rows, k) {
  const G = new Float64Array(k * k);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < k; i++) { const x = X[r * k + i]; for (let j = i; j < k; j++) G[i * k + j] += x * X[r * k + j]; }
  for (let i = 0; i < k; i++) for (let j = i; j < k; j++) { G[i * k + j] /= rows; G[j * k + i] = G[i * k + j]; }
  return G;
}
// Symmetric eigendecomposition (cyclic Jacobi): eigenvalues descending, eigenvectors as columns.
function eigh(S, k) {
  const A = Float64Array.from(S), V = new Float64Array(k * k);
  for (let i = 0; i < k; i++) V[i * k + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < k; p++) for (let q = p + 1; q < k; q++) off += A[p * k + q] ** 2;
    if (off < 1e-22 * (A.reduce((s, x) => s + x * x, 0))) break;
    for (let p = 0; p < k; p++)
      for (let q = p + 1; q < k; q++) {
        const apq = A[p * k + q];
        if (Math.abs(apq) < 1e-300) continue;
        const th = (A[q * k + q] - A[p * k + p]) / (2 * apq);
        const t = Math.sign(th || 1) / (Math.abs(th) + Math.sqrt(th * th + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let r = 0; r < k; r++) {
          const arp = A[r * k + p], arq = A[r * k + q];
          A[r * k + p] = c * arp - s * arq; A[r * k + q] = s * arp + c * arq;
        }
        for (let r = 0; r < k; r++) {
          const apr = A[p * k + r], aqr = A[q * k + r];
          A[p * k + r] = c * apr - s * aqr; A[q * k + r] = s * apr + c * aqr;
        }
        for (let r = 0; r < k; r++) {
          const vrp = V[r * k + p], vrq = V[r * k + q];
          V[r * k + p] = c * vrp - s * vrq; V[r * k + q] = s * vrp + c * vrq;
        }
      }
  }
  const idx = [...Array(k).keys()].sort((a, b) => A[b * k + b] - A[a * k + a]);
  const vals = idx.map((i) => A[i * k + i]);
  const vecs = new Float64Array(k * k);
  idx.forEach((src, dst) => { for (let r = 0; r < k; r++) vecs[r * k + dst] = V[r * k + src]; });
  return { vals, vecs };
}
function thirdMoments(X, rows, k, V) {  // sum over rows of (X v_i)^3
  const m = new Float64Array(k);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < k; i++) {
      let s = 0;
      for (let q = 0; q < k; q++) s += X[r * k + q] * V[q * k + i];
      m[i] += s * s * s;
    }
  return m;
}
function permutations(a) {
  if (a.length <= 1) return [a];
  return a.flatMap((x, i) => permutations([...a.slice(0, i), ...a.slice(i + 1)]).map((p) => [x, ...p]));
}

// Per layer: eigen-alignment of every plaintext head with its best slot; M (d' x F) maps an
// obfuscated embedding row to the estimated plaintext-basis value features, B (d x F) maps a
// plaintext embedding row to the same features.
const F = L * mkv * dh;
const M = new Float64Array(dp * F), B = new Float64Array(d * F);
const anchors = [];
for (let i = 0; i < Number(opt.anchors); i++) anchors.push(Math.floor(urand() * n));
const pairing = [];
const layers = [];  // per layer: w, Wv, Wvo, Xc[j] (clean plaintext projections), Y[s] (obfuscated)
for (let l = 0; l < L; l++) {
  const w = P.get(`model.layers.${l}.input_layernorm.weight`).v;
  const Wv = P.get(`model.layers.${l}.self_attn.v_proj.weight`).v, Wvo = O.get(`model.layers.${l}.self_attn.v_proj.weight`).v;
  const plain = [], obf = [];
  for (let j = 0; j < mkv; j++) {
    const X = projRows(En, n, d, Wv, j * dh, dh, w);
    plain.push({ X, ...eigh(gram(X, n, dh), dh) });
    const Y = projRows(Eo, n, dp, Wvo, j * dh, dh, null);
    obf.push({ Y, ...eigh(gram(Y, n, dh), dh) });
  }
  let best = null;
  for (const p of permutations([...Array(mkv).keys()])) {
    let cost = 0;
    p.forEach((s, j) => { for (let i = 0; i < dh; i++) cost += Math.abs(Math.log(Math.max(plain[j].vals[i], 1e-30) / Math.max(obf[s].vals[i], 1e-30))); });
    if (!best || cost < best.cost) best = { p, cost };
  }
  pairing.push(best.p);
  layers.push({ w, Wv, Wvo, Xc: [...Array(mkv).keys()].map((j) => projRows(E, n, d, Wv, j * dh, dh, w)), Y: obf.map((o) => o.Y) });
  for (let j = 0; j < mkv; j++) {
    const pl = plain[j], ob = obf[best.p[j]];
    const mp = thirdMoments(pl.X, n, dh, pl.vecs), mo = thirdMoments(ob.Y, n, dh, ob.vecs);
    const col0 = (l * mkv + j) * dh;
    for (let i = 0; i < dh; i++) {
      const sg = Math.sign(mp[i]) * Math.sign(mo[i]) || 1;
      // obf feature i = Eo[r] . (Wvo_slot^T w_i) * sign;  plain feature i = E[r] . (Diag(w) Wv_j^T v_i)
      for (let q = 0; q < dp; q++) {
        let s = 0;
        for (let e = 0; e < dh; e++) s += Wvo[(best.p[j] * dh + e) * dp + q] * ob.vecs[e * dh + i];
        M[q * F + col0 + i] = sg * s;
      }
      for (let q = 0; q < d; q++) {
        let s = 0;
        for (let e = 0; e < dh; e++) s += Wv[(j * dh + e) * d + q] * pl.vecs[e * dh + i];
        B[q * F + col0 + i] = w[q] * s;
      }
    }
  }
}

// Least squares fit of every U_j on (plaintext row, obfuscated row) pairs: Y_a = X_a U, trimmed
// twice (the worst `trim` share of pairs by residual dropped); features Y U^-1 in the plaintext
// head basis.
function fitMaps(pairs, trim) {
  for (let l = 0; l < L; l++) {
    const { w, Wv, Wvo, Xc, Y } = layers[l];
    for (let j = 0; j < mkv; j++) {
      const s = pairing[l][j], X = Xc[j], Yo = Y[s];
      let use = pairs;
      let U = null;
      for (let round = 0; round < (trim > 0 ? 3 : 1); round++) {
        const XtX = new Float64Array(dh * dh), XtY = new Float64Array(dh * dh);
        for (const { p, o } of use) {
          const rp = p * dh, ro = o * dh;
          for (let i = 0; i < dh; i++)
            for (let k = 0; k < dh; k++) { XtX[i * dh + k] += X[rp + i] * X[rp + k]; XtY[i * dh + k] += X[rp + i] * Yo[ro + k]; }
        }
        const XtXi = inverse(XtX, dh);
        U = new Float64Array(dh * dh);
        for (let i = 0; i < dh; i++) for (let k = 0; k < dh; k++) { let t = 0; for (let q = 0; q < dh; q++) t += XtXi[i * dh + q] * XtY[q * dh + k]; U[i * dh + k] = t; }
        if (round === 2 || trim <= 0) break;
        const res = use.map((pr) => {
          let r2 = 0;
          for (let k = 0; k < dh; k++) { let t = 0; for (let i = 0; i < dh; i++) t += X[pr.p * dh + i] * U[i * dh + k]; r2 += (Yo[pr.o * dh + k] - t) ** 2; }
          return { pr, r2 };
        }).sort((a, b) => a.r2 - b.r2);
        use = res.slice(0, Math.max(2 * dh, Math.floor(res.length * (1 - trim)))).map((x) => x.pr);
      }
      const Ui = inverse(U, dh);
      const col0 = (l * mkv + j) * dh;
      for (let i = 0; i < dh; i++) {
        for (let q = 0; q < dp; q++) {
          let t = 0;
          for (let e = 0; e < dh; e++) t += Wvo[(s * dh + e) * dp + q] * Ui[e * dh + i];
          M[q * F + col0 + i] = t;
        }
        for (let q = 0; q < d; q++) B[q * F + col0 + i] = w[q] * Wv[(j * dh + i) * d + q];
      }
    }
  }
}
if (anchors.length) fitMaps(anchors.map((a) => ({ p: a, o: tau[a] })), 0);

function inverse(A0, k) {  // Gauss-Jordan with partial pivoting
  const A = Float64Array.from(A0), I = new Float64Array(k * k);
  for (let i = 0; i < k; i++) I[i * k + i] = 1;
  for (let c = 0; c < k; c++) {
    let p = c;
    for (let r = c + 1; r < k; r++) if (Math.abs(A[r * k + c]) > Math.abs(A[p * k + c])) p = r;
    for (let j = 0; j < k; j++) { [A[c * k + j], A[p * k + j]] = [A[p * k + j], A[c * k + j]]; [I[c * k + j], I[p * k + j]] = [I[p * k + j], I[c * k + j]]; }
    const inv = 1 / A[c * k + c];
    for (let j = 0; j < k; j++) { A[c * k + j] *= inv; I[c * k + j] *= inv; }
    for (let r = 0; r < k; r++) {
      if (r === c) continue;
      const f = A[r * k + c];
      if (!f) continue;
      for (let j = 0; j < k; j++) { A[r * k + j] -= f * A[c * k + j]; I[r * k + j] -= f * I[c * k + j]; }
    }
  }
  return I;
}

// Least squares: e^ = f B^T (B B^T)^-1; T = M B^T (B B^T)^-1 (d' x d) maps an obfuscated row to e^.
function solveT() {
  const BBt = new Float64Array(d * d);
  for (let a = 0; a < d; a++) for (let b = a; b < d; b++) { let s = 0; for (let f = 0; f < F; f++) s += B[a * F + f] * B[b * F + f]; BBt[a * d + b] = BBt[b * d + a] = s; }
  const BBi = inverse(BBt, d);
  const BtBBi = new Float64Array(F * d);  // B^T (B B^T)^-1
  for (let f = 0; f < F; f++) for (let b = 0; b < d; b++) { let s = 0; for (let a = 0; a < d; a++) s += B[a * F + f] * BBi[a * d + b]; BtBBi[f * d + b] = s; }
  const T = new Float32Array(dp * d);
  for (let q = 0; q < dp; q++) for (let b = 0; b < d; b++) { let s = 0; for (let f = 0; f < F; f++) s += M[q * F + f] * BtBBi[f * d + b]; T[q * d + b] = s; }
  return T;
}

// Queries: a uniform vocabulary sample and the distinct ids of the victim text.
const vb = readFileSync(opt.victim);
const victim = Array.from(new Uint16Array(vb.buffer, vb.byteOffset, vb.length >> 1).subarray(0, Number(opt["victim-tokens"])));
const sample = [];
for (let i = 0; i < Number(opt.sample); i++) sample.push(Math.floor(urand() * n));
const queries = [...new Set([...sample, ...victim])];
const En2 = new Float64Array(n);
for (let r = 0; r < n; r++) { let s = 0; for (let q = 0; q < d; q++) s += E[r * d + q] ** 2; En2[r] = s; }
// Nearest plaintext row of every query's e^, with the relative margin to the second nearest.
function guessAll(T) {
  const guess = new Map();
  const e = new Float64Array(d);
  for (const t of queries) {
    const o = tau[t] * dp;
    e.fill(0);
    for (let q = 0; q < dp; q++) { const x = Eo[o + q]; if (x) for (let b = 0; b < d; b++) e[b] += x * T[q * d + b]; }
    let e2 = 0;
    for (let b = 0; b < d; b++) e2 += e[b] * e[b];
    let bestR = -1, bestD = Infinity, second = Infinity;
    for (let r = 0; r < n; r++) {
      let dot = 0;
      const a = r * d;
      for (let b = 0; b < d; b++) dot += E[a + b] * e[b];
      const dist = En2[r] - 2 * dot;
      if (dist < bestD) { second = bestD; bestD = dist; bestR = r; } else if (dist < second) second = dist;
    }
    guess.set(t, { g: bestR, margin: (second - bestD) / Math.max(bestD + e2, 1e-30) });
  }
  return guess;
}
let guessM = guessAll(solveT());
const rounds = [];
const score = (gm) => ({ ttrsr: victim.filter((t) => gm.get(t).g === t).length / victim.length,
                         vocab: sample.filter((t) => gm.get(t).g === t).length / sample.length });
// --refine R: the attacker's own most confident guesses (top --keep share by margin) become the
// anchors of the next least-squares fit (trimmed), R times. Uses no secret.
for (let r = 0; r < Number(opt.refine ?? 0); r++) {
  rounds.push(score(guessM));
  const ranked = queries.map((t) => ({ o: tau[t], ...guessM.get(t) })).sort((a, b) => b.margin - a.margin);
  const keep = ranked.slice(0, Math.max(4 * dh, Math.floor(ranked.length * Number(opt.keep ?? 0.3))));
  fitMaps(keep.map((x) => ({ p: x.g, o: x.o })), 0.3);
  guessM = guessAll(solveT());
}
const guess = new Map([...guessM].map(([t, v]) => [t, v.g]));
const vocab = sample.filter((t) => guess.get(t) === t).length / sample.length;
const ttrsr = victim.filter((t) => guess.get(t) === t).length / victim.length;
const truePairs = pairing.map((p) => p.join("")).join(" ");
process.stdout.write(JSON.stringify({ obf: opt.obf, alpha_e: alphaE, anchors: Number(opt.anchors), refine: Number(opt.refine), rounds, ttrsr, vocab, victim_tokens: victim.length,
                                      sample: sample.length, slot_pairing: truePairs }) + "\n");
