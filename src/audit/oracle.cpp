// The oracle attack: vocabulary matching by running both models (see audit/oracle.h).
#include "aloepri/audit/oracle.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <numeric>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "aloepri/audit/copy_groups.h"
#include "aloepri/core/error.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/engine/forward.h"
#include "weight_internal.h"

namespace aloepri::audit {

namespace {

using Clock = std::chrono::steady_clock;
constexpr float kLogFloor = -40.0f;  // log-probabilities below this carry no usable signal

// The engine's head [n, d] (HF layout) as [d, n], so that all logits of a block of hidden rows
// are one product.
Tensor transposed_head(const Tensor& h) {
  const int64_t n = h.rows(), d = h.cols();
  Tensor t({d, n});
  const int64_t B = 64;  // blocked, so neither side strides through memory one element per cache line
  for (int64_t v0 = 0; v0 < n; v0 += B)
    for (int64_t i0 = 0; i0 < d; i0 += B)
      for (int64_t v = v0; v < std::min(n, v0 + B); ++v)
        for (int64_t i = i0; i < std::min(d, i0 + B); ++i) t.data[size_t(i * n + v)] = h.data[size_t(v * d + i)];
  return t;
}

// One model's view: its hidden states after [bos, x] for the tokens it ran (rows), its head,
// and the log-normalizer of every row, so any log P(y | bos, x) is one dot product.
struct Side {
  std::vector<int32_t> rows;    // [R] token ids run; row r is token rows[r]
  std::vector<int32_t> row_of;  // [n] row of a token, -1 when not run
  Tensor hidden;                // [R, d]
  Tensor head;                  // [d, n]
  std::vector<float> lse;       // [R] log sum_y exp(logit)
  Tensor row_sig;               // [R, k] sorted top-k log P(. | bos, x), descending
  Tensor col_sig;               // [n, k] sorted top-k over rows x of log P(y | bos, x), descending
  int64_t n() const { return head.cols(); }
  int64_t d() const { return head.rows(); }
};

// The `count` ids of highest score, plus `must`, sorted ascending (0 < count < score.size()).
std::vector<int32_t> top_plus(const std::vector<double>& score, int64_t count, const std::vector<int32_t>& must) {
  std::vector<int32_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + count, order.end(),
                    [&](int32_t a, int32_t b) { return score[size_t(a)] > score[size_t(b)]; });
  std::unordered_set<int32_t> seen(order.begin(), order.begin() + count);
  std::vector<int32_t> rows(order.begin(), order.begin() + count);
  for (int32_t t : must)
    if (seen.insert(t).second) rows.push_back(t);
  std::sort(rows.begin(), rows.end());
  return rows;
}

// The `count` most likely tokens after [bos] (the model's own unigram-like prior), plus `must`.
std::vector<int32_t> pick_rows(ReferenceModel& m, int64_t bos, int64_t count, const std::vector<int32_t>& must) {
  const int64_t n = m.vocab_size();
  std::vector<int32_t> rows;
  if (count <= 0 || count >= n || bos < 0) {
    rows.resize(size_t(n));
    std::iota(rows.begin(), rows.end(), 0);
    return rows;
  }
  m.reset();
  const std::vector<double> lg = m.step(bos);
  m.reset();
  return top_plus(lg, count, must);
}

// Runs [bos, x] for every row, then one pass over the R x n log-probabilities (in row blocks)
// for the normalizers and both sorted signatures.
// With `groups` (a homophonic served model, see cluster_copies) the side's tokens are the groups:
// row x runs the group's representative id, and the head is the representatives' columns. No
// log |group| bias: the served softmax over n' copies gives copy (y, j) the probability
// e^{z_y} / sum_u c_u e^{z_u}, so one column per group renormalised over the groups is exactly
// the public model's e^{z_y} / sum_u e^{z_u} (the summed mass of the copies would be tilted by c_y).
struct Groups {
  std::vector<int32_t> of;   // [n'] group of each model id
  std::vector<int32_t> rep;  // [G] a model id of each group
  std::vector<int32_t> size; // [G]
};

Side run_side(ReferenceModel& m, int64_t bos, std::vector<int32_t> rows, int64_t k, const Groups* groups = nullptr) {
  Side s;
  const int64_t d = m.config().hidden_size, R = int64_t(rows.size());
  const int64_t n = groups ? int64_t(groups->rep.size()) : m.vocab_size();
  s.rows = std::move(rows);
  s.row_of.assign(size_t(n), -1);
  for (int64_t r = 0; r < R; ++r) s.row_of[size_t(s.rows[size_t(r)])] = int32_t(r);
  std::vector<int64_t> run_ids(s.rows.begin(), s.rows.end());
  if (groups)
    for (auto& x : run_ids) x = groups->rep[size_t(x)];
  m.reset();
  if (bos >= 0) m.prefill({groups ? int64_t(groups->rep[size_t(bos)]) : bos});  // with groups, bos is a group
  const std::vector<double> h = m.branch_hidden(run_ids);
  m.reset();
  s.hidden = Tensor({R, d});
  std::copy(h.begin(), h.end(), s.hidden.data.begin());
  if (groups) {
    const Tensor& full = m.weights().head;  // [n', d]
    s.head = Tensor({d, n});
    for (int64_t g = 0; g < n; ++g) {
      const float* col = full.ptr() + int64_t(groups->rep[size_t(g)]) * d;
      for (int64_t i = 0; i < d; ++i) s.head.data[size_t(i * n + g)] = col[i];
    }
  } else {
    s.head = transposed_head(m.weights().head);  // [d, n]
  }
  s.lse.assign(size_t(R), 0.0f);
  s.row_sig = Tensor({R, k});
  s.col_sig = Tensor({n, k}, kLogFloor);
  // Per column a min-heap of its k largest values (std heap with greater<>: front = smallest).
  std::vector<float>& cs = s.col_sig.data;
  constexpr int64_t kBlock = 512;
  std::vector<float> L(static_cast<size_t>(std::min(R, kBlock) * n)), buf(static_cast<size_t>(n));
  for (int64_t r0 = 0; r0 < R; r0 += kBlock) {
    const int64_t B = std::min(kBlock, R - r0);
    // L [B, n] = hidden[r0 : r0 + B] head
    linalg::gemm(false, false, int(B), int(n), int(d), 1.0f, s.hidden.ptr() + r0 * d,
                int(d), s.head.ptr(), int(n), 0.0f, L.data(), int(n));
    for (int64_t b = 0; b < B; ++b) {
      float* row = L.data() + b * n;
      float mx = row[0];
      for (int64_t y = 1; y < n; ++y) mx = std::max(mx, row[y]);
      double sum = 0;
      for (int64_t y = 0; y < n; ++y) sum += std::exp(double(row[y] - mx));
      const float lse = mx + float(std::log(sum));
      s.lse[size_t(r0 + b)] = lse;
      for (int64_t y = 0; y < n; ++y) row[y] = std::max(row[y] - lse, kLogFloor);
      std::copy(row, row + n, buf.begin());
      std::partial_sort(buf.begin(), buf.begin() + k, buf.end(), std::greater<float>());
      std::copy_n(buf.begin(), k, s.row_sig.ptr() + (r0 + b) * k);
      for (int64_t y = 0; y < n; ++y) {
        float* heap = cs.data() + y * k;
        if (row[y] > heap[0]) {
          std::pop_heap(heap, heap + k, std::greater<float>());
          heap[k - 1] = row[y];
          std::push_heap(heap, heap + k, std::greater<float>());
        }
      }
    }
  }
  for (int64_t y = 0; y < n; ++y) std::sort(cs.data() + y * k, cs.data() + (y + 1) * k, std::greater<float>());
  return s;
}

// pick_rows over the groups of a homophonic served model: every group, or the `count` most
// likely after bos (a group read at its representative, as run_side does) plus `must`.
std::vector<int32_t> group_rows(ReferenceModel& m, const Groups& G, int64_t bos, int64_t count,
                                const std::vector<int32_t>& must) {
  const int64_t n = int64_t(G.rep.size());
  std::vector<int32_t> rows;
  if (count <= 0 || count >= n || bos < 0) {
    rows.resize(size_t(n));
    std::iota(rows.begin(), rows.end(), 0);
    return rows;
  }
  m.reset();
  const std::vector<double> lg = m.step(G.rep[size_t(bos)]);
  m.reset();
  std::vector<double> lik(static_cast<size_t>(n));
  for (int64_t g = 0; g < n; ++g) lik[size_t(g)] = lg[size_t(G.rep[size_t(g)])];
  return top_plus(lik, count, must);
}

// Standardizes every column of F (per side: noise shifts and scales the obfuscated side's
// statistics, the attacker removes that).
void standardize_columns(Tensor& F) {
  std::vector<double> mean, sd;
  internal::column_stats(F, mean, sd);
  internal::standardize(F, mean, sd);
}

// Signature features of the rows `sub` (indices into s.rows): [row_sig, col_sig of the row's
// token], standardized. [|sub|, 2k]
Tensor signature_features(const Side& s, const std::vector<int32_t>& sub) {
  const int64_t R = int64_t(sub.size()), k = s.row_sig.cols();
  Tensor F({R, 2 * k});
  for (int64_t i = 0; i < R; ++i) {
    const int64_t r = sub[size_t(i)];
    std::copy_n(s.row_sig.ptr() + r * k, k, F.ptr() + i * 2 * k);
    std::copy_n(s.col_sig.ptr() + int64_t(s.rows[size_t(r)]) * k, k, F.ptr() + i * 2 * k + k);
  }
  standardize_columns(F);
  return F;
}

// Anchored features of the rows `sub`, for anchors (token ids on this side) that were run:
// [log P(a | bos, x)]_a then [log P(x | bos, a)]_a, standardized. [|sub|, 2A]
Tensor anchored_features(const Side& s, const std::vector<int32_t>& sub, const std::vector<int32_t>& anchors) {
  const int64_t R = int64_t(sub.size()), A = int64_t(anchors.size()), d = s.d(), n = s.n();
  Tensor hs({R, d});  // the rows' hidden states
  for (int64_t i = 0; i < R; ++i) std::copy_n(s.hidden.ptr() + int64_t(sub[size_t(i)]) * d, d, hs.ptr() + i * d);
  Tensor headA({d, A});  // the head's columns of the anchors
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < A; ++j) headA.data[size_t(i * A + j)] = s.head.data[size_t(i * n + anchors[size_t(j)])];
  Tensor rowf({R, A});  // hs head_A (- lse below)
  linalg::gemm(false, false, int(R), int(A), int(d), 1.0f, hs.ptr(), int(d),
              headA.ptr(), int(A), 0.0f, rowf.ptr(), int(A));
  Tensor hA({A, d});  // the anchors' hidden states (as contexts)
  std::vector<float> lseA(static_cast<size_t>(A));
  for (int64_t j = 0; j < A; ++j) {
    const int32_t r = s.row_of[size_t(anchors[size_t(j)])];
    require(r >= 0, "oracle attack", "anchor token was not run");
    std::copy_n(s.hidden.ptr() + int64_t(r) * d, d, hA.ptr() + j * d);
    lseA[size_t(j)] = s.lse[size_t(r)];
  }
  // colT [A, n] = hA head (- lseA below): log P(y | bos, a) for every y
  Tensor colT({A, n});
  linalg::gemm(false, false, int(A), int(n), int(d), 1.0f, hA.ptr(), int(d), s.head.ptr(),
              int(n), 0.0f, colT.ptr(), int(n));
  Tensor F({R, 2 * A});
  for (int64_t i = 0; i < R; ++i) {
    float* f = F.ptr() + i * 2 * A;
    const int64_t r = sub[size_t(i)], y = s.rows[size_t(r)];
    for (int64_t j = 0; j < A; ++j) {
      f[j] = std::max(rowf.data[size_t(i * A + j)] - s.lse[size_t(r)], kLogFloor);
      f[A + j] = std::max(colT.data[size_t(j * n + y)] - lseA[size_t(j)], kLogFloor);
    }
  }
  standardize_columns(F);
  return F;
}

