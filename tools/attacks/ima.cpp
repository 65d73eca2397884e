#include "ima.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <random>

#include "aloepri/core/error.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/core/progress.h"
#include "aloepri/engine/synth.h"
#include "common.h"

namespace fs = std::filesystem;

namespace aloepri::attacks {

Seed attacker_seed(uint64_t base, int64_t i) {
  RngStream rng(synth_seed(base), "attacker/" + std::to_string(i));
  Seed s{};
  for (size_t j = 0; j < s.size(); j += 8) {
    const uint64_t v = rng.next_u64();
    for (size_t b = 0; b < 8; ++b) s[j + b] = uint8_t(v >> (8 * b));
  }
  return s;
}

LabelledStates attacker_states(const std::string& plain_dir, const ObfuscationParams& params, const Seed& seed,
                               const std::string& work_dir, const std::string& name, const torch::Tensor& ids,
                               int64_t layer, bool keep) {
  fs::create_directories(work_dir);
  const std::string out = (fs::path(work_dir) / name).string();
  ObfuscateOptions o;
  o.params = params;
  o.force = true;
  o.dtype = DType::F32;
  if (params.kappa == KappaMode::Calibrated) {
    auto flat = ids.reshape({-1});
    const int64_t m = std::min<int64_t>(512, flat.numel());
    for (int64_t i = 0; i < m; ++i) o.calib_ids.push_back(flat[i].item<int64_t>());
  }
  auto res = obfuscate_model(plain_dir, seed, out, o);
  const auto tau = derive_tau(seed, res.vocab_size);
  LabelledStates s;
  {
    auto obf = Llama::load(out);
    s.states = observe(obf, map_ids(ids, tau), "hidden", layer);
  }
  s.ids = ids;
  if (!keep) fs::remove_all(out);
  return s;
}

namespace {

struct InverterImpl : torch::nn::Module {
  InverterImpl(int64_t d_in, int64_t vocab_out, const ImaOptions& o) : arch(o.arch) {
    in_norm = register_module("in_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_in})));
    in_proj = register_module("in_proj", torch::nn::Linear(d_in, o.width));
    if (arch == "transformer") {
      auto layer = torch::nn::TransformerEncoderLayer(
          torch::nn::TransformerEncoderLayerOptions(o.width, o.heads).dim_feedforward(2 * o.width).dropout(0.0));
      encoder = register_module("encoder",
                                torch::nn::TransformerEncoder(torch::nn::TransformerEncoderOptions(layer, o.depth)));
    } else if (arch == "mlp") {
      for (int64_t i = 0; i < o.depth; ++i)
        hidden.push_back(register_module("hidden" + std::to_string(i), torch::nn::Linear(o.width, o.width)));
    } else {
      throw Error("--arch", "unknown inversion model '" + arch + "' (transformer | mlp)", kExitUsage);
    }
    out_norm = register_module("out_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.width})));
    out_proj = register_module("out_proj", torch::nn::Linear(o.width, vocab_out));
  }
  // x [B, T, d_in] -> logits [B, T, vocab_out]
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = in_proj(in_norm(x));
    if (arch == "transformer") {
      h = encoder->forward(h.transpose(0, 1)).transpose(0, 1);  // libtorch wants [T, B, E]
    } else {
      h = torch::gelu(h);
      for (auto& l : hidden) h = h + torch::gelu(l(h));
    }
    return out_proj(out_norm(h));
  }
  std::string arch;
  torch::nn::LayerNorm in_norm{nullptr}, out_norm{nullptr};
  torch::nn::Linear in_proj{nullptr}, out_proj{nullptr};
  torch::nn::TransformerEncoder encoder{nullptr};
  std::vector<torch::nn::Linear> hidden;
};
TORCH_MODULE(Inverter);

}  // namespace

ImaOutput run_ima(const std::vector<LabelledStates>& train, const torch::Tensor& victim_states,
                  const ImaOptions& opt) {
  if (train.empty()) throw Error("IMA", "no training states");
  const int64_t d_in = train[0].states.size(2);
  for (const auto& t : train)
    if (t.states.size(2) != d_in || t.states.sizes().slice(0, 2) != t.ids.sizes())
      throw Error("IMA", "training states of different widths or shapes");
  if (victim_states.size(2) != d_in)
    throw Error("IMA", "victim states are " + std::to_string(victim_states.size(2)) + " wide, training states " +
                           std::to_string(d_in));
  // Output classes: the plaintext ids seen in the training labels.
  std::vector<int64_t> classes;
  for (const auto& t : train) {
    auto u = std::get<0>(at::_unique(t.ids.reshape({-1}), /*sorted=*/true));
    classes.insert(classes.end(), u.data_ptr<int64_t>(), u.data_ptr<int64_t>() + u.numel());
  }
  std::sort(classes.begin(), classes.end());
  classes.erase(std::unique(classes.begin(), classes.end()), classes.end());
  const int64_t V = int64_t(classes.size());
  const int64_t max_id = classes.back() + 1;
  auto to_class = torch::full({max_id}, -1, torch::kLong);
  for (int64_t i = 0; i < V; ++i) to_class[classes[size_t(i)]] = i;
  std::vector<torch::Tensor> labels;
  for (const auto& t : train) labels.push_back(to_class.index({t.ids}));

  torch::manual_seed(opt.seed);
  Inverter net(d_in, V, opt);
  torch::optim::AdamW adam(net->parameters(), torch::optim::AdamWOptions(opt.lr).weight_decay(0.01));
  std::mt19937_64 rng(opt.seed);
  ImaOutput out;
  out.output_vocab = V;
  std::optional<Progress> bar;
  if (opt.progress) bar.emplace("IMA training (" + opt.arch + ")", uint64_t(opt.steps), "steps");
  int64_t fit_hits = 0, fit_total = 0;
  for (int64_t step = 0; step < opt.steps; ++step) {
    // cosine decay to 10%
    const double lr = opt.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * double(step) / double(opt.steps))));
    for (auto& g : adam.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    const size_t k = size_t(rng() % train.size());
    const int64_t Bk = train[k].states.size(0);
    auto idx = torch::randint(Bk, {std::min(opt.batch, Bk)}, torch::kLong);
    auto x = train[k].states.index_select(0, idx);
    auto y = labels[k].index_select(0, idx);
    auto logits = net->forward(x);
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, V}), y.reshape({-1}));
    adam.zero_grad();
    loss.backward();
    adam.step();
    if (step % 20 == 0 || step + 1 == opt.steps) out.loss_curve.push_back(loss.item<double>());
    if (step >= opt.steps - std::max<int64_t>(1, opt.steps / 10)) {
      fit_hits += (logits.argmax(-1) == y).sum().item<int64_t>();
      fit_total += y.numel();
    }
    if (bar) bar->advance();
  }
  if (bar) bar->finish();
  out.train_top1 = fit_total ? double(fit_hits) / double(fit_total) : 0.0;

  torch::NoGradGuard ng;
  net->eval();
  const int64_t B = victim_states.size(0);
  const int64_t K = std::min<int64_t>(opt.candidates, V);
  std::vector<torch::Tensor> parts;
  for (int64_t b0 = 0; b0 < B; b0 += opt.batch) {
    auto x = victim_states.narrow(0, b0, std::min(opt.batch, B - b0)).to(torch::kFloat);
    parts.push_back(std::get<1>(net->forward(x).reshape({-1, V}).topk(K, 1)));
  }
  auto cls = torch::cat(parts, 0);
  auto back = torch::tensor(classes, torch::kLong);
  out.ranked = back.index({cls});
  return out;
}

}  // namespace aloepri::attacks
