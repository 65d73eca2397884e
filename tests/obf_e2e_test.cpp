// End to end: synthesized llama (GQA), mistral and qwen2 (biases, tied) checkpoints with real
// vocabularies, obfuscated with --exact (and the exact-norm key matrices with expansion), run on
// the reference forward: at every obfuscated id tau(y) the plaintext logit of y within
// 1e-4 x max|logit|, and 32 greedy tokens that decode (tau^-1) to exactly the plaintext ones.
// Also: determinism, no secret in the output, clear errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/output.h"
#include "aloepri/engine/synth.h"
#include "support/paths.h"
#include "support/logit_error.h"

using namespace aloepri;
namespace fs = std::filesystem;

namespace {

Seed key_seed(uint8_t v) {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(0xA5 ^ (v * 13 + i * 29));
  return s;
}

struct Shape {
  const char* name;
  Family family;
  const char* vocab;
  std::optional<int64_t> heads, kv_heads;
};

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {"llama_gqa", Family::Llama, "llama3", 4, 2},
      {"mistral", Family::Mistral, "llama2", 4, 1},
      {"qwen2_bias_tied", Family::Qwen2, "qwen3", 4, 2},
      // q/k norms with one gain vector for all heads (issue 16): shared signed pair permutation,
      // scale folded into the gains.
      {"qwen3_qk_norm", Family::Qwen3, "qwen3", 4, 2},
      // routed experts: router rows permuted by Z_router, per-expert channel keys (issue 16)
      {"qwen3moe", Family::Qwen3Moe, "qwen3", 4, 2},
  };
  return s;
}

std::string synth_model(const Shape& sh) {
  std::string dir = aloepri::testing::scratch_dir(std::string("obf_e2e_plain_") + sh.name) + "/model";
  SynthOptions o;
  o.family = sh.family;
  o.preset = "tiny";
  o.heads = sh.heads;
  o.kv_heads = sh.kv_heads;
  o.vocab_dir = aloepri::testing::vocab_dir(sh.vocab);
  o.seed = 7;
  synthesize(o, dir);
  return dir;
}

std::vector<int64_t> prompt_ids(int64_t n, int64_t len, uint8_t s) {
  RngStream r(key_seed(s), "prompt");
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < len; ++i) ids.push_back(int64_t(r.below(uint64_t(n))));
  return ids;
}

using test::logit_error;

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

class ObfE2E : public ::testing::TestWithParam<Shape> {};

