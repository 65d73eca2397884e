// The streaming obfuscation executor: plaintext layer in, obfuscated layer out, never the whole
// model in memory (peak: the key-matrix base, one layer, and the embedding/head).
#include <malloc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>

#include "aloepri/error.h"
#include "aloepri/forward.h"
#include "aloepri/linalg.h"
#include "aloepri/keyfile.h"
#include "aloepri/mmap.h"
#include "aloepri/model.h"
#include "aloepri/obfuscate.h"
#include "aloepri/output.h"
#include "aloepri/progress.h"
#include "aloepri/safetensors.h"
#include "aloepri/write_behind.h"

namespace fs = std::filesystem;

namespace aloepri {

using obf::KeymatVariant;
using obf::Mat;

ObfuscationParams ObfuscationParams::exact() {
  ObfuscationParams p;
  p.lambda = 0;
  p.expansion = 0;
  p.alpha_e = p.alpha_h = 0;
  p.beta = 1;
  // Well-conditioned value maps (issue 7, docs/RESULTS.md "Well-conditioned value maps"): exact for any cond(U_j), and
  // q4_0 / q8_0 exports keep the plaintext model's accuracy (the report's Gaussian U_j does not).
  p.value_cond = 4;
  return p;
}

ObfuscationParams ObfuscationParams::profile(const std::string& name) {
  if (name == "paper") return ObfuscationParams();
  // The default (issue 14, docs/THREAT_MODEL.md "Why the default is exact"): every noise level that
  // keeps the model useful leaks the whole vocabulary to the strongest attacker measured (the
  // oracle and drift-robust NN attacks), so noise buys no protection against the server and only
  // costs accuracy; the exact transforms keep the model's answers and still hide token ids from
  // anyone who lacks the weights.
  if (name == "exact") return exact();
  if (name == "noise") {
    // The former default (issue 6's measured frontier point on aloe-mini, docs/RESULTS.md
    // "Accuracy audit"): the report's structure with half its embedding noise. Global noise
    // scale: the per-row rule costs far less accuracy but lets VMA recover most tokens at the
    // same alpha.
    ObfuscationParams p;
    p.alpha_e = 0.5;
    // cond(U_j) = 4 instead of the report's Gaussian U_j (issue 7, docs/RESULTS.md "Well-conditioned value maps"): q4_0
    // GGUF exports then lose no more than the plaintext model's; the weight attacks are unchanged
    // (they never read W_v / W_o) and an orthogonal U_j (cond 1) would hand the value-path eigen
    // attack most victim tokens.
    p.value_cond = 4;
    return p;
  }
  if (name == "default")
    // Renamed rather than redefined, so that an old command line cannot silently change meaning.
    throw Error("--profile", "'default' was renamed: the default is now 'exact' (no flag needed), the former "
                "default (alpha_e 0.5) is 'noise'; see docs/THREAT_MODEL.md", kExitUsage);
  std::string all;
  for (const auto& n : profile_names()) all += (all.empty() ? "" : ", ") + n;
  throw Error("--profile", "unknown profile '" + name + "' (supported: " + all + ")", kExitUsage);
}

std::vector<std::string> ObfuscationParams::profile_names() { return {"exact", "noise", "paper"}; }

std::string adaptation_key_id(const Seed& seed) {
  RngStream r(seed, "adapt/key-id");
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)r.next_u64());
  return b;
}

bool ObfuscationParams::is_exact_setting() const {
  return lambda == 0 && alpha_e == 0 && alpha_h == 0 && beta == 1 && !router_norm &&
         (expansion == 0 || keymat == KeymatVariant::ExactNorm);
}

nlohmann::json ObfuscationParams::to_json() const {
  nlohmann::json j = {{"lambda", lambda},
          {"expansion", expansion},
          {"alpha_e", alpha_e},
          {"alpha_h", alpha_h},
          {"beta", beta},
          {"gamma", gamma},
          {"keymat", obf::keymat_name(keymat)},
          {"kappa", kappa == KappaMode::Gaussian ? "gaussian" : "calibrated"},
          {"noise_scale", noise_scale == obf::NoiseScale::Global ? "global" : "per-row"},
          {"head_scale_range", head_scale_range},
          {"ffn_scale_range", ffn_scale_range},
          {"per_group_perm", per_group_perm},
          {"value_cond", value_cond}};
  if (router_norm) j["router_norm"] = true;  // absent when off: records of earlier runs stay as they were
  return j;
}

namespace {

std::vector<float> as_vec(const Tensor& t) { return t.data; }

// Reads a plaintext tensor as f32 and drops its pages of the read-only mapping afterwards, so
// resident memory stays at one layer instead of growing with every layer read (file-backed
// pages count in RSS until the kernel evicts them).
void release_range(const uint8_t* p, size_t n) {
  const uintptr_t pg = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (uintptr_t(p) + pg - 1) & ~(pg - 1), e = (uintptr_t(p) + n) & ~(pg - 1);
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

Tensor load_and_release(const HFModel& m, const std::string& name) {
  const TensorView& v = m.weights().get(name);
  Tensor t = v.to_f32();
  release_range(v.data, v.nbytes);
  return t;
}

// Rows of a stored [n, d] tensor straight from the mapping (converted to f32), pages released
// behind the reader: the embedding / head is never held whole in f32.
obf::RowFetch mapped_rows(const TensorView& v) {
  return [&v](int64_t r0, int64_t m, float* dst) {
    const int64_t d = v.shape.at(1);
    const size_t es = dtype_size(v.dtype);
    const uint8_t* src = v.data + size_t(r0 * d) * es;
    convert_to_f32(v.dtype, src, dst, size_t(m * d));
    release_range(src, size_t(m * d) * es);
  };
}

Tensor mat_f32(const Mat& m) { return obf::to_tensor(m); }

double fro2(const Tensor& t) {
  double s = 0;
  for (float x : t.data) s += double(x) * x;
  return s;
}

// The plaintext forward of the calibration ids, one layer at a time (the engine's LayerForward, the
// code the reference forward runs), alongside the obfuscated residual stream sum_k x_k P_k, so
// kappa = sqrt(d/d') mean_t ||x~_t|| / ||x_t|| is measured at every RMSNorm on real activations
// (method.md section 5 [choice]). Holds the two streams only; the layer is the caller's.
class Calibrator {
 public:
  Calibrator(const ModelConfig& c, const std::vector<int64_t>& ids, const TensorView& embed, const Tensor& Pemb)
      : fwd_(c), T_(int64_t(ids.size())), d_(c.hidden_size), dp_(Pemb.cols()) {
    const size_t es = dtype_size(embed.dtype);
    R_.assign(size_t(T_ * d_), 0.0);
    std::vector<float> row(static_cast<size_t>(d_));
    for (int64_t t = 0; t < T_; ++t) {
      require(ids[t] >= 0 && ids[t] < c.vocab_size, "--calib-ids",
              "token id " + std::to_string(ids[t]) + " is outside the vocabulary", kExitUsage);
      convert_to_f32(embed.dtype, embed.data + size_t(ids[t] * d_) * es, row.data(), size_t(d_));
      std::copy(row.begin(), row.end(), R_.begin() + t * d_);
    }
    Rt_.assign(size_t(T_ * dp_), 0.0);
    add_write(R_, Pemb);
  }

  double kappa() const {
    double acc = 0;
    for (int64_t t = 0; t < T_; ++t) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < d_; ++k) a += R_[t * d_ + k] * R_[t * d_ + k];
      for (int64_t k = 0; k < dp_; ++k) b += Rt_[t * dp_ + k] * Rt_[t * dp_ + k];
      acc += std::sqrt(b / a);
    }
    return std::sqrt(double(d_) / double(dp_)) * acc / double(T_);
  }

