# Shared by record.sh and torch_record.sh (sourced, not run): JSON normalisation and fixed keys.
# Needs $work (the run's scratch directory, replaced by "$W" in strings).

# JSON without what changes from run to run, keys sorted. $2: the volatile key words, a
# regex alternation (default: times, dates, machine, threads).
norm_json() {
  python3 - "$1" "$work" "${2:-date|created|machine|cpus|seconds|secs|time|times|elapsed|ms|wall|threads}" <<'PY'
import json, re, sys
path, work, words = sys.argv[1], sys.argv[2], sys.argv[3]
volatile = re.compile(r"(^|_)(" + words + r")($|_)")
def clean(x):
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items() if not volatile.search(k)}
    if isinstance(x, list):
        return [clean(v) for v in x]
    if isinstance(x, str):
        return x.replace(work, "$W")
    return x
print(json.dumps(clean(json.load(open(path))), sort_keys=True, indent=1))
PY
}
# A key file with a fixed seed (64 hex digits; a key file is JSON, `obfuscate` writes its record
# into it).
make_key() {  # FILE HEX
  printf '{"format":"aloepri-key","version":1,"created":"2026-01-01T00:00:00Z","seed":"%s"}\n' "$2" > "$1"
  chmod 600 "$1"
}
seed_hex() { printf '%064x' "$1"; }
