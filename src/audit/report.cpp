// The audit runner: registry of attacks, time budget, scoring in context, console table, JSON
// and a self-contained HTML report with inline SVG charts.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include <unistd.h>

#include "aloepri/audit/report.h"
#include "aloepri/audit/mla_latent.h"
#include "aloepri/audit/oracle.h"
#include "aloepri/audit/qk_gains.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/obfuscate/mla.h"
#include "aloepri/engine/forward.h"
#include "aloepri/formats/hf_config.h"
#include "aloepri/core/error.h"
#include "aloepri/core/output.h"
#include "aloepri/client/tokenizer.h"

namespace fs = std::filesystem;

namespace aloepri::audit {

void AuditContext::load_models() const {
  if (plain_) return;
  auto [p, o] = load_weight_pair(plain_dir, obf_dir);
  plain_ = std::make_shared<ModelWeights>(std::move(p));
  obf_ = std::make_shared<ModelWeights>(std::move(o));
}
const ModelWeights& AuditContext::plain() const {
  load_models();
  return *plain_;
}
const ModelWeights& AuditContext::obf() const {
  load_models();
  return *obf_;
}

const GroupedServed& AuditContext::grouped() const {
  if (!grouped_) grouped_ = std::make_shared<GroupedServed>(group_served(obf(), plain().vocab()));
  return *grouped_;
}

Query AuditContext::query() const {
  Query q;
  std::unordered_set<int32_t> seen;
  for (int32_t o : traffic)
    if (seen.insert(o).second) q.obf_ids.push_back(o);
  if (truth)
    for (int32_t t : vocab_sample) {
      const int32_t o = int32_t((*truth)[size_t(t)]);
      if (seen.insert(o).second) q.obf_ids.push_back(o);
    }
  std::sort(q.obf_ids.begin(), q.obf_ids.end());
  return q;
}

double AuditContext::seconds_left() const {
  if (deadline == std::chrono::steady_clock::time_point::max()) return 1e300;
  return std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
}

namespace {

std::string decode_ids(const std::string& model_dir, const std::vector<int32_t>& ids) {
  try {
    static std::string cached_dir;
    static std::unique_ptr<Tokenizer> tok;
    if (!tok || cached_dir != model_dir) {
      tok = std::make_unique<Tokenizer>(Tokenizer::load(model_dir));
      cached_dir = model_dir;
    }
    std::vector<int32_t> v;
    for (int32_t t : ids) v.push_back(t < 0 ? 0 : t);
    return tok->decode(v);
  } catch (const std::exception&) {
    return "";  // no tokenizer: ids only
  }
}

std::string setting_of(const AuditContext& ctx) {
  if (ctx.params.is_object() && !ctx.params.empty()) {
    const auto& p = ctx.params.contains("params") ? ctx.params["params"] : ctx.params;
    std::ostringstream s;
    auto num = [&](const char* k) -> std::string {
      if (!p.contains(k)) return "?";
      std::ostringstream o;
      o << p[k];
      return o.str();
    };
    s << "alpha_e " << num("alpha_e") << ", alpha_h " << num("alpha_h") << ", lambda " << num("lambda") << ", h "
      << num("expansion") << ", beta " << num("beta");
    // Records from before --value-cond have no field: the report's Gaussian value maps (0).
    s << ", value_cond " << (p.contains("value_cond") ? num("value_cond") : std::string("0"));
    return s.str();
  }
  std::ostringstream s;
  s << "alpha_e " << ctx.mech.alpha_e << ", alpha_h " << ctx.mech.alpha_h << " (assumed)";
  return s.str();
}

}  // namespace

AttackResult score_in_context(const VocabAttack& a, const AuditContext& ctx, const std::string& setting) {
  AttackResult r;
  if (ctx.truth) {
    r = score_vocab_attack(a, setting, *ctx.truth, ctx.victim, ctx.vocab_sample, {1, 5, 10},
                           ctx.homophonic ? &ctx.traffic : nullptr);
    const size_t m = std::min<size_t>(ctx.victim.size(), 48);
    std::vector<int32_t> truth_ids(ctx.victim.begin(), ctx.victim.begin() + long(m)), rec;
    for (size_t i = 0; i < truth_ids.size(); ++i) {
      const int64_t o = ctx.homophonic ? int64_t(ctx.traffic[i]) : (*ctx.truth)[size_t(truth_ids[i])];
      const auto& c = a.guesses[size_t(o)];
      rec.push_back(c.empty() ? -1 : c[0]);
    }
    r.details["sample"] = {{"truth_ids", truth_ids}, {"recovered_ids", rec},
                           {"truth_text", decode_ids(ctx.plain_dir, truth_ids)},
                           {"recovered_text", decode_ids(ctx.plain_dir, rec)}};
  } else {
    r.attack = a.attack;
    r.setting = setting;
    r.seconds = a.seconds;
    r.details = a.details;
    r.ttrsr = -1;  // unknown without the key
    r.details["note"] = "no key: recovery not scored";
    const size_t m = std::min<size_t>(ctx.traffic.size(), 48);
    std::vector<int32_t> rec;
    for (size_t i = 0; i < m; ++i) {
      const auto& c = a.guesses[size_t(ctx.traffic[i])];
      rec.push_back(c.empty() ? -1 : c[0]);
    }
    r.details["sample"] = {{"recovered_ids", rec}, {"recovered_text", decode_ids(ctx.plain_dir, rec)}};
  }
  r.victim_tokens = int64_t(ctx.traffic.size());
  return r;
}

std::vector<AttackEntry> weight_attacks() {
  using Fn = VocabAttack (*)(const ModelWeights&, const ModelWeights&, const Query&, const WeightAttackOptions&);
  auto entry = [](const char* name, const char* desc, Fn fn) {
    return AttackEntry{name, "weights", desc, [fn](const AuditContext& ctx) {
                         WeightAttackOptions o = ctx.weight_opt;
                         o.mech = ctx.mech;
                         const double left = ctx.seconds_left();
                         if (left < 1e299) o.budget_seconds = std::max(1.0, left);
                         VocabAttack a;
                         if (ctx.homophonic) {  // one-to-one over the groups, each copy its group's answer
                           const GroupedServed& G = ctx.grouped();
                           a = copies_from_groups(fn(ctx.plain(), G.weights, group_query(ctx.query(), G.group_of), o),
                                                  G.group_of);
                           a.details["homophones"] = G.info;
                         } else {
                           a = fn(ctx.plain(), ctx.obf(), ctx.query(), o);
                         }
                         return std::vector<AttackResult>{score_in_context(a, ctx, setting_of(ctx))};
                       }};
  };
  return {entry("vma", "sort-and-match on weight pairs, votes across layers", &vma_attack),
          entry("gate-ia", "Gate-IA: mean of e W_gate per layer", &gate_ia_attack),
          entry("attn-ia", "Attn-IA: per-RoPE-block quadratic forms in slot order", &attn_ia_attack),
          entry("nn", "nearest neighbour after FFN channel matching and least-squares key inversion", &nn_attack)};
}

AttackEntry mla_latent_entry() {
  return AttackEntry{
      "mla-latent", "weights",
      "DeepSeek latents: head projectors' eigenbases give the latent rotations, their diagonals the head permutation",
      [](const AuditContext& ctx) {
        const auto t0 = std::chrono::steady_clock::now();
        const auto rec = mla_latent_attack(ctx.plain(), ctx.obf());
        AttackResult r;
        r.attack = "MLA-latent";
        r.setting = setting_of(ctx);
        r.ttrsr = -1;  // recovers key maps, not tokens
        nlohmann::json layers = nlohmann::json::array();
        std::optional<Seed> seed;
        if (!ctx.key_path.empty()) seed = KeyFile::load(ctx.key_path).seed;
        double heads = 0, rerr = 0, resid = 0;
        int64_t scored = 0;
        for (const auto& x : rec) {
          nlohmann::json j = {{"latent", x.latent}, {"layer", x.layer}, {"identifiable", x.identifiable},
                              {"eigen_mismatch", x.eigen_mismatch}, {"residual", x.residual}};
          if (seed && x.identifiable) {
            const obf::MlaKeys K = obf::draw_mla_keys(*seed, x.layer, ctx.plain().config, 1.0, 1.0);
            j = score_latent_recovery(x, x.latent == "kv" ? K.Rkv : K.Rq, K.head_slot);
            heads += j["heads_right"].get<double>();
            rerr = std::max(rerr, j["R_rel_error"].get<double>());
            ++scored;
          }
          resid = std::max(resid, x.residual);
          layers.push_back(j);
        }
        r.details = {{"latents", layers}, {"max_residual", resid}};
        if (scored > 0) {
          r.details["heads_right"] = heads / double(scored);
          r.details["max_R_rel_error"] = rerr;
        }
        r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return std::vector<AttackResult>{r};
      }};
}

AttackEntry qk_gains_entry() {
  return AttackEntry{"qk-gains", "weights",
                     "Qwen3 q/k gains: products g_q g_k match slots to RoPE pairs, then h = g~_q / g_q",
                     [](const AuditContext& ctx) {
                       const auto t0 = std::chrono::steady_clock::now();
                       const auto rec = qk_gain_attack(ctx.plain(), ctx.obf());
                       AttackResult r;
                       r.attack = "QK-gains";
                       r.setting = setting_of(ctx);
                       r.ttrsr = -1;  // recovers key maps, not tokens
                       nlohmann::json layers = nlohmann::json::array();
                       for (const auto& x : rec) {
                         int64_t moved = 0, swapped = 0;
                         for (size_t p = 0; p < x.pair_slot.size(); ++p) {
                           moved += x.pair_slot[p] != int64_t(p);
                           swapped += x.swapped[p];
                         }
                         const auto [lo, hi] = std::minmax_element(x.scale.begin(), x.scale.end());
                         layers.push_back({{"layer", x.layer}, {"pairs_moved", moved}, {"pairs_swapped", swapped},
                                           {"scale_min", *lo}, {"scale_max", *hi}});
                       }
                       r.details = {{"layers", layers}};
                       r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                       return std::vector<AttackResult>{r};
                     }};
}

AttackEntry oracle_entry(const OracleOptions& base) {
  return AttackEntry{"oracle", "oracle",
                     "vocabulary matching by running both models on [bos, x] (signatures, then anchored graph matching)",
                     [base](const AuditContext& ctx) {
                       OracleOptions o = base;
                       o.topk = ctx.weight_opt.topk;
                       const double left = ctx.seconds_left();
                       if (left < 1e299) o.budget_seconds = std::max(1.0, left);
                       ReferenceModel plain = ReferenceModel::load(ctx.plain_dir);
                       ReferenceModel obf = ReferenceModel::load(ctx.obf_dir);
                       // The ids each config publishes (the obfuscated one publishes tau(bos), tau(eos)).
                       auto id = [](const std::optional<int64_t>& v) { return v ? *v : int64_t(-1); };
                       const ModelConfig& pc = plain.config();
                       const ModelConfig& oc = obf.config();
                       VocabAttack a = oracle_attack(plain, obf, id(pc.bos_token_id), id(oc.bos_token_id),
                                                     id(pc.eos_token_id), id(oc.eos_token_id), ctx.query(), o);
                       return std::vector<AttackResult>{score_in_context(a, ctx, setting_of(ctx))};
                     }};
}

AttackEntry oracle_nn_entry(const OracleOptions& base) {
  return AttackEntry{
      "oracle-nn", "oracle",
      "the oracle attack seeded with the drift-robust NN's matches (weights + behaviour combined)",
      [base](const AuditContext& ctx) {
        const auto t0 = std::chrono::steady_clock::now();
        WeightAttackOptions w = ctx.weight_opt;
        w.mech = ctx.mech;
        const VocabAttack nn = nn_attack(ctx.plain(), ctx.obf(), ctx.query(), w);
        OracleOptions o = base;
        o.topk = ctx.weight_opt.topk;
        o.seeds = seeds_from_guesses(nn.guesses, ctx.traffic, base.anchors);
        const double left = ctx.seconds_left();
        if (left < 1e299) o.budget_seconds = std::max(1.0, left);
        ReferenceModel plain = ReferenceModel::load(ctx.plain_dir);
        ReferenceModel obf = ReferenceModel::load(ctx.obf_dir);
        auto id = [](const std::optional<int64_t>& v) { return v ? *v : int64_t(-1); };
        VocabAttack a = oracle_attack(plain, obf, id(plain.config().bos_token_id), id(obf.config().bos_token_id),
                                      id(plain.config().eos_token_id), id(obf.config().eos_token_id), ctx.query(), o);
        a.attack = "Oracle+NN";
        a.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        a.details["nn_seconds"] = nn.seconds;
        // How good the seeds were (scored with the truth, like every figure of the audit).
        if (ctx.truth) {
          int64_t right = 0;
          for (auto [ob, pl] : o.seeds) right += (*ctx.truth)[size_t(pl)] == ob;
          a.details["seeds_correct"] = right;
        }
        a.details["seeds_offered"] = int64_t(o.seeds.size());
        return std::vector<AttackResult>{score_in_context(a, ctx, setting_of(ctx))};
      }};
}

AttackEntry external_attack(const std::string& name, const std::string& exe, const std::vector<std::string>& args) {
  return AttackEntry{name, "learned", "external: " + exe, [exe, args](const AuditContext& ctx) {
    auto q = [](const std::string& a) {
      std::string r = "'";
      for (char c : a) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
      return r + "'";
    };
    std::string cmd = q(exe);
    for (const auto& a : args) cmd += " " + q(a);
    cmd += " --plain " + q(ctx.plain_dir) + " --obf " + q(ctx.obf_dir);
    if (!ctx.key_path.empty()) cmd += " --key " + q(ctx.key_path);
    std::string out;
    if (FILE* p = ::popen(cmd.c_str(), "r")) {
      char buf[4096];
      size_t k;
      while ((k = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, k);
      const int rc = ::pclose(p);
      if (rc != 0) throw Error(exe, "exited with status " + std::to_string(rc));
    } else {
      throw Error(exe, "cannot run");
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(out);
    } catch (const nlohmann::json::exception& e) {
      throw Error(exe, std::string("output is not JSON: ") + e.what());
    }
    if (!j.is_array()) j = nlohmann::json::array({j});
    std::vector<AttackResult> rs;
    for (const auto& e : j) {
      AttackResult r;
      r.attack = e.value("attack", std::string("?"));
      r.setting = e.value("setting", std::string(""));
      r.ttrsr = e.value("ttrsr", 0.0);
      if (e.contains("topk") && e["topk"].is_object())
        for (const auto& [k, v] : e["topk"].items())
          if (k.rfind("top", 0) == 0) r.topk.emplace_back(std::stoi(k.substr(3)), v.get<double>());
      auto opt = [&](const char* k) { return e.contains(k) && e[k].is_number() ? e[k].get<double>() : -1.0; };
      r.vocab_recovery = opt("vocab_recovery");
      r.pii_recovery = opt("pii_recovery");
      r.bleu4 = opt("bleu4");
      r.cosine = opt("cosine");
      r.seconds = e.value("seconds", 0.0);
      r.victim_tokens = e.value("victim_tokens", int64_t(0));
      r.details = e.value("details", nlohmann::json::object());
      rs.push_back(std::move(r));
    }
    return rs;
  }};
}

std::optional<double> goal_for(const std::string& attack) {
  if (attack == "VMA" || attack == "Gate-IA" || attack == "Attn-IA" || attack == "IA") return 0.05;
  if (attack == "NN" || attack == "ISA" || attack == "IMA") return 0.01;
  if (attack == "Oracle") return 0.05;  // issue 14: every attack <= 5% of victim tokens
  if (attack == "TFMA") return 0.165;
  return std::nullopt;
}

namespace {

// The figure a goal applies to: TTRSR, or top-100 for TFMA.
std::optional<double> goal_figure(const AttackResult& r) {
  if (r.attack == "TFMA") {
    // The report's "top-100 recovery": share of the 100 most frequent observed ids recovered
    // (audit/stream_attacks.h writes it as details.top100_vocab); else truth within the top 100 guesses.
    if (r.details.is_object() && r.details.contains("top100_vocab") && r.details["top100_vocab"].is_number())
      return r.details["top100_vocab"].get<double>();
    for (const auto& [k, v] : r.topk)
      if (k == 100) return v;
    return std::nullopt;
  }
  if (r.ttrsr < 0) return std::nullopt;
  return r.ttrsr;
}

std::string fmt_pct(double v) {
  if (v < 0) return "-";
  char b[32];
  std::snprintf(b, sizeof b, v >= 0.1 ? "%.1f%%" : "%.2f%%", 100 * v);
  return b;
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  return o;
}

double topk_of(const AttackResult& r, int k) {
  for (const auto& [kk, v] : r.topk)
    if (kk == k) return v;
  return -1;
}

// Horizontal bars (label, value in [0,1], optional goal tick).
std::string svg_bars(const std::string& title, const std::vector<std::tuple<std::string, double, std::optional<double>>>& rows) {
  const int W = 760, left = 250, right = 70, bh = 22, top = 34;
  const int H = top + int(rows.size()) * (bh + 6) + 30;
  double vmax = 0.05;
  for (const auto& [l, v, g] : rows) {
    vmax = std::max(vmax, v);
    if (g) vmax = std::max(vmax, *g);
  }
  vmax = std::min(1.0, vmax * 1.1);
  const double scale = double(W - left - right) / vmax;
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' font-size='12'>";
  s << "<text x='10' y='20' font-size='14' font-weight='bold'>" << html_escape(title) << "</text>";
  for (int t = 0; t <= 4; ++t) {
    const double v = vmax * t / 4;
    const double x = left + v * scale;
    s << "<line x1='" << x << "' y1='" << top - 4 << "' x2='" << x << "' y2='" << H - 24 << "' stroke='#ddd'/>";
    s << "<text x='" << x << "' y='" << H - 8 << "' text-anchor='middle' fill='#555'>" << fmt_pct(v) << "</text>";
  }
  int y = top;
  for (const auto& [label, v, goal] : rows) {
    const bool bad = goal && v > *goal;
    s << "<text x='" << left - 8 << "' y='" << y + 15 << "' text-anchor='end'>" << html_escape(label) << "</text>";
    s << "<rect x='" << left << "' y='" << y << "' width='" << std::max(1.0, v * scale) << "' height='" << bh
      << "' fill='" << (goal ? (bad ? "#d9534f" : "#5cb85c") : "#5b8ddb") << "'/>";
    s << "<text x='" << left + std::max(1.0, v * scale) + 4 << "' y='" << y + 15 << "'>" << fmt_pct(v) << "</text>";
    if (goal) {
      const double gx = left + *goal * scale;
      s << "<line x1='" << gx << "' y1='" << y - 2 << "' x2='" << gx << "' y2='" << y + bh + 2
        << "' stroke='#000' stroke-width='2' stroke-dasharray='3,2'><title>goal " << fmt_pct(*goal) << "</title></line>";
    }
    y += bh + 6;
  }
  s << "</svg>";
  return s.str();
}

}  // namespace

std::string svg_line_chart(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                           const std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>>& series,
                           bool log_y) {
  const int W = 640, H = 380, L = 70, R = 160, T = 36, B = 50;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  auto ty = [&](double v) { return log_y ? std::log10(std::max(v, 1e-5)) : v; };
  for (const auto& [n, pts] : series)
    for (const auto& [x, y] : pts) {
      x0 = std::min(x0, x), x1 = std::max(x1, x);
      y0 = std::min(y0, ty(y)), y1 = std::max(y1, ty(y));
    }
  if (x0 > x1) x0 = 0, x1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (!log_y) y0 = std::min(0.0, y0);
  if (y1 <= y0) y1 = y0 + 1;
  auto X = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto Y = [&](double y) { return H - B - (ty(y) - y0) / (y1 - y0) * (H - T - B); };
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' font-size='12'>";
  s << "<text x='10' y='20' font-size='14' font-weight='bold'>" << html_escape(title) << "</text>";
  s << "<line x1='" << L << "' y1='" << H - B << "' x2='" << W - R << "' y2='" << H - B << "' stroke='#000'/>";
  s << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << H - B << "' stroke='#000'/>";
  for (int t = 0; t <= 5; ++t) {
    const double xv = x0 + (x1 - x0) * t / 5, yv = y0 + (y1 - y0) * t / 5;
    char b[32];
    std::snprintf(b, sizeof b, "%.3g", xv);
    s << "<text x='" << X(xv) << "' y='" << H - B + 16 << "' text-anchor='middle'>" << b << "</text>";
    const double yl = log_y ? std::pow(10.0, yv) : yv;
    s << "<text x='" << L - 6 << "' y='" << H - B - (yv - y0) / (y1 - y0) * (H - T - B) + 4
      << "' text-anchor='end'>" << fmt_pct(yl) << "</text>";
    s << "<line x1='" << L << "' y1='" << H - B - (yv - y0) / (y1 - y0) * (H - T - B) << "' x2='" << W - R
      << "' y2='" << H - B - (yv - y0) / (y1 - y0) * (H - T - B) << "' stroke='#eee'/>";
  }
  s << "<text x='" << (L + W - R) / 2 << "' y='" << H - 10 << "' text-anchor='middle'>" << html_escape(xlabel) << "</text>";
  s << "<text x='14' y='" << (T + H - B) / 2 << "' text-anchor='middle' transform='rotate(-90 14 " << (T + H - B) / 2
    << ")'>" << html_escape(ylabel) << "</text>";
  int i = 0;
  for (const auto& [name, pts] : series) {
    const char* c = colors[i % 8];
    std::ostringstream path;
    for (size_t k = 0; k < pts.size(); ++k) path << (k ? " L" : "M") << X(pts[k].first) << "," << Y(pts[k].second);
    s << "<path d='" << path.str() << "' fill='none' stroke='" << c << "' stroke-width='2'/>";
    for (const auto& [x, y] : pts)
      s << "<circle cx='" << X(x) << "' cy='" << Y(y) << "' r='3' fill='" << c << "'><title>" << html_escape(name)
        << ": " << x << ", " << fmt_pct(y) << "</title></circle>";
    s << "<rect x='" << W - R + 10 << "' y='" << T + 18 * i << "' width='12' height='12' fill='" << c << "'/>";
    s << "<text x='" << W - R + 28 << "' y='" << T + 18 * i + 11 << "'>" << html_escape(name) << "</text>";
    ++i;
  }
  s << "</svg>";
  return s.str();
}

AuditRun run_audit(const std::vector<AttackEntry>& entries, const std::vector<std::string>& names,
                   const AuditContext& ctx) {
  AuditRun run;
  for (const auto& n : names) {
    bool known = false;
    for (const auto& e : entries) known |= e.name == n;
    if (!known) {
      std::string list;
      for (const auto& e : entries) list += (list.empty() ? "" : ", ") + e.name;
      throw Error("--attacks", "unknown attack '" + n + "' (available: " + list + ")", kExitUsage);
    }
  }
  for (const auto& e : entries) {
    if (!names.empty() && std::find(names.begin(), names.end(), e.name) == names.end()) continue;
    if (ctx.seconds_left() <= 0) {
      run.skipped.push_back({{"attack", e.name}, {"reason", "time budget spent"}});
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    try {
      auto rs = e.run(ctx);
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      for (auto& r : rs) {
        if (r.seconds == 0) r.seconds = sec;
        r.details["family"] = e.family;
        run.results.push_back(std::move(r));
      }
    } catch (const std::exception& ex) {
      run.skipped.push_back({{"attack", e.name}, {"reason", ex.what()}});
    }
  }
  return run;
}

nlohmann::json audit_json(const AuditRun& run) {
  nlohmann::json res = nlohmann::json::array();
  for (const auto& r : run.results) {
    nlohmann::json j = r.to_json();
    const auto g = goal_for(r.attack);
    const auto f = goal_figure(r);
    j["goal"] = g ? nlohmann::json(*g) : nlohmann::json(nullptr);
    j["goal_met"] = g && f ? nlohmann::json(*f <= *g) : nlohmann::json(nullptr);
    res.push_back(j);
  }
  return {{"meta", run.meta}, {"results", res}, {"skipped", run.skipped}};
}

std::string audit_table(const AuditRun& run) {
  std::ostringstream s;
  char line[256];
  std::snprintf(line, sizeof line, "%-10s %-44s %8s %8s %8s %8s %7s %7s %7s  %s\n", "attack", "setting", "TTRSR", "top5",
                "top10", "vocab", "BLEU4", "secs", "goal", "met");
  s << line;
  for (const auto& r : run.results) {
    const auto g = goal_for(r.attack);
    const auto f = goal_figure(r);
    std::string setting = r.setting.size() > 44 ? r.setting.substr(0, 41) + "..." : r.setting;
    char b4[16];
    std::snprintf(b4, sizeof b4, "%.3f", r.bleu4);
    std::snprintf(line, sizeof line, "%-10s %-44s %8s %8s %8s %8s %7s %7.1f %7s  %s\n", r.attack.c_str(),
                  setting.c_str(), fmt_pct(r.ttrsr).c_str(), fmt_pct(topk_of(r, 5)).c_str(),
                  fmt_pct(topk_of(r, 10)).c_str(), fmt_pct(r.vocab_recovery).c_str(), r.bleu4 < 0 ? "-" : b4,
                  r.seconds, g ? fmt_pct(*g).c_str() : "-", g && f ? (*f <= *g ? "yes" : "NO") : "-");
    s << line;
  }
  // Attacks that recover key maps rather than tokens say what they recovered.
  for (const auto& r : run.results)
    if (r.attack == "MLA-latent" && r.details.contains("heads_right"))
      s << "MLA-latent: head order right " << fmt_pct(r.details["heads_right"].get<double>())
        << ", latent maps recovered to " << r.details["max_R_rel_error"].get<double>() << " (relative, key-scored)\n";
  for (const auto& k : run.skipped)
    s << "skipped " << k["attack"].get<std::string>() << ": " << k["reason"].get<std::string>() << "\n";
  return s.str();
}

std::string audit_html(const AuditRun& run) {
  std::ostringstream h;
  h << "<!DOCTYPE html><html><head><meta charset='utf-8'><title>aloepri privacy audit</title><style>"
       "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
       "td:first-child,td:nth-child(2),th{text-align:left}.bad{color:#c00;font-weight:bold}.ok{color:#080}"
       "pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;font-size:12px}"
       ".sample{font-family:monospace;font-size:12px;background:#f6f6f6;padding:6px;margin:4px 0}"
       "</style></head><body>\n";
  h << "<h1>Privacy audit</h1>\n";
  if (run.meta.is_object()) {
    h << "<p>Plaintext model <code>" << html_escape(run.meta.value("plain", "")) << "</code>, obfuscated model <code>"
      << html_escape(run.meta.value("obf", "")) << "</code>, " << run.meta.value("traffic_tokens", 0)
      << " observed tokens, " << html_escape(run.meta.value("date", "")) << ".</p>\n";
    h << "<p>The attacker knows the plaintext model, the obfuscated model and the mechanism's public parameters, "
         "never the seed; the key only scores the attacks.</p>\n";
  }
  h << "<h2>Results</h2><table><tr><th>attack</th><th>setting</th><th>TTRSR</th><th>top-5</th><th>top-10</th>"
       "<th>vocabulary</th><th>BLEU-4</th><th>cosine</th><th>seconds</th><th>goal</th><th>met</th></tr>\n";
  std::vector<std::tuple<std::string, double, std::optional<double>>> bars;
  for (const auto& r : run.results) {
    const auto g = goal_for(r.attack);
    const auto f = goal_figure(r);
    char b4[32], cs[32], sec[32];
    std::snprintf(b4, sizeof b4, "%.3f", r.bleu4);
    std::snprintf(cs, sizeof cs, "%.3f", r.cosine);
    std::snprintf(sec, sizeof sec, "%.1f", r.seconds);
    h << "<tr><td>" << html_escape(r.attack) << "</td><td>" << html_escape(r.setting) << "</td><td>" << fmt_pct(r.ttrsr)
      << "</td><td>" << fmt_pct(topk_of(r, 5)) << "</td><td>" << fmt_pct(topk_of(r, 10)) << "</td><td>"
      << fmt_pct(r.vocab_recovery) << "</td><td>" << (r.bleu4 < 0 ? "-" : b4) << "</td><td>"
      << (r.cosine < 0 ? "-" : cs) << "</td><td>" << sec << "</td><td>" << (g ? fmt_pct(*g) : "-") << "</td><td>";
    if (g && f) h << (*f <= *g ? "<span class='ok'>yes</span>" : "<span class='bad'>NO</span>");
    else h << "-";
    h << "</td></tr>\n";
    if (f) bars.emplace_back(r.attack + (r.attack == "TFMA" ? " (top-100)" : ""), *f, g);
  }
  h << "</table>\n";
  for (const auto& k : run.skipped)
    h << "<p>Skipped <b>" << html_escape(k["attack"].get<std::string>()) << "</b>: "
      << html_escape(k["reason"].get<std::string>()) << "</p>\n";
  if (!bars.empty())
    h << "<h2>Recovery against the goals</h2>" << svg_bars("Share of victim tokens recovered (dashed: goal)", bars) << "\n";
  // Per-component charts (VMA weight pairs, NN components).
  for (const auto& r : run.results) {
    if (!r.details.contains("parts")) continue;
    std::vector<std::tuple<std::string, double, std::optional<double>>> pb;
    for (const auto& [name, v] : r.details["parts"].items()) pb.emplace_back(name, v.value("ttrsr", 0.0), std::nullopt);
    const bool rounds = r.attack == "Oracle";  // its parts are successive rounds, not components
    h << "<h2>" << html_escape(r.attack) << (rounds ? ": after each round</h2>" : ": each component alone</h2>")
      << svg_bars(r.attack + (rounds ? " TTRSR after each matching round (the last one is the attack's answer)"
                                     : " TTRSR per component (the attack votes over all)"),
                  pb)
      << "\n";
  }
  h << "<h2>What the attacker reads</h2>\n";
  for (const auto& r : run.results) {
    if (!r.details.contains("sample")) continue;
    const auto& s = r.details["sample"];
    h << "<p><b>" << html_escape(r.attack) << "</b></p>";
    if (s.contains("truth_text"))
      h << "<div class='sample'>truth: " << html_escape(s["truth_text"].get<std::string>()) << "</div>";
    h << "<div class='sample'>recovered: " << html_escape(s.value("recovered_text", std::string())) << "</div>\n";
  }
  h << "<h2>Run</h2><pre>" << html_escape(run.meta.dump(2)) << "</pre>\n</body></html>\n";
  return h.str();
}

}  // namespace aloepri::audit