// Nearest plaintext rows of the obfuscated rows being matched, and back.
struct Matching {
  std::vector<std::vector<int32_t>> cand;  // per matched obfuscated row: plaintext rows, best first
  std::vector<double> margin;              // per matched obfuscated row: (d2 - d1) / d1
  std::vector<int32_t> back;               // per plaintext row: its nearest matched row (index into mo)
};

Matching match(const Tensor& Fo, const Tensor& Fp, int topk) {
  Matching m;
  m.cand = detail::nearest_rows(Fo, Fp, std::max(topk, 2));
  const int64_t D = Fo.cols();
  m.margin.assign(m.cand.size(), 0.0);
  for (size_t r = 0; r < m.cand.size(); ++r) {
    if (m.cand[r].size() < 2) continue;
    const double d1 = internal::sq_dist(Fo.ptr() + int64_t(r) * D, Fp.ptr() + int64_t(m.cand[r][0]) * D, D);
    const double d2 = internal::sq_dist(Fo.ptr() + int64_t(r) * D, Fp.ptr() + int64_t(m.cand[r][1]) * D, D);
    m.margin[r] = (d2 - d1) / std::max(d1, 1e-12);
  }
  for (auto& nn : detail::nearest_rows(Fp, Fo, 1)) m.back.push_back(nn.empty() ? -1 : nn[0]);
  return m;
}

