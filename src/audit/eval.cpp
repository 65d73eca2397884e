// Accuracy audit: plaintext vs obfuscated model on held-out text (see eval.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include "aloepri/client/engine_process.h"
#include "aloepri/core/error.h"
#include "aloepri/audit/eval.h"
#include "aloepri/export/gguf_export.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/keymat.h"
#include "aloepri/core/output.h"
#include "aloepri/core/progress.h"
#include "aloepri/formats/token_file.h"
#include "aloepri/client/tokenizer.h"

namespace fs = std::filesystem;

namespace aloepri::eval {

std::vector<int64_t> load_tokens(const std::string& path, const std::string& model_dir) {
  std::vector<int64_t> ids;
  if (path.size() > 4 && path.substr(path.size() - 4) == ".bin") {
    for (uint16_t id : read_token_file(path)) ids.push_back(id);
  } else {
    Tokenizer tok = Tokenizer::load(model_dir);
    for (int32_t id : tok.encode(read_file(path), true)) ids.push_back(id);
  }
  require(ids.size() >= 2, path, "fewer than 2 tokens to score");
  return ids;
}

std::vector<std::vector<int64_t>> spread_windows(const std::vector<int64_t>& ids, int64_t total, int64_t window) {
  require(total >= 2 && window >= 2, "--tokens/--window", "must be >= 2", kExitUsage);
  const int64_t N = int64_t(ids.size());
  window = std::min(window, N);
  // ceil(total / window) full windows (each gives window - 1 scored targets; the sweeps of
  // docs/RESULTS.md "Accuracy audit" use this layout, so keep it).
  const int64_t count = std::max<int64_t>(1, (total + window - 1) / window);
  const int64_t span = N - window;
  std::vector<std::vector<int64_t>> out;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t start = count == 1 ? 0 : span * i / (count - 1);
    out.emplace_back(ids.begin() + start, ids.begin() + start + window);
  }
  return out;
}

// ---------------------------------------------------------------- scores

void ScoreAccumulator::add(const double* a, const double* ob, int64_t target) {
  const int64_t n = map_.plain_size();
  // The obfuscated row as n plaintext logits: t's copy, or the log of its copies' summed mass.
  merged_.resize(size_t(n));
  for (int64_t y = 0; y < n; ++y) {
    const int64_t k = map_.copies(y);
    if (k == 1) {
      merged_[size_t(y)] = ob[map_.id(y, 0)];
      continue;
    }
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < k; ++c) mx = std::max(mx, ob[map_.id(y, c)]);
    double s = 0;
    for (int64_t c = 0; c < k; ++c) s += std::exp(ob[map_.id(y, c)] - mx);
    merged_[size_t(y)] = mx + std::log(s) - (corrected_ ? std::log(double(k)) : 0.0);
  }
  const double* b = merged_.data();
  double ma = -std::numeric_limits<double>::infinity(), mb = ma;
  int64_t ia = 0, ib = 0;
  for (int64_t y = 0; y < n; ++y) {
    if (a[y] > ma) ma = a[y], ia = y;
    if (b[y] > mb) mb = b[y];
  }
  // Top-1 of the served model is what greedy decoding returns: the argmax over its n' ids,
  // mapped back (copies of one id tie; the merged mass would tilt the argmax by c_y).
  {
    double best = -std::numeric_limits<double>::infinity();
    int64_t bo = 0;
    for (int64_t o = 0; o < map_.size(); ++o)
      if (ob[o] > best) best = ob[o], bo = o;
    ib = map_.plain(bo);
  }
  double za = 0, zb = 0;
  for (int64_t y = 0; y < n; ++y) za += std::exp(a[y] - ma), zb += std::exp(b[y] - mb);
  const double la = std::log(za) + ma, lb = std::log(zb) + mb;
  double kl = 0;
  for (int64_t y = 0; y < n; ++y) {
    const double pa = a[y] - la, pb = b[y] - lb;
    kl += std::exp(pa) * (pa - pb);
  }
  kl = std::max(kl, 0.0);
  ++positions_;
  kl_sum_ += kl;
  kl_max_ = std::max(kl_max_, kl);
  agree_ += ia == ib;
  if (target >= 0) {
    ++targets_;
    hit_plain_ += ia == target;
    hit_obf_ += ib == target;
    nll_plain_ -= a[target] - la;
    nll_obf_ -= b[target] - lb;
  }
}

