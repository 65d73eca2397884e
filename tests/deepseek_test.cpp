// DeepSeek-V2/V3 (issue 16): config, the layout table, synthetic checkpoints, the routing rule,
// the reference forward's multi-head latent attention (checked against a per-token
// re-implementation here in the absorbed form llama.cpp runs, with HF's de-interleaved RoPE),
// and the GGUF layout of llama.cpp's deepseek2 (kv_b split into attn_k_b / attn_v_b).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "aloepri/audit/mla_latent.h"
#include "aloepri/audit/weights.h"
#include "aloepri/core/error.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/engine/forward.h"
#include "aloepri/engine/synth.h"
#include "aloepri/export/gguf_export.h"
#include "aloepri/formats/gguf.h"
#include "aloepri/model/layout.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/obfuscate/ffn.h"
#include "aloepri/obfuscate/mla.h"
#include "support/logit_error.h"
#include "support/paths.h"

using namespace aloepri;
using nlohmann::json;

namespace {

json v3_json() {
  return {{"model_type", "deepseek_v3"}, {"hidden_size", 64},        {"num_hidden_layers", 3},
          {"num_attention_heads", 4},    {"num_key_value_heads", 4}, {"intermediate_size", 96},
          {"vocab_size", 1000},          {"q_lora_rank", 32},        {"kv_lora_rank", 24},
          {"qk_nope_head_dim", 16},      {"qk_rope_head_dim", 8},    {"v_head_dim", 12},
          {"n_routed_experts", 8},       {"num_experts_per_tok", 2}, {"moe_intermediate_size", 20},
          {"n_shared_experts", 1},       {"first_k_dense_replace", 1}, {"n_group", 4},
          {"topk_group", 2},             {"head_dim", 8}};
}

// The message ModelConfig::from_json throws for j ("" when it parses).
std::string config_error(const json& j) {
  try {
    ModelConfig::from_json(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

Seed key_seed() {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(0x21 + 13 * i);
  return s;
}

// rope: "" or "yarn" (DeepSeek's released settings at factor 40).
std::string synth(const std::string& name, Family f, std::optional<int64_t> q_lora = std::nullopt,
                  const std::string& rope = "") {
  const std::string dir = aloepri::testing::scratch_dir("deepseek_" + name) + "/model";
  SynthOptions o;
  o.family = f;
  o.q_lora = q_lora;
  o.rope_scaling = rope;
  o.rope_factor = 40;
  o.vocab_dir = aloepri::testing::vocab_dir("llama2");
  o.seed = 7;
  synthesize(o, dir);
  return dir;
}

// ---- an independent per-token forward (absorbed MLA, HF RoPE) ----
std::vector<double> mv(const Tensor& W, const std::vector<double>& x) {  // W [out, in] x [in]
  std::vector<double> y(size_t(W.rows()), 0.0);
  for (int64_t r = 0; r < W.rows(); ++r)
    for (int64_t k = 0; k < W.cols(); ++k) y[r] += double(W.data[size_t(r * W.cols() + k)]) * x[size_t(k)];
  return y;
}
std::vector<double> rms(const std::vector<double>& x, const Tensor& g, double eps) {
  double s = 0;
  for (double v : x) s += v * v;
  const double inv = 1.0 / std::sqrt(s / double(x.size()) + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * double(g.data[i]);
  return y;
}
double silu(double v) { return v / (1.0 + std::exp(-v)); }
std::vector<double> mlp(const ExpertWeights& W, const std::vector<double>& x) {
  auto g = mv(W.w_gate, x), u = mv(W.w_up, x);
  for (size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
  return mv(W.w_down, g);
}
// HF: view(..., d/2, 2).transpose -> [evens, odds], then rotate_half with cos/sin of freq i.
// DeepSeek's rotary embedding as its modeling code writes it (DeepseekV3YarnRotaryEmbedding:
// yarn_find_correction_range, yarn_linear_ramp_mask, yarn_get_mscale), and the attention's
// softmax_scale factor; the plain rotary embedding when there is no yarn.
struct NaiveRope {
  std::vector<double> inv_freq;
  double magnitude = 1.0, score = 1.0;
};
NaiveRope naive_rope(const ModelConfig& c) {
  const int64_t dim = c.qk_rope_head_dim;
  NaiveRope r;
  for (int64_t i = 0; i < dim; i += 2) r.inv_freq.push_back(1.0 / std::pow(c.rope_theta, double(i) / double(dim)));
  const RopeScaling& s = c.rope_scaling;
  if (s.type != "yarn") return r;
  auto corr_dim = [&](double rot) {
    return double(dim) * std::log(double(s.original_max_position_embeddings) / (rot * 2 * M_PI)) /
           (2 * std::log(c.rope_theta));
  };
  const double low = std::max(std::floor(corr_dim(s.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr_dim(s.beta_slow)), double(dim - 1));
  if (low == high) high += 0.001;
  for (size_t i = 0; i < r.inv_freq.size(); ++i) {
    const double mask = 1.0 - std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    const double extra = r.inv_freq[i], inter = 1.0 / (s.factor / extra);
    r.inv_freq[i] = inter * (1.0 - mask) + extra * mask;
  }
  auto get_mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  r.magnitude = get_mscale(s.factor, s.mscale) / get_mscale(s.factor, s.mscale_all_dim);
  if (s.mscale_all_dim != 0) r.score = std::pow(get_mscale(s.factor, s.mscale_all_dim), 2);
  return r;
}

std::vector<double> hf_rope(const std::vector<double>& x, int64_t pos, const NaiveRope& R) {
  const int64_t r = int64_t(x.size()), half = r / 2;
  std::vector<double> y(x.size()), out(x.size());
  for (int64_t i = 0; i < half; ++i) {
    y[i] = x[2 * i];
    y[i + half] = x[2 * i + 1];
  }
  for (int64_t i = 0; i < half; ++i) {
    const double a = double(pos) * R.inv_freq[size_t(i)];
    const double cs = R.magnitude * std::cos(a), sn = R.magnitude * std::sin(a);
    out[i] = y[i] * cs - y[i + half] * sn;
    out[i + half] = y[i + half] * cs + y[i] * sn;
  }
  return out;
}
// Routing written from transformers' DeepseekV3TopkRouter / DeepseekV2MoEGate, per group.
std::vector<std::pair<int64_t, double>> route(const ModelConfig& c, const std::vector<double>& logits,
                                              const Tensor& bias) {
  const int64_t E = c.num_experts, G = c.n_group, per = E / G;
  std::vector<double> s(static_cast<size_t>(E));
  double z = 0, mx = *std::max_element(logits.begin(), logits.end());
  for (int64_t e = 0; e < E; ++e) s[e] = c.scoring_func == "sigmoid" ? 1 / (1 + std::exp(-logits[e])) : std::exp(logits[e] - mx);
  if (c.scoring_func == "softmax") {
    for (double v : s) z += v;
    for (double& v : s) v /= z;
  }
  std::vector<double> pick = s;
  if (!bias.data.empty())
    for (int64_t e = 0; e < E; ++e) pick[e] += bias.data[size_t(e)];
  if (c.topk_method != "greedy") {
    std::vector<std::pair<double, int64_t>> gs;
    for (int64_t g = 0; g < G; ++g) {
      std::vector<double> v(pick.begin() + g * per, pick.begin() + (g + 1) * per);
      std::sort(v.rbegin(), v.rend());
      gs.push_back({c.topk_method == "noaux_tc" ? v[0] + v[1] : v[0], -g});
    }
    std::sort(gs.rbegin(), gs.rend());
    std::vector<bool> keep(static_cast<size_t>(G), false);
    for (int64_t i = 0; i < c.topk_group; ++i) keep[size_t(-gs[i].second)] = true;
    for (int64_t e = 0; e < E; ++e)
      if (!keep[size_t(e / per)]) pick[e] = -1e300;
  }
  std::vector<std::pair<double, int64_t>> order;
  for (int64_t e = 0; e < E; ++e) order.push_back({pick[e], -e});
  std::sort(order.rbegin(), order.rend());
  std::vector<std::pair<int64_t, double>> out;
  double sum = 0;
  for (int64_t i = 0; i < c.num_experts_per_tok; ++i) {
    const int64_t e = -order[i].second;
    out.push_back({e, s[e]});
    sum += s[e];
  }
  for (auto& [e, w] : out) w = (c.norm_topk_prob ? w / sum : w) * c.routed_scaling_factor;
  return out;
}

std::vector<std::vector<double>> naive_logits(const ModelWeights& w, const std::vector<int64_t>& ids) {
  const ModelConfig& c = w.config;
  const int64_t d = c.hidden_size, H = c.num_attention_heads, dh = c.head_dim, nope = c.qk_nope_head_dim;
  const int64_t dv = c.v_head_dim, kvl = c.kv_lora_rank;
  const double eps = c.rms_norm_eps;
  const NaiveRope R = naive_rope(c);
  std::vector<std::vector<std::vector<double>>> lat(size_t(c.num_hidden_layers)), kpe(lat.size());
  std::vector<std::vector<double>> out;
  for (size_t t = 0; t < ids.size(); ++t) {
    std::vector<double> x(static_cast<size_t>(d));
    for (int64_t i = 0; i < d; ++i) x[i] = w.embed.data[size_t(ids[t] * d + i)];
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const LayerWeights& L = w.layers[size_t(l)];
      const auto xn = rms(x, L.attn_norm, eps);
      const auto q = c.q_lora_rank > 0 ? mv(L.wq_b, rms(mv(L.wq_a, xn), L.q_a_norm, eps)) : mv(L.wq, xn);
      const auto kva = mv(L.wkv_a, xn);
      lat[l].push_back(rms(std::vector<double>(kva.begin(), kva.begin() + kvl), L.kv_a_norm, eps));
      kpe[l].push_back(hf_rope(std::vector<double>(kva.begin() + kvl, kva.end()), int64_t(t), R));
      std::vector<double> heads;
      for (int64_t h = 0; h < H; ++h) {
        const auto qpe = hf_rope(std::vector<double>(q.begin() + h * dh + nope, q.begin() + (h + 1) * dh), int64_t(t), R);
        std::vector<double> qabs(static_cast<size_t>(kvl), 0.0);  // q_nope^T W_kb_h
        for (int64_t i = 0; i < nope; ++i)
          for (int64_t j = 0; j < kvl; ++j)
            qabs[j] += q[h * dh + i] * double(L.wkv_b.data[size_t((h * (nope + dv) + i) * kvl + j)]);
        std::vector<double> sc;
        for (size_t p = 0; p <= t; ++p) {
          double s = std::inner_product(qabs.begin(), qabs.end(), lat[l][p].begin(), 0.0) +
                     std::inner_product(qpe.begin(), qpe.end(), kpe[l][p].begin(), 0.0);
          sc.push_back(s * R.score / std::sqrt(double(dh)));
        }
        const double m = *std::max_element(sc.begin(), sc.end());
        double z = 0;
        for (double& s : sc) z += (s = std::exp(s - m));
        std::vector<double> olat(static_cast<size_t>(kvl), 0.0);
        for (size_t p = 0; p <= t; ++p)
          for (int64_t j = 0; j < kvl; ++j) olat[j] += sc[p] / z * lat[l][p][j];
        for (int64_t i = 0; i < dv; ++i) {
          double v = 0;
          for (int64_t j = 0; j < kvl; ++j) v += double(L.wkv_b.data[size_t((h * (nope + dv) + nope + i) * kvl + j)]) * olat[j];
          heads.push_back(v);
        }
      }
      const auto o = mv(L.wo, heads);
      for (int64_t i = 0; i < d; ++i) x[i] += o[i];
      const auto fn = rms(x, L.ffn_norm, eps);
      std::vector<double> f(static_cast<size_t>(d), 0.0);
      if (c.is_moe_layer(l)) {
        for (auto [e, wt] : route(c, mv(L.router, fn), L.router_bias)) {
          const auto y = mlp(L.experts[size_t(e)], fn);
          for (int64_t i = 0; i < d; ++i) f[i] += wt * y[i];
        }
        if (c.n_shared_experts > 0) {
          const auto y = mlp(L.shared, fn);
          for (int64_t i = 0; i < d; ++i) f[i] += y[i];
        }
      } else {
        f = mlp({L.w_gate, L.w_up, L.w_down}, fn);
      }
      for (int64_t i = 0; i < d; ++i) x[i] += f[i];
    }
    out.push_back(mv(w.head, rms(x, w.final_norm, eps)));
  }
  return out;
}

double max_rel(const std::vector<double>& flat, const std::vector<std::vector<double>>& rows) {
  double diff = 0, mx = 0;
  const size_t n = rows[0].size();
  for (size_t t = 0; t < rows.size(); ++t)
    for (size_t i = 0; i < n; ++i) {
      diff = std::max(diff, std::fabs(flat[t * n + i] - rows[t][i]));
      mx = std::max(mx, std::fabs(rows[t][i]));
    }
  return diff / mx;
}

}  // namespace

TEST(DeepseekConfig, ParsesV3WithDefaultsAndWritesItBack) {
  const ModelConfig c = ModelConfig::from_json(v3_json());
  EXPECT_EQ(c.family, Family::DeepseekV3);
  EXPECT_TRUE(c.mla());
  EXPECT_EQ(c.head_dim, 24);  // nope + rope, not transformers' head_dim field (= rope)
  EXPECT_EQ(c.rope_dim(), 8);
  EXPECT_EQ(c.v_dim(), 4 * 12);
  EXPECT_EQ(c.scoring_func, "sigmoid");  // V3 defaults
  EXPECT_EQ(c.topk_method, "noaux_tc");
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_TRUE(c.router_bias());
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  EXPECT_TRUE(c.is_moe_layer(2));
  const ModelConfig back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.to_json(), c.to_json());
  EXPECT_EQ(back.kv_lora_rank, 24);
  EXPECT_EQ(back.head_dim, 24);

  json v2 = v3_json();
  v2["model_type"] = "deepseek_v2";
  v2["q_lora_rank"] = nullptr;  // V2-Lite
  v2.erase("n_group");
  v2.erase("topk_group");
  const ModelConfig c2 = ModelConfig::from_json(v2);
  EXPECT_EQ(c2.q_lora_rank, 0);
  EXPECT_EQ(c2.scoring_func, "softmax");
  EXPECT_EQ(c2.topk_method, "greedy");
  EXPECT_FALSE(c2.norm_topk_prob);
  EXPECT_FALSE(c2.router_bias());
}

TEST(DeepseekConfig, RefusesWhatItCannotCompute) {
  json j = v3_json();
  j.erase("kv_lora_rank");
  EXPECT_NE(config_error(j).find("kv_lora_rank"), std::string::npos);
  j = v3_json();
  j["n_group"] = 3;
  EXPECT_NE(config_error(j).find("not a multiple of n_group"), std::string::npos);
  j = v3_json();
  j["scoring_func"] = "softplus";
  EXPECT_NE(config_error(j).find("scoring_func"), std::string::npos);
  j = v3_json();
  j["attention_bias"] = true;
  EXPECT_NE(config_error(j).find("attention_bias"), std::string::npos);
  j = v3_json();
  j["num_key_value_heads"] = 2;
  EXPECT_NE(config_error(j).find("num_key_value_heads"), std::string::npos);
  j = v3_json();
  j["qk_rope_head_dim"] = 7;
  EXPECT_NE(config_error(j).find("odd"), std::string::npos);
  j = v3_json();
  j["num_experts_per_tok"] = 5;  // 2 groups of 2 kept
  EXPECT_NE(config_error(j).find("topk_group"), std::string::npos);
}

// YaRN as DeepSeek-V3's config.json writes it: the correction range for rope dim 8 over an original
// context of 4096 at theta 1e4 is dims [floor 1.31, ceil 2.81] = [1, 3], so pair 0 and 1 keep their
// frequency, pair 2 is half interpolated and pair 3 divided by the factor (worked out by hand).
TEST(DeepseekYarn, FrequenciesAndScalesOfTheReleasedConfigs) {
  json j = v3_json();
  j["rope_theta"] = 10000.0;
  j["rope_scaling"] = {{"type", "yarn"},          {"factor", 40},     {"original_max_position_embeddings", 4096},
                       {"beta_fast", 32},         {"beta_slow", 1},   {"mscale", 1.0},
                       {"mscale_all_dim", 1.0}};
  ModelConfig c = ModelConfig::from_json(j, "cfg.json");
  ASSERT_EQ(c.rope_scaling.type, "yarn");
  const std::vector<double> want = {1.0, 0.1, 0.01 * (0.5 + 0.5 / 40), 0.001 / 40};
  const auto got = rope_inv_freq(c);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-15 * want[i]) << "pair " << i;
  EXPECT_DOUBLE_EQ(rope_magnitude(c), 1.0);
  EXPECT_DOUBLE_EQ(attention_score_factor(c), std::pow(1 + 0.1 * std::log(40.0), 2));
  // The config written back reads the same.
  const ModelConfig back = ModelConfig::from_json(c.to_json(), "back.json");
  EXPECT_EQ(back.rope_scaling.type, "yarn");
  EXPECT_EQ(back.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(rope_inv_freq(back), got);
  EXPECT_DOUBLE_EQ(attention_score_factor(back), attention_score_factor(c));
  // V2 / V2-Lite: mscale = mscale_all_dim = 0.707.
  j["rope_scaling"]["mscale"] = 0.707;
  j["rope_scaling"]["mscale_all_dim"] = 0.707;
  c = ModelConfig::from_json(j, "cfg.json");
  EXPECT_DOUBLE_EQ(rope_magnitude(c), 1.0);
  EXPECT_NEAR(attention_score_factor(c), 1.5896262, 1e-6);  // (1 + 0.0707 ln 40)^2
  // Neither given (DeepSeek's defaults mscale 1, mscale_all_dim 0): cos/sin carry 1 + 0.1 ln 40
  // and the scores are not rescaled.
  j["rope_scaling"].erase("mscale");
  j["rope_scaling"].erase("mscale_all_dim");
  c = ModelConfig::from_json(j, "cfg.json");
  EXPECT_DOUBLE_EQ(rope_magnitude(c), 1 + 0.1 * std::log(40.0));
  EXPECT_DOUBLE_EQ(attention_score_factor(c), 1.0);
}

TEST(DeepseekYarn, RefusesWhatIsAmbiguousOrNotDeepseek) {
  const json yarn = {{"type", "yarn"}, {"factor", 40}, {"original_max_position_embeddings", 4096},
                     {"mscale", 0.707}, {"mscale_all_dim", 0.707}};
  json j = v3_json();
  j["rope_scaling"] = yarn;
  EXPECT_EQ(config_error(j), "");
  j["rope_scaling"].erase("mscale");
  EXPECT_NE(config_error(j).find("'mscale_all_dim' without 'mscale'"), std::string::npos) << config_error(j);
  j["rope_scaling"] = yarn;
  j["rope_scaling"].erase("original_max_position_embeddings");
  EXPECT_NE(config_error(j).find("original_max_position_embeddings"), std::string::npos) << config_error(j);
  j["rope_scaling"] = yarn;
  j["rope_scaling"]["attention_factor"] = 1.0;
  EXPECT_NE(config_error(j).find("attention_factor"), std::string::npos) << config_error(j);
  j["rope_scaling"] = yarn;
  j["rope_scaling"]["beta_slow"] = 0;
  EXPECT_NE(config_error(j).find("beta_slow"), std::string::npos) << config_error(j);
  j["rope_scaling"] = yarn;
  j["rope_theta"] = 1.0;
  EXPECT_NE(config_error(j).find("rope_theta > 1"), std::string::npos) << config_error(j);
  j.erase("rope_theta");
  json llama = {{"model_type", "llama"}, {"hidden_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                {"num_key_value_heads", 4}, {"intermediate_size", 96}, {"vocab_size", 1000}, {"rope_scaling", yarn}};
  EXPECT_NE(config_error(llama).find("only supported for deepseek"), std::string::npos) << config_error(llama);
}

// The GGUF carries what llama.cpp's converter writes (type, factor, original context, 0.1 x
// mscale_all_dim); a config llama.cpp's graph would compute differently is refused by name.
TEST(DeepseekYarn, GgufKeysAndRefusals) {
  const std::string dir = synth("yarn_gguf", Family::DeepseekV2, std::nullopt, "yarn");
  const std::string out = aloepri::testing::scratch_dir("deepseek_yarn_gguf_out") + "/m.gguf";
  GGUFExportOptions opt;
  opt.overwrite = true;
  opt.progress = false;
  export_gguf(HFModel(dir), out, DType::F32, opt);
  {
    gguf::GGUFReader g(out);
    EXPECT_EQ(g.get("deepseek2.rope.scaling.type").as_string(), "yarn");
    EXPECT_FLOAT_EQ(float(g.get("deepseek2.rope.scaling.factor").as_f64()), 40.0f);
    EXPECT_EQ(g.get("deepseek2.rope.scaling.original_context_length").as_u64(), 4096u);
    EXPECT_FLOAT_EQ(float(g.get("deepseek2.rope.scaling.yarn_log_multiplier").as_f64()), 0.0707f);
  }
  json cfg = json::parse(std::ifstream(dir + "/config.json"));
  cfg["rope_scaling"]["mscale"] = 1.0;  // != mscale_all_dim 0.707
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  try {
    export_gguf(HFModel(dir), out, DType::F32, opt);
    ADD_FAILURE() << "mscale != mscale_all_dim was exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope_scaling.mscale"), std::string::npos) << e.what();
  }
}

TEST(DeepseekLayout, TensorsOfEachLayerKind) {
  const ModelConfig c = ModelConfig::from_json(v3_json());
  const auto d = layout::Dims::of(c);
  auto names = [&](int64_t l) {
    std::vector<std::string> v;
    for (const auto& t : layout::layer_tensors(c, d, l)) v.push_back(t.name);
    return v;
  };
  const auto l0 = names(0), l1 = names(1);
  auto has = [](const std::vector<std::string>& v, const std::string& s) { return std::count(v.begin(), v.end(), s) == 1; };
  EXPECT_TRUE(has(l0, "model.layers.0.self_attn.q_a_proj.weight"));
  EXPECT_TRUE(has(l0, "model.layers.0.mlp.gate_proj.weight"));
  EXPECT_FALSE(has(l0, "model.layers.0.mlp.gate.weight"));
  EXPECT_TRUE(has(l1, "model.layers.1.mlp.gate.e_score_correction_bias"));
  EXPECT_TRUE(has(l1, "model.layers.1.mlp.shared_experts.down_proj.weight"));
  EXPECT_TRUE(has(l1, "model.layers.1.mlp.experts.7.up_proj.weight"));
  EXPECT_FALSE(has(l1, "model.layers.1.mlp.gate_proj.weight"));
  for (const auto& t : layout::layer_tensors(c, d, 1)) {
    if (t.def->role == layout::Role::KvA) {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{24 + 8, 64}));
    }
    if (t.def->role == layout::Role::KvB) {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{4 * (16 + 12), 24}));
    }
    if (t.def->role == layout::Role::QueryB) {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{4 * 24, 32}));
    }
    if (t.def->role == layout::Role::Output) {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{64, 4 * 12}));
    }
    if (t.def->role == layout::Role::SharedGate) {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{20, 64}));
    }
  }
  json lite = v3_json();
  lite["q_lora_rank"] = nullptr;
  const ModelConfig cl = ModelConfig::from_json(lite);
  bool q = false, qa = false;
  for (const auto& t : layout::layer_tensors(cl, layout::Dims::of(cl), 0)) {
    q |= t.def->role == layout::Role::Query;
    qa |= t.def->role == layout::Role::QueryA;
  }
  EXPECT_TRUE(q);
  EXPECT_FALSE(qa);
}