  // The layer's attention (ffn) sublayer adds x_k to the plaintext stream and x_k Po (Pd) to the
  // obfuscated one.
  void attention(int64_t l, const LayerWeights& L, const Tensor& Po) { add(fwd_.attention(l, L, R_), Po); }
  void ffn(int64_t l, const LayerWeights& L, const Tensor& Pd) { add(fwd_.ffn(l, L, R_), Pd); }

 private:
  void add(const std::vector<double>& a, const Tensor& P) {
    for (size_t i = 0; i < R_.size(); ++i) R_[i] += a[i];
    add_write(a, P);
  }
  void add_write(const std::vector<double>& a, const Tensor& P) {  // Rt += a P
    const std::vector<double> P64(P.data.begin(), P.data.end());
    linalg::gemm(false, false, T_, dp_, d_, 1.0, a.data(), d_, P64.data(), dp_, 1.0, Rt_.data(), dp_);
  }

  LayerForward fwd_;
  int64_t T_, d_, dp_;
  std::vector<double> R_, Rt_;  // [T, d], [T, d']
};

void copy_if_exists(const std::string& from_dir, const std::string& name, const AtomicDir& out) {
  fs::path src = fs::path(from_dir) / name;
  std::error_code ec;
  if (!fs::is_regular_file(src, ec)) return;
  fs::copy_file(src, out.file(name), fs::copy_options::overwrite_existing, ec);
  if (ec) throw Error(src.string(), "cannot copy: " + ec.message(), kExitError);
}

// Maps every token id field (scalar or list) through tau.
void remap_ids(nlohmann::json& j, const std::vector<int64_t>& tau, const std::string& where) {
  for (const char* k : {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"}) {
    auto it = j.find(k);
    if (it == j.end() || it->is_null()) continue;
    auto map1 = [&](const nlohmann::json& v) -> nlohmann::json {
      if (!v.is_number_integer()) throw Error(where, std::string("field '") + k + "' is not a token id");
      int64_t id = v.get<int64_t>();
      if (id < 0 || id >= int64_t(tau.size()))
        throw Error(where, std::string("field '") + k + "' = " + std::to_string(id) + " is outside the vocabulary");
      return tau[size_t(id)];
    };
    if (it->is_array()) {
      for (auto& v : *it) v = map1(v);
    } else {
      *it = map1(*it);
    }
  }
}

std::string dtype_torch_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    default: throw Error("--dtype", "unsupported output dtype " + dtype_name(t), kExitUsage);
  }
}

}  // namespace