void ScoreAccumulator::add_greedy(const std::vector<int64_t>& p, const std::vector<int64_t>& o) {
  const size_t N = std::min(p.size(), o.size());
  size_t first = N;
  for (size_t i = 0; i < N; ++i) {
    greedy_equal_ += p[i] == o[i];
    if (p[i] != o[i] && first == N) first = i;
  }
  greedy_total_ += int64_t(N);
  first_div_sum_ += double(first);
  ++greedy_runs_;
}

double ScoreAccumulator::rel_loss() const {
  if (!targets_ || !hit_plain_) return 0;
  return double(hit_plain_ - hit_obf_) / double(hit_plain_);
}

nlohmann::json ScoreAccumulator::to_json() const {
  const double T = double(std::max<int64_t>(targets_, 1));
  nlohmann::json j = {{"positions", positions_},
                      {"targets", targets_},
                      {"top1_plain", hit_plain_ / T},
                      {"top1_obf", hit_obf_ / T},
                      {"rel_loss", rel_loss()},
                      {"ppl_plain", std::exp(nll_plain_ / T)},
                      {"ppl_obf", std::exp(nll_obf_ / T)},
                      {"kl_mean", kl_mean()},
                      {"kl_max", kl_max_},
                      {"top1_agreement", top1_agreement()}};
  if (greedy_runs_) {
    j["greedy_runs"] = greedy_runs_;
    j["greedy_tokens"] = greedy_total_ / greedy_runs_;
    j["greedy_agreement"] = double(greedy_equal_) / double(std::max<int64_t>(greedy_total_, 1));
    j["greedy_first_divergence_mean"] = first_div_sum_ / double(greedy_runs_);
  }
  return j;
}

// ---------------------------------------------------------------- reference engine

// Greedy continuations of the first windows' prompts on both engines (the obfuscated one fed
// tau(prompt), its ids read back through tau^-1), counted into `acc`. Engine is ReferenceModel or
// the llama.cpp wrapper: both have greedy(prompt, n).
// One copy per token of a window (a public stream: the choice is not secret, and runs repeat).
std::vector<int64_t> to_obf(const VocabMap& map, const std::vector<int64_t>& w, RngStream& choice) {
  std::vector<int64_t> o;
  o.reserve(w.size());
  for (auto t : w) {
    const int64_t k = map.copies(t);
    o.push_back(map.id(t, k > 1 ? int64_t(choice.below(uint64_t(k))) : 0));
  }
  return o;
}

template <class Engine>
void add_greedy_agreement(Engine& plain, Engine& obf, const VocabMap& map,
                          const std::vector<std::vector<int64_t>>& windows, int64_t greedy_prompts,
                          int64_t prompt_len, int64_t greedy_tokens, ScoreAccumulator& acc) {
  RngStream choice(Seed{}, "eval/greedy-copy-choice");
  for (int64_t p = 0; p < std::min<int64_t>(greedy_prompts, int64_t(windows.size())) && greedy_tokens > 0; ++p) {
    const auto& w = windows[size_t(p)];
    std::vector<int64_t> pr(w.begin(), w.begin() + std::min<int64_t>(prompt_len, int64_t(w.size())));
    const std::vector<int64_t> opr = to_obf(map, pr, choice);
    auto gp = plain.greedy(pr, greedy_tokens), go = obf.greedy(opr, greedy_tokens);
    for (auto& t : go) {
      require(t >= 0 && t < map.size(), "eval", "the obfuscated model generated id " + std::to_string(t) +
                                                    ", outside its vocabulary", kExitError);
      t = map.plain(t);
    }
    acc.add_greedy(gp, go);
  }
}