TEST(DeepseekRouting, GroupsBiasAndScaleAsTransformers) {
  ModelConfig c = ModelConfig::from_json(v3_json());
  // 8 experts in 4 groups of 2, keep 2 groups, top 2, sigmoid, scale 2.5, renormalised.
  const std::vector<double> logits = {3.0, -3.0, 0.5, 0.4, 2.9, 2.8, -1.0, -2.0};
  std::vector<double> bias(8, 0.0);
  // Group scores (sum of two best sigmoid scores): g0 0.953+0.047=1.0, g1 0.62+0.60=1.22,
  // g2 0.948+0.943=1.89, g3 0.27+0.12=0.39 -> keep g2, g1; expert 0 (the best alone) is out.
  auto r = route_token_deepseek(c, logits.data(), bias.data());
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].first, 4);
  EXPECT_EQ(r[1].first, 5);
  const double s4 = 1 / (1 + std::exp(-2.9)), s5 = 1 / (1 + std::exp(-2.8));
  EXPECT_NEAR(r[0].second, 2.5 * s4 / (s4 + s5), 1e-12);
  // A bias that lifts expert 1 makes group 0 win and picks expert 0 and 1 over 5; the weights stay
  // the unbiased scores.
  bias[1] = 5.0;
  r = route_token_deepseek(c, logits.data(), bias.data());
  EXPECT_EQ(r[0].first, 1);
  EXPECT_EQ(r[1].first, 0);
  const double s0 = 1 / (1 + std::exp(-3.0)), s1 = 1 / (1 + std::exp(3.0));
  EXPECT_NEAR(r[0].second, 2.5 * s1 / (s0 + s1), 1e-12);
  // V2 greedy softmax, not renormalised, scale 1: the plain top-2 softmax probabilities.
  c.scoring_func = "softmax";
  c.topk_method = "greedy";
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.0;
  r = route_token_deepseek(c, logits.data(), nullptr);
  double z = 0;
  for (double v : logits) z += std::exp(v);
  EXPECT_EQ(r[0].first, 0);
  EXPECT_EQ(r[1].first, 4);
  EXPECT_NEAR(r[1].second, std::exp(2.9) / z, 1e-12);
  // group_limited_greedy scores a group by its best expert: g0 (3.0) and g2 (2.9) are kept.
  c.topk_method = "group_limited_greedy";
  r = route_token_deepseek(c, logits.data(), nullptr);
  EXPECT_EQ(r[0].first, 0);
  EXPECT_EQ(r[1].first, 4);
}

