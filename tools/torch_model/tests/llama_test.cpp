// Unit tests of the shared libtorch Llama module (tools/torch_model): its logits equal the
// project's reference forward (aloepri::ReferenceModel) on synthesized llama (RoPE scaling,
// untied), mistral (GQA), qwen2 (biases, tied) and qwen3 (q/k norms) models, in f32 and f64;
// each comparison is shown to be sensitive to the feature it covers (a model with that feature
// broken differs by orders of magnitude more than the tolerance); gradients reach exactly the
// tensors chosen with train_only (and free input embeddings); bad tensors are refused by name.
// Tiny synthetic models (d 64, 2 layers, 4 heads over 2 kv heads, llama2 vocabulary); one thread.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/model/model.h"
#include "aloepri/engine/synth.h"
#include "support/paths.h"
#include "torch_model/llama.h"

using namespace aloepri;
using aloepri::torch_model::Llama;
using aloepri::torch_model::Trace;

namespace {

// Far above the f32 agreement: what a broken feature must cost for the comparisons to catch it.
constexpr double kBroken = 1e-3;

const std::vector<int64_t> kIds = {1, 415, 2936, 9060, 285, 13, 4, 29871, 700, 2, 338, 263, 1243, 29889, 450, 3};

class TorchModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    torch::set_num_threads(1);
    root_ = aloepri::testing::scratch_dir("torch_model");
  }
  // A tiny synthesized model of this family in root_/name (written once per suite).
  static std::string synth(const std::string& name, Family f, const std::string& rope_scaling = "",
                           std::optional<bool> tie = std::nullopt) {
    const std::string dir = root_ + "/" + name;
    if (std::filesystem::exists(dir)) return dir;
    SynthOptions o;
    o.family = f;
    o.preset = "tiny";
    o.vocab_dir = aloepri::testing::vocab_dir("llama2");
    o.seed = 21;
    o.rope_scaling = rope_scaling;
    o.tie = tie;
    synthesize(o, dir);
    return dir;
  }
  // Max |logit difference| of the module to the reference on kIds, relative to max(1, max |logit|).
  static double rel_diff(const Llama& m, const std::string& dir) {
    auto ref = ReferenceModel::load(dir);
    const auto rl = ref.forward(kIds);
    torch::Tensor lt;
    {
      torch::NoGradGuard ng;
      lt = m.logits(torch::tensor(kIds, torch::kLong).unsqueeze(0)).squeeze(0).to(torch::kDouble).contiguous();
    }
    EXPECT_EQ(lt.numel(), int64_t(rl.size()));
    double maxdiff = 0, maxabs = 0;
    for (int64_t i = 0; i < lt.numel() && i < int64_t(rl.size()); ++i) {
      maxdiff = std::max(maxdiff, std::abs(lt.data_ptr<double>()[i] - rl[size_t(i)]));
      maxabs = std::max(maxabs, std::abs(rl[size_t(i)]));
    }
    return maxdiff / std::max(1.0, maxabs);
  }
  // Copies of the module's tensors by name, for building altered models.
  static std::map<std::string, torch::Tensor> tensors_of(const Llama& m) {
    std::map<std::string, torch::Tensor> t;
    for (const auto& n : m.names()) t[n] = m.at(n).clone();
    return t;
  }
  static void expect_matches(const std::string& dir) {
    const double f32 = rel_diff(Llama::load(dir, torch::kFloat), dir);
    const double f64 = rel_diff(Llama::load(dir, torch::kDouble), dir);
    std::printf("  %s: relative logit difference to the reference %.3g (f32), %.3g (f64)\n",
                std::filesystem::path(dir).filename().c_str(), f32, f64);
    EXPECT_LT(f32, 1e-5) << dir << " f32";
    EXPECT_LT(f64, 1e-11) << dir << " f64";
  }
  static void expect_broken(const Llama& m, const std::string& dir, const char* what) {
    const double r = rel_diff(m, dir);
    std::printf("  %s: relative logit difference %.3g\n", what, r);
    EXPECT_GT(r, kBroken) << what;
  }
  static std::string root_;
};
std::string TorchModel::root_;

