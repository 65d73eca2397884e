// transformers.js (@lenml/tokenizers 3.7.2) encode throughput on the parity corpus, for
// comparison with bench/tokenizer_bench.cpp. One untimed warm-up on the first 100 documents,
// then one timed pass over all of them (a pass takes tens of seconds).
// Usage: node bench/tokenizer_bench.mjs CORPUS_FILE [vocab ...]
import fs from "node:fs";

const [corpusFile, ...vocabs] = process.argv.slice(2);
if (!corpusFile) { console.error("usage: tokenizer_bench.mjs CORPUS_FILE [qwen3 llama3 llama2]"); process.exit(2); }
const buf = fs.readFileSync(corpusFile);
const n = buf.readUInt32LE(8);
const docs = [];
for (let off = 12, i = 0; i < n; ++i) {
  const len = buf.readUInt32LE(off);
  docs.push(buf.toString("utf8", off + 4, off + 4 + len));
  off += 4 + len;
}
const bytes = docs.reduce((a, d) => a + Buffer.byteLength(d), 0);
for (const vocab of vocabs.length ? vocabs : ["qwen3", "llama3", "llama2"]) {
  const { fromPreTrained } = await import(`@lenml/tokenizer-${vocab}`);
  const tok = fromPreTrained();
  for (const d of docs.slice(0, 100)) tok.encode(d, { add_special_tokens: false });
  const t0 = process.hrtime.bigint(), c0 = process.cpuUsage();
  let tokens = 0;
  for (const d of docs) tokens += tok.encode(d, { add_special_tokens: false }).length;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const c = process.cpuUsage(c0), cpu = (c.user + c.system) / 1e6;  // includes GC threads
  console.log(`transformers.js encode ${vocab}: ${(bytes / 1e6).toFixed(2)} MB, wall ${s.toFixed(2)} s = ${(bytes / 1048576 / s).toFixed(3)} MiB/s, ` +
              `cpu ${cpu.toFixed(2)} s = ${(bytes / 1048576 / cpu).toFixed(3)} MiB/s, ${(tokens / s / 1e3).toFixed(1)} k tokens/s (wall)`);
}
