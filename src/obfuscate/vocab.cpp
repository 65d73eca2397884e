// Embedding and head: vocabulary permutation (and homophone copies), noise, key matrices; see
// obfuscate/vocab.h.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "aloepri/core/error.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/obfuscate/vocab.h"

namespace aloepri::obf {

static double row_std(const float* r, int64_t d) {
  double s = 0, s2 = 0;
  for (int64_t k = 0; k < d; ++k) s += r[k];
  const double mean = s / double(d);
  for (int64_t k = 0; k < d; ++k) s2 += (r[k] - mean) * (r[k] - mean);
  return std::sqrt(s2 / double(d));
}

Tensor transform_vocab_matrix(int64_t n, int64_t d, const RowFetch& fetch, const std::vector<int64_t>& tau,
                              double alpha, NoiseScale ns, RngStream& rng, const std::vector<float>& col_scale,
                              const Tensor& M, bool reader) {
  require(int64_t(tau.size()) == n, "vocabulary", "tau has " + std::to_string(tau.size()) +
                                                      " entries, the matrix " + std::to_string(n) + " rows",
          kExitError);
  return transform_vocab_matrix(n, d, fetch, VocabMap::from_tau(tau), alpha, ns, rng, nullptr, col_scale, M, reader);
}

Tensor transform_vocab_matrix(int64_t n, int64_t d, const RowFetch& fetch, const VocabMap& map, double alpha,
                              NoiseScale ns, RngStream& rng, const CopyStream& copy_stream,
                              const std::vector<float>& col_scale, const Tensor& M, bool reader) {
  // Shapes: plaintext rows [n, d]; M [d, d'] (writer) or [d', d] (reader); output [n', d'].
  require(map.plain_size() == n, "vocabulary", "the id map covers " + std::to_string(map.plain_size()) +
                                                   " ids, the matrix has " + std::to_string(n) + " rows",
          kExitError);
  const int64_t np = map.size();
  const int64_t dp = reader ? M.rows() : M.cols();
  require((reader ? M.cols() : M.rows()) == d, "vocabulary", "key matrix does not match the hidden size", kExitError);
  require(col_scale.empty() || int64_t(col_scale.size()) == d, "vocabulary", "norm weight size mismatch", kExitError);
  require(!map.homophonic() || alpha == 0 || copy_stream, "vocabulary", "noisy copies need their noise streams",
          kExitError);
  constexpr int64_t kChunk = 2048;
  std::vector<float> buf(static_cast<size_t>(std::min(n, kChunk) * d));
  // Global std: one streaming pass (mean, then squared deviations) over the plaintext rows in
  // order (copies do not change the scale: they are the same rows).
  double gstd = 0;
  if (alpha != 0 && ns == NoiseScale::Global) {
    double sum = 0, s2 = 0;
    for (int pass = 0; pass < 2; ++pass) {
      const double mean = sum / double(n * d);
      for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
        const int64_t m = std::min(kChunk, n - r0);
        fetch(r0, m, buf.data());
        for (int64_t i = 0; i < m * d; ++i) {
          if (pass == 0) sum += buf[i];
          else s2 += (buf[i] - mean) * (buf[i] - mean);
        }
      }
    }
    gstd = std::sqrt(s2 / double(n * d));
  }
  // Copy c >= 1 draws from its own stream, opened when first needed.
  std::vector<std::unique_ptr<RngStream>> copy_rng;
  auto stream_for = [&](int64_t c) -> RngStream& {
    if (size_t(c) >= copy_rng.size()) copy_rng.resize(size_t(c) + 1);
    if (!copy_rng[size_t(c)]) copy_rng[size_t(c)] = std::make_unique<RngStream>(copy_stream(c));
    return *copy_rng[size_t(c)];
  };
  Tensor out({np, dp});
  std::vector<float> res;
  std::vector<float> rows;          // [rows of this chunk, d]: every copy's noisy, scaled row
  std::vector<int64_t> dest;        // output row of each
  std::vector<float> base(static_cast<size_t>(d));
  constexpr int64_t kNoiseRows = 256;  // noise buffer of copy 0: kNoiseRows x d doubles
  std::vector<double> z(alpha != 0 ? static_cast<size_t>(std::min(n, kNoiseRows) * d) : 0);
  std::vector<double> zc(alpha != 0 ? size_t(d) : 0);
  for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
    const int64_t m = std::min(kChunk, n - r0);
    fetch(r0, m, buf.data());
    rows.clear();
    dest.clear();
    for (int64_t i = 0; i < m; ++i) {
      const int64_t t = r0 + i;
      const float* row = buf.data() + i * d;
      std::copy(row, row + d, base.begin());  // the noise-free row (per-row sigma is taken from it)
      const double sigma = alpha == 0 ? 0.0 : alpha * (ns == NoiseScale::Global ? gstd : row_std(row, d));
      // Noise of copy 0 in plaintext row order (the stream's draws kNoiseRows rows at a time, in
      // bulk; bulk draws equal successive single draws, so this is the historical stream).
      if (alpha != 0 && i % kNoiseRows == 0) rng.normals(z.data(), size_t(std::min(kNoiseRows, m - i) * d));
      const int64_t k = map.copies(t);
      const bool same = alpha == 0;  // without noise one product serves every copy
      for (int64_t c = 0; c < (same ? 1 : k); ++c) {
        const size_t off = rows.size();
        rows.insert(rows.end(), base.begin(), base.end());
        float* r = rows.data() + off;
        if (alpha != 0) {
          const double* zr = z.data() + (i % kNoiseRows) * d;
          if (c > 0) {
            stream_for(c).normals(zc.data(), size_t(d));
            zr = zc.data();
          }
          for (int64_t j = 0; j < d; ++j) r[j] = float(double(r[j]) + sigma * zr[j]);
        }
        if (!col_scale.empty())
          for (int64_t j = 0; j < d; ++j) r[j] *= col_scale[j];
        dest.push_back(same ? -1 - t : map.id(t, c));  // -1 - t: every copy of t
      }
    }
    const int64_t rm = int64_t(dest.size());
    res.resize(size_t(rm * dp));
    // Writer (embedding): rows P; reader (head): rows Q^T.
    linalg::gemm(false, reader, int(rm), int(dp), int(d), 1.0f, rows.data(), int(d), M.ptr(), reader ? int(d) : int(dp),
                 0.0f, res.data(), int(dp));
    for (int64_t i = 0; i < rm; ++i) {
      const float* src = res.data() + i * dp;
      if (dest[size_t(i)] >= 0) {
        std::copy(src, src + dp, out.ptr() + dest[size_t(i)] * dp);
      } else {
        const int64_t t = -1 - dest[size_t(i)];
        for (int64_t c = 0; c < map.copies(t); ++c) std::copy(src, src + dp, out.ptr() + map.id(t, c) * dp);
      }
    }
  }
  return out;
}

static RowFetch tensor_rows(const Tensor& t) {
  return [&t](int64_t r0, int64_t m, float* dst) {
    std::copy(t.ptr() + r0 * t.cols(), t.ptr() + (r0 + m) * t.cols(), dst);
  };
}

Tensor obfuscate_embedding(const Tensor& emb, const std::vector<int64_t>& tau, double alpha,
                           NoiseScale ns, RngStream& rng, const Tensor& Pf) {
  return transform_vocab_matrix(emb.rows(), emb.cols(), tensor_rows(emb), tau, alpha, ns, rng, {}, Pf, false);
}

Tensor obfuscate_head(const Tensor& head, const std::vector<int64_t>& tau, double alpha, NoiseScale ns,
                      RngStream& rng, const std::vector<float>& final_norm, const Tensor& Qf) {
  return transform_vocab_matrix(head.rows(), head.cols(), tensor_rows(head), tau, alpha, ns, rng, final_norm, Qf,
                                true);
}

}  // namespace aloepri::obf