// The engine's MLA (decompressed keys, adjacent-pair RoPE, whole-sequence dgemm) against the
// per-token absorbed form with HF's de-interleaved RoPE: two different computations of one function.
TEST(DeepseekForward, MatchesAbsorbedPerTokenForm) {
  struct Case {
    const char* name;
    Family f;
    std::optional<int64_t> q_lora;
    const char* rope;
  };
  for (const Case& k : {Case{"v3", Family::DeepseekV3, std::nullopt, ""}, Case{"v2", Family::DeepseekV2, std::nullopt, ""},
                        Case{"v2lite", Family::DeepseekV2, int64_t(0), ""},
                        Case{"v3_yarn", Family::DeepseekV3, std::nullopt, "yarn"},
                        Case{"v2lite_yarn", Family::DeepseekV2, int64_t(0), "yarn"}}) {
    const std::string dir = synth(std::string("fwd_") + k.name, k.f, k.q_lora, k.rope);
    HFModel m(dir);
    ModelWeights w = ModelWeights::load(m);
    const std::vector<int64_t> ids = {1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 31999};
    const auto want = naive_logits(w, ids);
    ReferenceModel ref(std::move(w));
    const auto got = ref.forward(ids);
    const double rel = max_rel(got, want);
    std::printf("deepseek %s: engine vs absorbed per-token form max rel %.3e\n", k.name, rel);
    EXPECT_LT(rel, 1e-10) << k.name;
    // Chunked prefill plus steps (the KV cache) computes the same logits.
    ref.reset();
    std::vector<int64_t> head(ids.begin(), ids.begin() + 6);
    ref.forward(head);
    std::vector<double> last;
    for (size_t t = 6; t < ids.size(); ++t) last = ref.step(ids[t]);
    const size_t n = want[0].size();
    double diff = 0;
    for (size_t i = 0; i < n; ++i) diff = std::max(diff, std::fabs(last[i] - got[(ids.size() - 1) * n + i]));
    EXPECT_LT(diff, 1e-9) << k.name;
  }
}

