// Covariant obfuscation of a dense Llama / Mistral / Qwen2 / Qwen3 checkpoint (method.md sections 3-7):
// a streaming executor that reads the plaintext model layer by layer, applies the secret
// transforms derived from the key's seed, and writes a standard HF checkpoint (hidden size
// d + 2h, everything else unchanged) that any engine serves.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/core/dtype.h"
#include "aloepri/formats/hf_config.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/obfuscate/keymat.h"
#include "aloepri/obfuscate/attention.h"
#include "aloepri/obfuscate/ffn.h"
#include "aloepri/obfuscate/residual.h"
#include "aloepri/obfuscate/vocab.h"
#include "aloepri/core/rng.h"

namespace aloepri {

enum class KappaMode { Gaussian, Calibrated };

struct ObfuscationParams {
  double lambda = 0.3;
  int64_t expansion = 128;  // h; the obfuscated hidden size is d + 2h
  double alpha_e = 1.0, alpha_h = 0.2;
  int64_t beta = 8;
  double gamma = 1000;
  obf::KeymatVariant keymat = obf::KeymatVariant::Paper;
  KappaMode kappa = KappaMode::Gaussian;
  obf::NoiseScale noise_scale = obf::NoiseScale::Global;
  double head_scale_range = 2.0;  // H_j entries log-uniform in [1/r, r]
  double ffn_scale_range = 2.0;   // Hf entries log-uniform in [1/r, r]
  bool per_group_perm = true;     // one in-group head permutation per kv group
  // Condition number of the per-head value map U_j (issue 7, docs/RESULTS.md "Well-conditioned value maps"): 0 = the
  // report's Gaussian draw (condition-checked only); K >= 1 = cond(U_j) == K exactly (1:
  // orthogonal). W_v U_j / U_j^-1 W_o amplify each other's quantization error by ~cond(U_j).
  // A key record without the field means 0.
  double value_cond = 0;
  // qwen3_moe: divide each expert's router row by its norm (the report's per-expert router
  // normalisation, which hides the norms). Not exact: expert e's logit is divided by its norm,
  // which moves the softmax and can change the top-k choice. Off in every profile.
  bool router_norm = false;

  // lambda 0, h 0, no noise, beta 1: every remaining transform is exact.
  static ObfuscationParams exact();
  // Named parameter sets: "exact" (what `aloepri obfuscate` uses when no privacy flag is given;
  // docs/THREAT_MODEL.md says why), "noise" (the former default: the report's structure with
  // alpha_e 0.5), "paper" (the report's defaults, the values of this struct). Throws
  // Error(kExitUsage) for an unknown name, and for "default", which was renamed.
  static ObfuscationParams profile(const std::string& name);
  static std::vector<std::string> profile_names();
  bool is_exact_setting() const;
  nlohmann::json to_json() const;
};

struct ObfuscateOptions {
  ObfuscationParams params;
  bool force = false;                 // replace an existing output directory
  std::optional<DType> dtype;         // output dtype; default: the plaintext model's storage dtype
  std::vector<int64_t> calib_ids;     // plaintext token ids for KappaMode::Calibrated
  uint64_t max_shard_bytes = uint64_t(4) << 30;
  // Sharded obfuscation (--shard i/N): compute only part shard_index of shard_count (contiguous
  // layers, balanced by output bytes; every tensor has its own random stream, so the parts are
  // independent) into obfuscation_parts_dir(out_dir); merge_obfuscation_parts completes the
  // output. 0 = the whole model in this process.
  int shard_index = 0, shard_count = 0;
  // Homophonic vocabulary (homophones.h, --homophones B): copies per plaintext id, [n]; empty =
  // none. The published ids (published_token_ids) must have one copy. homophone_info: what the
  // key record notes of it (rule, source of the counts).
  std::vector<int64_t> copies;
  nlohmann::json homophone_info = nlohmann::json::object();
};

struct ObfuscateResult {
  std::string plain_fingerprint, obf_fingerprint;
  int64_t vocab_size = 0, hidden = 0, obf_hidden = 0;
  std::vector<double> kappas;  // per norm, in model order: input/post of each layer, then final
  double obf_eps = 0;
  std::optional<int64_t> obf_eos, obf_bos;
  double seconds = 0;
  double seconds_transform = 0;     // up to the committed output, before the fingerprints
  uint64_t peak_rss_transform = 0;  // bytes, getrusage peak before the fingerprints are computed
  nlohmann::json record;       // parameters + per-norm kappas + EOS choice (for the key file)
  std::vector<int64_t> copies;  // homophone copies per plaintext id (empty: none)
  // What the key file records of this obfuscation (fingerprints, vocabulary, parameters, the
  // published tau(eos)/tau(bos)): the proxy and `decode` check a key against it.
  ObfuscationRecord key_record() const;
};

// Obfuscates model_dir into out_dir (atomic: built in a temporary sibling, renamed on success).
// Throws Error naming the file / tensor / field for unsupported families,
// missing tensors, non-float dtypes, or an existing out_dir without force.
ObfuscateResult obfuscate_model(const std::string& model_dir, const Seed& seed, const std::string& out_dir,
                                const ObfuscateOptions& opt);

// Where `--shard i/N` runs of out_dir put their parts: <out_dir>.parts/part-<i>-of-<N>.{bin,json}.
std::string obfuscation_parts_dir(const std::string& out_dir);

// Merges the N parts of out_dir (all present, all from this model, key, parameters and dtype)
// into the checkpoint a single obfuscate_model run writes, byte for byte; then writes the
// config, computes the fingerprints, and removes the parts. Same result fields as
// obfuscate_model (seconds_transform: the merge itself).
ObfuscateResult merge_obfuscation_parts(const std::string& model_dir, const Seed& seed, const std::string& out_dir,
                                        const ObfuscateOptions& opt);

// The special ids an obfuscation publishes through tau (bos/eos/pad of config.json and
// generation_config.json in model_dir): they keep one copy in a homophonic vocabulary.
std::vector<int64_t> published_token_ids(const ModelConfig& c, const std::string& model_dir);

// A short public id of a key (16 hex digits from the stream "adapt/key-id"; reveals nothing of
// the seed). A model fine-tuned for one key's noise (tools/train/adapt.cpp) records it in
// config.json as "aloepri_adapted": {key_id, alpha_e, alpha_h, noise_scale, ...};
// obfuscate_model refuses such a model with another key or other noise parameters (the
// adaptation would be wasted) and never copies the record into the served config.
// "emb_head_noise" says where the key's embedding/head noise is: "obfuscate" (absent in older
// records) = the checkpoint holds the public embedding/head and obfuscate_model adds the draw;
// "in_checkpoint" = the checkpoint's own (untied) embedding and head already carry the draw and
// were trained from it (aloe-adapt --train-vocab), so obfuscate_model applies only the exact
// transforms to them (tau, key matrices, final-norm scaling). Any other value is refused
// (kExitBadInput), as is "in_checkpoint" on a tied model.
std::string adaptation_key_id(const Seed& seed);

// The output config.json for a plaintext config (exposed for tests): hidden_size d', explicit
// head_dim, untied, eps' and the published obfuscated special token ids (method.md section 7:
// we publish tau(eos) and tau(bos) so an unmodified engine stops by itself).
nlohmann::json obfuscated_config(const ModelConfig& plain, int64_t obf_hidden, double obf_eps,
                                 const std::vector<int64_t>& tau, const std::string& torch_dtype);

}  // namespace aloepri