std::vector<int64_t> published_token_ids(const ModelConfig& c, const std::string& model_dir) {
  std::vector<int64_t> ids;
  auto collect = [&](const nlohmann::json& j) {
    for (const char* k : {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"}) {
      auto it = j.find(k);
      if (it == j.end() || it->is_null()) continue;
      if (it->is_number_integer()) ids.push_back(it->get<int64_t>());
      else if (it->is_array())
        for (const auto& v : *it)
          if (v.is_number_integer()) ids.push_back(v.get<int64_t>());
    }
  };
  if (c.raw.is_object()) collect(c.raw);
  if (c.bos_token_id) ids.push_back(*c.bos_token_id);
  if (c.eos_token_id) ids.push_back(*c.eos_token_id);
  const fs::path gen = fs::path(model_dir) / "generation_config.json";
  std::error_code ec;
  if (fs::is_regular_file(gen, ec)) {
    try {
      collect(nlohmann::json::parse(read_file(gen.string())));
    } catch (const nlohmann::json::exception& e) {
      throw Error(gen.string(), std::string("invalid JSON: ") + e.what());
    }
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  ids.erase(std::remove_if(ids.begin(), ids.end(), [&](int64_t t) { return t < 0 || t >= c.vocab_size; }), ids.end());
  return ids;
}

nlohmann::json obfuscated_config(const ModelConfig& plain, int64_t obf_hidden, double obf_eps,
                                 const std::vector<int64_t>& tau, const std::string& torch_dtype) {
  ModelConfig c = plain;
  c.hidden_size = obf_hidden;
  c.tie_word_embeddings = false;
  c.rms_norm_eps = obf_eps;
  c.torch_dtype = torch_dtype;
  // ModelConfig's own ids are rewritten from the remapped raw fields below.
  c.bos_token_id.reset();
  c.eos_token_id.reset();
  nlohmann::json j = c.to_json();
  for (const char* k : {"bos_token_id", "eos_token_id", "pad_token_id"})
    if (plain.raw.contains(k)) j[k] = plain.raw[k];
  if (!plain.raw.contains("bos_token_id") && plain.bos_token_id) j["bos_token_id"] = *plain.bos_token_id;
  if (!plain.raw.contains("eos_token_id") && plain.eos_token_id) j["eos_token_id"] = *plain.eos_token_id;
  remap_ids(j, tau, "config.json");
  j["head_dim"] = plain.head_dim;  // explicit: d' != heads * head_dim
  j.erase("aloepri_adapted");      // client-side record of a noise-aware adaptation: never served
  return j;
}

namespace {

// One obfuscated tensor in file order, and the step that computes it: 0 the embedding, 1 + l
// layer l, L + 1 the final norm and the head. Steps are the unit of --shard.
struct OutTensor {
  TensorSpec spec;
  int64_t step;
};

// np: the obfuscated vocabulary n' (n plus the homophone copies).
std::vector<OutTensor> declare_outputs(const ModelConfig& c, int64_t dp, DType dt, int64_t np) {
  const int64_t n = np, L = c.num_hidden_layers, dh = c.head_dim;
  const int64_t m = c.num_attention_heads, mkv = c.num_key_value_heads, ff = c.intermediate_size;
  using tensor_names::layer;
  std::vector<OutTensor> v;
  // Norm weights and biases follow the output dtype too, for a uniform standard checkpoint.
  auto add = [&](const std::string& name, std::vector<int64_t> shape, int64_t step) {
    v.push_back({{name, dt, std::move(shape)}, step});
  };
  add(tensor_names::embed(), {n, dp}, 0);
  for (int64_t l = 0; l < L; ++l) {
    add(layer(l, "input_layernorm.weight"), {dp}, 1 + l);
    add(layer(l, "self_attn.q_proj.weight"), {m * dh, dp}, 1 + l);
    add(layer(l, "self_attn.k_proj.weight"), {mkv * dh, dp}, 1 + l);
    add(layer(l, "self_attn.v_proj.weight"), {mkv * dh, dp}, 1 + l);
    if (c.attention_bias) {
      add(layer(l, "self_attn.q_proj.bias"), {m * dh}, 1 + l);
      add(layer(l, "self_attn.k_proj.bias"), {mkv * dh}, 1 + l);
      add(layer(l, "self_attn.v_proj.bias"), {mkv * dh}, 1 + l);
    }
    if (c.qk_norm) {
      add(layer(l, "self_attn.q_norm.weight"), {dh}, 1 + l);
      add(layer(l, "self_attn.k_norm.weight"), {dh}, 1 + l);
    }
    add(layer(l, "self_attn.o_proj.weight"), {dp, m * dh}, 1 + l);
    if (c.o_bias()) add(layer(l, "self_attn.o_proj.bias"), {dp}, 1 + l);
    add(layer(l, "post_attention_layernorm.weight"), {dp}, 1 + l);
    if (c.is_moe_layer(l)) {  // router, then each expert slot's gate, up, down
      using tensor_names::ExpertProj;
      const int64_t fe = c.moe_intermediate_size;
      add(tensor_names::router(l), {c.num_experts, dp}, 1 + l);
      for (int64_t e = 0; e < c.num_experts; ++e) {
        add(tensor_names::expert(l, e, ExpertProj::Gate), {fe, dp}, 1 + l);
        add(tensor_names::expert(l, e, ExpertProj::Up), {fe, dp}, 1 + l);
        add(tensor_names::expert(l, e, ExpertProj::Down), {dp, fe}, 1 + l);
      }
      continue;
    }
    add(layer(l, "mlp.gate_proj.weight"), {ff, dp}, 1 + l);
    add(layer(l, "mlp.up_proj.weight"), {ff, dp}, 1 + l);
    add(layer(l, "mlp.down_proj.weight"), {dp, ff}, 1 + l);
  }
  add(tensor_names::final_norm(), {dp}, L + 1);
  add(tensor_names::lm_head(), {n, dp}, L + 1);
  return v;
}

// Asks the kernel to read a step's plaintext tensors ahead (MADV_WILLNEED starts the reads and
// returns), so a checkpoint that is not in the page cache arrives while the previous step
// computes instead of one page fault at a time.
void prefetch_step(const HFModel& m, const std::vector<OutTensor>& outs, int64_t step) {
  const uintptr_t pg = uintptr_t(::sysconf(_SC_PAGESIZE));
  for (const auto& o : outs) {
    if (o.step != step || !m.weights().has(o.spec.name)) continue;
    const TensorView& v = m.weights().get(o.spec.name);
    const uintptr_t b = uintptr_t(v.data) & ~(pg - 1), e = uintptr_t(v.data) + v.nbytes;
    if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_WILLNEED);
  }
}

// A sparse layer's FFN, written in declare_outputs' order: the router (rows permuted by Z_router,
// then read through Q like any reader), then for each slot s the plaintext expert Z_router^-1(s)
// with its own channel keys, readers through their own Q instances, down through the shared Pd.
// One expert in memory at a time.
void obfuscate_moe_ffn(const HFModel& plain, const Seed& seed, int64_t l, const std::vector<float>& ffn_norm,
                       const obf::KeyMatrices& K, const Tensor& Pd, double scale_range, bool router_norm,
                       const std::function<void(const std::string&, Tensor)>& put) {
  using tensor_names::ExpertProj;
  const ModelConfig& c = plain.config();
  const std::string ls = "layer/" + std::to_string(l);
  const obf::MoeKeys MK = obf::draw_moe_keys(seed, l, c.num_experts, c.moe_intermediate_size, scale_range);
  Tensor router = obf::read_residual(
      obf::permute_router(load_and_release(plain, tensor_names::router(l)), MK.expert_slot), ffn_norm,
      mat_f32(K.Q(ls + "/router")));
  if (router_norm) obf::normalise_rows(router);
  put(tensor_names::router(l), std::move(router));
  const std::vector<int64_t> owner = invert_permutation(MK.expert_slot);  // slot -> plaintext expert
  for (int64_t s = 0; s < c.num_experts; ++s) {
    const int64_t e = owner[size_t(s)];
    auto X = [&](ExpertProj p) { return load_and_release(plain, tensor_names::expert(l, e, p)); };
    obf::FfnHF S = obf::transform_ffn_channels(obf::FfnHF{X(ExpertProj::Gate), X(ExpertProj::Up), X(ExpertProj::Down)},
                                               MK.experts[size_t(e)]);
    const std::string es = ls + "/expert/" + std::to_string(e);
    // The double Q instance dies inside, before the GEMM that uses its f32 copy.
    auto reader_key = [&](const char* role) { return mat_f32(K.Q(es + role)); };
    put(tensor_names::expert(l, s, ExpertProj::Gate), obf::read_residual(std::move(S.gate), ffn_norm, reader_key("/gate")));
    put(tensor_names::expert(l, s, ExpertProj::Up), obf::read_residual(std::move(S.up), ffn_norm, reader_key("/up")));
    put(tensor_names::expert(l, s, ExpertProj::Down), obf::write_residual(S.down, Pd));
  }
}

// Steps [first, last) of shard `index` of `count`: contiguous, balanced by output bytes (a step
// goes to the shard its byte midpoint falls in). A shard may be empty when count > steps.
std::pair<int64_t, int64_t> shard_steps(const std::vector<OutTensor>& outs, int64_t steps, int index, int count) {
  std::vector<double> w(size_t(steps), 0.0);
  double total = 0;
  for (const auto& o : outs) {
    w[size_t(o.step)] += double(o.spec.nbytes());
    total += double(o.spec.nbytes());
  }
  int64_t first = steps, last = 0;
  double before = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const int owner = std::min(count - 1, int((before + w[size_t(s)] / 2) / total * count));
    before += w[size_t(s)];
    if (owner == index) {
      first = std::min(first, s);
      last = s + 1;
    }
  }
  if (first >= last) first = last = 0;
  return {first, last};
}

// Large blocks from the heap, and freed memory kept for reuse: every layer allocates tensors of
// the same sizes again, and a fresh mmap'd block costs a page fault and a kernel zero-fill per
// page (the largest non-GEMM cost in a profile of this executor). Process-wide; the peak stays
// one layer's working set because the same sizes recur.
// What the write-behind queue may hold back: one large tensor of a 7B layer is about 0.2 GB, so
// this keeps the computation one tensor ahead of the disk without growing the peak by a layer.
constexpr size_t kWriteBehindBytes = size_t(256) << 20;

void keep_freed_memory() {
  ::mallopt(M_MMAP_MAX, 0);
  ::mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

std::string part_name(int index, int count, const char* ext) {
  char b[64];
  std::snprintf(b, sizeof b, "part-%05d-of-%05d.%s", index, count, ext);
  return b;
}

std::string parts_dir(const std::string& out_dir) {
  std::string d = out_dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return d + ".parts";
}

// Writes a part: the tensors' bytes in file order, converted to the output dtype, and a JSON
// record of where each one lies, so the merge writes exactly what a whole run writes.
class PartWriter {
 public:
  PartWriter(const std::string& dir, int index, int count, bool force)
      : bin_(dir + "/" + part_name(index, count, "bin"), force),
        json_path_(dir + "/" + part_name(index, count, "json")),
        force_(force) {
    refuse_existing(json_path_, force);
  }
  void put(const std::string& name, DType dt, const float* data, size_t numel) {
    const size_t es = dtype_size(dt);
    entries_.push_back({{"name", name}, {"offset", bin_.tell()}, {"nbytes", numel * es}});
    constexpr size_t kChunk = 1 << 16;
    std::vector<uint8_t> buf(std::min(numel, kChunk) * es);
    for (size_t i = 0; i < numel; i += kChunk) {
      const size_t m = std::min(kChunk, numel - i);
      convert_from_f32(dt, data + i, buf.data(), m);
      bin_.write(buf.data(), m * es);
    }
  }
  void commit(nlohmann::json info) {
    bin_.commit();
    info["tensors"] = entries_;
    write_file_atomic(json_path_, info.dump(1) + "\n", force_);
  }

 private:
  AtomicFile bin_;
  std::string json_path_;
  bool force_;
  nlohmann::json entries_ = nlohmann::json::array();
};

// What every part records of the run it belongs to; the merge requires all parts to agree.
nlohmann::json part_identity(const ModelConfig& c, const Seed& seed, const ObfuscateOptions& opt, int64_t dp,
                             DType dt) {
  const ObfuscationParams& P = opt.params;
  nlohmann::json j = {{"format", "aloepri-obfuscate-part-v1"},
          {"homophones", opt.copies.empty() ? nlohmann::json() : copies_to_json(opt.copies)},
          {"key_id", adaptation_key_id(seed)},
          {"params", P.to_json()},
          {"dtype", dtype_name(dt)},
          {"obf_hidden_size", dp},
          {"model", {{"layers", c.num_hidden_layers}, {"hidden", c.hidden_size}, {"vocab", c.vocab_size},
                     {"ffn", c.intermediate_size}, {"heads", c.num_attention_heads},
                     {"kv_heads", c.num_key_value_heads}, {"head_dim", c.head_dim}}}};
  if (c.is_moe())
    j["model"]["experts"] = {c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size};
  return j;
}

// The copy table of --homophones: one entry per plaintext id, >= 1 each, and the published ids
// (bos, eos, pad) with exactly one copy, so config.json and the engine's stop id name the only one.
void check_copies(const ModelConfig& c, const ObfuscateOptions& opt, const std::string& model_dir) {
  if (opt.copies.empty()) return;
  require(int64_t(opt.copies.size()) == c.vocab_size, "--homophones",
          "copy table has " + std::to_string(opt.copies.size()) + " entries, the model's vocab_size is " +
              std::to_string(c.vocab_size), kExitUsage);
  for (int64_t k : opt.copies) require(k >= 1, "--homophones", "every id needs at least one copy", kExitUsage);
  for (int64_t t : published_token_ids(c, model_dir))
    require(opt.copies[size_t(t)] == 1, "--homophones",
            "published special id " + std::to_string(t) + " must keep one copy", kExitUsage);
}

// Returns true when the checkpoint already carries the key's embedding/head noise
// (aloepri_adapted.emb_head_noise = "in_checkpoint"): the obfuscation then applies only the
// exact transforms to the embedding and head.
bool check_obfuscatable(const HFModel& plain, const Seed& seed, const ObfuscateOptions& opt,
                        const std::string& model_dir) {
  const ObfuscationParams& P = opt.params;
  const ModelConfig& c = plain.config();
  const std::string cfg_where = model_dir + "/config.json";
  require(c.head_dim % 2 == 0, cfg_where, "head_dim must be even for RoPE");
  require(P.beta >= 1, "--beta", "must be >= 1", kExitUsage);
  require(P.alpha_e >= 0 && P.alpha_h >= 0, "--alpha-e/--alpha-h", "must be >= 0", kExitUsage);
  require(P.value_cond == 0 || P.value_cond >= 1, "--value-cond",
          "must be 0 (the report's Gaussian value map) or >= 1", kExitUsage);
  for (const auto& name : plain.weights().names()) {
    const auto& t = plain.weights().get(name);
    if (!dtype_is_float(t.dtype))
      throw Error("tensor '" + name + "' in " + t.file, "dtype " + dtype_name(t.dtype) + " cannot be obfuscated "
                  "(supported: F32, F16, BF16, F64)");
  }
  require(!P.router_norm || c.is_moe(), "--router-norm",
          "the " + family_name(c.family) + " model has no router (only qwen3_moe has one)", kExitUsage);
  if (P.kappa == KappaMode::Calibrated) {
    require(!c.is_moe(), "--kappa calibrated", "is not implemented for " + family_name(c.family) +
                                                   " (its calibration forward has no experts); use the default",
            kExitUsage);
    require(!opt.calib_ids.empty(), "--kappa calibrated", "needs calibration token ids (--calib-ids)", kExitUsage);
    // The calibration forward runs through every layer in order; a shard would need all of them.
    require(opt.shard_count == 0, "--shard", "is not supported with --kappa calibrated", kExitUsage);
  }
  if (c.raw.is_object() && c.raw.contains("aloepri_adapted")) {
    // A body fine-tuned for one key's embedding/head noise (tools/train/adapt.cpp): only that key
    // and those noise parameters reproduce the noise it expects.
    const nlohmann::json& a = c.raw["aloepri_adapted"];
    const std::string ns = P.noise_scale == obf::NoiseScale::Global ? "global" : "per-row";
    require(a.value("key_id", std::string()) == adaptation_key_id(seed), cfg_where,
            "this model was adapted to another key's noise (aloepri_adapted.key_id); obfuscate it with that key",
            kExitKeyMismatch);
    require(std::fabs(a.value("alpha_e", -1.0) - P.alpha_e) < 1e-12 && std::fabs(a.value("alpha_h", -1.0) - P.alpha_h) < 1e-12 &&
                a.value("noise_scale", std::string("global")) == ns,
            cfg_where,
            "this model was adapted to alpha_e " + a.value("alpha_e", nlohmann::json()).dump() + ", alpha_h " +
                a.value("alpha_h", nlohmann::json()).dump() + ", noise " + a.value("noise_scale", std::string("global")) +
                "; obfuscate it with the same noise parameters",
            kExitUsage);
    // Where the noise lives. "obfuscate" (or absent, older records): the checkpoint has the
    // public embedding/head and the obfuscation adds the key's draw, which the body was trained
    // against. "in_checkpoint": the draw was added before training and the embedding/head were
    // trained from it (aloe-adapt --train-vocab); adding it again would double it.
    const nlohmann::json where = a.contains("emb_head_noise") ? a["emb_head_noise"] : nlohmann::json("obfuscate");
    require(where.is_string() && (where == "obfuscate" || where == "in_checkpoint"), cfg_where,
            "aloepri_adapted.emb_head_noise must be \"obfuscate\" or \"in_checkpoint\", not " + where.dump());
    if (where == "in_checkpoint") {
      // The record's key and noise were checked above: the published parameters stay the ones
      // the draw was made with.
      require(!c.tie_word_embeddings && plain.weights().has(tensor_names::lm_head()), cfg_where,
              "aloepri_adapted.emb_head_noise is \"in_checkpoint\" but the model has no separate " +
                  tensor_names::lm_head() + " (tie_word_embeddings): the noisy head must be its own tensor");
      return true;
    }
  }
  return false;
}

DType output_dtype(const HFModel& plain, const ObfuscateOptions& opt) {
  return opt.dtype ? *opt.dtype : plain.weights().get(tensor_names::embed()).dtype;
}

// Everything after the tensors (config with eps' and the published ids, tokenizer files,
// generation config), the commit, and the fingerprints of both models.
void finish_checkpoint(const std::string& model_dir, const HFModel& plain, const VocabMap& vm,
                       int64_t dp, const std::string& torch_dtype, AtomicDir& out, const std::string& out_dir,
                       const ObfuscateOptions& opt, std::chrono::steady_clock::time_point t0, ObfuscateResult& res) {
  const ModelConfig& c = plain.config();
  // Published ids (eos, bos, pad) have one copy (allocate_copies' `single`): copy 0 is tau.
  const std::vector<int64_t> tau = vm.first_copies();
  // RMSNorm eps: exact when eps' = eps kappa^2 (see obf_keymat.h); one eps per config, so the
  // mean kappa^2 (all kappas are equal for the exact-norm variant and the exact setting).
  double k2 = 0;
  for (double k : res.kappas) k2 += k * k;
  res.obf_eps = c.rms_norm_eps * k2 / double(res.kappas.size());
  nlohmann::json cfg = obfuscated_config(c, dp, res.obf_eps, tau, torch_dtype);
  cfg["vocab_size"] = vm.size();  // n' = n + the homophone copies
  write_file_atomic(out.file("config.json"), cfg.dump(2) + "\n");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                        "vocab.json", "merges.txt", "added_tokens.json"})
    copy_if_exists(model_dir, f, out);
  fs::path gen = fs::path(model_dir) / "generation_config.json";
  if (fs::is_regular_file(gen)) {
    nlohmann::json g;
    try {
      g = nlohmann::json::parse(read_file(gen.string()));
    } catch (const nlohmann::json::exception& e) {
      throw Error(gen.string(), std::string("invalid JSON: ") + e.what());
    }
    remap_ids(g, tau, gen.string());
    write_file_atomic(out.file("generation_config.json"), g.dump(2) + "\n");
  }
  out.commit();
  {
    // Peak RSS of the transform itself (the fingerprints below stream both models through
    // their mmaps).
    struct rusage ru {};
    ::getrusage(RUSAGE_SELF, &ru);
    res.peak_rss_transform = uint64_t(ru.ru_maxrss) * 1024;
    res.seconds_transform = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // The two fingerprints are independent sequential hashes: one per core.
  auto plain_fp = std::async(std::launch::async, [&plain] { return plain.fingerprint(); });
  res.obf_fingerprint = HFModel(out_dir).fingerprint();
  res.plain_fingerprint = plain_fp.get();
  res.vocab_size = c.vocab_size;
  res.hidden = c.hidden_size;
  res.obf_hidden = dp;
  if (c.eos_token_id) res.obf_eos = tau[size_t(*c.eos_token_id)];
  if (c.bos_token_id) res.obf_bos = tau[size_t(*c.bos_token_id)];
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.record = {{"params", opt.params.to_json()},
                {"kappas", res.kappas},
                {"rms_norm_eps", res.obf_eps},
                {"hidden_size", c.hidden_size},
                {"obf_hidden_size", dp},
                {"eos_policy", "published"},  // method.md section 7: tau(eos) is in config.json
                {"calib_tokens", int64_t(opt.calib_ids.size())}};
  if (vm.homophonic()) {
    res.copies = vm.copy_counts();
    res.record["homophones"] = opt.homophone_info;
    res.record["homophones"]["extra"] = vm.size() - vm.plain_size();
    res.record["obf_vocab_size"] = vm.size();
  }
  if (c.raw.is_object() && c.raw.contains("aloepri_adapted") &&
      c.raw["aloepri_adapted"].value("emb_head_noise", std::string("obfuscate")) == "in_checkpoint")
    res.record["emb_head_noise"] = "in_checkpoint";  // alpha_e/alpha_h were drawn by aloe-adapt, not here
}

}  // namespace