nlohmann::json score_reference(ReferenceModel& plain, ReferenceModel& obf, const VocabMap& map,
                               const std::vector<std::vector<int64_t>>& windows, int64_t greedy_prompts,
                               int64_t prompt_len, int64_t greedy_tokens, const std::vector<double>& Q,
                               std::vector<double>* layer_err_out) {
  const int64_t n = plain.vocab_size(), d = plain.config().hidden_size, dp = obf.config().hidden_size;
  const int64_t L = plain.config().num_hidden_layers;
  require(map.plain_size() == n && obf.vocab_size() == map.size(), "eval",
          "vocabulary sizes differ (plaintext " + std::to_string(n) + ", obfuscated " +
              std::to_string(obf.vocab_size()) + ", key " + std::to_string(map.plain_size()) + " -> " +
              std::to_string(map.size()) + ")");
  const bool residual = !Q.empty() && layer_err_out;
  if (residual) require(int64_t(Q.size()) == dp * d, "eval", "Q has the wrong shape");
  ScoreAccumulator acc(map, false), acc_corr(map, true);
  RngStream choice(Seed{}, "eval/copy-choice");
  std::vector<double> err_sum(size_t(L + 1), 0.0);
  int64_t err_n = 0;
  std::vector<std::vector<double>> pres(static_cast<size_t>(L));
  std::vector<double> back;
  for (const auto& w : windows) {
    const int64_t T = int64_t(w.size());
    const std::vector<int64_t> ow = to_obf(map, w, choice);
    if (residual) {
      for (auto& r : pres) r.assign(size_t(T * d), 0.0);
      plain.set_residual_hook([&](int64_t l, const std::vector<double>& x) {
        const int64_t off = plain.position();
        std::copy(x.begin(), x.end(), pres[size_t(l)].begin() + off * d);
      });
      obf.set_residual_hook([&](int64_t l, const std::vector<double>& x) {
        const int64_t off = obf.position(), rows = int64_t(x.size()) / dp;
        back.resize(size_t(rows * d));
        linalg::gemm(false, false, rows, d, dp, 1.0, x.data(), dp, Q.data(), d, 0.0, back.data(), d);
        for (int64_t r = 0; r < rows; ++r) {
          const double* a = pres[size_t(l)].data() + (off + r) * d;
          double num = 0, den = 0;
          for (int64_t k = 0; k < d; ++k) {
            const double e = back[size_t(r * d + k)] - a[k];
            num += e * e, den += a[k] * a[k];
          }
          err_sum[size_t(l + 1)] += den > 0 ? std::sqrt(num / den) : 0;
        }
      });
      // Embedding rows read back through Q.
      const Tensor& pe = plain.weights().embed;
      const Tensor& oe = obf.weights().embed;
      std::vector<double> row(static_cast<size_t>(d));
      for (int64_t t = 0; t < T; ++t) {
        const float* a = pe.ptr() + w[size_t(t)] * d;
        const float* b = oe.ptr() + ow[size_t(t)] * dp;
        std::fill(row.begin(), row.end(), 0.0);
        for (int64_t i = 0; i < dp; ++i) {
          const double bi = b[i];
          const double* q = Q.data() + i * d;
          for (int64_t k = 0; k < d; ++k) row[size_t(k)] += bi * q[k];
        }
        double num = 0, den = 0;
        for (int64_t k = 0; k < d; ++k) {
          const double e = row[size_t(k)] - a[k];
          num += e * e, den += double(a[k]) * a[k];
        }
        err_sum[0] += den > 0 ? std::sqrt(num / den) : 0;
      }
      err_n += T;
    }
    plain.reset();
    std::vector<double> pl = plain.forward(w);
    obf.reset();
    obf.forward_each(ow, [&](int64_t t, const double* lo) {
      acc.add(pl.data() + t * n, lo, t + 1 < T ? w[size_t(t + 1)] : -1);
      if (map.homophonic()) acc_corr.add(pl.data() + t * n, lo, t + 1 < T ? w[size_t(t + 1)] : -1);
    });
    plain.set_residual_hook({});
    obf.set_residual_hook({});
  }
  add_greedy_agreement(plain, obf, map, windows, greedy_prompts, prompt_len, greedy_tokens, acc);
  if (residual) {
    layer_err_out->assign(size_t(L + 1), 0.0);
    for (int64_t l = 0; l <= L; ++l) (*layer_err_out)[size_t(l)] = err_sum[size_t(l)] / double(std::max<int64_t>(err_n, 1));
  }
  nlohmann::json j = acc.to_json();
  if (map.homophonic()) j["homophone_corrected"] = acc_corr.to_json();
  return j;
}

// ---------------------------------------------------------------- llama.cpp engine

