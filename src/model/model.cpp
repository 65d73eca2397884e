// HF checkpoint directories: loading with shape checks against the layout (model/layout.h), the
// output head, the fingerprint, and the one writer of synthetic weights.
#include "aloepri/model/model.h"

#include "aloepri/model/layout.h"

#include <sodium.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "aloepri/core/error.h"
#include "aloepri/core/output.h"
#include "aloepri/core/progress.h"
#include "aloepri/core/rng.h"
#include "aloepri/core/sha256.h"

namespace fs = std::filesystem;

namespace aloepri {

namespace tensor_names {
namespace ly = layout;
std::string embed() { return ly::hf_name(ly::def(Family::Llama, ly::Role::Embedding)); }
std::string final_norm() { return ly::hf_name(ly::def(Family::Llama, ly::Role::FinalNorm)); }
std::string lm_head() { return ly::hf_name(ly::def(Family::Llama, ly::Role::Head)); }
std::string layer(int64_t i, const std::string& suffix) {
  return "model.layers." + std::to_string(i) + "." + suffix;
}
std::string router(int64_t i) { return ly::hf_name(ly::def(Family::Qwen3Moe, ly::Role::Router), i); }
std::string expert(int64_t i, int64_t e, ExpertProj p) {
  static const ly::Role kRole[] = {ly::Role::ExpertGate, ly::Role::ExpertUp, ly::Role::ExpertDown};
  return ly::hf_name(ly::def(Family::Qwen3Moe, kRole[int(p)]), i, e);
}
}  // namespace tensor_names

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> v;
  for (auto& t : layout::tensors(c, layout::Dims::of(c))) v.push_back({std::move(t.name), std::move(t.shape)});
  return v;
}

HFModel::HFModel(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw Error(dir, fs::exists(dir, ec) ? "not a directory (expected an HF checkpoint directory)"
                                         : "no such directory");
  config_ = ModelConfig::load(dir);
  weights_ = std::make_unique<SafetensorsReader>(dir);
  for (auto& [name, shape] : expected_tensors(config_)) {
    if (!weights_->has(name))
      throw Error(dir, "missing tensor '" + name + "' (expected shape " + shape_to_string(shape) +
                           " from config.json)");
    const TensorView& t = weights_->get(name);
    if (t.shape != shape)
      throw Error(t.file, "tensor '" + name + "' has shape " + shape_to_string(t.shape) +
                              ", expected " + shape_to_string(shape) + " from config.json");
    if (!dtype_is_float(t.dtype))
      throw Error(t.file, "tensor '" + name + "' has dtype " + dtype_name(t.dtype) +
                              ", expected a floating-point type");
  }
}

Tensor HFModel::lm_head_f32() const {
  return tensor_f32(config_.tie_word_embeddings ? tensor_names::embed() : tensor_names::lm_head());
}

std::string HFModel::tokenizer_json_path() const {
  fs::path p = fs::path(dir_) / "tokenizer.json";
  std::error_code ec;
  return fs::is_regular_file(p, ec) ? p.string() : std::string();
}

