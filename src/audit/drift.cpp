// Drifted copies of a checkpoint (audit/drift.h): the simulated private fine-tune the drift
// measurements of the NN attack run against.
#include "aloepri/audit/drift.h"


#include <cmath>
#include <filesystem>

#include "aloepri/core/error.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/model/model.h"
#include "aloepri/core/output.h"
#include "aloepri/core/rng.h"

namespace fs = std::filesystem;

namespace aloepri::audit {

namespace {

bool drifts(const std::string& name, bool vocab) {
  if (name == tensor_names::embed() || name == tensor_names::lm_head()) return vocab;
  if (name.rfind("model.layers.", 0) != 0) return false;
  const bool is_weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
  return is_weight && name.find("norm") == std::string::npos;
}

double fro2(const float* a, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(a[i]) * a[i];
  return s;
}

// Delta [rows, cols] with ||Delta||_F ~= eps ||W||_F (see DriftKind).
std::vector<float> draw_delta(const Tensor& W, const DriftOptions& opt, RngStream& rng) {
  const int64_t rows = W.rows(), cols = W.cols();
  const size_t n = size_t(W.numel());
  const double target = opt.eps * std::sqrt(fro2(W.ptr(), n));
  std::vector<float> delta(n);
  if (opt.kind == DriftKind::Gaussian) {
    rng.fill_normal(delta.data(), n, target / std::sqrt(double(n)));
    return delta;
  }
  const int64_t r = std::max<int64_t>(1, std::min({opt.rank, rows, cols}));
  std::vector<float> A(size_t(rows * r)), B(size_t(cols * r));
  rng.fill_normal(A.data(), A.size());
  rng.fill_normal(B.data(), B.size());
  // delta = A B^T: [rows, r] x [r, cols]
  linalg::gemm(false, true, rows, cols, r, 1.0f, A.data(), r, B.data(), r, 0.0f, delta.data(), cols);
  const double norm = std::sqrt(fro2(delta.data(), n));
  const float s = norm > 0 ? float(target / norm) : 0.0f;
  for (auto& x : delta) x *= s;
  return delta;
}

}  // namespace

DriftKind parse_drift_kind(const std::string& s, const std::string& where) {
  if (s == "gaussian") return DriftKind::Gaussian;
  if (s == "lowrank") return DriftKind::LowRank;
  throw Error(where, "unknown drift kind '" + s + "' (supported: gaussian, lowrank)", kExitUsage);
}

double write_drifted_model(const std::string& model_dir, const std::string& out_dir, const DriftOptions& opt) {
  require(opt.eps >= 0 && std::isfinite(opt.eps), "--eps", "must be a finite number >= 0", kExitUsage);
  require(opt.rank >= 1, "--rank", "must be >= 1", kExitUsage);
  refuse_existing(out_dir, opt.force);
  HFModel m(model_dir);
  Seed seed{};
  for (int i = 0; i < 8; ++i) seed[size_t(i)] = uint8_t(opt.seed >> (8 * i));
  AtomicDir out(out_dir, opt.force);
  double num = 0, den = 0;
  {
    SafetensorsWriter w(out.temp_path());
    const auto names = m.weights().names();
    for (const auto& name : names) {
      const TensorView& v = m.weights().get(name);
      w.add({name, v.dtype, v.shape});
    }
    for (const auto& name : names) {
      const TensorView& v = m.weights().get(name);
      if (!drifts(name, opt.vocab) || v.shape.size() != 2) {
        w.write(name, v.data, v.nbytes);
        continue;
      }
      Tensor t = v.to_f32();
      RngStream rng(seed, "drift/" + name);
      const auto delta = draw_delta(t, opt, rng);
      den += fro2(t.ptr(), delta.size());
      num += fro2(delta.data(), delta.size());
      for (size_t i = 0; i < delta.size(); ++i) t.data[i] += delta[i];
      w.write_f32(name, t.ptr(), t.data.size());
    }
    w.finish();
  }
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                        "special_tokens_map.json"}) {
    const fs::path src = fs::path(model_dir) / f;
    if (fs::exists(src)) write_file_atomic(out.file(f), read_file(src.string()));
  }
  out.commit();
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

}  // namespace aloepri::audit
