// Throughput of the safetensors layer: streaming write with f32 -> bf16/f16 conversion,
// mmap read + conversion back to f32, and the SHA-256 model fingerprint.
// Files go to $TMPDIR (default /tmp) and are removed afterwards.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>

#include "aloepri/model/model.h"
#include "aloepri/core/rng.h"
#include "aloepri/formats/safetensors.h"

namespace fs = std::filesystem;
using namespace aloepri;

namespace {

constexpr int kTensors = 16;
constexpr int64_t kRows = 1024, kCols = 1024;  // 16 Mi elements in all

std::string tmp_dir(const std::string& name) {
  const char* t = std::getenv("TMPDIR");
  fs::path p = fs::path(t ? t : "/tmp") / ("aloepri-bench-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p.string();
}

const std::vector<float>& values() {
  static std::vector<float> v = [] {
    std::vector<float> x(size_t(kRows * kCols));
    RngStream(Seed{}, "bench").fill_normal(x.data(), x.size());
    return x;
  }();
  return v;
}

void write_all(const std::string& dir, DType dt) {
  SafetensorsWriter w(dir);
  for (int i = 0; i < kTensors; ++i) w.add({"t" + std::to_string(i), dt, {kRows, kCols}});
  for (int i = 0; i < kTensors; ++i) w.write_f32("t" + std::to_string(i), values().data(), values().size());
  w.finish();
}

void BM_Write(benchmark::State& st) {
  DType dt = DType(st.range(0));
  for (auto _ : st) {
    st.PauseTiming();
    std::string dir = tmp_dir("write");
    st.ResumeTiming();
    write_all(dir, dt);  // includes the fsync in commit
    st.PauseTiming();
    fs::remove_all(dir);
    st.ResumeTiming();
  }
  st.SetItemsProcessed(st.iterations() * kTensors * kRows * kCols);
  st.SetBytesProcessed(st.iterations() * kTensors * kRows * kCols * int64_t(dtype_size(dt)));
  st.SetLabel(dtype_name(dt));
}

void BM_ReadToF32(benchmark::State& st) {
  DType dt = DType(st.range(0));
  std::string dir = tmp_dir("read");
  write_all(dir, dt);
  std::vector<float> out(values().size());
  for (auto _ : st) {
    SafetensorsReader r(dir);
    for (int i = 0; i < kTensors; ++i) r.get("t" + std::to_string(i)).to_f32(out.data());
    benchmark::DoNotOptimize(out.data());
  }
  st.SetItemsProcessed(st.iterations() * kTensors * kRows * kCols);
  st.SetBytesProcessed(st.iterations() * kTensors * kRows * kCols * int64_t(dtype_size(dt)));
  st.SetLabel(dtype_name(dt));
  fs::remove_all(dir);
}

void BM_Fingerprint(benchmark::State& st) {
  std::string dir = tmp_dir("fp");
  ModelConfig c = ModelConfig::from_json({{"model_type", "llama"}, {"hidden_size", 512}, {"num_hidden_layers", 4},
                                          {"num_attention_heads", 8}, {"intermediate_size", 1536},
                                          {"vocab_size", 8192}});
  write_synthetic_model(dir, c, 1, DType::BF16);
  HFModel m(dir);
  for (auto _ : st) benchmark::DoNotOptimize(m.fingerprint());
  st.SetBytesProcessed(st.iterations() * int64_t(m.weights().total_bytes()));
  fs::remove_all(dir);
}

}  // namespace

BENCHMARK(BM_Write)->Arg(int(DType::F32))->Arg(int(DType::BF16))->Arg(int(DType::F16))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ReadToF32)->Arg(int(DType::F32))->Arg(int(DType::BF16))->Arg(int(DType::F16))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Fingerprint)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