// branch_hidden (the oracle attack's batch): each id as the only token after the cached prefix,
// the cache untouched; the same hidden state as step() on a copy of that prefix.
TEST(DeepseekForward, BranchHiddenIsStepAfterThePrefix) {
  const std::string dir = synth("branch", Family::DeepseekV3);
  ReferenceModel ref = ReferenceModel::load(dir);
  const std::vector<int64_t> prefix = {1, 450, 4996}, alts = {17354, 278, 13};
  ref.forward(prefix);
  const auto hb = ref.branch_hidden(alts);
  EXPECT_EQ(ref.position(), 3);
  const int64_t d = ref.config().hidden_size, n = ref.vocab_size();
  const Tensor& head = ref.weights().head;
  for (size_t b = 0; b < alts.size(); ++b) {
    ReferenceModel one = ReferenceModel::load(dir);
    one.forward(prefix);
    const auto want = one.step(alts[b]);
    double diff = 0, mx = 0;
    for (int64_t y = 0; y < n; ++y) {
      double lg = 0;
      for (int64_t k = 0; k < d; ++k) lg += hb[b * size_t(d) + size_t(k)] * double(head.data[size_t(y * d + k)]);
      diff = std::max(diff, std::fabs(lg - want[size_t(y)]));
      mx = std::max(mx, std::fabs(want[size_t(y)]));
    }
    EXPECT_LT(diff / mx, 1e-9) << "alternative " << b;
  }
}

