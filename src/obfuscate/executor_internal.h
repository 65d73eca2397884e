// What the executor's files share (not part of the public interface): reading the plaintext,
// the output plan, the shard parts, the checks and the checkpoint's last steps.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "aloepri/core/homophones.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/attention.h"
#include "aloepri/obfuscate/ffn.h"
#include "aloepri/obfuscate/residual.h"
#include "aloepri/obfuscate/vocab.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/output.h"
#include "aloepri/formats/safetensors.h"
#include "aloepri/core/tensor.h"

namespace aloepri {

// plain_io.cpp: the plaintext checkpoint, read once, pages released behind the reader.
void release_range(const uint8_t* p, size_t n);
Tensor load_and_release(const HFModel& m, const std::string& name);
obf::RowFetch mapped_rows(const TensorView& v);

// plan.cpp: the output tensors in file order, each with the step that computes it.
// One obfuscated tensor in file order, and the step that computes it: 0 the embedding, 1 + l
// layer l, L + 1 the final norm and the head. Steps are the unit of --shard.
struct OutTensor {
  TensorSpec spec;
  int64_t step;
};
std::vector<OutTensor> declare_outputs(const ModelConfig& c, int64_t dp, DType dt, int64_t np);
void prefetch_step(const HFModel& m, const std::vector<OutTensor>& outs, int64_t step);
std::pair<int64_t, int64_t> shard_steps(const std::vector<OutTensor>& outs, int64_t steps, int index, int count);

// shards.cpp: --shard i/N parts and their merge.
std::string part_name(int index, int count, const char* ext);
std::string parts_dir(const std::string& out_dir);
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
nlohmann::json part_identity(const ModelConfig& c, const Seed& seed, const ObfuscateOptions& opt, int64_t dp,
                             DType dt);

// checks.cpp: what must hold before anything is written.
void check_copies(const ModelConfig& c, const ObfuscateOptions& opt, const std::string& model_dir);
bool check_obfuscatable(const HFModel& plain, const Seed& seed, const ObfuscateOptions& opt,
                        const std::string& model_dir);

// checkpoint.cpp: the output dtype, and everything after the tensors.
DType output_dtype(const HFModel& plain, const ObfuscateOptions& opt);
std::string dtype_torch_name(DType t);
void finish_checkpoint(const std::string& model_dir, const HFModel& plain, const VocabMap& vm,
                       int64_t dp, const std::string& torch_dtype, AtomicDir& out, const std::string& out_dir,
                       const ObfuscateOptions& opt, std::chrono::steady_clock::time_point t0, ObfuscateResult& res);

}  // namespace aloepri
