// End to end through an unmodified llama.cpp (node-llama-cpp, harness/llamacpp/eval.mjs): the
// plaintext and the --exact obfuscated synthetic checkpoints are exported to GGUF; at every
// obfuscated id tau(y) llama.cpp's obfuscated logit equals its plaintext logit of y within
// 1e-4 x max|logit|, and 32 greedy tokens decode (tau^-1) to exactly the plaintext ones.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/formats/gguf.h"
#include "aloepri/export/gguf_export.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/engine/synth.h"
#include "support/paths.h"

using namespace aloepri;
namespace fs = std::filesystem;

namespace {

Seed key_seed() {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(0x3C + 5 * i);
  return s;
}

std::string eval_script() { return aloepri::testing::source_dir() + "/harness/llamacpp/eval.mjs"; }

bool engine_available() {
  return fs::exists(eval_script()) &&
         fs::exists(aloepri::testing::source_dir() + "/harness/llamacpp/node_modules/node-llama-cpp") &&
         aloepri::testing::run_command("node --version > /dev/null 2>&1") == 0;
}

std::string csv(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

nlohmann::json llama_eval(const std::string& gguf, const std::vector<int64_t>& ids, int greedy) {
  std::string out;
  const std::string cmd = "node " + eval_script() + " --model " + gguf + " --ids " + csv(ids) + " --greedy " +
                          std::to_string(greedy) + " --all-logits --threads 2";
  int rc = aloepri::testing::run_command(cmd, &out);
  if (rc != 0) throw std::runtime_error("eval.mjs failed (rc " + std::to_string(rc) + "): " + cmd);
  return nlohmann::json::parse(out);
}

struct Case {
  const char* name;
  Family family;
  const char* vocab;
  int64_t heads, kv_heads;
  int64_t expansion;  // 0: --exact; > 0: exact-norm key matrices with this h
  const char* rope = "";  // synth rope scaling ("yarn": DeepSeek's release settings, factor 40)
};

}  // namespace

class ObfLlamaCpp : public ::testing::TestWithParam<Case> {};

TEST_P(ObfLlamaCpp, ExactObfuscationServedByLlamaCpp) {
  if (!engine_available()) GTEST_SKIP() << "llama.cpp engine (harness/llamacpp with node) not installed";
  const Case& c = GetParam();
  const std::string dir = aloepri::testing::scratch_dir(std::string("obf_llamacpp_") + c.name);
  SynthOptions so;
  so.family = c.family;
  so.heads = c.heads;
  so.kv_heads = c.kv_heads;
  so.vocab_dir = aloepri::testing::vocab_dir(c.vocab);
  so.seed = 5;
  so.rope_scaling = c.rope;
  so.rope_factor = 40;
  synthesize(so, dir + "/plain");
  ObfuscateOptions opt;
  opt.params = ObfuscationParams::exact();
  if (c.expansion > 0) {
    opt.params.keymat = obf::KeymatVariant::ExactNorm;
    opt.params.expansion = c.expansion;
  }
  obfuscate_model(dir + "/plain", key_seed(), dir + "/obf", opt);
  GGUFExportOptions go;
  go.progress = false;
  export_gguf(HFModel(dir + "/plain"), dir + "/plain.gguf", DType::F32, go);
  go.opaque_vocab = true;  // as `aloepri obfuscate --gguf` does
  export_gguf(HFModel(dir + "/obf"), dir + "/obf.gguf", DType::F32, go);

  const int64_t n = HFModel(dir + "/plain").config().vocab_size;
  const auto tau = derive_tau(key_seed(), n);
  const auto inv = invert_permutation(tau);
  // The engine stops by itself at the published tau(eos).
  if (auto eos = HFModel(dir + "/plain").config().eos_token_id) {
    gguf::GGUFReader g(dir + "/obf.gguf");
    EXPECT_EQ(int64_t(g.get("tokenizer.ggml.eos_token_id").as_u64()), tau[size_t(*eos)]);
  }
  RngStream r(key_seed(), "ids");
  std::vector<int64_t> ids, oids;
  for (int i = 0; i < 8; ++i) ids.push_back(int64_t(r.below(uint64_t(n))));
  for (auto t : ids) oids.push_back(tau[size_t(t)]);

  auto jp = llama_eval(dir + "/plain.gguf", ids, 32);
  auto jo = llama_eval(dir + "/obf.gguf", oids, 32);
  ASSERT_EQ(jp["logits"].size(), ids.size());
  ASSERT_EQ(jo["logits"].size(), ids.size());
  double worst = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    const auto& lp = jp["logits"][t];
    const auto& lo = jo["logits"][t];
    ASSERT_GE(int64_t(lp.size()), n);
    ASSERT_GE(int64_t(lo.size()), n);
    double mx = 0, diff = 0;
    for (int64_t y = 0; y < n; ++y) {
      const double a = lp[size_t(y)].get<double>(), b = lo[size_t(tau[size_t(y)])].get<double>();
      mx = std::max(mx, std::abs(a));
      diff = std::max(diff, std::abs(a - b));
    }
    worst = std::max(worst, diff / mx);
  }
  std::printf("%s on llama.cpp: max |logit_obf(tau y) - logit(y)| / max|logit| = %.2e\n", c.name, worst);
  EXPECT_LT(worst, 1e-4);
  auto gp = jp["greedy"].get<std::vector<int64_t>>(), gobf = jo["greedy"].get<std::vector<int64_t>>();
  ASSERT_EQ(gp.size(), 32u);
  ASSERT_EQ(gobf.size(), 32u);
  for (size_t i = 0; i < gp.size(); ++i) EXPECT_EQ(inv[size_t(gobf[i])], gp[i]) << "greedy token " << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, ObfLlamaCpp,
                         ::testing::Values(Case{"llama_gqa", Family::Llama, "llama3", 4, 2, 0},
                                           Case{"mistral", Family::Mistral, "llama2", 4, 1, 0},
                                           Case{"qwen2_bias_tied", Family::Qwen2, "qwen3", 4, 2, 0},
                                           Case{"llama_exact_norm_h16", Family::Llama, "llama2", 4, 2, 16},
                                           // d' != heads * head_dim: qwen2 goes out as arch llama with biases
                                           Case{"qwen2_exact_norm_h16", Family::Qwen2, "qwen3", 4, 2, 16},
                                           // q/k norms (llama.cpp arch qwen3), with and without expansion
                                           Case{"qwen3_qk_norm", Family::Qwen3, "qwen3", 4, 2, 0},
                                           Case{"qwen3_exact_norm_h16", Family::Qwen3, "qwen3", 4, 2, 16},
                                           // latent attention, shared experts, grouped routing with
                                           // e_score_correction_bias (llama.cpp arch deepseek2)
                                           Case{"deepseek_v3", Family::DeepseekV3, "llama2", 4, 4, 0},
                                           Case{"deepseek_v2_exact_norm_h16", Family::DeepseekV2, "qwen3", 4, 4, 16},
                                           Case{"deepseek_v2_yarn", Family::DeepseekV2, "llama2", 4, 4, 0, "yarn"},
                                           // routed experts (llama.cpp arch qwen3moe): Z_router, per-expert keys
                                           Case{"qwen3moe", Family::Qwen3Moe, "qwen3", 4, 2, 0},
                                           Case{"qwen3moe_exact_norm_h16", Family::Qwen3Moe, "qwen3", 4, 2, 16}),
                         [](const auto& info) { return std::string(info.param.name); });