TEST(DeepseekForward, RefusesWhatIsNotBuiltYet) {
  const std::string dir = synth("refuse", Family::DeepseekV2);
  ReferenceModel ref = ReferenceModel::load(dir);
  EXPECT_THROW(LayerForward(ref.config()), Error);  // the calibrator's one-layer forward
}

// kv_b_proj [H*(nope+v), kvl] -> attn_k_b ne {nope, kvl, H} (k_b[h][j][i] = kv_b[h*(nope+v)+i][j]) and
// attn_v_b ne {kvl, v, H} (v_b[h][i][j] = kv_b[h*(nope+v)+nope+i][j]), plus the deepseek2 keys.
TEST(DeepseekGguf, SplitsKvBAndWritesTheMlaKeys) {
  const std::string dir = synth("gguf", Family::DeepseekV3);
  HFModel m(dir);
  const ModelConfig& c = m.config();
  const std::string out = aloepri::testing::scratch_dir("deepseek_gguf_out") + "/m.gguf";
  GGUFExportOptions opt;
  opt.overwrite = true;
  opt.progress = false;
  const auto res = export_gguf(m, out, DType::F32, opt);
  EXPECT_EQ(res.arch, "deepseek2");
  gguf::GGUFReader g(out);
  auto u = [&](const std::string& k) { return int64_t(g.get("deepseek2." + k).as_u64()); };
  EXPECT_EQ(u("attention.head_count_kv"), 1);
  EXPECT_EQ(u("attention.key_length"), c.kv_lora_rank + c.qk_rope_head_dim);
  EXPECT_EQ(u("attention.value_length"), c.kv_lora_rank);
  EXPECT_EQ(u("attention.key_length_mla"), c.head_dim);
  EXPECT_EQ(u("attention.value_length_mla"), c.v_head_dim);
  EXPECT_EQ(u("attention.q_lora_rank"), c.q_lora_rank);
  EXPECT_EQ(u("leading_dense_block_count"), 1);
  EXPECT_EQ(u("expert_shared_count"), 1);
  EXPECT_EQ(u("expert_gating_func"), 2);
  EXPECT_EQ(u("expert_group_count"), 4);
  EXPECT_EQ(u("expert_group_used_count"), 2);
  EXPECT_EQ(u("rope.dimension_count"), c.qk_rope_head_dim);
  EXPECT_FALSE(g.has_tensor("blk.1.attn_kv_b.weight"));
  EXPECT_TRUE(g.has_tensor("blk.1.exp_probs_b.bias"));
  EXPECT_TRUE(g.has_tensor("blk.1.ffn_gate_shexp.weight"));
  EXPECT_TRUE(g.has_tensor("blk.0.ffn_gate.weight"));
  const int64_t H = c.num_attention_heads, nope = c.qk_nope_head_dim, dv = c.v_head_dim, kvl = c.kv_lora_rank;
  EXPECT_EQ(g.tensor("blk.1.attn_k_b.weight").ne, (std::vector<int64_t>{nope, kvl, H}));
  EXPECT_EQ(g.tensor("blk.1.attn_v_b.weight").ne, (std::vector<int64_t>{kvl, dv, H}));
  const auto kb = g.read_f32("blk.1.attn_k_b.weight"), vb = g.read_f32("blk.1.attn_v_b.weight");
  const Tensor kv = m.tensor_f32("model.layers.1.self_attn.kv_b_proj.weight");
  for (int64_t h = 0; h < H; ++h)
    for (int64_t j = 0; j < kvl; ++j) {
      for (int64_t i = 0; i < nope; ++i)
        ASSERT_EQ(kb[size_t((h * kvl + j) * nope + i)], kv.data[size_t((h * (nope + dv) + i) * kvl + j)]);
      for (int64_t i = 0; i < dv; ++i)
        ASSERT_EQ(vb[size_t((h * dv + i) * kvl + j)], kv.data[size_t((h * (nope + dv) + nope + i) * kvl + j)]);
    }
}