TEST_F(TorchModel, LlamaWithRopeScalingUntiedMatchesReference) {
  for (const char* rs : {"llama3", "linear"}) {
    const auto dir = synth(std::string("llama-") + rs, Family::Llama, rs);
    const auto m = Llama::load(dir, torch::kDouble);
    EXPECT_FALSE(m.config().tie_word_embeddings);
    EXPECT_TRUE(m.head().defined() && !m.head().is_same(m.embed()));
    expect_matches(dir);
  }
  // Sensitivity: the same weights with the config's RoPE scaling dropped.
  const auto dir = synth("llama-linear", Family::Llama, "linear");
  const auto m = Llama::load(dir, torch::kDouble);
  ModelConfig plain_rope = m.config();
  plain_rope.rope_scaling = RopeScaling{};
  expect_broken(Llama(plain_rope, tensors_of(m), "test"), dir, "llama, RoPE scaling dropped");
}

TEST_F(TorchModel, MistralGqaMatchesReference) {
  const auto dir = synth("mistral", Family::Mistral);
  const auto m = Llama::load(dir, torch::kDouble);
  ASSERT_EQ(m.config().num_attention_heads, 2 * m.config().num_key_value_heads);
  expect_matches(dir);
  // Sensitivity: swapping the two kv heads is what a wrong query-to-kv-head map amounts to.
  auto t = tensors_of(m);
  const int64_t dh = m.config().head_dim;
  for (int64_t l = 0; l < m.config().num_hidden_layers; ++l)
    for (const char* p : {"self_attn.k_proj.weight", "self_attn.v_proj.weight"}) {
      auto& w = t[tensor_names::layer(l, p)];
      w = torch::cat({w.narrow(0, dh, dh), w.narrow(0, 0, dh)}, 0);
    }
  expect_broken(Llama(m.config(), t, "test"), dir, "mistral, kv heads swapped");
}