std::string HFModel::fingerprint() const {
  // A canonical text description (fields that define the function the model computes, then
  // every tensor with a length-prefixed name) followed by the tensor bytes, streamed from the
  // map. Fields like transformers_version or _name_or_path do not change the model and are
  // left out so re-saving a checkpoint keeps its fingerprint.
  const ModelConfig& c = config_;
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "aloepri-model-fingerprint-v1\nfamily=%s hidden=%lld layers=%lld heads=%lld kv=%lld "
                "head_dim=%lld ffn=%lld vocab=%lld eps=%.17g theta=%.17g rope=%s/%.17g/%.17g/%.17g/%lld "
                "tied=%d bias=%d obias=%d qknorm=%d\n",
                family_name(c.family).c_str(), (long long)c.hidden_size, (long long)c.num_hidden_layers,
                (long long)c.num_attention_heads, (long long)c.num_key_value_heads, (long long)c.head_dim,
                (long long)c.intermediate_size, (long long)c.vocab_size, c.rms_norm_eps, c.rope_theta,
                c.rope_scaling.type.c_str(), c.rope_scaling.factor, c.rope_scaling.low_freq_factor,
                c.rope_scaling.high_freq_factor, (long long)c.rope_scaling.original_max_position_embeddings,
                int(c.tie_word_embeddings), int(c.attention_bias), int(c.o_bias()), int(c.qk_norm));
  Sha256 st;
  auto put = [&](const std::string& s) { st.update(s.data(), s.size()); };
  put(buf);
  if (c.is_moe()) {  // dense models keep the fingerprint they always had
    std::string moe = "experts=" + std::to_string(c.num_experts) + " used=" + std::to_string(c.num_experts_per_tok) +
                      " expert_ffn=" + std::to_string(c.moe_intermediate_size) +
                      " norm_topk=" + std::to_string(int(c.norm_topk_prob)) +
                      " sparse_step=" + std::to_string(c.decoder_sparse_step) + " mlp_only=";
    for (int64_t l : c.mlp_only_layers) moe += std::to_string(l) + ",";
    put(moe + "\n");
  }
  if (c.mla()) {  // the latent sizes and DeepSeek's routing rule define the function too
    char mla[512];
    std::snprintf(mla, sizeof mla,
                  "mla q_lora=%lld kv_lora=%lld nope=%lld rope=%lld v=%lld shared=%lld first_dense=%lld freq=%lld "
                  "groups=%lld/%lld scoring=%s topk=%s scale=%.17g\n",
                  (long long)c.q_lora_rank, (long long)c.kv_lora_rank, (long long)c.qk_nope_head_dim,
                  (long long)c.qk_rope_head_dim, (long long)c.v_head_dim, (long long)c.n_shared_experts,
                  (long long)c.first_k_dense_replace, (long long)c.moe_layer_freq, (long long)c.topk_group,
                  (long long)c.n_group, c.scoring_func.c_str(), c.topk_method.c_str(), c.routed_scaling_factor);
    put(mla);
  }
  if (c.rope_scaling.type == "yarn") {  // its extra fields; other models keep their fingerprint
    char yarn[256];
    const RopeScaling& rs = c.rope_scaling;
    std::snprintf(yarn, sizeof yarn, "yarn original=%lld beta=%.17g/%.17g mscale=%.17g/%.17g\n",
                  (long long)rs.original_max_position_embeddings, rs.beta_fast, rs.beta_slow, rs.mscale,
                  rs.mscale_all_dim);
    put(yarn);
  }
  auto names = weights_->names();
  for (auto& n : names) {
    const TensorView& t = weights_->get(n);
    put("tensor " + std::to_string(n.size()) + ":" + n + " " + dtype_name(t.dtype) + " " +
        shape_to_string(t.shape) + " " + std::to_string(t.nbytes) + "\n");
  }
  Progress prog("fingerprint", weights_->total_bytes(), "B");
  const uintptr_t pg = uintptr_t(::sysconf(_SC_PAGESIZE));
  for (auto& n : names) {
    const TensorView& t = weights_->get(n);
    constexpr size_t kChunk = 64 << 20;  // progress and page-release granularity
    for (size_t i = 0; i < t.nbytes; i += kChunk) {
      size_t m = std::min(kChunk, t.nbytes - i);
      st.update(t.data + i, m);
      prog.advance(m);
      // Drop the hashed pages from this mapping (they stay in the page cache): touched file
      // pages count in RSS, and a fingerprint must not hold the whole model resident.
      const uintptr_t b = (uintptr_t(t.data + i) + pg - 1) & ~(pg - 1), e = uintptr_t(t.data + i + m) & ~(pg - 1);
      if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
    }
  }
  prog.finish();
  const auto h = st.final();
  char hex[2 * crypto_hash_sha256_BYTES + 1];
  sodium_bin2hex(hex, sizeof hex, h.data(), h.size());
  return hex;
}

void write_synthetic_tensors(const std::string& dir, const ModelConfig& c, const SyntheticInit& init, DType dtype,
                             uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata,
                             const char* progress_label) {
  const auto tensors = expected_tensors(c);
  SafetensorsWriter w(dir, max_shard_bytes, metadata);
  uint64_t total = 0;
  for (auto& [name, shape] : tensors) {
    TensorSpec spec{name, dtype, shape};
    w.add(spec);
    total += spec.nbytes();
  }
  std::optional<Progress> bar;
  if (progress_label) bar.emplace(progress_label, total, "B");
  auto ends_with = [](const std::string& s, const char* suf) {
    const size_t n = std::char_traits<char>::length(suf);
    return s.size() >= n && s.compare(s.size() - n, n, suf) == 0;
  };
  std::vector<float> buf;
  for (auto& [name, shape] : tensors) {
    size_t n = 1;
    for (int64_t x : shape) n *= size_t(x);
    buf.resize(n);
    RngStream r(init.seed, init.stream_prefix + name);
    if (ends_with(name, "norm.weight") || ends_with(name, "layernorm.weight")) {  // every RMSNorm
      r.fill_normal(buf.data(), n, 0.1);
      for (float& x : buf) x += 1.0f;
    } else if (ends_with(name, ".bias") || ends_with(name, "_bias")) {  // incl. e_score_correction_bias
      r.fill_normal(buf.data(), n, 0.1);
    } else if (name == tensor_names::embed()) {
      r.fill_normal(buf.data(), n, init.embed_std);
    } else {  // projections and an untied head, HF layout (out x in): scale by fan-in
      require(shape.size() == 2, "tensor '" + name + "'", "unexpected shape " + shape_to_string(shape), kExitError);
      r.fill_normal(buf.data(), n, 1.0 / std::sqrt(double(shape[1])));
    }
    w.write_f32(name, buf.data(), n);
    if (bar) bar->advance(n * dtype_size(dtype));
  }
  w.finish();
  if (bar) bar->finish();
}

void write_synthetic_model(const std::string& dir, const ModelConfig& config, uint64_t seed,
                           DType dtype, uint64_t max_shard_bytes) {
  config.validate("synthetic config");
  Seed s{};
  for (int i = 0; i < 8; ++i) s[i] = uint8_t(seed >> (8 * i));
  ModelConfig c = config;
  c.torch_dtype = dtype == DType::F32 ? "float32" : dtype == DType::F16 ? "float16"
                : dtype == DType::BF16 ? "bfloat16" : "float64";
  AtomicDir out(dir);
  SyntheticInit init;
  init.seed = s;
  init.stream_prefix = "synthetic/";
  init.embed_std = 1.0;
  write_synthetic_tensors(out.temp_path(), c, init, dtype, max_shard_bytes, {{"format", "pt"}});
  write_file_atomic(out.file("config.json"), c.to_json().dump(2) + "\n");
  out.commit();
}

}  // namespace aloepri