// Exact obfuscation on the reference forward: logits at tau(y) equal the plaintext logits of y,
// greedy decodes to the same tokens; for V3 (q latent, grouped routing with a bias, shared
// experts), V2 (softmax, no groups) and the V2-Lite shape (q_proj), with the paper key matrices
// at h = 0 and exact-norm ones at h = 16.
TEST(DeepseekObfuscate, ExactOnTheReferenceForward) {
  struct Case {
    const char* name;
    Family f;
    std::optional<int64_t> q_lora;
    int64_t h;
    const char* rope = "";
  };
  const Seed seed = key_seed();
  for (const Case& k : {Case{"v3", Family::DeepseekV3, std::nullopt, 0}, Case{"v3_h16", Family::DeepseekV3, std::nullopt, 16},
                        Case{"v2lite_h16", Family::DeepseekV2, int64_t(0), 16},
                        Case{"v3_yarn", Family::DeepseekV3, std::nullopt, 0, "yarn"}}) {
    const std::string plain_dir = synth(std::string("obf_plain_") + k.name, k.f, k.q_lora, k.rope);
    const std::string out = aloepri::testing::scratch_dir(std::string("deepseek_obf_") + k.name) + "/obf";
    ObfuscateOptions opt;
    opt.params = ObfuscationParams::exact();
    if (k.h > 0) {
      opt.params.keymat = obf::KeymatVariant::ExactNorm;
      opt.params.expansion = k.h;
    }
    obfuscate_model(plain_dir, seed, out, opt);
    ReferenceModel plain = ReferenceModel::load(plain_dir);
    ReferenceModel obf = ReferenceModel::load(out);
    EXPECT_EQ(obf.config().hidden_size, plain.config().hidden_size + 2 * k.h);
    EXPECT_EQ(obf.config().kv_lora_rank, plain.config().kv_lora_rank);
    const auto tau = derive_tau(seed, plain.vocab_size());
    RngStream r(seed, "ids");
    std::vector<int64_t> ids;
    for (int i = 0; i < 12; ++i) ids.push_back(int64_t(r.below(uint64_t(plain.vocab_size()))));
    const double err = test::logit_error(plain, obf, ids, tau);
    std::printf("deepseek %s exact: max |logit_obf(tau y) - logit(y)| / max|logit| = %.2e\n", k.name, err);
    EXPECT_LT(err, 1e-5) << k.name;
    // The control: the same logits read without the vocabulary key are far off, so the bound
    // above is not met by accident.
    std::vector<int64_t> ident(tau.size());
    std::iota(ident.begin(), ident.end(), 0);
    std::vector<int64_t> oids;
    for (auto t : ids) oids.push_back(tau[size_t(t)]);
    EXPECT_GT(test::logit_error(plain, obf, oids, ident), 1e-2) << k.name;
    const std::vector<int64_t> pr(ids.begin(), ids.begin() + 4);
    std::vector<int64_t> opr;
    for (auto t : pr) opr.push_back(tau[size_t(t)]);
    const auto gp = plain.greedy(pr, 16), go = obf.greedy(opr, 16);
    const auto inv = invert_permutation(tau);
    for (size_t i = 0; i < gp.size(); ++i) EXPECT_EQ(inv[size_t(go[i])], gp[i]) << k.name << " greedy token " << i;
  }
}

