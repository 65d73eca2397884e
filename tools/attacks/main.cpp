// aloe-attack: the learned attacks of the privacy audit (ISA, IMA; issue 5) in libtorch on CPU.
// Prints the audit's AttackResult (include/aloepri/audit.h) as JSON with --json, a summary line
// otherwise. The victim is either an existing obfuscated model with its key (--obf, --key: the
// key only plays the client, mapping the victim's text to obfuscated ids, and is never read by
// the attack), or one obfuscated here from the plaintext model with --victim-seed and the
// privacy-parameter flags (rerunnable measurements), or no obfuscation at all (--no-obf: the
// server sees plaintext states, the attacks' sanity setting).
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>

#include "aloepri/core/error.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/output.h"
#include "aloepri/core/progress.h"
#include "aloepri/engine/synth.h"
#include "common.h"
#include "ima.h"
#include "isa.h"

namespace fs = std::filesystem;
using namespace aloepri;
using namespace aloepri::attacks;

namespace {

struct Common {
  std::string plain, obf, key, data = "build/corpus", work = "build/attack-work", out, setting;
  int64_t windows = 8, seq = 64, threads = 1;
  uint64_t victim_seed = 1;
  bool no_obf = false, exact = false, json = false, force = false, quiet = false;
  ObfuscationParams params;
  std::string keymat = "paper", kappa = "gaussian";
};

void add_common(CLI::App* s, Common& c) {
  s->add_option("--plain", c.plain, "plaintext HF model directory (the attacker's public model)")->required();
  s->add_option("--obf", c.obf, "victim: an obfuscated model directory (needs --key)");
  s->add_option("--key", c.key, "victim's key: used only to play the client (map the victim's text), never by the attack");
  s->add_flag("--no-obf", c.no_obf, "victim: no obfuscation, the server sees plaintext states (sanity setting)");
  s->add_option("--victim-seed", c.victim_seed, "victim: obfuscate --plain here with this seed (default when no --obf)")
      ->capture_default_str();
  s->add_option("--lambda", c.params.lambda)->capture_default_str();
  s->add_option("--expansion", c.params.expansion, "h (hidden size grows by 2h)")->capture_default_str();
  s->add_option("--alpha-e", c.params.alpha_e)->capture_default_str();
  s->add_option("--alpha-h", c.params.alpha_h)->capture_default_str();
  s->add_option("--beta", c.params.beta)->capture_default_str();
  s->add_option("--gamma", c.params.gamma)->capture_default_str();
  s->add_option("--value-cond", c.params.value_cond, "cond(U_j) of the value maps: 0 = the report's Gaussian draw")
      ->capture_default_str();
  s->add_option("--keymat", c.keymat, "paper | exact-norm")->capture_default_str();
  s->add_option("--kappa", c.kappa, "gaussian | calibrated")->capture_default_str();
  s->add_flag("--exact", c.exact, "lambda 0, h 0, no noise, beta 1 (the exact transform)");
  s->add_option("--data", c.data, "directory with heldout.bin (victim text) and train.bin (public text)")
      ->capture_default_str();
  s->add_option("--windows", c.windows, "victim windows (spread evenly over heldout.bin)")->capture_default_str();
  s->add_option("--seq", c.seq, "tokens per window")->capture_default_str();
  s->add_option("--work", c.work, "scratch directory for obfuscated models")->capture_default_str();
  s->add_option("--threads", c.threads, "libtorch intra-op threads")->capture_default_str();
  s->add_option("--setting", c.setting, "label for the result (default: from the parameters)");
  s->add_flag("--json", c.json, "print the AttackResult JSON");
  s->add_option("--out", c.out, "also write the JSON to this file");
  s->add_flag("--force", c.force, "replace an existing --out file");
  s->add_flag("--quiet", c.quiet, "no progress bars");
}

ObfuscationParams params_from_json(const nlohmann::json& j, const std::string& where) {
  ObfuscationParams p;
  try {
    p.lambda = j.at("lambda").get<double>();
    p.expansion = j.at("expansion").get<int64_t>();
    p.alpha_e = j.at("alpha_e").get<double>();
    p.alpha_h = j.at("alpha_h").get<double>();
    p.beta = j.at("beta").get<int64_t>();
    p.gamma = j.at("gamma").get<double>();
    p.keymat = j.value("keymat", "paper") == "paper" ? obf::KeymatVariant::Paper : obf::KeymatVariant::ExactNorm;
    p.kappa = j.value("kappa", "gaussian") == "gaussian" ? KappaMode::Gaussian : KappaMode::Calibrated;
    p.noise_scale = j.value("noise_scale", "global") == "global" ? obf::NoiseScale::Global : obf::NoiseScale::PerRow;
    p.head_scale_range = j.value("head_scale_range", p.head_scale_range);
    p.ffn_scale_range = j.value("ffn_scale_range", p.ffn_scale_range);
    p.per_group_perm = j.value("per_group_perm", p.per_group_perm);
    p.value_cond = j.value("value_cond", 0.0);  // absent in older records: the report's draw
  } catch (const nlohmann::json::exception& e) {
    throw Error(where, std::string("obfuscation parameters in the key record: ") + e.what());
  }
  return p;
}

Seed victim_seed_of(uint64_t v) { return attacker_seed(v, -1); }  // disjoint from the attacker's indices >= 0

// The victim: what the server runs (obfuscated model, or the plaintext one with --no-obf),
// the ids it is sent, the mechanism's parameters and the victim's seed (for --same-key only).
struct Victim {
  std::optional<Llama> model;
  torch::Tensor plain_ids, sent_ids;
  ObfuscationParams params;
  std::optional<Seed> seed;
  std::string label;
};

Victim make_victim(Common& c) {
  if (c.exact) {
    const auto km = c.params.keymat;
    c.params = ObfuscationParams::exact();
    c.params.keymat = km;
  }
  if (c.keymat == "exact-norm") c.params.keymat = obf::KeymatVariant::ExactNorm;
  else if (c.keymat != "paper") throw Error("--keymat", "unknown variant '" + c.keymat + "'", kExitUsage);
  if (c.kappa == "calibrated") c.params.kappa = KappaMode::Calibrated;
  else if (c.kappa != "gaussian") throw Error("--kappa", "unknown mode '" + c.kappa + "'", kExitUsage);

  Victim v;
  const auto plain_cfg = ModelConfig::load(c.plain);
  const auto held = read_token_file(c.data + "/heldout.bin");
  v.plain_ids = spread_windows(held, c.windows, c.seq, plain_cfg.vocab_size, c.data + "/heldout.bin");
  if (c.no_obf) {
    if (!c.obf.empty()) throw Error("--no-obf", "conflicts with --obf", kExitUsage);
    v.model = Llama::load(c.plain);
    v.sent_ids = v.plain_ids;
    v.label = "no obfuscation";
    return v;
  }
  if (!c.obf.empty()) {
    if (c.key.empty()) throw Error("--obf", "needs --key to play the client", kExitUsage);
    const auto key = KeyFile::load(c.key);
    const auto& rec = key.require_record(c.key);
    // The learned attacks play a client through a plain tau (n ids); a homophonic key maps to n' ids.
    if (!rec.copies.empty())
      throw Error(c.key, "has a homophonic vocabulary (obfuscate --homophones): not supported by aloe-attack yet",
                  kExitUsage);
    v.params = params_from_json(rec.params, c.key);
    v.model = Llama::load(c.obf);
    check_key_matches_model(key, c.key, HFModel(c.obf).fingerprint(), c.obf);
    v.sent_ids = map_ids(v.plain_ids, derive_tau(key.seed, rec.vocab_size));
    v.seed = key.seed;
    v.label = "obfuscated model " + c.obf;
    return v;
  }
  v.params = c.params;
  v.seed = victim_seed_of(c.victim_seed);
  const std::string dir = (fs::path(c.work) / ("victim-" + std::to_string(c.victim_seed))).string();
  fs::create_directories(c.work);
  ObfuscateOptions o;
  o.params = c.params;
  o.force = true;
  o.dtype = DType::F32;
  if (c.params.kappa == KappaMode::Calibrated) {
    // The client calibrates on text of its own: the first 512 held-out ids.
    for (int64_t i = 0; i < 512 && i < int64_t(held.size()); ++i) o.calib_ids.push_back(held[size_t(i)]);
  }
  if (!c.quiet) std::cerr << "obfuscating the victim model into " << dir << std::endl;
  obfuscate_model(c.plain, *v.seed, dir, o);
  v.model = Llama::load(dir);
  v.sent_ids = map_ids(v.plain_ids, derive_tau(*v.seed, plain_cfg.vocab_size));
  fs::remove_all(dir);
  v.label = "obfuscated here (victim seed " + std::to_string(c.victim_seed) + ")";
  return v;
}

std::string params_label(const Common& c, const Victim& v) {
  if (!c.setting.empty()) return c.setting;
  if (c.no_obf) return "no obfuscation";
  const auto& p = v.params;
  if (p.is_exact_setting()) return "exact (lambda 0, h 0, no noise, beta 1)";
  char buf[160];
  std::snprintf(buf, sizeof buf, "lambda %.2g, h %lld, alpha_e %.2g, alpha_h %.2g, beta %lld", p.lambda,
                (long long)p.expansion, p.alpha_e, p.alpha_h, (long long)p.beta);
  return buf;
}

void emit(const Common& c, const audit::AttackResult& r) {
  const auto j = result_json(r);
  if (!c.out.empty()) {
    if (fs::exists(c.out) && !c.force) throw Error(c.out, "exists (use --force to replace)", kExitOutputExists);
    write_file_atomic(c.out, j.dump(2) + "\n", c.force);
  }
  if (c.json) {
    std::cout << j.dump(2) << std::endl;
    return;
  }
  std::printf("%s [%s]: TTRSR %.4f", r.attack.c_str(), r.setting.c_str(), r.ttrsr);
  for (const auto& [k, f] : r.topk)
    if (k > 1) std::printf(", top-%d %.4f", k, f);
  std::printf(", BLEU-4 %.4f, cosine %.4f on %lld victim tokens, %.1f s\n", r.bleu4, r.cosine,
              (long long)r.victim_tokens, r.seconds);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"aloe-attack: learned attacks of the privacy audit (ISA, IMA) with libtorch"};
  app.require_subcommand(1);

