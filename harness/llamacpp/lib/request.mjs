// Validation of /completion request bodies, with llama-server's field names and defaults
// (tools/server/README.md of llama.cpp): prompt, n_predict (-1: until the context is full),
// temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, seed -1 (random), stream, ignore_eos.
// Unknown fields are ignored, as llama-server does; known fields of the wrong type are a 400.
import { randomInt } from "node:crypto";

export class BadRequest extends Error {
  constructor(message) {
    super(message);
    this.status = 400;
  }
}

export const DEFAULTS = Object.freeze({
  n_predict: -1,
  temperature: 0.8,
  top_k: 40,
  top_p: 0.95,
  min_p: 0.05,
  seed: -1,
  stream: false,
  ignore_eos: false,
});

function num(body, key, { integer = false, min = -Infinity, max = Infinity } = {}) {
  const v = body[key];
  if (v === undefined || v === null) return DEFAULTS[key];
  if (typeof v !== "number" || !Number.isFinite(v)) throw new BadRequest(`"${key}" must be a finite number`);
  if (integer && !Number.isInteger(v)) throw new BadRequest(`"${key}" must be an integer`);
  if (v < min || v > max) throw new BadRequest(`"${key}" must be in [${min}, ${max}], got ${v}`);
  return v;
}

function bool(body, key) {
  const v = body[key];
  if (v === undefined || v === null) return DEFAULTS[key];
  if (typeof v !== "boolean") throw new BadRequest(`"${key}" must be a boolean`);
  return v;
}

// prompt: an array of token ids (the harness's main use: obfuscated ids have no text), or a
// string that the GGUF's own tokenizer turns into ids (as llama-server does).
// tokenize(text) -> ids is supplied by the server; nVocab bounds the ids.
export function parseCompletion(body, { nVocab, tokenize }) {
  if (body === null || typeof body !== "object" || Array.isArray(body))
    throw new BadRequest("request body must be a JSON object");
  const p = body.prompt;
  let prompt;
  if (Array.isArray(p)) {
    prompt = p.map((t, i) => {
      if (!Number.isInteger(t) || t < 0) throw new BadRequest(`"prompt"[${i}] is not a non-negative integer token id`);
      if (t >= nVocab) throw new BadRequest(`"prompt"[${i}] = ${t} is out of range for vocab_size ${nVocab}`);
      return t;
    });
  } else if (typeof p === "string") {
    prompt = tokenize(p);
  } else {
    throw new BadRequest(`"prompt" must be an array of token ids or a string`);
  }
  if (prompt.length === 0) throw new BadRequest(`"prompt" is empty`);

  const seedIn = num(body, "seed", { integer: true, min: -1, max: 0xffffffff });
  return {
    prompt,
    n_predict: num(body, "n_predict", { integer: true, min: -1 }),
    temperature: num(body, "temperature", { min: 0 }),
    top_k: num(body, "top_k", { integer: true, min: 0 }),
    top_p: num(body, "top_p", { min: 0, max: 1 }),
    min_p: num(body, "min_p", { min: 0, max: 1 }),
    // -1 asks for a random seed; it is resolved here so the response can report the one used.
    seed: seedIn === -1 ? randomInt(0, 0x7fffffff) : seedIn,
    stream: bool(body, "stream"),
    ignore_eos: bool(body, "ignore_eos"),
  };
}