// What the server sees of the latents and heads: the kv latent rows are mixed (not a permutation
// of the plaintext rows), the published norm gains are the public ones, and the expert slots of a
// grouped router keep each group together while moving groups and experts.
TEST(DeepseekObfuscate, KeysMixLatentsAndKeepExpertGroups) {
  const ModelConfig c = ModelConfig::from_json(v3_json());
  const Seed seed = key_seed();
  const obf::MlaKeys K = obf::draw_mla_keys(seed, 1, c, 8.0, 2.0);
  ASSERT_EQ(K.Rkv.rows, c.kv_lora_rank);
  int64_t dense = 0;
  for (double x : K.Rkv.a) dense += std::fabs(x) > 1e-3;
  EXPECT_GT(dense, c.kv_lora_rank * c.kv_lora_rank / 2);  // a rotation, not a signed permutation
  const auto I = obf::matmul(K.A[0], K.Ainv[0]);
  for (int64_t i = 0; i < I.rows; ++i)
    for (int64_t j = 0; j < I.cols; ++j) EXPECT_NEAR(I(i, j), i == j ? 1.0 : 0.0, 1e-9);
  int moved_heads = 0;
  for (int64_t h = 0; h < c.num_attention_heads; ++h) moved_heads += K.head_slot[size_t(h)] != h;
  EXPECT_GT(moved_heads, 0);
  const auto mk = obf::draw_moe_keys(seed, 1, 8, 20, 2.0, 4);
  int moved = 0;
  for (int64_t e = 0; e < 8; ++e) {
    moved += mk.expert_slot[size_t(e)] != e;
    // Partners in a group land in one group.
    EXPECT_EQ(mk.expert_slot[size_t(e)] / 2, mk.expert_slot[size_t(e ^ 1)] / 2);
  }
  EXPECT_GT(moved, 0);
  std::vector<int64_t> sorted = mk.expert_slot;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t e = 0; e < 8; ++e) EXPECT_EQ(sorted[size_t(e)], e);
}