  Common ci, cm;
  IsaOptions io;
  auto* isa = app.add_subcommand("isa", "internal-state inversion: optimise input embeddings to match observed states");
  add_common(isa, ci);
  isa->add_option("--target", io.target, "hidden (residual stream) | attn (attention scores)")->capture_default_str();
  isa->add_option("--layer", io.layer, "observed layer (hidden: -1 = embedding rows)")->capture_default_str();
  isa->add_option("--align", io.align, "hidden: linear | orthogonal (fit the key) | none (direct match)")->capture_default_str();
  isa->add_option("--relax", io.relax, "embed (free embeddings, nearest row) | vocab (softmax over the vocabulary)")
      ->capture_default_str();
  isa->add_option("--iters", io.iters)->capture_default_str();
  isa->add_option("--optim", io.optimizer, "lbfgs | adam")->capture_default_str();
  isa->add_option("--sorted-percent", io.warmup_percent,
                  "attn: share of the steps matching sorted head values before solving the head assignment")
      ->capture_default_str();
  isa->add_option("--lr", io.lr, "Adam step (embed: x std of the embedding)")->capture_default_str();
  isa->add_option("--seed", io.seed)->capture_default_str();

  ImaOptions mo;
  int64_t attacker_keys = 2, public_windows = 256;
  uint64_t attacker_base = 7;
  bool same_key = false;
  auto* ima = app.add_subcommand("ima", "inversion model trained on public text under the attacker's own keys");
  add_common(ima, cm);
  ima->add_option("--layer", mo.layer, "observed state: -1 = embedding rows, l = residual after layer l")
      ->capture_default_str();
  ima->add_option("--arch", mo.arch, "transformer | mlp")->capture_default_str();
  ima->add_option("--width", mo.width)->capture_default_str();
  ima->add_option("--depth", mo.depth)->capture_default_str();
  ima->add_option("--steps", mo.steps)->capture_default_str();
  ima->add_option("--batch", mo.batch, "windows per step")->capture_default_str();
  ima->add_option("--lr", mo.lr)->capture_default_str();
  ima->add_option("--seed", mo.seed)->capture_default_str();
  ima->add_option("--attacker-keys", attacker_keys, "how many keys the attacker draws for his training data")
      ->capture_default_str();
  ima->add_option("--attacker-seed", attacker_base, "public integer the attacker's keys derive from")->capture_default_str();
  ima->add_option("--public-windows", public_windows, "training windows of train.bin per attacker key")
      ->capture_default_str();
  ima->add_flag("--same-key", same_key, "weak setting: train on the victim's own key (an upper bound, not a threat)");

