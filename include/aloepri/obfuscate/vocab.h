// Embedding and head: the vocabulary permutation (and homophone copies), noise, and the key
// matrices, streamed over the rows. HF layout.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <functional>

#include "aloepri/core/homophones.h"
#include "aloepri/core/rng.h"
#include "aloepri/core/tensor.h"

namespace aloepri::obf {

// Embedding / head noise scale ([choice] global std or per-row std).
enum class NoiseScale { Global, PerRow };
// W~_emb = Pi (W_emb + alpha sigma N) P: row tau[t] of the result is row t of the plaintext.
// Noise is drawn from `rng` in plaintext row order.
Tensor obfuscate_embedding(const Tensor& emb, const std::vector<int64_t>& tau, double alpha,
                           NoiseScale ns, RngStream& rng, const Tensor& Pf);
// HF lm_head [n, d] -> [n, d']: row tau[t] = ((head[t] + alpha sigma N) * w_final) Q^T.
Tensor obfuscate_head(const Tensor& head, const std::vector<int64_t>& tau, double alpha,
                      NoiseScale ns, RngStream& rng, const std::vector<float>& final_norm,
                      const Tensor& Qf);

// The streaming core of both: rows come from fetch(first_row, count, dst) in plaintext order and
// chunks of 2048 rows (so a memory-mapped source is read once, in order, and never copied whole);
// each row gets noise, is scaled by col_scale (if any) and multiplied by M (writer: x M with M
// d x d'; reader: x M^T with M d' x d), and lands in output row tau[t].
using RowFetch = std::function<void(int64_t first_row, int64_t count, float* dst)>;
Tensor transform_vocab_matrix(int64_t n, int64_t d, const RowFetch& fetch, const std::vector<int64_t>& tau,
                              double alpha, NoiseScale ns, RngStream& rng, const std::vector<float>& col_scale,
                              const Tensor& M, bool reader);
// The same over a homophonic vocabulary (homophones.h): [n, d] -> [n', d']. Copy 0 of id t is
// the row above (the same noise draw from `rng`; a map without copies gives the same bytes); copy
// c >= 1 is t's row with its own noise draw from copy_stream(c) (one domain-separated stream per
// copy rank, rows in plaintext order), and lands in output row map.id(t, c). Without noise all
// copies of t are the same row.
using CopyStream = std::function<RngStream(int64_t copy)>;
Tensor transform_vocab_matrix(int64_t n, int64_t d, const RowFetch& fetch, const VocabMap& map, double alpha,
                              NoiseScale ns, RngStream& rng, const CopyStream& copy_stream,
                              const std::vector<float>& col_scale, const Tensor& M, bool reader);

}  // namespace aloepri::obf
