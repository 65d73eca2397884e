// --shard i/N: parts written by each run, and the merge that joins them byte-identically.
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
#include "aloepri/core/keyfile.h"
#include "aloepri/core/progress.h"
#include "aloepri/formats/safetensors.h"

namespace fs = std::filesystem;

namespace aloepri {

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

}  // namespace aloepri
