// Speed of the reference forward pass on the "small" synthetic shape (d=256, 4 layers, 8/4
// heads, head_dim 32, ffn 688, vocab 32000): whole-sequence scoring and one decode step.
// Weights are drawn in memory (no checkpoint I/O in the timing).
#include <benchmark/benchmark.h>

#include <cmath>

#include "aloepri/engine/forward.h"
#include "aloepri/core/rng.h"

using namespace aloepri;

namespace {

Tensor draw(std::vector<int64_t> shape, RngStream& r, double sd, float mean = 0) {
  Tensor t(shape);
  r.fill_normal(t.data.data(), t.data.size(), sd);
  for (float& x : t.data) x += mean;
  return t;
}

ReferenceModel& small_model() {
  static ReferenceModel* m = [] {
    ModelConfig c;
    c.hidden_size = 256;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 8;
    c.num_key_value_heads = 4;
    c.head_dim = 32;
    c.intermediate_size = 688;
    c.vocab_size = 32000;
    Seed s{};
    RngStream r(s, "bench/forward");
    ModelWeights w;
    w.config = c;
    const double sd = 1.0 / 16;
    w.embed = draw({c.vocab_size, 256}, r, sd);
    w.final_norm = draw({256}, r, 0.1, 1.0f);
    w.head = draw({c.vocab_size, 256}, r, sd);
    for (int l = 0; l < 4; ++l) {
      LayerWeights L;
      L.attn_norm = draw({256}, r, 0.1, 1.0f);
      L.ffn_norm = draw({256}, r, 0.1, 1.0f);
      L.wq = draw({256, 256}, r, sd);
      L.wk = draw({128, 256}, r, sd);
      L.wv = draw({128, 256}, r, sd);
      L.wo = draw({256, 256}, r, sd);
      L.w_gate = draw({688, 256}, r, sd);
      L.w_up = draw({688, 256}, r, sd);
      L.w_down = draw({256, 688}, r, 1.0 / std::sqrt(688.0));
      w.layers.push_back(std::move(L));
    }
    return new ReferenceModel(std::move(w));
  }();
  return *m;
}

std::vector<int64_t> ids(int64_t T) {
  std::vector<int64_t> v(T);
  for (int64_t i = 0; i < T; ++i) v[i] = (i * 7919) % 32000;
  return v;
}

// Perplexity-style scoring: log p of every next token of a T-token sequence.
void BM_Score(benchmark::State& st) {
  ReferenceModel& m = small_model();
  const auto seq = ids(st.range(0));
  for (auto _ : st) benchmark::DoNotOptimize(m.score(seq));
  st.SetItemsProcessed(st.iterations() * st.range(0));
}
BENCHMARK(BM_Score)->Arg(256)->Arg(2048)->Unit(benchmark::kMillisecond);

// One decode step after a prompt of P tokens.
void BM_Step(benchmark::State& st) {
  ReferenceModel& m = small_model();
  const auto prompt = ids(st.range(0));
  for (auto _ : st) {
    st.PauseTiming();
    m.reset();
    m.prefill(prompt);
    st.ResumeTiming();
    benchmark::DoNotOptimize(m.step(42));
  }
}
BENCHMARK(BM_Step)->Arg(128)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
