// `aloepri obfuscate MODEL --key K --out DIR`: covariant obfuscation of a dense checkpoint.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "aloepri/core/error.h"
#include "aloepri/export/gguf_export.h"
#include "aloepri/formats/gguf_quant.h"
#include "aloepri/core/homophones.h"
#include "aloepri/formats/hf_config.h"
#include "aloepri/formats/token_file.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/output.h"
#include "aloepri/formats/token_file.h"
#include "aloepri/client/tokenizer.h"
#include "command.h"

namespace {

struct Opts {
  std::string model, key, out, gguf, keymat = "paper", kappa = "gaussian", dtype, noise_scale = "global";
  std::string calib_ids, calib_file, calib_text;
  std::string profile = "exact";  // named parameter set; explicit flags override its fields
  std::string shard;              // "i/N" or "merge"
  int64_t homophones = 0;
  std::string homophone_counts, homophone_rule = "flat";
  double lambda = 0.3, alpha_e = 1.0, alpha_h = 0.2, gamma = 1000, value_cond = 0;
  int64_t expansion = 128, beta = 8;
  bool exact = false, force = false, router_norm = false;
};

// --calib-file: text ids (or a corpus .bin), through the one token-file reader.
std::vector<int64_t> read_ids_file(const std::string& path) {
  const auto ids = aloepri::read_token_ids(path);
  aloepri::require(!ids.empty(), path, "no token ids", aloepri::kExitUsage);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

// --homophones B: the copy table from unigram counts (--homophone-counts FILE, or the shipped
// model's own training text build/corpus/train.bin when MODEL is models/aloe-mini).
void homophone_table(const Opts& o, aloepri::ObfuscateOptions& opt) {
  using namespace aloepri;
  namespace fs = std::filesystem;
  if (o.homophones == 0 && o.homophone_counts.empty()) return;
  require(o.homophones > 0, "--homophones", "must be > 0 (the number of extra obfuscated ids), got " +
                                                 std::to_string(o.homophones), kExitUsage);
  const CopyRule rule = parse_copy_rule(o.homophone_rule);
  const ModelConfig c = ModelConfig::load(o.model);
  std::string counts = o.homophone_counts;
  if (counts.empty()) {
    const fs::path shipped = fs::path(ALOEPRI_SOURCE_DIR) / "models" / "aloe-mini";
    std::error_code ec;
    if (!fs::equivalent(o.model, shipped, ec))
      throw Error("--homophones", "needs unigram counts of text like the model's training data to allocate the copies: "
                  "pass --homophone-counts FILE (a uint16 *.bin token file, or " + std::to_string(c.vocab_size) +
                  " numbers); only the shipped models/aloe-mini has a default", kExitUsage);
    counts = std::string(ALOEPRI_SOURCE_DIR) + "/build/corpus/train.bin";
    if (!fs::is_regular_file(counts, ec))
      throw Error(counts, "the shipped model's training text, the default for --homophone-counts, is missing: build "
                  "it with `node tools/corpus/build.mjs build/corpus` or pass --homophone-counts FILE", kExitUsage);
  }
  const std::vector<double> freq = read_unigram_counts(counts, c.vocab_size);
  opt.copies = allocate_copies(freq, o.homophones, rule, published_token_ids(c, o.model));
  int64_t maxc = 0;
  for (int64_t k : opt.copies) maxc = std::max(maxc, k);
  opt.homophone_info = {{"rule", copy_rule_name(rule)}, {"counts", fs::path(counts).filename().string()},
                        {"max_copies", maxc}};
  std::fprintf(stderr, "homophones: %lld extra ids (rule %s, counts from %s), at most %lld copies of one id\n",
               (long long)o.homophones, copy_rule_name(rule).c_str(), counts.c_str(), (long long)maxc);
}

int run(Opts o, CLI::App& sub) {
  using namespace aloepri;
  ObfuscateOptions opt;
  ObfuscationParams& p = opt.params;
  // The profile gives every privacy parameter; flags given explicitly override it.
  p = ObfuscationParams::profile(o.profile);
  auto given = [&](const char* f) { return sub.count(f) > 0; };
  if (given("--lambda")) p.lambda = o.lambda;
  if (given("--expansion")) p.expansion = o.expansion;
  if (given("--alpha-e")) p.alpha_e = o.alpha_e;
  if (given("--alpha-h")) p.alpha_h = o.alpha_h;
  if (given("--beta")) p.beta = o.beta;
  if (given("--gamma")) p.gamma = o.gamma;
  if (given("--keymat")) {
    if (o.keymat == "paper") p.keymat = obf::KeymatVariant::Paper;
    else if (o.keymat == "exact-norm") p.keymat = obf::KeymatVariant::ExactNorm;
    else throw Error("--keymat", "unknown variant '" + o.keymat + "' (supported: paper, exact-norm)", kExitUsage);
  }
  if (given("--kappa")) {
    if (o.kappa == "gaussian") p.kappa = KappaMode::Gaussian;
    else if (o.kappa == "calibrated") p.kappa = KappaMode::Calibrated;
    else throw Error("--kappa", "unknown mode '" + o.kappa + "' (supported: gaussian, calibrated)", kExitUsage);
  }
  if (given("--noise-scale")) {
    if (o.noise_scale == "global") p.noise_scale = obf::NoiseScale::Global;
    else if (o.noise_scale == "per-row") p.noise_scale = obf::NoiseScale::PerRow;
    else throw Error("--noise-scale", "unknown '" + o.noise_scale + "' (supported: global, per-row)", kExitUsage);
  }
  if (o.exact) {
    // --exact overrides the privacy parameters; naming them too is a contradiction.
    for (const char* f : {"--lambda", "--expansion", "--alpha-e", "--alpha-h", "--beta"})
      if (sub.count(f) > 0)
        throw Error("--exact", std::string("conflicts with ") + f, kExitUsage);
    const auto km = p.keymat;
    const auto kp = p.kappa;
    p = ObfuscationParams::exact();
    p.keymat = km;
    p.kappa = kp;
  }
  // Not a privacy/exactness trade-off (every K is exact): allowed with --exact too.
  if (given("--value-cond")) {
    if (!(o.value_cond == 0 || o.value_cond >= 1))
      throw Error("--value-cond", "must be 0 (the report's Gaussian value map) or >= 1, got " +
                                      std::to_string(o.value_cond), kExitUsage);
    p.value_cond = o.value_cond;
  }
  p.router_norm = o.router_norm;
  // q8_0 / q4_0 quantize the GGUF only; the HF checkpoint keeps the input's dtype.
  std::optional<gguf::GGMLType> gguf_quant;
  if (o.dtype == "q8_0" || o.dtype == "q4_0") {
    if (o.gguf.empty()) throw Error("--dtype", o.dtype + " is a GGUF type: it needs --gguf", kExitUsage);
    gguf_quant = gguf::parse_gguf_dtype(o.dtype);
  } else if (!o.dtype.empty()) {
    if (o.dtype == "f32") opt.dtype = DType::F32;
    else if (o.dtype == "bf16") opt.dtype = DType::BF16;
    else if (o.dtype == "f16") opt.dtype = DType::F16;
    else throw Error("--dtype", "unknown dtype '" + o.dtype + "' (supported: f32, bf16, f16, q8_0, q4_0)", kExitUsage);
  }
  if (!o.calib_ids.empty()) opt.calib_ids = cli::parse_ids_csv(o.calib_ids);
  if (!o.calib_file.empty()) opt.calib_ids = read_ids_file(o.calib_file);
  if (!o.calib_text.empty()) {
    Tokenizer tok = Tokenizer::load(o.model);
    for (int32_t id : tok.encode(read_file(o.calib_text), true)) opt.calib_ids.push_back(id);
    // A few hundred tokens estimate the per-norm ratio well; longer only costs time (O(T^2)).
    if (opt.calib_ids.size() > 512) opt.calib_ids.resize(512);
  }
  if (!opt.calib_ids.empty() && p.kappa == KappaMode::Gaussian)
    throw Error("--calib-*", "calibration data given but --kappa is gaussian (use --kappa calibrated)", kExitUsage);
  opt.force = o.force;
  homophone_table(o, opt);

  const bool merge = o.shard == "merge";
  if (!o.shard.empty() && !merge) {
    int i = -1, n = 0;
    char end = 0;
    if (std::sscanf(o.shard.c_str(), "%d/%d%c", &i, &n, &end) != 2 || n < 1 || i < 0 || i >= n)
      throw Error("--shard", "expected i/N with 0 <= i < N, or merge; got '" + o.shard + "'", kExitUsage);
    if (!o.gguf.empty()) throw Error("--gguf", "is written by the merge (--shard merge), not by a part", kExitUsage);
    opt.shard_index = i;
    opt.shard_count = n;
  }

  KeyFile key = KeyFile::load(o.key);
  if (!o.gguf.empty()) refuse_existing(o.gguf, o.force);
  if (opt.shard_count > 0) {
    // A part: no key record (N jobs would race on the key file), no GGUF; the merge does both.
    ObfuscateResult r = obfuscate_model(o.model, key.seed, o.out, opt);
    std::fprintf(stderr, "wrote part %d/%d of %s in %s, %.1f s\n", opt.shard_index, opt.shard_count, o.out.c_str(),
                 obfuscation_parts_dir(o.out).c_str(), r.seconds);
    return 0;
  }
  ObfuscateResult r = merge ? merge_obfuscation_parts(o.model, key.seed, o.out, opt)
                            : obfuscate_model(o.model, key.seed, o.out, opt);

  if (!o.gguf.empty()) {
    HFModel obf(o.out);
    GGUFExportOptions go;
    go.overwrite = o.force;
    // Obfuscated ids are a secret permutation of the tokenizer's: placeholder tokens, and the
    // published tau(bos)/tau(eos) from config.json (llama.cpp would otherwise stop at the
    // plaintext id of "<|im_end|>" etc., which is now an unrelated token).
    go.opaque_vocab = true;
    const DType gd = opt.dtype ? *opt.dtype : obf.weights().get(tensor_names::embed()).dtype;
    if (gguf_quant) export_gguf(obf, o.gguf, *gguf_quant, go);
    else export_gguf(obf, o.gguf, gd, go);
  }

  ObfuscationRecord rec = r.key_record();
  if (key.record && key.record->plain_fingerprint != r.plain_fingerprint)
    std::cerr << "note: " << o.key << " recorded another model before; its record is replaced\n";
  key.record = rec;
  key.save(o.key, /*overwrite=*/true);

  // The two times separately: the transform is what throughput figures divide by; the rest is
  // hashing both models for the key record.
  std::fprintf(stderr, "wrote %s: hidden %lld -> %lld, %d norms (kappa %.4f .. %.4f), %.1f s (transform %.1f s, fingerprints %.1f s)\n",
               o.out.c_str(), (long long)r.hidden, (long long)r.obf_hidden, int(r.kappas.size()),
               *std::min_element(r.kappas.begin(), r.kappas.end()),
               *std::max_element(r.kappas.begin(), r.kappas.end()), r.seconds, r.seconds_transform,
               r.seconds - r.seconds_transform);
  if (!o.gguf.empty()) std::fprintf(stderr, "wrote %s\n", o.gguf.c_str());
  std::fprintf(stderr, "recorded parameters and fingerprints in %s\n", o.key.c_str());
  return 0;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  sub.add_option("model", o->model, "Plaintext HF model directory (llama, mistral, qwen2, qwen3, qwen3_moe, deepseek_v2, deepseek_v3)")->required();
  sub.add_option("--key", o->key, "Client key file (from `aloepri keygen`)")->required();
  sub.add_option("--out", o->out, "Obfuscated model directory to create")->required();
  sub.add_option("--gguf", o->gguf, "Also write the obfuscated model as GGUF for llama.cpp");
  sub.add_option("--profile", o->profile,
                 "Privacy parameter set; flags override its fields:\n"
                 "  exact (the default): lambda 0, h 0, no noise, beta 1, value maps of cond 4. The model's answers\n"
                 "    are kept; token ids are hidden from whoever lacks the weights, NOT from the server that serves\n"
                 "    them (docs/THREAT_MODEL.md: every noise level that keeps the model useful leaks the vocabulary\n"
                 "    to the oracle and NN attacks, so noise is not the default)\n"
                 "  noise: the former default, the report's structure with alpha_e 0.5 (costs most of a small\n"
                 "    model's accuracy; stops only the cheap weight attacks)\n"
                 "  paper: the report's values (lambda .3, h 128, alpha_e 1, alpha_h .2, beta 8, Gaussian value maps)");
  sub.add_option("--lambda", o->lambda, "Key-matrix non-orthogonality lambda (exact 0, noise and paper 0.3)");
  sub.add_option("--expansion", o->expansion, "Expansion h: hidden size grows by 2h (exact 0, noise and paper 128)");
  sub.add_option("--alpha-e", o->alpha_e, "Embedding noise, x std of the embedding (exact 0, noise 0.5, paper 1.0)");
  sub.add_option("--alpha-h", o->alpha_h, "Head noise, x std of the head (exact 0, noise and paper 0.2)");
  sub.add_option("--beta", o->beta, "BlockPerm window size (exact 1 = no RoPE pair permutation; noise and paper 8)");
  sub.add_option("--gamma", o->gamma, "BlockPerm frequency sharpness (default 1000)");
  sub.add_flag("--exact", o->exact, "lambda 0, h 0, no noise, beta 1: an exact transform");
  sub.add_flag("--router-norm", o->router_norm,
               "qwen3_moe: divide each expert's router row by its norm (the report's normalisation). NOT exact:\n"
               "it changes the router's scores and top-k choices (docs/RESULTS.md \"Qwen3-MoE\")");
  sub.add_option("--value-cond", o->value_cond,
                 "Condition number K of the per-head value maps U_j (W_v U_j, U_j^-1 W_o): 0 = the report's\n"
                 "Gaussian draw (cond up to 10 d_h), which breaks q4_0 GGUF exports because each factor's\n"
                 "rounding is amplified by the other ~cond(U_j) times; K >= 1 draws cond(U_j) = K exactly\n"
                 "(1 = orthogonal: leaks U_j through the Gram matrix of the value path). Exact for every K.\n"
                 "Profiles: exact and noise 4, paper 0. Measurements: docs/RESULTS.md \"Well-conditioned value maps\"");
  sub.add_option("--keymat", o->keymat, "Key matrices: paper (report's, approximate norm) | exact-norm");
  sub.add_option("--kappa", o->kappa, "RMSNorm scale: gaussian (expected) | calibrated (on --calib-*)");
  sub.add_option("--calib-ids", o->calib_ids, "Calibration token ids, comma separated");
  sub.add_option("--calib-file", o->calib_file, "File of calibration token ids (comma/space separated)");
  sub.add_option("--calib-text", o->calib_text, "Text file tokenized with the model's tokenizer (first 512 ids)");
  sub.add_option("--noise-scale", o->noise_scale, "Noise std: global (std of the whole matrix) | per-row");
  sub.add_option("--dtype", o->dtype, "Output dtype f32 | bf16 | f16 (default: the input's); q8_0 | q4_0 quantize the\n"
                 "--gguf file only (the checkpoint keeps the input's dtype)");
  sub.add_option("--shard", o->shard,
                 "i/N: compute only part i (0-based) of N into OUT.parts/ (layers split into N contiguous ranges of\n"
                 "equal output size; no key record, no GGUF); run every i, anywhere, with the same key, model and\n"
                 "flags. merge: join the N parts into OUT, byte-identical to a single run, write --gguf and the key\n"
                 "record, and delete the parts. Not with --kappa calibrated");
  sub.add_option("--homophones", o->homophones,
                 "Homophonic vocabulary: B extra obfuscated ids (vocab_size n -> n + B). Frequent tokens get several\n"
                 "copies (by unigram frequency, --homophone-rule), each with its own embedding row and head column\n"
                 "(own noise draw); the client sends a random copy per occurrence and maps every copy back. Greedy\n"
                 "decoding is unchanged; sampling is tilted by the copy count (docs/RESULTS.md \"Homophonic vocabulary\")");
  sub.add_option("--homophone-counts", o->homophone_counts,
                 "Unigram counts that allocate the copies: a uint16 *.bin token file (build/corpus format) or one\n"
                 "count per token id (default for the shipped models/aloe-mini: build/corpus/train.bin)");
  sub.add_option("--homophone-rule", o->homophone_rule,
                 "flat (default: each extra copy to the id of largest per-copy frequency) | sqrt (copies ~ sqrt of\n"
                 "the frequency, the rule of `audit-stream --homophones`)");
  sub.add_flag("--force", o->force, "Replace an existing output directory / GGUF");
  sub.footer(
      "Every secret (vocabulary permutation tau, key matrices, head/FFN maps, noise) is derived from\n"
      "the key's seed: the same key and model give a byte-identical output. The output is a standard\n"
      "HF checkpoint with hidden_size d + 2h whose config publishes tau(eos)/tau(bos), so an engine\n"
      "stops by itself; send it tau(prompt ids) and map generated ids back with tau^-1.\n"
      "Sharded (one model over many machines or jobs; each part needs the key and the plaintext model):\n"
      "  for i in 0 .. N-1 (in parallel):  aloepri obfuscate MODEL --key K --out OUT --shard i/N\n"
      "  then once:                        aloepri obfuscate MODEL --key K --out OUT --shard merge [--gguf F]");
  CLI::App* sp = &sub;
  return [o, sp] { return run(*o, *sp); };
}

}  // namespace
ALOEPRI_COMMAND(obfuscate, "obfuscate", 25, "Obfuscate a model with a client key (covariant obfuscation)", setup);