TEST_F(TorchModel, Qwen2BiasesTiedMatchesReference) {
  const auto dir = synth("qwen2", Family::Qwen2);
  const auto m = Llama::load(dir, torch::kDouble);
  ASSERT_TRUE(m.config().attention_bias);
  ASSERT_TRUE(m.config().tie_word_embeddings);
  EXPECT_TRUE(m.head().is_same(m.embed()));
  expect_matches(dir);
  // Sensitivity: the q/k/v biases zeroed.
  auto t = tensors_of(m);
  for (int64_t l = 0; l < m.config().num_hidden_layers; ++l)
    for (const char* p : {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"})
      t[tensor_names::layer(l, p)].zero_();
  expect_broken(Llama(m.config(), t, "test"), dir, "qwen2, q/k/v biases zeroed");
}

TEST_F(TorchModel, Qwen3QkNormsMatchReference) {
  const auto dir = synth("qwen3", Family::Qwen3);
  const auto m = Llama::load(dir, torch::kDouble);
  ASSERT_TRUE(m.config().qk_norm);
  expect_matches(dir);
  auto t = tensors_of(m);
  for (int64_t l = 0; l < m.config().num_hidden_layers; ++l) t[tensor_names::layer(l, "self_attn.q_norm.weight")].fill_(1.0);
  expect_broken(Llama(m.config(), t, "test"), dir, "qwen3, q norms set to 1");
}

TEST_F(TorchModel, GradientsReachOnlyTheChosenTensors) {
  auto m = Llama::load(synth("llama-linear", Family::Llama, "linear"));
  const auto ids = torch::tensor(kIds, torch::kLong).unsqueeze(0);
  const auto embed = tensor_names::embed(), head = tensor_names::lm_head();
  auto backward = [&] {
    for (const auto& n : m.names()) m.at(n).mutable_grad() = torch::Tensor();
    m.logits(ids).pow(2).mean().backward();
  };
  // Body only (aloe-adapt without --train-vocab).
  m.train_only(m.body_names());
  backward();
  for (const auto& n : m.body_names()) {
    ASSERT_TRUE(m.at(n).grad().defined()) << n;
    EXPECT_GT(m.at(n).grad().abs().sum().item<double>(), 0) << n;
  }
  EXPECT_FALSE(m.at(embed).grad().defined());
  EXPECT_FALSE(m.at(head).grad().defined());
  // Body and vocabulary (--train-vocab, aloe-train).
  m.train_only(m.names());
  backward();
  for (const auto& n : m.names()) EXPECT_TRUE(m.at(n).grad().defined()) << n;
  // The head only.
  m.train_only({head});
  backward();
  EXPECT_TRUE(m.at(head).grad().defined());
  EXPECT_FALSE(m.at(embed).grad().defined());
  EXPECT_FALSE(m.at(tensor_names::final_norm()).grad().defined());
  EXPECT_THROW(m.train_only({"model.layers.9.mlp.up_proj.weight"}), Error);

  // Free input embeddings (ISA): gradients reach x, no weight.
  m.train_only({});
  for (const auto& n : m.names()) m.at(n).mutable_grad() = torch::Tensor();
  auto x = m.embed_ids(ids).detach().clone().set_requires_grad(true);
  m.logits_of_embeddings(x).pow(2).mean().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_GT(x.grad().abs().sum().item<double>(), 0);
  for (const auto& n : m.names()) EXPECT_FALSE(m.at(n).grad().defined()) << n;
}

TEST_F(TorchModel, TraceHoldsResidualsAndMaskedScores) {
  const auto m = Llama::load(synth("qwen2", Family::Qwen2), torch::kDouble);
  torch::NoGradGuard ng;
  const auto ids = torch::tensor(kIds, torch::kLong).unsqueeze(0);
  const int64_t T = ids.size(1), L = m.config().num_hidden_layers;
  Trace tr;
  const auto x = m.embed_ids(ids);
  const auto last = m.run(x, L - 1, &tr, 1);
  ASSERT_EQ(int64_t(tr.residual.size()), L);
  EXPECT_TRUE(tr.residual.back().equal(last));
  EXPECT_TRUE(tr.embeddings.equal(x));
  EXPECT_TRUE(m.run(x, 0).equal(tr.residual[0]));
  EXPECT_TRUE(m.run(x, -1).equal(x));
  ASSERT_EQ(tr.scores.sizes(), (c10::IntArrayRef{1, m.config().num_attention_heads, T, T}));
  EXPECT_EQ(tr.scores.triu(1).abs().sum().item<double>(), 0.0);
  EXPECT_GT(tr.scores.tril().abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(m.head_logits(last).equal(m.logits(ids)));
  EXPECT_THROW(m.run(x, L), Error);
}

TEST_F(TorchModel, RefusesMissingExtraAndMisshapenTensors) {
  const auto m = Llama::load(synth("qwen2", Family::Qwen2));
  auto what = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const auto q = tensor_names::layer(1, "self_attn.q_proj.bias");
  auto t = tensors_of(m);
  t.erase(q);
  EXPECT_NE(what([&] { Llama(m.config(), t, "here"); }).find("missing tensor '" + q + "'"), std::string::npos);
  t = tensors_of(m);
  t[q] = torch::zeros({3});
  EXPECT_NE(what([&] { Llama(m.config(), t, "here"); }).find("'" + q + "' has shape [3]"), std::string::npos);
  t = tensors_of(m);
  t[tensor_names::lm_head()] = m.embed().clone();  // a tied config has no lm_head
  EXPECT_NE(what([&] { Llama(m.config(), t, "here"); }).find("'lm_head.weight' is not part"), std::string::npos);
  t = tensors_of(m);
  t[q] = t[q].to(torch::kDouble);
  EXPECT_NE(what([&] { Llama(m.config(), t, "here"); }).find("'" + q + "' differs in dtype"), std::string::npos);
}

}  // namespace
