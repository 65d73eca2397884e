// The obfuscated checkpoint's files besides the tensors (config with eps' and the published ids,
// tokenizer files, generation config), the commit and the fingerprints.
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

namespace {

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

}  // namespace

std::string dtype_torch_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    default: throw Error("--dtype", "unsupported output dtype " + dtype_name(t), kExitUsage);
  }
}


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


DType output_dtype(const HFModel& plain, const ObfuscateOptions& opt) {
  return opt.dtype ? *opt.dtype : plain.weights().get(layout::hf_name(plain.config(), layout::Role::Embedding)).dtype;
}

// Everything after the tensors (config with eps' and the published ids, tokenizer files,
// generation config), the commit, and the fingerprints of both models.
void finish_checkpoint(const std::string& model_dir, const HFModel& plain, const VocabMap& vm,
                       int64_t dp, const std::string& torch_dtype, AtomicDir& out, const std::string& out_dir,
                       const ObfuscateOptions& opt, std::chrono::steady_clock::time_point t0, ObfuscateResult& res) {
  const ModelConfig& c = plain.config();
  // Published ids (eos, bos, pad) have one copy (allocate_copies' `single`): copy 0 is tau.
  const std::vector<int64_t> tau = vm.first_copies();
  // RMSNorm eps: exact when eps' = eps kappa^2 (see obfuscate/keymat.h); one eps per config, so the
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

}  // namespace aloepri