TEST_P(ObfE2E, ExactObfuscationReproducesLogitsAndGreedyTokens) {
  const Shape& sh = GetParam();
  const std::string plain_dir = synth_model(sh);
  const Seed seed = key_seed(1);
  struct Variant {
    const char* name;
    ObfuscationParams p;
  };
  ObfuscationParams exact_norm = ObfuscationParams::exact();
  exact_norm.keymat = obf::KeymatVariant::ExactNorm;
  exact_norm.expansion = 16;  // d' = d + 32, still exact: P P^T = (d'/d) I
  // The value maps' conditioning (issue 7) leaves the transform exact: the exact profile's
  // value_cond and the other of {0 (the report's Gaussian U_j), 4}.
  ObfuscationParams exact_vc = ObfuscationParams::exact();
  exact_vc.value_cond = exact_vc.value_cond == 4 ? 0 : 4;
  const std::string vc_name = exact_vc.value_cond == 4 ? "exact-vcond4" : "exact-vcond0";
  for (const Variant& v : {Variant{"exact", ObfuscationParams::exact()}, Variant{"exact-norm-h16", exact_norm},
                           Variant{vc_name.c_str(), exact_vc}}) {
    const std::string out = aloepri::testing::scratch_dir(std::string("obf_e2e_out_") + sh.name + "_" + v.name) + "/obf";
    ObfuscateOptions opt;
    opt.params = v.p;
    ObfuscateResult r = obfuscate_model(plain_dir, seed, out, opt);
    EXPECT_EQ(r.obf_hidden, r.hidden + 2 * v.p.expansion);

    ReferenceModel plain = ReferenceModel::load(plain_dir);
    ReferenceModel obf = ReferenceModel::load(out);
    const ModelConfig& oc = obf.config();
    EXPECT_EQ(oc.hidden_size, r.obf_hidden);
    EXPECT_EQ(oc.head_dim, plain.config().head_dim);
    EXPECT_FALSE(oc.tie_word_embeddings);
    EXPECT_EQ(oc.num_attention_heads, plain.config().num_attention_heads);
    EXPECT_EQ(oc.intermediate_size, plain.config().intermediate_size);
    const auto tau = derive_tau(seed, plain.vocab_size());
    if (plain.config().eos_token_id) {
      ASSERT_TRUE(oc.eos_token_id.has_value());
      EXPECT_EQ(*oc.eos_token_id, tau[size_t(*plain.config().eos_token_id)]);  // published tau(eos)
    }

    auto ids = prompt_ids(plain.vocab_size(), 12, 3);
    const double err = logit_error(plain, obf, ids, tau);
    std::printf("%s %s: max |logit_obf(tau y) - logit(y)| / max|logit| = %.2e\n", sh.name, v.name, err);
    EXPECT_LT(err, 1e-4) << sh.name << " " << v.name;

    auto prompt = prompt_ids(plain.vocab_size(), 6, 4);
    std::vector<int64_t> oprompt;
    for (auto t : prompt) oprompt.push_back(tau[size_t(t)]);
    auto gp = plain.greedy(prompt, 32);
    auto go = obf.greedy(oprompt, 32);
    const auto inv = invert_permutation(tau);
    ASSERT_EQ(gp.size(), go.size());
    for (size_t i = 0; i < gp.size(); ++i) EXPECT_EQ(inv[size_t(go[i])], gp[i]) << "greedy token " << i;

    // Tokenizer files of the plaintext model travel with it.
    EXPECT_TRUE(fs::exists(out + "/tokenizer.json"));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, ObfE2E, ::testing::ValuesIn(shapes()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ObfE2EOutput, DeterministicAndFreeOfTheSecret) {
  const Shape sh = shapes()[0];
  const std::string plain_dir = synth_model(sh);
  const Seed seed = key_seed(2);
  ObfuscateOptions opt;  // default privacy parameters
  const std::string a = aloepri::testing::scratch_dir("obf_det_a") + "/obf", b = aloepri::testing::scratch_dir("obf_det_b") + "/obf";
  ObfuscateResult ra = obfuscate_model(plain_dir, seed, a, opt);
  ObfuscateResult rb = obfuscate_model(plain_dir, seed, b, opt);
  EXPECT_EQ(ra.obf_fingerprint, rb.obf_fingerprint);
  size_t files = 0;
  static const char* hexd = "0123456789abcdef";
  std::string raw(seed.begin(), seed.end()), hex, HEX;
  for (uint8_t x : seed) {
    hex += hexd[x >> 4];
    hex += hexd[x & 15];
  }
  for (char ch : hex) HEX += char(std::toupper(ch));
  for (auto& e : fs::directory_iterator(a)) {
    std::string da = slurp(e.path()), db = slurp(fs::path(b) / e.path().filename());
    EXPECT_EQ(da, db) << e.path().filename() << " differs between two runs with the same key";
    EXPECT_EQ(da.find(raw), std::string::npos) << e.path() << " contains the seed";
    EXPECT_EQ(da.find(hex), std::string::npos) << e.path() << " contains the seed (hex)";
    EXPECT_EQ(da.find(HEX), std::string::npos) << e.path() << " contains the seed (HEX)";
    ++files;
  }
  EXPECT_GE(files, 3u);  // config, weights, tokenizer files
  // Another key gives another model.
  const std::string c = aloepri::testing::scratch_dir("obf_det_c") + "/obf";
  EXPECT_NE(obfuscate_model(plain_dir, key_seed(3), c, opt).obf_fingerprint, ra.obf_fingerprint);
  // Defaults: paper key matrices with h = 128 widen the hidden size by 256.
  EXPECT_EQ(ra.obf_hidden, ra.hidden + 256);
  // Another cond(U_j) (value_cond), another model, recorded with the parameters (the draw's
  // determinism is checked in obf_transform_test).
  ObfuscateOptions vc = opt;
  vc.params.value_cond = opt.params.value_cond == 4 ? 0 : 4;
  const std::string d = aloepri::testing::scratch_dir("obf_det_d") + "/obf";
  ObfuscateResult rd = obfuscate_model(plain_dir, seed, d, vc);
  EXPECT_NE(rd.obf_fingerprint, ra.obf_fingerprint);
  EXPECT_EQ(rd.record["params"]["value_cond"].get<double>(), vc.params.value_cond);
  EXPECT_EQ(ra.record["params"]["value_cond"].get<double>(), opt.params.value_cond);
}

TEST(ObfE2EOutput, ClearErrors) {
  const std::string plain_dir = synth_model(shapes()[0]);
  const std::string out = aloepri::testing::scratch_dir("obf_err") + "/obf";
  fs::create_directories(out);
  ObfuscateOptions opt;
  opt.params = ObfuscationParams::exact();
  try {
    obfuscate_model(plain_dir, key_seed(1), out, opt);
    FAIL() << "existing output accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitOutputExists);
  }
  EXPECT_TRUE(fs::is_empty(out));  // nothing written into it

  opt.params.kappa = KappaMode::Calibrated;  // without calibration ids
  try {
    obfuscate_model(plain_dir, key_seed(1), out + "2", opt);
    FAIL() << "calibrated kappa without ids accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("calib"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out + "2"));

  // A failure in the middle of the run (here: a calibration id outside the vocabulary, found
  // after the output directory and the writer were opened) leaves nothing behind.
  opt.calib_ids = {1, 2, 1 << 30};
  EXPECT_THROW(obfuscate_model(plain_dir, key_seed(1), out + "4", opt), Error);
  EXPECT_FALSE(fs::exists(out + "4"));
  for (auto& e : fs::directory_iterator(fs::path(out).parent_path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path() << " left behind";

  // Not a model directory.
  EXPECT_THROW(obfuscate_model(aloepri::testing::scratch_dir("obf_err_empty"), key_seed(1), out + "3", ObfuscateOptions{}),
               Error);
}