ObfuscateResult obfuscate_model(const std::string& model_dir, const Seed& seed, const std::string& out_dir,
                                const ObfuscateOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  keep_freed_memory();
  const ObfuscationParams& P = opt.params;
  HFModel plain(model_dir);
  const ModelConfig& c = plain.config();
  const bool sharded = opt.shard_count > 0;
  require(!sharded || (opt.shard_index >= 0 && opt.shard_index < opt.shard_count), "--shard",
          "index must be in [0, N)", kExitUsage);
  const bool noise_in_checkpoint = check_obfuscatable(plain, seed, opt, model_dir);
  const double emb_alpha = noise_in_checkpoint ? 0.0 : P.alpha_e, head_alpha = noise_in_checkpoint ? 0.0 : P.alpha_h;
  const DType out_dtype = output_dtype(plain, opt);
  const std::string torch_dtype = dtype_torch_name(out_dtype);
  if (!sharded) refuse_existing(out_dir, opt.force);

  const int64_t n = c.vocab_size, d = c.hidden_size, L = c.num_hidden_layers, dh = c.head_dim;
  const int64_t m = c.num_attention_heads, mkv = c.num_key_value_heads, ff = c.intermediate_size;
  check_copies(c, opt, model_dir);
  const VocabMap vm(seed, n, opt.copies);
  const int64_t np = vm.size();
  const auto inv_freq = obf::rope_inv_freq(c);
  obf::KeyMatrices K(seed, d, P.expansion, P.lambda, P.keymat);
  const int64_t dp = K.dprime();
  const std::vector<OutTensor> outs = declare_outputs(c, dp, out_dtype, np);
  // Steps this run computes; a shard only keeps the kappa bookkeeping of the others.
  const auto [first, last] = sharded ? shard_steps(outs, L + 2, opt.shard_index, opt.shard_count)
                                     : std::pair<int64_t, int64_t>{0, L + 2};
  auto runs = [&, first = first, last = last](int64_t step) { return step >= first && step < last; };

  std::unique_ptr<AtomicDir> out;
  std::unique_ptr<SafetensorsWriter> w;
  std::unique_ptr<PartWriter> part;
  if (sharded) {
    std::error_code ec;
    fs::create_directories(parts_dir(out_dir), ec);
    if (ec) throw Error(parts_dir(out_dir), "cannot create directory: " + ec.message(), kExitError);
    part = std::make_unique<PartWriter>(parts_dir(out_dir), opt.shard_index, opt.shard_count, opt.force);
  } else {
    out = std::make_unique<AtomicDir>(out_dir, opt.force);
    w = std::make_unique<SafetensorsWriter>(out->temp_path(), opt.max_shard_bytes);
    for (const auto& o : outs) w->add(o.spec);
  }
  using tensor_names::layer;

  // Tensors are written behind the computation, in the order they are put (see write_behind.h).
  WriteBehind wb(
      [&](const std::string& name, const float* p, size_t numel) {
        if (part) part->put(name, out_dtype, p, numel);
        else w->write_f32(name, p, numel);
      },
      kWriteBehindBytes);
  auto put = [&](const std::string& name, Tensor t) { wb.push(name, std::move(t.data)); };
  auto put_vec = [&](const std::string& name, std::vector<float> v) { wb.push(name, std::move(v)); };

  ObfuscateResult res;
  std::vector<double> all_kappas;  // every norm's kappa up to here; res.kappas: this run's steps
  auto note_kappa = [&](int64_t step, double k) {
    all_kappas.push_back(k);
    if (runs(step)) res.kappas.push_back(k);
  };
  Progress prog("obfuscate", uint64_t(last - first), "steps");

  // Writers seen so far (for the Gaussian kappa: E||x~||^2 / E||x||^2 = mean_k ||P_k||_F^2 / d
  // for independent equal-variance Gaussian contributions x_k).
  double writer_fro = 0;
  int64_t writers = 0;
  std::unique_ptr<Calibrator> calib;
  auto kappa_now = [&]() {
    if (P.keymat == KeymatVariant::ExactNorm) return 1.0;  // ||xP|| = sqrt(d'/d) ||x|| exactly
    if (calib) return calib->kappa();
    return std::sqrt(writer_fro / double(writers) / double(dp));
  };
  // A step this run skips still counts its writer for the later kappas.
  const bool need_fro = P.keymat != KeymatVariant::ExactNorm;
  auto count_writer = [&](const std::string& role) {
    if (need_fro) writer_fro += fro2(mat_f32(K.P(role)));
    ++writers;
  };

  // Embedding.
  if (!runs(0)) {
    count_writer("emb");
  } else {
    Tensor Pemb = mat_f32(K.P("emb"));
    writer_fro += fro2(Pemb);
    ++writers;
    const TensorView& ev = plain.weights().get(tensor_names::embed());
    if (P.kappa == KappaMode::Calibrated) calib = std::make_unique<Calibrator>(c, opt.calib_ids, ev, Pemb);
    RngStream noise(seed, "noise/embed");
    auto copy_noise = [&seed](int64_t copy) { return RngStream(seed, "noise/embed/copy/" + std::to_string(copy)); };
    put(tensor_names::embed(), obf::transform_vocab_matrix(n, d, mapped_rows(ev), vm, emb_alpha, P.noise_scale,
                                                           noise, copy_noise, {}, Pemb, false));
    prog.advance();
  }

  obf::AttnKeyOptions ako;
  ako.beta = P.beta;
  ako.gamma = P.gamma;
  ako.scale_range = P.head_scale_range;
  ako.per_group_perm = P.per_group_perm;
  ako.value_cond = P.value_cond;
  ako.qk_norm = c.qk_norm;
  for (int64_t l = 0; l < L; ++l) {
    const std::string ls = "layer/" + std::to_string(l);
    if (!runs(1 + l)) {
      note_kappa(1 + l, kappa_now());
      count_writer(ls + "/o");
      note_kappa(1 + l, kappa_now());
      count_writer(ls + "/down");
      continue;
    }
    if (runs(2 + l)) prefetch_step(plain, outs, 2 + l);  // the next layer, read while this one computes
    auto T = [&](const std::string& suffix) { return load_and_release(plain, layer(l, suffix)); };
    // A reader's Q in f32; the double instance dies inside, before the GEMM that uses it.
    auto reader_key = [&](const char* role) { return mat_f32(K.Q(ls + role)); };
    // Attention.
    const double k_in = kappa_now();
    note_kappa(1 + l, k_in);
    put_vec(layer(l, "input_layernorm.weight"), std::vector<float>(static_cast<size_t>(dp), float(k_in)));
    // The layer in the engine's structure (HF layout), so that the calibrator runs the engine's
    // forward on it; the transforms then take its tensors over.
    LayerWeights LW;
    LW.attn_norm = T("input_layernorm.weight");
    LW.wq = T("self_attn.q_proj.weight");
    LW.wk = T("self_attn.k_proj.weight");
    LW.wv = T("self_attn.v_proj.weight");
    LW.wo = T("self_attn.o_proj.weight");
    if (c.attention_bias) {
      LW.bq = T("self_attn.q_proj.bias");
      LW.bk = T("self_attn.k_proj.bias");
      LW.bv = T("self_attn.v_proj.bias");
    }
    if (c.qk_norm) {
      LW.q_norm = T("self_attn.q_norm.weight");
      LW.k_norm = T("self_attn.k_norm.weight");
    }
    if (c.o_bias()) LW.bo = T("self_attn.o_proj.bias");
    Tensor Po = mat_f32(K.P(ls + "/o"));
    if (calib) calib->attention(l, LW, Po);
    const Tensor attn_norm = std::move(LW.attn_norm), o_bias = std::move(LW.bo);
    obf::AttnHF A{std::move(LW.wq),     std::move(LW.wk), std::move(LW.wv),     std::move(LW.wo),
                  std::move(LW.bq),     std::move(LW.bk), std::move(LW.bv),     std::move(LW.q_norm),
                  std::move(LW.k_norm)};
    writer_fro += fro2(Po);
    ++writers;
    {
      obf::AttnKeys AK = obf::draw_attn_keys(seed, l, m, mkv, dh, inv_freq, ako);
      obf::AttnHF S = obf::transform_attention_heads(A, AK, dh);
      A = obf::AttnHF();  // release the plaintext copies early
      const auto wn = as_vec(attn_norm);
      put(layer(l, "self_attn.q_proj.weight"), obf::read_residual(std::move(S.q), wn, reader_key("/q")));
      put(layer(l, "self_attn.k_proj.weight"), obf::read_residual(std::move(S.k), wn, reader_key("/k")));
      put(layer(l, "self_attn.v_proj.weight"), obf::read_residual(std::move(S.v), wn, reader_key("/v")));
      if (c.attention_bias) {
        put(layer(l, "self_attn.q_proj.bias"), S.bq);
        put(layer(l, "self_attn.k_proj.bias"), S.bk);
        put(layer(l, "self_attn.v_proj.bias"), S.bv);
      }
      if (c.qk_norm) {
        put(layer(l, "self_attn.q_norm.weight"), S.q_norm);
        put(layer(l, "self_attn.k_norm.weight"), S.k_norm);
      }
      put(layer(l, "self_attn.o_proj.weight"), obf::write_residual(S.o, Po));
      if (c.o_bias()) {
        Tensor bo({1, d});
        bo.data = o_bias.data;
        Tensor r({1, dp});
        linalg::gemm(false, false, 1, int(dp), int(d), 1.0f, bo.ptr(), int(d), Po.ptr(),
                    int(dp), 0.0f, r.ptr(), int(dp));
        put(layer(l, "self_attn.o_proj.bias"), r);
      }
    }
    // FFN.
    const double k_post = kappa_now();
    note_kappa(1 + l, k_post);
    put_vec(layer(l, "post_attention_layernorm.weight"), std::vector<float>(static_cast<size_t>(dp), float(k_post)));
    Tensor ffn_norm = T("post_attention_layernorm.weight");
    if (c.is_moe_layer(l)) {
      Tensor Pd = mat_f32(K.P(ls + "/down"));  // every expert writes through the layer's one map
      writer_fro += fro2(Pd);
      ++writers;
      obfuscate_moe_ffn(plain, seed, l, as_vec(ffn_norm), K, Pd, P.ffn_scale_range, P.router_norm, put);
      prog.advance();
      continue;
    }
    LW.ffn_norm = std::move(ffn_norm);
    LW.w_gate = T("mlp.gate_proj.weight");
    LW.w_up = T("mlp.up_proj.weight");
    LW.w_down = T("mlp.down_proj.weight");
    Tensor Pd = mat_f32(K.P(ls + "/down"));
    if (calib) calib->ffn(l, LW, Pd);
    ffn_norm = std::move(LW.ffn_norm);
    obf::FfnHF F{std::move(LW.w_gate), std::move(LW.w_up), std::move(LW.w_down)};
    writer_fro += fro2(Pd);
    ++writers;
    {
      obf::FfnHF S = obf::transform_ffn_channels(std::move(F), obf::draw_ffn_keys(seed, l, ff, P.ffn_scale_range));
      F = obf::FfnHF();
      const auto wn = as_vec(ffn_norm);
      put(layer(l, "mlp.gate_proj.weight"), obf::read_residual(std::move(S.gate), wn, reader_key("/gate")));
      put(layer(l, "mlp.up_proj.weight"), obf::read_residual(std::move(S.up), wn, reader_key("/up")));
      put(layer(l, "mlp.down_proj.weight"), obf::write_residual(S.down, Pd));
    }
    prog.advance();
  }

  // Final norm and head.
  if (runs(L + 1)) {
    const double k_f = kappa_now();
    note_kappa(L + 1, k_f);
    put_vec(tensor_names::final_norm(), std::vector<float>(static_cast<size_t>(dp), float(k_f)));
    calib.reset();
    const TensorView& hv =
        plain.weights().get(c.tie_word_embeddings ? tensor_names::embed() : tensor_names::lm_head());
    const auto wf = as_vec(plain.tensor_f32(tensor_names::final_norm()));
    RngStream noise(seed, "noise/head");
    auto copy_noise = [&seed](int64_t copy) { return RngStream(seed, "noise/head/copy/" + std::to_string(copy)); };
    put(tensor_names::lm_head(), obf::transform_vocab_matrix(n, d, mapped_rows(hv), vm, head_alpha, P.noise_scale,
                                                             noise, copy_noise, wf, mat_f32(K.Q("head")), true));
    prog.advance();
  }
  wb.drain();
  prog.finish();

  if (sharded) {
    nlohmann::json info = part_identity(c, seed, opt, dp, out_dtype);
    info["shard"] = opt.shard_index;
    info["of"] = opt.shard_count;
    info["steps"] = {first, last};
    info["kappas"] = res.kappas;
    part->commit(info);
    res.vocab_size = n;
    res.hidden = d;
    res.obf_hidden = dp;
    res.seconds = res.seconds_transform =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return res;
  }
  w->finish();
  finish_checkpoint(model_dir, plain, vm, dp, torch_dtype, *out, out_dir, opt, t0, res);
  return res;
}