// The latent attack (audit/mla_latent.h) on an exactly obfuscated V3 shape (kv_b head blocks of
// 16 rows in a 32-dim latent, q_b blocks of 16 in 48): the server recovers the head permutation
// and both latent rotations from the weights alone, and the per-head maps explain the obfuscated
// blocks exactly. Scored with the key's maps.
TEST(DeepseekAudit, LatentAttackRecoversRotationsAndHeadOrder) {
  const std::string plain_dir = synth("attack_plain", Family::DeepseekV3);
  const std::string out = aloepri::testing::scratch_dir("deepseek_attack") + "/obf";
  const Seed seed = key_seed();
  ObfuscateOptions opt;
  opt.params = ObfuscationParams::exact();
  opt.params.keymat = obf::KeymatVariant::ExactNorm;
  opt.params.expansion = 16;
  obfuscate_model(plain_dir, seed, out, opt);
  const ModelWeights plain = audit::load_weights(plain_dir), obfw = audit::load_weights(out);
  const auto rec = audit::mla_latent_attack(plain, obfw);
  ASSERT_EQ(rec.size(), size_t(2 * plain.config.num_hidden_layers));  // kv and q per layer
  for (const auto& r : rec) {
    ASSERT_TRUE(r.identifiable);
    const obf::MlaKeys K = obf::draw_mla_keys(seed, r.layer, plain.config, 1.0, 1.0);
    const auto j = audit::score_latent_recovery(r, r.latent == "kv" ? K.Rkv : K.Rq, K.head_slot);
    std::printf("mla-latent layer %lld %s: heads right %.2f, |R^-R|/|R| %.2e, residual %.2e\n", (long long)r.layer,
                r.latent.c_str(), j["heads_right"].get<double>(), j["R_rel_error"].get<double>(), r.residual);
    EXPECT_EQ(j["heads_right"].get<double>(), 1.0);
    EXPECT_LT(j["R_rel_error"].get<double>(), 1e-3);
    EXPECT_LT(r.residual, 1e-4);
  }
  // Against the plaintext model itself (R = I, heads in place) the attack finds the identity.
  const auto self = audit::mla_latent_attack(plain, plain);
  const auto j = audit::score_latent_recovery(self[0], obf::Mat::identity(plain.config.kv_lora_rank),
                                              {0, 1, 2, 3});
  EXPECT_EQ(j["heads_right"].get<double>(), 1.0);
  EXPECT_LT(j["R_rel_error"].get<double>(), 1e-6);
  // The weight attacks read the shared experts as each sparse layer's FFN.
  EXPECT_FALSE(plain.layers[1].w_gate.data.empty());
  EXPECT_EQ(plain.layers[1].w_gate.data, plain.layers[1].shared.w_gate.data);
}
