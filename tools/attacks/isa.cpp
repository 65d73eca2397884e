#include "isa.h"

#include <cmath>
#include <optional>

#include "aloepri/core/error.h"
#include "aloepri/core/progress.h"
#include "common.h"

namespace aloepri::attacks {

namespace {

// Relative residual of the best (ridge) linear map X A ~= O over all rows: the key-invariant
// match of plaintext states X [N, d] to observed states O [N, d'].
torch::Tensor linear_fit_loss(const torch::Tensor& X, const torch::Tensor& O, double ridge) {
  const int64_t d = X.size(1);
  auto G = torch::matmul(X.t(), X);
  const auto lam = (G.diagonal().mean() * ridge).detach();
  G = G + lam * torch::eye(d, X.options());
  auto A = torch::linalg_solve(G, torch::matmul(X.t(), O));
  auto R = O - torch::matmul(X, A);
  return R.pow(2).sum() / O.pow(2).sum();
}

// Relative residual of the best scaled orthogonal map s X R ~= O (R with orthonormal rows,
// d x d'): min over s, R of |s X R - O|^2 / |O|^2 = 1 - |X^T O|_*^2 / (|X|^2 |O|^2), with |.|_*
// the nuclear norm (orthogonal Procrustes). Exact for the orthogonal key of the exact setting.
torch::Tensor orthogonal_fit_loss(const torch::Tensor& X, const torch::Tensor& O) {
  auto nuc = torch::linalg_svdvals(torch::matmul(X.t(), O)).sum();
  return 1 - nuc.pow(2) / (X.pow(2).sum() * O.pow(2).sum());
}

}  // namespace

torch::Tensor alignment_loss(const torch::Tensor& X, const torch::Tensor& O, const std::string& align, double ridge) {
  if (align == "none") return (X - O).pow(2).sum() / O.pow(2).sum();
  if (align == "orthogonal") return orthogonal_fit_loss(X, O);
  if (align == "linear") return linear_fit_loss(X, O, ridge);
  throw Error("--align", "unknown alignment '" + align + "' (linear | orthogonal | none)", kExitUsage);
}

IsaOutput run_isa(const Llama& plain, const torch::Tensor& observed_in, int64_t B, int64_t T,
                  const IsaOptions& opt) {
  const auto& c = plain.config();
  const int64_t d = plain.hidden(), n = plain.vocab(), L = c.num_hidden_layers;
  const bool attn = opt.target == "attn";
  if (!attn && opt.target != "hidden") throw Error("--target", "unknown target '" + opt.target + "'", kExitUsage);
  if (opt.layer >= L || opt.layer < (attn ? 0 : -1))
    throw Error("--layer", "layer " + std::to_string(opt.layer) + " out of range for " + std::to_string(L) +
                               " layers", kExitUsage);
  if (opt.relax != "embed" && opt.relax != "vocab")
    throw Error("--relax", "unknown parametrisation '" + opt.relax + "' (embed | vocab)", kExitUsage);
  if (!attn && opt.align != "linear" && opt.align != "orthogonal" && opt.align != "none")
    throw Error("--align", "unknown alignment '" + opt.align + "' (linear | orthogonal | none)", kExitUsage);
  const auto O = observed_in.to(plain.dtype()).detach();
  if (attn) {
    if (O.dim() != 4 || O.size(0) != B || O.size(1) != c.num_attention_heads || O.size(2) != T)
      throw Error("ISA", "observed attention scores must be [B, H, T, T] with the plaintext head count");
  } else {
    if (O.dim() != 3 || O.size(0) != B || O.size(1) != T)
      throw Error("ISA", "observed hidden states must be [B, T, d']");
    if (opt.align == "none" && O.size(2) != d)
      throw Error("--align", "align none needs observed states of the plaintext width", kExitUsage);
    if (opt.align == "linear" && B * T <= d)
      throw Error("ISA", "linear alignment needs more victim positions (" + std::to_string(B * T) +
                             ") than the hidden size (" + std::to_string(d) + ")", kExitUsage);
  }
  torch::manual_seed(opt.seed);
  const auto& E = plain.embed();
  const double sigma = E.std().item<double>();
  torch::Tensor param;
  if (opt.relax == "embed") {
    param = (E.mean(0).expand({B, T, d}) + 0.1 * sigma * torch::randn({B, T, d}, E.options())).clone();
  } else {
    param = 0.01 * torch::randn({B, T, n}, E.options());
  }
  param.set_requires_grad(true);
  const double lr = opt.relax == "embed" ? opt.lr * sigma : opt.lr;
  torch::optim::Adam adam({param}, torch::optim::AdamOptions(lr));

  const int64_t H = c.num_attention_heads;
  std::vector<int64_t> assign(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h) assign[size_t(h)] = h;
  const auto Onorm = O.pow(2).sum().item<double>();
  const int64_t warmup = attn ? opt.iters * opt.warmup_percent / 100 : 0;
  const auto Osorted = attn ? std::get<0>(O.sort(1)) : torch::Tensor();
  IsaOutput out;
  std::optional<Progress> bar;
  if (opt.progress)
    bar.emplace("ISA (" + opt.target + ", layer " + std::to_string(opt.layer) + ")", uint64_t(opt.iters), "steps");
  auto compute_loss = [&](int64_t it) {
    auto x = opt.relax == "embed" ? param : torch::matmul(torch::softmax(param, -1), E);
    torch::Tensor loss;
    if (attn) {
      Trace tr;
      plain.run(x, opt.layer, &tr, opt.layer);
      auto S = tr.scores;  // [B, H, T, T]
      if (it < warmup) {
        // Head-permutation-invariant warm-up: compare, entry by entry, the sorted head values.
        return (std::get<0>(S.sort(1)) - Osorted).pow(2).sum() / Onorm;
      }
      // D[h, h'] = squared distance of plaintext head h to observed head h'.
      auto D = (S.unsqueeze(2) - O.unsqueeze(1)).pow(2).sum({0, 3, 4});  // [H, H]
      if ((it - warmup) % opt.reassign_every == 0) {
        auto Dd = D.detach().to(torch::kDouble).contiguous();
        std::vector<std::vector<double>> cost(static_cast<size_t>(H), std::vector<double>(static_cast<size_t>(H)));
        for (int64_t a = 0; a < H; ++a)
          for (int64_t b = 0; b < H; ++b) cost[size_t(a)][size_t(b)] = Dd[a][b].item<double>();
        assign = min_cost_assignment(cost);
      }
      auto idx = torch::tensor(assign, torch::kLong);
      return D.gather(1, idx.unsqueeze(1)).sum() / Onorm;
    }
    auto X = opt.layer < 0 ? x : plain.run(x, opt.layer);
    if (opt.align == "none") return (X - O).pow(2).sum() / Onorm;
    if (opt.align == "orthogonal")
      return orthogonal_fit_loss(X.reshape({B * T, d}), O.reshape({B * T, O.size(2)}));
    return linear_fit_loss(X.reshape({B * T, d}), O.reshape({B * T, O.size(2)}), opt.ridge);
  };
  std::optional<torch::optim::LBFGS> lbfgs;
  if (opt.optimizer == "lbfgs")
    lbfgs.emplace(std::vector<torch::Tensor>{param},
                  torch::optim::LBFGSOptions(1.0).max_iter(20).history_size(20).line_search_fn("strong_wolfe"));
  else if (opt.optimizer != "adam")
    throw Error("--optim", "unknown optimizer '" + opt.optimizer + "' (adam | lbfgs)", kExitUsage);
  for (int64_t it = 0; it < opt.iters; ++it) {
    double lv = 0;
    if (lbfgs) {
      auto closure = [&] {
        lbfgs->zero_grad();
        auto loss = compute_loss(it);
        loss.backward();
        return loss;
      };
      lv = lbfgs->step(closure).item<double>();
    } else {
      // cosine decay to 5% of the step
      const double f = 0.05 + 0.95 * 0.5 * (1 + std::cos(M_PI * double(it) / double(opt.iters)));
      for (auto& g : adam.param_groups()) static_cast<torch::optim::AdamOptions&>(g.options()).lr(lr * f);
      adam.zero_grad();
      auto loss = compute_loss(it);
      loss.backward();
      adam.step();
      lv = loss.item<double>();
    }
    if (it % 10 == 0 || it + 1 == opt.iters) out.loss_curve.push_back(lv);
    if (bar) bar->advance();
  }
  if (bar) bar->finish();
  out.head_assignment = assign;

  torch::NoGradGuard ng;
  const int64_t K = std::min<int64_t>(opt.candidates, n);
  if (opt.relax == "vocab") {
    out.ranked = std::get<1>(param.reshape({B * T, n}).topk(K, 1));
  } else {
    auto Z = param.reshape({B * T, d});
    // squared L2 distance up to the per-row constant |z|^2
    auto dist = E.pow(2).sum(1).unsqueeze(0) - 2 * torch::matmul(Z, E.t());
    out.ranked = std::get<1>((-dist).topk(K, 1));
  }
  return out;
}

}  // namespace aloepri::attacks
