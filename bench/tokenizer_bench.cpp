// Tokenizer throughput (MB/s of UTF-8 input) on the parity corpus, to compare with
// transformers.js on the same text (bench/tokenizer_bench.mjs). The corpus is built with
// tools/corpus/parity/make_corpus.mjs into ./tokenizer-corpus.bin when missing (or set
// ALOEPRI_TOKENIZER_CORPUS to an existing corpus file).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>

#include "aloepri/core/output.h"
#include "aloepri/client/tokenizer.h"

using namespace aloepri;

namespace {

const std::vector<std::string>& corpus() {
  static const std::vector<std::string> docs = [] {
    const char* env = std::getenv("ALOEPRI_TOKENIZER_CORPUS");
    std::string path = env ? env : "tokenizer-corpus.bin";
    if (!std::filesystem::exists(path)) {
      std::string cmd = std::string("node '") + ALOEPRI_SOURCE_DIR + "/tools/corpus/parity/make_corpus.mjs' '" + path + "'";
      if (std::system(cmd.c_str()) != 0) throw std::runtime_error("cannot build the corpus: " + cmd);
    }
    std::string data = read_file(path);
    if (data.compare(0, 8, "ALOECRP1") != 0) throw std::runtime_error(path + ": not a corpus file");
    uint32_t n;
    std::memcpy(&n, data.data() + 8, 4);
    std::vector<std::string> out(n);
    size_t off = 12;
    for (auto& d : out) {
      uint32_t len;
      std::memcpy(&len, data.data() + off, 4);
      d = data.substr(off + 4, len);
      off += 4 + len;
    }
    return out;
  }();
  return docs;
}

const Tokenizer& tokenizer(const std::string& vocab) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(vocab);
  if (it == cache.end()) it = cache.emplace(vocab, Tokenizer::load(std::string(ALOEPRI_SOURCE_DIR) + "/vocab/" + vocab)).first;
  return it->second;
}

void BM_Encode(benchmark::State& st, const char* vocab) {
  const Tokenizer& tok = tokenizer(vocab);
  const auto& docs = corpus();
  size_t bytes = 0, tokens = 0;
  for (auto _ : st) {
    for (const auto& d : docs) {
      auto ids = tok.encode(d);
      tokens += ids.size();
      bytes += d.size();
      benchmark::DoNotOptimize(ids.data());
    }
  }
  st.SetBytesProcessed(int64_t(bytes));
  st.counters["tokens/s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
}

// One pass over the corpus starting from an empty BPE cache (what a fresh process sees).
void BM_EncodeCold(benchmark::State& st, const char* vocab) {
  const Tokenizer& tok = tokenizer(vocab);
  const auto& docs = corpus();
  size_t bytes = 0;
  for (auto _ : st) {
    st.PauseTiming();
    tok.clear_cache();
    st.ResumeTiming();
    for (const auto& d : docs) {
      auto ids = tok.encode(d);
      bytes += d.size();
      benchmark::DoNotOptimize(ids.data());
    }
  }
  st.SetBytesProcessed(int64_t(bytes));
}

void BM_Decode(benchmark::State& st, const char* vocab) {
  const Tokenizer& tok = tokenizer(vocab);
  const auto& docs = corpus();
  std::vector<std::vector<int32_t>> ids;
  for (const auto& d : docs) ids.push_back(tok.encode(d));
  size_t bytes = 0;
  for (auto _ : st) {
    for (const auto& v : ids) {
      std::string s = tok.decode(v);
      bytes += s.size();
      benchmark::DoNotOptimize(s.data());
    }
  }
  st.SetBytesProcessed(int64_t(bytes));
}

}  // namespace

BENCHMARK_CAPTURE(BM_Encode, qwen3, "qwen3")->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_Encode, llama3, "llama3")->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_Encode, llama2, "llama2")->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_EncodeCold, qwen3, "qwen3")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK_CAPTURE(BM_EncodeCold, llama3, "llama3")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK_CAPTURE(BM_EncodeCold, llama2, "llama2")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK_CAPTURE(BM_Decode, qwen3, "qwen3")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, llama2, "llama2")->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
