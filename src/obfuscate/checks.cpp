// What must hold before an obfuscation writes anything: the homophone table, the parameters, the
// model (families, tied heads, pre-adapted checkpoints).
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <future>

#include "aloepri/core/error.h"
#include "aloepri/model/model.h"
#include "aloepri/model/layout.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/output.h"
#include "executor_internal.h"

namespace fs = std::filesystem;

namespace aloepri {

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
    require(!c.is_moe() && !c.mla(), "--kappa calibrated", "is not implemented for " + family_name(c.family) +
                                                   " (its calibration forward has no experts or latent attention); use the default",
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
      require(!c.tie_word_embeddings && plain.weights().has(layout::hf_name(c, layout::Role::Head)), cfg_where,
              "aloepri_adapted.emb_head_noise is \"in_checkpoint\" but the model has no separate " +
                  layout::hf_name(c, layout::Role::Head) + " (tie_word_embeddings): the noisy head must be its own tensor");
      return true;
    }
  }
  return false;
}

}  // namespace aloepri