// Anchors for the next round: the seeds, then mutual nearest pairs by decreasing margin.
// mo: the obfuscated rows that were matched (Matching indexes into it).
std::vector<std::pair<int32_t, int32_t>> pick_anchors(const Matching& m, const std::vector<int32_t>& mo,
                                                      const Side& o, const Side& p,
                                                      const std::vector<std::pair<int32_t, int32_t>>& seeds,
                                                      int64_t count) {
  std::vector<std::pair<int32_t, int32_t>> out = seeds;
  std::unordered_set<int32_t> used_o, used_p;
  for (auto [a, b] : seeds) {
    used_o.insert(a);
    used_p.insert(b);
  }
  std::vector<int32_t> order;
  for (size_t i = 0; i < m.cand.size(); ++i)
    if (!m.cand[i].empty() && m.back[size_t(m.cand[i][0])] == int32_t(i)) order.push_back(int32_t(i));
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return m.margin[size_t(a)] > m.margin[size_t(b)]; });
  for (int32_t i : order) {
    if (int64_t(out.size()) >= count) break;
    const int32_t to = o.rows[size_t(mo[size_t(i)])], tp = p.rows[size_t(m.cand[size_t(i)][0])];
    if (used_o.count(to) || used_p.count(tp)) continue;
    used_o.insert(to);
    used_p.insert(tp);
    out.emplace_back(to, tp);
  }
  return out;
}