namespace {

std::string sh_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

std::string ids_csv(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

std::string run_capture(const std::string& cmd, const std::string& what) {
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw Error(what, "cannot start: " + cmd, kExitError);
  std::string out;
  char buf[65536];
  size_t k;
  while ((k = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, k);
  const int rc = ::pclose(p);
  if (rc != 0) throw Error(what, "failed (status " + std::to_string(rc) + "): " + cmd, kExitError);
  return out;
}

class LlamaCpp {
 public:
  LlamaCpp(std::string engine_dir, std::string gguf, std::string scratch)
      : script_(engine_dir + "/eval.mjs"), gguf_(std::move(gguf)), scratch_(std::move(scratch)) {
    require(fs::exists(script_), script_, "llama.cpp harness not found (run ./setup.sh)", kExitError);
  }
  // Logits of every position [T, n] as doubles.
  std::vector<double> logits(const std::vector<int64_t>& ids, int64_t n) {
    const std::string f = scratch_ + "/logits.f32";
    run_capture("node " + sh_quote(script_) + " --model " + sh_quote(gguf_) + " --ids " + ids_csv(ids) +
                    " --threads 1 --all-logits --logits-out " + sh_quote(f) + " > /dev/null",
                "llama.cpp eval.mjs on " + gguf_);
    const std::string b = read_file(f);
    require(b.size() == ids.size() * size_t(n) * 4, f, "unexpected logits size");
    std::vector<double> out(ids.size() * size_t(n));
    const float* v = reinterpret_cast<const float*>(b.data());
    for (size_t i = 0; i < out.size(); ++i) out[i] = v[i];
    fs::remove(f);
    return out;
  }
  // Copies of a homophonic vocabulary tie by construction: the harness must read back more than
  // the most copies of one token to resolve a tie to the lowest id.
  void set_greedy_top(int64_t k) { greedy_top_ = k; }
  std::vector<int64_t> greedy(const std::vector<int64_t>& ids, int64_t k) {
    const std::string s = run_capture("node " + sh_quote(script_) + " --model " + sh_quote(gguf_) + " --ids " +
                                          ids_csv(ids) + " --threads 1 --greedy " + std::to_string(k) +
                                          " --greedy-top " + std::to_string(greedy_top_),
                                      "llama.cpp eval.mjs on " + gguf_);
    return nlohmann::json::parse(s).at("greedy").get<std::vector<int64_t>>();
  }

 private:
  std::string script_, gguf_, scratch_;
  int64_t greedy_top_ = 8;
};

nlohmann::json score_llamacpp(LlamaCpp& plain, LlamaCpp& obf, int64_t n, const VocabMap& map,
                              const std::vector<std::vector<int64_t>>& windows, int64_t greedy_prompts,
                              int64_t prompt_len, int64_t greedy_tokens, Progress* prog) {
  ScoreAccumulator acc(map, false), acc_corr(map, true);
  RngStream choice(Seed{}, "eval/copy-choice");
  const int64_t np = map.size();
  for (const auto& w : windows) {
    const int64_t T = int64_t(w.size());
    const std::vector<int64_t> ow = to_obf(map, w, choice);
    auto pl = plain.logits(w, n), ol = obf.logits(ow, np);
    for (int64_t t = 0; t < T; ++t) {
      acc.add(pl.data() + t * n, ol.data() + t * np, t + 1 < T ? w[size_t(t + 1)] : -1);
      if (map.homophonic()) acc_corr.add(pl.data() + t * n, ol.data() + t * np, t + 1 < T ? w[size_t(t + 1)] : -1);
    }
    if (prog) prog->advance();
  }
  add_greedy_agreement(plain, obf, map, windows, greedy_prompts, prompt_len, greedy_tokens, acc);
  nlohmann::json j = acc.to_json();
  if (map.homophonic()) j["homophone_corrected"] = acc_corr.to_json();
  return j;
}

std::vector<double> reader_Q(const Seed& seed, int64_t d, const ObfuscationParams& p) {
  obf::KeyMatrices K(seed, d, p.expansion, p.lambda, p.keymat);
  return K.Q("head").a;
}

DType stored_dtype(const std::string& dir) {
  HFModel m(dir);
  return m.weights().get(tensor_names::embed()).dtype;
}

}  // namespace

ObfuscationParams params_from_json(const nlohmann::json& j) {
  ObfuscationParams p;
  auto num = [&](const char* k, double& v) {
    if (j.contains(k) && j[k].is_number()) v = j[k].get<double>();
  };
  auto inum = [&](const char* k, int64_t& v) {
    if (j.contains(k) && j[k].is_number()) v = j[k].get<int64_t>();
  };
  num("lambda", p.lambda);
  inum("expansion", p.expansion);
  num("alpha_e", p.alpha_e);
  num("alpha_h", p.alpha_h);
  inum("beta", p.beta);
  num("gamma", p.gamma);
  num("head_scale_range", p.head_scale_range);
  num("ffn_scale_range", p.ffn_scale_range);
  num("value_cond", p.value_cond);  // absent in older records: 0, the report's draw
  if (j.contains("keymat")) p.keymat = j["keymat"] == "exact-norm" ? obf::KeymatVariant::ExactNorm : obf::KeymatVariant::Paper;
  if (j.contains("kappa")) p.kappa = j["kappa"] == "calibrated" ? KappaMode::Calibrated : KappaMode::Gaussian;
  if (j.contains("noise_scale"))
    p.noise_scale = j["noise_scale"] == "per-row" ? obf::NoiseScale::PerRow : obf::NoiseScale::Global;
  if (j.contains("per_group_perm") && j["per_group_perm"].is_boolean()) p.per_group_perm = j["per_group_perm"];
  if (j.contains("router_norm") && j["router_norm"].is_boolean()) p.router_norm = j["router_norm"];  // absent: off
  return p;
}

nlohmann::json run_eval(const EvalConfig& cfg) {
  const auto t0 = std::chrono::steady_clock::now();
  auto log = [&](const std::string& s) {
    if (cfg.log) cfg.log(s);
  };
  KeyFile key = KeyFile::load(cfg.key_path);
  const ObfuscationRecord& rec = key.require_record(cfg.key_path);
  const nlohmann::json recp = rec.params.contains("params") ? rec.params["params"] : rec.params;
  const ObfuscationParams params = params_from_json(recp);
  const std::string source = cfg.obf_source.empty() ? cfg.plain_dir : cfg.obf_source;
  {
    HFModel pm(source), om(cfg.obf_dir);
    const std::string pf = pm.fingerprint(), of = om.fingerprint();
    require(pf == rec.plain_fingerprint, cfg.key_path,
            "the key's record names another plaintext model than " + source, kExitKeyMismatch);
    require(of == rec.obf_fingerprint, cfg.key_path,
            "the key's record names another obfuscated model than " + cfg.obf_dir, kExitKeyMismatch);
  }
  const std::vector<int64_t> ids = load_tokens(cfg.text_file, cfg.plain_dir);
  const auto windows = spread_windows(ids, cfg.tokens, cfg.window);
  const auto ll_windows = spread_windows(ids, std::min(cfg.tokens, cfg.llamacpp_tokens), cfg.window);
  std::vector<int64_t> calib;
  {
    // Calibration ids for re-obfuscated variants with calibrated kappa: the 512 tokens after the
    // first window (not scored unless the windows overlap).
    const int64_t s = std::min<int64_t>(cfg.window, int64_t(ids.size()) - 1);
    calib.assign(ids.begin() + s, ids.begin() + std::min<int64_t>(s + 512, int64_t(ids.size())));
  }

  fs::create_directories(cfg.work_dir);
  ReferenceModel plain = ReferenceModel::load(cfg.plain_dir);
  const int64_t n = plain.vocab_size(), d = plain.config().hidden_size, L = plain.config().num_hidden_layers;
  const VocabMap tau = rec.vocab_map(key.seed);  // tau, or the homophonic map
  const DType served = stored_dtype(cfg.obf_dir);

  struct Variant {
    std::string name, what;
    ObfuscationParams p;
    DType dtype;
  };
  std::vector<Variant> variants;
  if (cfg.attribution) {
    ObfuscationParams E = ObfuscationParams::exact();
    E.value_cond = params.value_cond;  // same value maps: their conditioning sets the precision loss
    if (served != DType::F32) variants.push_back({"full, f32", "the same parameters stored in f32", params, DType::F32});
    if (params.alpha_e > 0 || params.alpha_h > 0) {
      auto p = E;
      p.alpha_e = params.alpha_e, p.alpha_h = params.alpha_h, p.noise_scale = params.noise_scale;
      variants.push_back({"noise only", "embedding/head noise alone (f32)", p, DType::F32});
    }
    if (params.lambda > 0 || params.expansion > 0) {
      auto p = E;
      p.lambda = params.lambda, p.expansion = params.expansion, p.keymat = params.keymat, p.kappa = params.kappa;
      variants.push_back({"norm (key matrices, kappa) only", "key matrices and the RMSNorm kappa alone (f32)", p,
                          DType::F32});
    }
    if (params.beta > 1) {
      auto p = E;
      p.beta = params.beta, p.gamma = params.gamma;
      variants.push_back({"RoPE block permutation only", "BlockPerm alone (f32)", p, DType::F32});
    }
    if (served != DType::F32)
      variants.push_back({"precision only (" + dtype_name(served) + ")", "exact transforms stored in the served dtype",
                          E, served});
  }
  bool want_ll = std::find(cfg.engines.begin(), cfg.engines.end(), "llamacpp") != cfg.engines.end();
  bool want_ref = std::find(cfg.engines.begin(), cfg.engines.end(), "reference") != cfg.engines.end();
  Progress prog("eval", uint64_t((want_ref ? 1 + variants.size() : 0) + (want_ll ? ll_windows.size() + 1 : 0)),
                "steps");

  nlohmann::json report;
  report["params"] = recp;
  report["model"] = cfg.plain_dir;
  if (source != cfg.plain_dir) report["obf_source"] = source;
  report["obf_model"] = cfg.obf_dir;
  report["served_dtype"] = dtype_name(served);
  report["text"] = cfg.text_file;
  report["tokens"] = {{"windows", windows.size()}, {"window", cfg.window}, {"requested", cfg.tokens},
                      {"corpus_tokens", ids.size()}};
  if (tau.homophonic()) report["homophones"] = {{"obf_vocab_size", tau.size()}, {"extra", tau.size() - n}};
  report["model_config"] = {{"hidden_size", d}, {"layers", L}, {"vocab_size", n},
                            {"obf_hidden_size", d + 2 * params.expansion}};
  report["engines"] = nlohmann::json::object();
  report["layers"] = nlohmann::json::array();

  if (want_ref) {
    log("reference forward: plaintext vs " + cfg.obf_dir);
    ReferenceModel obf = ReferenceModel::load(cfg.obf_dir);
    std::vector<double> err;
    auto s = score_reference(plain, obf, tau, windows, cfg.greedy_prompts, cfg.prompt_len, cfg.greedy_tokens,
                             reader_Q(key.seed, d, params), &err);
    report["engines"]["reference"] = s;
    report["layers"].push_back({{"name", "as served"}, {"what", "the evaluated obfuscated model"},
                                {"dtype", dtype_name(served)}, {"rel_err", err}, {"scores", s}});
    prog.advance();
    for (size_t vi = 0; vi < variants.size(); ++vi) {
      const auto& v = variants[vi];
      log("attribution: " + v.name);
      const std::string dir = cfg.work_dir + "/variant" + std::to_string(vi);
      ObfuscateOptions opt;
      opt.params = v.p;
      opt.dtype = v.dtype;
      opt.force = true;
      opt.copies = rec.copies;
      if (v.p.kappa == KappaMode::Calibrated) opt.calib_ids = calib;
      obfuscate_model(source, key.seed, dir, opt);
      ReferenceModel vm = ReferenceModel::load(dir);
      std::vector<double> verr;
      auto vs = score_reference(plain, vm, tau, windows, cfg.greedy_prompts, cfg.prompt_len, cfg.greedy_tokens,
                                reader_Q(key.seed, d, v.p), &verr);
      report["layers"].push_back({{"name", v.name}, {"what", v.what}, {"dtype", dtype_name(v.dtype)},
                                  {"params", v.p.to_json()}, {"rel_err", verr}, {"scores", vs}});
      fs::remove_all(dir);
      prog.advance();
    }
  }
  if (want_ll) {
    log("llama.cpp: exporting GGUFs");
    const std::string ed = cfg.engine_dir.empty() ? default_engine_dir() : cfg.engine_dir;
    const std::string pg = cfg.work_dir + "/plain.gguf", og = cfg.work_dir + "/obf.gguf";
    {
      HFModel pm(cfg.plain_dir), om(cfg.obf_dir);
      GGUFExportOptions go;
      go.overwrite = true;
      go.progress = false;
      export_gguf(pm, pg, pm.weights().get(tensor_names::embed()).dtype, go);
      go.opaque_vocab = true;
      export_gguf(om, og, served, go);
    }
    prog.advance();
    LlamaCpp lp(ed, pg, cfg.work_dir), lo(ed, og, cfg.work_dir);
    int64_t most = 1;
    for (int64_t t = 0; t < n; ++t) most = std::max(most, tau.copies(t));
    lo.set_greedy_top(std::max<int64_t>(8, most + 8));
    auto s = score_llamacpp(lp, lo, n, tau, ll_windows, cfg.greedy_prompts, cfg.prompt_len, cfg.greedy_tokens, &prog);
    s["gguf_dtype"] = {{"plain", dtype_name(stored_dtype(cfg.plain_dir))}, {"obf", dtype_name(served)}};
    report["engines"]["llamacpp"] = s;
    fs::remove(pg);
    fs::remove(og);
  }
  prog.finish();
  report["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace aloepri::eval
