// Builds the tokenizer parity corpus: >= 6 MB of real mixed text split into documents, from
// Debian packages and npm files present after ./setup.sh (wordnet-base, fortunes-zh,
// manpages-zh and the other localized man pages, C/C++ headers, the transformers.js sources),
// plus generated emoji / whitespace / number / Unicode-edge documents. Deterministic: the same
// inputs give the same bytes (fixed PRNG seed, sorted file lists).
//
// Usage: node tools/corpus/parity/make_corpus.mjs OUT_FILE [target_MB=6]
// Output format (little endian): "ALOECRP1", u32 ndocs, then per document u32 byte length + UTF-8.
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { fileURLToPath } from "node:url";

const out = process.argv[2];
if (!out) { console.error("usage: make_corpus.mjs OUT_FILE [target_MB]"); process.exit(2); }
const targetBytes = Number(process.argv[3] ?? 6) * 1024 * 1024;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

// mulberry32: a small deterministic PRNG.
let seed = 0x5eed1234;
function rand() {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rand() * a.length)];
const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));

function listFiles(dir, filter, limit = Infinity) {
  const res = [];
  const walk = (d) => {
    let ents;
    try { ents = fs.readdirSync(d, { withFileTypes: true }); } catch { return; }
    ents.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of ents) {
      if (res.length >= limit) return;
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && filter(p)) res.push(p);
    }
  };
  walk(dir);
  return res;
}
const readText = (p) => {
  const buf = fs.readFileSync(p);
  return (p.endsWith(".gz") ? zlib.gunzipSync(buf) : buf).toString("utf8");
};

// Each source yields text up to a byte budget; the text is then cut into documents at line ends.
const sources = [];
function addSource(name, budget, texts) {
  let acc = "", bytes = 0;
  for (const t of texts) {
    if (bytes >= budget) break;
    acc += t;
    bytes += Buffer.byteLength(t);
  }
  if (bytes === 0) {
    // The core sources come from Debian packages setup.sh installs: refuse a corpus without them.
    // (Man pages are optional: slim container images drop /usr/share/man.)
    const required = ["wordnet", "fortunes-zh", "c-headers", "javascript"];
    if (required.includes(name)) {
      console.error(`[corpus] error: source ${name} is empty (install wordnet-base, fortunes-zh, manpages-zh; run npm install)`);
      process.exit(1);
    }
    console.error(`[corpus] warning: source ${name} is empty`);
    return;
  }
  if (bytes > budget) {  // cut at the last line end within the budget
    const b = Buffer.from(acc, "utf8").subarray(0, budget);
    const cut = b.lastIndexOf(10);
    acc = b.subarray(0, cut > 0 ? cut + 1 : budget).toString("utf8");
    bytes = Buffer.byteLength(acc);
  }
  sources.push({ name, text: acc });
  console.error(`[corpus] ${name}: ${(bytes / 1e6).toFixed(2)} MB`);
}
function* lazy(files, fn = readText) { for (const f of files) { try { yield fn(f); } catch { } } }

const MB = 1024 * 1024;
// English prose: WordNet glosses ("| a gloss; \"an example\"").
addSource("wordnet", 1.4 * MB, lazy(["noun", "verb", "adj", "adv"].map((x) => `/usr/share/wordnet/data.${x}`), (f) =>
  readText(f).split("\n").filter((l) => l.includes(" | ")).map((l) => l.slice(l.indexOf(" | ") + 3).trim() + "\n").join("")));
// Chinese: fortunes-zh (classical poems and modern sayings) and manpages-zh.
addSource("fortunes-zh", 1.2 * MB, lazy(["tang300", "song100", "chinese"].map((x) => `/usr/share/games/fortunes/${x}`)));
addSource("manpages-zh", 0.8 * MB, lazy(listFiles("/usr/share/man/zh_CN", (p) => p.endsWith(".gz"))));
// Other scripts: localized man pages (Cyrillic, Japanese, accented Latin).
for (const lang of ["ru", "ja", "de", "fr"])
  addSource(`man-${lang}`, 0.2 * MB, lazy(listFiles(`/usr/share/man/${lang}`, (p) => p.endsWith(".gz"))));
// Code: C and C++ headers, JavaScript.
addSource("c-headers", 0.6 * MB, lazy(listFiles("/usr/include", (p) => /\.(h|hpp)$/.test(p) && !p.includes("/c++/"), 4000)));
addSource("cxx-headers", 0.4 * MB, lazy(listFiles("/usr/include/c++", (p) => true, 2000)));
addSource("javascript", 0.4 * MB, lazy(listFiles(path.join(root, "node_modules/@lenml/tokenizers/src"), (p) => p.endsWith(".js") || p.endsWith(".ts"))));

