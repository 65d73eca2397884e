// The streaming obfuscation executor: it builds the plan (plan.cpp), runs the steps this run owns
// (steps.cpp) and streams their tensors through the write-behind writer; plaintext layer in,
// obfuscated layer out, never the whole model in memory (peak: the key-matrix base, one layer,
// and the embedding/head).
#include <malloc.h>

#include <chrono>
#include <climits>
#include <filesystem>

#include "aloepri/core/error.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/output.h"
#include "aloepri/core/progress.h"
#include "aloepri/formats/safetensors.h"
#include "aloepri/obfuscate/write_behind.h"
#include "executor_internal.h"
#include "steps.h"

namespace fs = std::filesystem;

namespace aloepri {

namespace {

// What the write-behind queue may hold back: one large tensor of a 7B layer is about 0.2 GB, so
// this keeps the computation one tensor ahead of the disk without growing the peak by a layer.
constexpr size_t kWriteBehindBytes = size_t(256) << 20;

// Large blocks from the heap, and freed memory kept for reuse: every layer allocates tensors of
// the same sizes again, and a fresh mmap'd block costs a page fault and a kernel zero-fill per
// page (the largest non-GEMM cost in a profile of this executor). Process-wide; the peak stays
// one layer's working set because the same sizes recur.
void keep_freed_memory() {
  ::mallopt(M_MMAP_MAX, 0);
  ::mallopt(M_TRIM_THRESHOLD, INT_MAX);
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

  const int64_t n = c.vocab_size, d = c.hidden_size, L = c.num_hidden_layers;
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
  // Tensors are written behind the computation, in the order they are put (see write_behind.h).
  WriteBehind wb(
      [&](const std::string& name, const float* p, size_t numel) {
        if (part) part->put(name, out_dtype, p, numel);
        else w->write_f32(name, p, numel);
      },
      kWriteBehindBytes);

  ObfuscateResult res;
  Progress prog("obfuscate", uint64_t(last - first), "steps");
  KappaTracker kappa(P, K, dp);
  StepContext sc{plain, seed, opt, K, vm, inv_freq, dp, emb_alpha, head_alpha, kappa,
                 [&](double k) { res.kappas.push_back(k); },
                 [&](const std::string& name, std::vector<float> v) { wb.push(name, std::move(v)); }};

  // A step this run skips still counts its writers for the later kappas.
  if (runs(0)) {
    embedding_step(sc);
    prog.advance();
  } else {
    kappa.skip_writer("emb");
  }
  for (int64_t l = 0; l < L; ++l) {
    if (!runs(1 + l)) {
      const std::string ls = "layer/" + std::to_string(l);
      kappa.skip_writer(ls + "/o");
      kappa.skip_writer(ls + "/down");
      continue;
    }
    if (runs(2 + l)) prefetch_step(plain, outs, 2 + l);  // the next layer, read while this one computes
    layer_step(sc, l);
    prog.advance();
  }
  if (runs(L + 1)) {
    head_step(sc);
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