// Guesses for the queried ids from a matching (plaintext ids, best first).
Guesses guesses_of(const Matching& m, const std::vector<int32_t>& mo, const Side& o, const Side& p, const Query& q,
                   int topk) {
  Guesses g(static_cast<size_t>(o.n()));
  std::vector<int32_t> pos_in_mo(o.rows.size(), -1);
  for (size_t i = 0; i < mo.size(); ++i) pos_in_mo[size_t(mo[i])] = int32_t(i);
  for (int32_t id : q.obf_ids) {
    const int32_t r = o.row_of[size_t(id)];
    if (r < 0 || pos_in_mo[size_t(r)] < 0) continue;
    auto& out = g[size_t(id)];
    for (int32_t pr : m.cand[size_t(pos_in_mo[size_t(r)])]) {
      if (int(out.size()) >= topk) break;
      out.push_back(p.rows[size_t(pr)]);
    }
  }
  return g;
}

// Copies of a homophonic vocabulary (homophones.h) are the same embedding row and head column,
// each with its own noise when the obfuscation adds noise. The attacker knows n (the public
// model's vocabulary) and sees n' ids: group_copies_by_weights (audit/copy_groups.h) groups identical
// rows, then the closest, down to n groups (no gate: the matching needs n tokens a side).
Groups cluster_copies(const aloepri::ModelWeights& w, int64_t n, nlohmann::json& info) {
  const int64_t np = w.embed.rows(), d = w.embed.cols();
  require(w.head.rows() == np && w.head.cols() == d, "oracle attack", "the served head is not [n', d']");
  const Tensor& head = w.head;
  const CopyGrouping cg = group_copies_by_weights(w.embed, head, n, onto_vocabulary());
  Groups out;
  out.of = cg.group;
  out.rep.assign(size_t(cg.groups), -1);
  out.size.assign(size_t(cg.groups), 0);
  for (int64_t id = 0; id < np; ++id) {
    const int32_t g = out.of[size_t(id)];
    if (out.rep[size_t(g)] < 0) out.rep[size_t(g)] = int32_t(id);
    ++out.size[size_t(g)];
  }
  info = {{"obf_vocab", np}, {"plain_vocab", n}, {"identical_groups", cg.info["identical_groups"]},
          {"merged_by_distance", cg.info["merged_by_distance"]}, {"groups", int64_t(out.rep.size())}};
  return out;
}

}  // namespace