// Generated: emoji (every Emoji_Presentation code point, ZWJ sequences, skin tones, flags).
{
  const emoji = [];
  for (let cp = 0; cp <= 0x10ffff; ++cp) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    const s = String.fromCodePoint(cp);
    if (/\p{Emoji_Presentation}/u.test(s)) emoji.push(s);
  }
  const zwj = ["👨‍👩‍👧‍👦", "🏳️‍🌈", "👩🏽‍💻", "🧑🏿‍🚀", "❤️‍🔥", "🇨🇳", "🇺🇸", "🇫🇷", "👍🏻", "👍🏿", "✌️", "☺️"];
  const words = ["ok", "lol", "great", "好的", "謝謝", "yes!", "no.", "wow", "😀😀", "go"];
  let t = "";
  for (let i = 0; i < 40000; ++i) {
    const r = rand();
    t += r < 0.5 ? pick(emoji) : r < 0.65 ? pick(zwj) : pick(words);
    t += rand() < 0.7 ? " " : rand() < 0.5 ? "" : "\n";
  }
  addSource("emoji", 0.2 * MB, [t]);
}
// Generated: numbers, odd whitespace and Unicode edge cases (where regex engines and Unicode
// versions differ: U+0085, U+180E, U+FEFF, letters from Unicode 15-17, long-s after apostrophe,
// decomposed accents that NFC composes, lone combining marks).
{
  const ws = [" ", "  ", "   ", "\t", "\t\t", " \t ", "\n", "\r\n", "\n\n\n", " \n", "\u00a0", "\u3000", "\u2009", "\u0085", "\u180e", "\ufeff", "\u2028", "\r"];
  const edge = ["it's", "IT'S", "we'LL", "don'ſ", "K\u212a", "e\u0301", "A\u030a", "\u1100\u1161\u11a8", "\u0301", "cafe\u0301",
    "\u{31350}\u{31351}", "\u{1e4d0}\u{1e4d1}", "\u{11f50}", "x\u0338", "ﬁ", "Ω", "\u{1d400}", "½", "²", "٣٤٥", "१२३"];
  const num = () => { const k = int(0, 6); return k === 0 ? String(int(0, 9)) : k === 1 ? String(int(0, 99999)) :
    k === 2 ? (rand() * 1e6).toFixed(int(1, 5)) : k === 3 ? `${int(1900, 2030)}-${String(int(1, 12)).padStart(2, "0")}-${String(int(1, 28)).padStart(2, "0")}` :
    k === 4 ? String(int(0, 1e9)) + String(int(0, 1e9)) : k === 5 ? "-" + int(0, 999) + "," + int(100, 999) : "0x" + int(0, 0xffffff).toString(16); };
  const words = ["the", "value", "is", "price", "数量", "共计", "total", "x", "=", "+", "(", ")", "%", "$", "€", "—", "...", "#", "@"];
  let t = "";
  for (let i = 0; i < 60000; ++i) {
    const r = rand();
    t += r < 0.35 ? num() : r < 0.55 ? pick(words) : r < 0.65 ? pick(edge) : "";
    t += pick(ws);
  }
  addSource("numbers-whitespace", 0.6 * MB, [t]);
}

// Cut into documents of 512 B .. 8 KB at line ends; some get Windows line ends, trailing
// spaces, tabs, or are NFD-decomposed (so NFC has real work).
const docs = [];
let total = 0;
for (const src of sources) {
  const lines = src.text.split(/(?<=\n)/);
  let cur = "", want = int(512, 8192);
  const flush = () => {
    if (!cur) return;
    let d = cur;
    const r = rand();
    if (r < 0.1) d = d.replace(/\n/g, "\r\n");
    else if (r < 0.2) d = d.replace(/\n/g, () => (rand() < 0.5 ? "  \n" : "\t\n"));
    else if (r < 0.25) d = d.normalize("NFD");
    else if (r < 0.3) d = d.replace(/ /g, () => (rand() < 0.2 ? "    " : " "));
    docs.push(d);
    total += Buffer.byteLength(d);
    cur = ""; want = int(512, 8192);
  };
  for (const l of lines) {
    cur += l;
    if (Buffer.byteLength(cur) >= want) flush();
  }
  flush();
}
// Mixed documents: lines drawn from different sources, until the target size is reached.
const allLines = sources.map((s) => s.text.split(/(?<=\n)/));
while (total < targetBytes) {
  let d = "";
  const n = int(10, 80);
  for (let i = 0; i < n; ++i) { const ls = pick(allLines); d += ls[int(0, ls.length - 1)]; }
  docs.push(d);
  total += Buffer.byteLength(d);
}

const parts = [Buffer.from("ALOECRP1"), Buffer.alloc(4)];
parts[1].writeUInt32LE(docs.length);
for (const d of docs) {
  const b = Buffer.from(d, "utf8");
  const len = Buffer.alloc(4);
  len.writeUInt32LE(b.length);
  parts.push(len, b);
}
const tmp = out + ".tmp-" + process.pid;
fs.writeFileSync(tmp, Buffer.concat(parts));
fs.renameSync(tmp, out);
console.error(`[corpus] ${docs.length} documents, ${(total / 1e6).toFixed(2)} MB -> ${out}`);