std::string obfuscation_parts_dir(const std::string& out_dir) { return parts_dir(out_dir); }

ObfuscateResult merge_obfuscation_parts(const std::string& model_dir, const Seed& seed, const std::string& out_dir,
                                        const ObfuscateOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  HFModel plain(model_dir);
  const ModelConfig& c = plain.config();
  ObfuscateOptions o = opt;
  o.shard_count = 0;
  check_obfuscatable(plain, seed, o, model_dir);
  const DType out_dtype = output_dtype(plain, opt);
  const std::string pdir = parts_dir(out_dir);
  refuse_existing(out_dir, opt.force);

  // The parts present: part-<i>-of-<N>.json, one N, every i in [0, N).
  int count = -1;
  std::vector<nlohmann::json> infos;
  {
    std::error_code ec;
    if (!fs::is_directory(pdir, ec))
      throw Error(pdir, "no parts to merge (run `aloepri obfuscate ... --shard i/N` for every i first)", kExitUsage);
    std::vector<std::string> found;
    for (const auto& e : fs::directory_iterator(pdir)) {
      const std::string f = e.path().filename().string();
      int i = 0, nn = 0;
      char tail[8] = {0};
      if (std::sscanf(f.c_str(), "part-%d-of-%d.%5s", &i, &nn, tail) == 3 && std::string(tail) == "json" &&
          f == part_name(i, nn, "json")) {
        if (count >= 0 && nn != count)
          throw Error(pdir, "parts of different shard counts (" + std::to_string(count) + " and " +
                                std::to_string(nn) + "): remove the stale ones", kExitUsage);
        count = nn;
        found.push_back(f);
      }
    }
    if (count <= 0) throw Error(pdir, "no part-*-of-*.json files", kExitUsage);
    infos.resize(size_t(count));
    for (int i = 0; i < count; ++i) {
      const std::string p = pdir + "/" + part_name(i, count, "json");
      if (!fs::is_regular_file(p, ec))
        throw Error(p, "missing: shard " + std::to_string(i) + "/" + std::to_string(count) + " has not finished",
                    kExitUsage);
      try {
        infos[size_t(i)] = nlohmann::json::parse(read_file(p));
      } catch (const nlohmann::json::exception& e) {
        throw Error(p, std::string("invalid JSON: ") + e.what());
      }
    }
  }
  const int64_t dp = infos[0].value("obf_hidden_size", int64_t(0));
  check_copies(c, opt, model_dir);
  const VocabMap vm(seed, c.vocab_size, opt.copies);
  const nlohmann::json ident = part_identity(c, seed, opt, dp, out_dtype);
  const std::vector<OutTensor> outs = declare_outputs(c, dp, out_dtype, vm.size());
  const int64_t L = c.num_hidden_layers;
  std::map<std::string, std::pair<int, nlohmann::json>> where;  // tensor -> (part, entry)
  std::vector<double> kappas;
  int64_t next_step = 0;
  for (int i = 0; i < count; ++i) {
    const nlohmann::json& info = infos[size_t(i)];
    const std::string p = pdir + "/" + part_name(i, count, "json");
    for (const auto& [k, v] : ident.items())
      if (info.value(k, nlohmann::json()) != v)
        throw Error(p, "field '" + k + "' differs from this merge (" + info.value(k, nlohmann::json()).dump() +
                           " vs " + v.dump() + "): another key, model, profile or dtype",
                    kExitUsage);
    const auto steps = shard_steps(outs, L + 2, i, count);
    require(info.at("steps") == nlohmann::json{steps.first, steps.second}, p, "step range does not match", kExitError);
    if (steps.first < steps.second) {
      require(steps.first == next_step, p, "step ranges are not contiguous", kExitError);
      next_step = steps.second;
    }
    for (double k : info.at("kappas")) kappas.push_back(k);
    for (const auto& e : info.at("tensors")) where[e.at("name").get<std::string>()] = {i, e};
  }
  require(next_step == L + 2, pdir, "the parts do not cover every step", kExitError);
  require(int64_t(kappas.size()) == 2 * L + 1, pdir, "wrong number of kappas in the parts", kExitError);

  AtomicDir out(out_dir, opt.force);
  SafetensorsWriter w(out.temp_path(), opt.max_shard_bytes);
  for (const auto& t : outs) w.add(t.spec);
  std::vector<std::unique_ptr<MappedFile>> maps(static_cast<size_t>(count));
  Progress prog("merge", uint64_t(outs.size()), "tensors");
  for (const auto& t : outs) {
    auto it = where.find(t.spec.name);
    if (it == where.end()) throw Error(pdir, "no part holds tensor '" + t.spec.name + "'", kExitError);
    const auto& [i, e] = it->second;
    auto& mp = maps[size_t(i)];
    if (!mp) mp = std::make_unique<MappedFile>(pdir + "/" + part_name(i, count, "bin"));
    const uint64_t off = e.at("offset"), nb = e.at("nbytes");
    require(nb == t.spec.nbytes() && off + nb <= mp->size(), mp->path(),
            "tensor '" + t.spec.name + "' has the wrong size", kExitError);
    w.write(t.spec.name, mp->data() + off, size_t(nb));
    release_range(mp->data() + off, size_t(nb));
    prog.advance();
  }
  prog.finish();
  w.finish();
  maps.clear();

  ObfuscateResult res;
  res.kappas = kappas;
  finish_checkpoint(model_dir, plain, vm, dp, dtype_torch_name(out_dtype), out, out_dir, opt, t0, res);
  // The parts are intermediates of this output, which now exists in full.
  for (int i = 0; i < count; ++i)
    for (const char* ext : {"bin", "json"}) fs::remove(pdir + "/" + part_name(i, count, ext));
  std::error_code ec;
  fs::remove(pdir, ec);  // only if empty
  return res;
}

ObfuscationRecord ObfuscateResult::key_record() const {
  ObfuscationRecord rec;
  rec.plain_fingerprint = plain_fingerprint;
  rec.obf_fingerprint = obf_fingerprint;
  rec.vocab_size = vocab_size;
  rec.params = record;
  rec.extra = nlohmann::json::object();
  if (obf_eos) rec.extra["obf_eos_token_id"] = *obf_eos;
  if (obf_bos) rec.extra["obf_bos_token_id"] = *obf_bos;
  rec.extra["eos_policy"] = "published";
  rec.copies = copies;
  return rec;
}

}  // namespace aloepri