  CLI11_PARSE(app, argc, argv);

  try {
    Common& c = *isa ? ci : cm;
    if (c.threads < 1) throw Error("--threads", "must be >= 1", kExitUsage);
    torch::set_num_threads(int(c.threads));
    Progress::set_enabled(!c.quiet && !c.json);
    const bool bars = !c.quiet && !c.json;
    if (!c.out.empty() && fs::exists(c.out) && !c.force)
      throw Error(c.out, "exists (use --force to replace)", kExitOutputExists);
    auto plain = Llama::load(c.plain);
    Victim v = make_victim(c);
    audit::AttackResult r;
    r.setting = params_label(c, v);
    const int64_t B = v.plain_ids.size(0), T = v.plain_ids.size(1);

    if (*isa) {
      io.progress = bars;
      const double t0 = now_seconds();
      auto obs = observe(*v.model, v.sent_ids, io.target, io.layer);
      auto res = run_isa(plain, obs, B, T, io);
      r.attack = "ISA";
      r.seconds = now_seconds() - t0;
      score(r, res.ranked, v.plain_ids);
      r.details = {{"target", io.target},
                   {"layer", io.layer},
                   {"align", io.target == "hidden" ? io.align : "heads (assignment)"},
                   {"relax", io.relax},
                   {"iters", io.iters},
                   {"optimizer", io.optimizer},
                   {"lr", io.lr},
                   {"observed_width", io.target == "hidden" ? obs.size(2) : obs.size(1)},
                   {"windows", B},
                   {"seq", T},
                   {"loss_curve", res.loss_curve},
                   {"victim", v.label},
                   {"params", c.no_obf ? nlohmann::json(nullptr) : v.params.to_json()}};
      if (io.target == "attn") {
        r.details["head_assignment"] = res.head_assignment;
        r.details["sorted_percent"] = io.warmup_percent;
      }
    } else {
      mo.progress = bars;
      if (same_key && !v.seed) throw Error("--same-key", "needs an obfuscated victim", kExitUsage);
      const double t0 = now_seconds();
      const auto train_ids = read_token_file(c.data + "/train.bin");
      std::vector<LabelledStates> train;
      const int64_t nkeys = same_key ? 1 : attacker_keys;
      if (nkeys < 1) throw Error("--attacker-keys", "must be >= 1", kExitUsage);
      for (int64_t k = 0; k < nkeys; ++k) {
        auto ids = random_windows(train_ids, public_windows, c.seq, plain.vocab(), mo.seed * 1000 + uint64_t(k),
                                  c.data + "/train.bin");
        if (c.no_obf) {
          train.push_back({observe(plain, ids, "hidden", mo.layer), ids});
          continue;
        }
        const Seed s = same_key ? *v.seed : attacker_seed(attacker_base, k);
        if (bars) std::cerr << "attacker key " << k + 1 << "/" << nkeys << ": obfuscating the public model" << std::endl;
        train.push_back(attacker_states(c.plain, v.params, s, c.work, "attacker-" + std::to_string(k), ids, mo.layer));
      }
      const double t_data = now_seconds() - t0;
      auto obs = observe(*v.model, v.sent_ids, "hidden", mo.layer);
      auto res = run_ima(train, obs, mo);
      r.attack = "IMA";
      r.seconds = now_seconds() - t0;
      score(r, res.ranked, v.plain_ids);
      r.details = {{"layer", mo.layer},
                   {"arch", mo.arch},
                   {"width", mo.width},
                   {"depth", mo.depth},
                   {"steps", mo.steps},
                   {"batch", mo.batch},
                   {"attacker_keys", nkeys},
                   {"same_key", same_key},
                   {"public_windows_per_key", public_windows},
                   {"output_vocab", res.output_vocab},
                   {"train_top1", res.train_top1},
                   {"loss_curve", res.loss_curve},
                   {"data_seconds", t_data},
                   {"windows", B},
                   {"seq", T},
                   {"observed_width", obs.size(2)},
                   {"victim", v.label},
                   {"params", c.no_obf ? nlohmann::json(nullptr) : v.params.to_json()}};
      if (same_key && c.setting.empty()) r.setting += "; IMA trained on the victim's key (weak setting)";
      {
        // The prior an inverter can always fall back on: public-text token frequencies, the
        // same ranked guess at every position. An attack is informative only above it.
        std::vector<torch::Tensor> all;
        for (const auto& t : train) all.push_back(t.ids.reshape({-1}));
        auto counts = torch::bincount(torch::cat(all), {}, plain.vocab());
        auto order = std::get<1>(counts.topk(100));
        auto ranked = order.unsqueeze(0).expand({B * T, order.size(0)});
        auto truth = v.plain_ids.reshape({-1});
        r.details["prior_top1"] = topk_fraction(ranked, truth, 1);
        r.details["prior_top10"] = topk_fraction(ranked, truth, 10);
        r.details["prior_top100"] = topk_fraction(ranked, truth, 100);
      }
    }
    emit(c, r);
    return 0;
  } catch (const Error& e) {
    std::cerr << "aloe-attack: " << e.what() << std::endl;
    return e.code();
  } catch (const std::exception& e) {
    std::cerr << "aloe-attack: " << e.what() << std::endl;
    return 1;
  }
}