std::vector<std::pair<int32_t, int32_t>> seeds_from_guesses(const Guesses& g, const std::vector<int32_t>& traffic,
                                                            int64_t max_seeds) {
  std::unordered_map<int32_t, int64_t> freq;
  for (int32_t t : traffic) ++freq[t];
  std::unordered_map<int32_t, int> claims;  // plaintext id -> obfuscated ids whose top-1 it is
  std::vector<int32_t> ids;
  for (size_t o = 0; o < g.size(); ++o)
    if (!g[o].empty() && g[o][0] >= 0) ++claims[g[o][0]], ids.push_back(int32_t(o));
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    auto fa = freq.find(a), fb = freq.find(b);
    return (fa == freq.end() ? 0 : fa->second) > (fb == freq.end() ? 0 : fb->second);
  });
  std::vector<std::pair<int32_t, int32_t>> out;
  for (int32_t o : ids) {
    if (int64_t(out.size()) >= max_seeds) break;
    if (claims[g[size_t(o)][0]] == 1) out.emplace_back(o, g[size_t(o)][0]);
  }
  return out;
}

VocabAttack oracle_attack(ReferenceModel& plain, ReferenceModel& obf, int64_t plain_bos, int64_t obf_bos,
                          int64_t plain_eos, int64_t obf_eos, const Query& q_in, const OracleOptions& opt) {
  const auto t0 = Clock::now();
  const int64_t n = plain.vocab_size(), np = obf.vocab_size();
  require(np >= n, "oracle attack", "the served vocabulary (" + std::to_string(np) + ") is smaller than the public one (" +
                                        std::to_string(n) + ")");
  require(opt.signature_k >= 2 && opt.signature_k <= n, "oracle attack", "signature length must be in [2, n]");
  VocabAttack out;
  out.attack = "Oracle";
  // A homophonic served model (n' > n): many-to-one. Copies are grouped first (cluster_copies);
  // the one-to-one matching then runs over groups, and every copy gets its group's guesses.
  std::optional<Groups> groups;
  nlohmann::json group_info;
  Query q = q_in;
  if (np > n) {
    groups = cluster_copies(obf.weights(), n, group_info);
    std::unordered_set<int32_t> seen;
    std::vector<int32_t> gq;
    for (int32_t id : q_in.obf_ids)
      if (id >= 0 && id < np && seen.insert(groups->of[size_t(id)]).second) gq.push_back(groups->of[size_t(id)]);
    std::sort(gq.begin(), gq.end());
    q.obf_ids = gq;
    if (obf_bos >= 0) obf_bos = groups->of[size_t(obf_bos)];
    if (obf_eos >= 0) obf_eos = groups->of[size_t(obf_eos)];
  }
  const Groups* G = groups ? &*groups : nullptr;
  auto over_budget = [&] { return opt.budget_seconds > 0 && internal::seconds_since(t0) > opt.budget_seconds; };

  // Which tokens to run: everything by default; with a budget the most likely after bos on
  // each side (what a frugal attacker would spend its forward passes on) and every queried id.
  std::vector<int32_t> seeds_o, seeds_p;
  if (obf_bos >= 0 && plain_bos >= 0) seeds_o.push_back(int32_t(obf_bos)), seeds_p.push_back(int32_t(plain_bos));
  if (obf_eos >= 0 && plain_eos >= 0 && obf_eos != obf_bos)
    seeds_o.push_back(int32_t(obf_eos)), seeds_p.push_back(int32_t(plain_eos));
  int64_t used = 0;  // external seeds taken
  {
    std::unordered_set<int32_t> have_o(seeds_o.begin(), seeds_o.end()), have_p(seeds_p.begin(), seeds_p.end());
    for (auto [a, b] : opt.seeds) {
      require(a >= 0 && a < n && b >= 0 && b < n, "oracle attack", "seed id out of range");
      if (used >= opt.anchors || have_o.count(a) || have_p.count(b)) continue;
      have_o.insert(a), have_p.insert(b);
      seeds_o.push_back(a), seeds_p.push_back(b);
      ++used;
    }
  }
  std::vector<int32_t> must_o = q.obf_ids;
  must_o.insert(must_o.end(), seeds_o.begin(), seeds_o.end());
  Side o = G ? run_side(obf, obf_bos, group_rows(obf, *G, obf_bos, opt.rows, must_o), opt.signature_k, G)
             : run_side(obf, obf_bos, pick_rows(obf, obf_bos, opt.rows, must_o), opt.signature_k);
  Side p = run_side(plain, plain_bos, pick_rows(plain, plain_bos, opt.rows, seeds_p), opt.signature_k);
  const double t_forward = internal::seconds_since(t0);

  std::vector<std::pair<int32_t, int32_t>> seeds;  // (obf id, plain id), published
  for (size_t i = 0; i < seeds_o.size(); ++i) seeds.emplace_back(seeds_o[i], seeds_p[i]);

  // The obfuscated rows matched against every plaintext row: the queried ids and the most
  // likely tokens after bos (anchors come from those; rare tokens make poor anchors anyway).
  std::vector<int32_t> mo;
  {
    std::vector<int32_t> by_lik(o.rows.size());
    std::iota(by_lik.begin(), by_lik.end(), 0);
    std::vector<char> take(o.rows.size(), 0);
    for (int32_t id : must_o)
      if (o.row_of[size_t(id)] >= 0) take[size_t(o.row_of[size_t(id)])] = 1;
    const int64_t extra = std::min<int64_t>(opt.match_rows, int64_t(o.rows.size()));
    // Ranked by the served model's own answer after bos: the attacker's frequency list.
    std::vector<double> lik(o.rows.size(), 0.0);
    obf.reset();
    if (obf_bos >= 0) {
      const std::vector<double> lg = obf.step(G ? int64_t(G->rep[size_t(obf_bos)]) : obf_bos);
      for (size_t r = 0; r < o.rows.size(); ++r)
        lik[r] = G ? lg[size_t(G->rep[size_t(o.rows[r])])] : lg[size_t(o.rows[r])];
    }
    obf.reset();
    std::partial_sort(by_lik.begin(), by_lik.begin() + extra, by_lik.end(),
                      [&](int32_t a, int32_t b) { return lik[size_t(a)] > lik[size_t(b)]; });
    for (int64_t i = 0; i < extra; ++i) take[size_t(by_lik[size_t(i)])] = 1;
    for (size_t r = 0; r < take.size(); ++r)
      if (take[r]) mo.push_back(int32_t(r));
  }
  std::vector<int32_t> all_p(p.rows.size());
  std::iota(all_p.begin(), all_p.end(), 0);

  // Round 0: signatures only.
  std::vector<int32_t> all_o(o.rows.size());
  std::iota(all_o.begin(), all_o.end(), 0);
  // Features are standardized over ALL rows of a side (the same population on both sides), and
  // only then cut to the rows being matched.
  Matching m = match(internal::gather_rows(signature_features(o, all_o), mo), signature_features(p, all_p), opt.topk);
  out.parts.emplace_back("round 0 (signatures)", guesses_of(m, mo, o, p, q, opt.topk));
  nlohmann::json rounds = nlohmann::json::array();
  rounds.push_back({{"round", 0}, {"features", "sorted signatures"}, {"anchors", 0},
                    {"seconds", internal::seconds_since(t0)}});
  bool cut = false;
  for (int r = 1; r <= opt.rounds; ++r) {
    if (over_budget()) {
      cut = true;
      break;
    }
    const int64_t want = std::min<int64_t>(opt.anchors, int64_t(128) << (2 * (r - 1)));
    const auto anchors = pick_anchors(m, mo, o, p, seeds, want);
    std::vector<int32_t> ao, ap;
    for (auto [a, b] : anchors) ao.push_back(a), ap.push_back(b);
    m = match(internal::gather_rows(anchored_features(o, all_o, ao), mo), anchored_features(p, all_p, ap), opt.topk);
    out.parts.emplace_back("round " + std::to_string(r) + " (" + std::to_string(anchors.size()) + " anchors)",
                           guesses_of(m, mo, o, p, q, opt.topk));
    rounds.push_back({{"round", r}, {"features", "anchored rows + columns"}, {"anchors", int64_t(anchors.size())},
                      {"seconds", internal::seconds_since(t0)}});
  }
  out.guesses = guesses_of(m, mo, o, p, q, opt.topk);
  if (G) {
    // Back from groups to the served ids: every queried copy answers with its group's guesses.
    auto expand = [&](const Guesses& g) {
      Guesses e(static_cast<size_t>(np));
      for (int32_t id : q_in.obf_ids)
        if (id >= 0 && id < np) e[size_t(id)] = g[size_t(G->of[size_t(id)])];
      return e;
    };
    out.guesses = expand(out.guesses);
    for (auto& [name, g] : out.parts) g = expand(g);
  }
  out.seconds = internal::seconds_since(t0);
  out.details = {{"rows_obf", int64_t(o.rows.size())},
                 {"rows_matched", int64_t(mo.size())},
                 {"rows_plain", int64_t(p.rows.size())},
                 {"signature_k", opt.signature_k},
                 {"seeds", int64_t(seeds.size())},
                 {"external_seeds", used},
                 {"forward_seconds", t_forward},
                 {"rounds", rounds},
                 {"budget_cut", cut}};
  if (G) out.details["homophones"] = group_info;
  return out;
}

}  // namespace aloepri::audit
