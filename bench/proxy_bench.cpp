// The privacy proxy's own work per generated token, without the network or the scheduler
// (bench/proxy_bench.mjs measures the whole hop). Per token the proxy parses one engine SSE event,
// maps the id back with tau^-1, detokenizes incrementally, checks stop strings and writes one
// OpenAI SSE chunk; this times exactly those steps (the chunk JSON is built like the proxy's).
//   build-*/bench/proxy_bench [--benchmark_min_time=0.5]
// With --latency [requests] [tokens]: the added latency measured in one process, without Node:
// a fake llama-server (httplib, one token per ms, each stamped when written), the proxy, and a
// client that stamps each token's arrival, straight from the fake engine or through the proxy.
#include <benchmark/benchmark.h>
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "aloepri/client/proxy.h"

using namespace aloepri;
using nlohmann::json;

namespace {

Seed seed() {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(3 * i + 1);
  return s;
}

const Tokenizer& tok() {
  // $ALOEPRI_SOURCE_DIR overrides the build's source tree (running the binary on another machine).
  const char* src = std::getenv("ALOEPRI_SOURCE_DIR");
  static Tokenizer t = Tokenizer::load(std::string(src ? src : ALOEPRI_SOURCE_DIR) + "/models/aloe-mini");
  return t;
}

void BM_PerTokenPath(benchmark::State& st) {
  const bool with_stop = st.range(0) != 0;
  TokenMap map(seed(), 32000);
  auto plain = tok().encode(
      "the quick brown fox jumps over the lazy dog and then the cat sat on the mat while a bird sang in the tall tree");
  std::vector<std::string> events;  // what llama-server streams, one event per token
  for (size_t i = 0; i < plain.size(); ++i)
    events.push_back("data: " + json{{"index", 0}, {"content", "<0x12>"}, {"tokens", {map.to_server(int64_t(plain[i]))}},
                                     {"stop", false}, {"id_slot", 0}, {"tokens_predicted", i + 1}, {"tokens_evaluated", 12}}
                                    .dump() +
                     "\n\n");
  size_t bytes = 0;
  int64_t tokens = 0;
  for (auto _ : st) {
    TextStream ts(tok(), with_stop ? std::vector<std::string>{"\n\n", "THE END"} : std::vector<std::string>{});
    for (const auto& ev : events) {
      const json j = json::parse(std::string_view(ev).substr(6, ev.size() - 8));
      const int64_t id = map.from_server(j["tokens"][0].get<int64_t>());
      std::string text = ts.push(int32_t(id));
      json c = {{"id", "cmpl-0123456789abcdef01234567"},
                {"object", "text_completion"},
                {"created", 1764100000},
                {"model", "aloe-mini"},
                {"choices", json::array({{{"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}, {"text", text}}})}};
      std::string out = "data: " + c.dump() + "\n\n";
      bytes += out.size();
      benchmark::DoNotOptimize(out);
      ++tokens;
    }
    benchmark::DoNotOptimize(ts.finish());
  }
  // Seconds per token (printed with an SI suffix: "5u" = 5 microseconds).
  st.counters["per_token"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  st.SetItemsProcessed(tokens);
  st.SetBytesProcessed(int64_t(bytes));
}
BENCHMARK(BM_PerTokenPath)->Arg(0)->Arg(1)->ArgName("stop_strings")->Unit(benchmark::kMicrosecond);

// Request setup: chat template + tokenization + tau of a ~100-token conversation.
void BM_PromptToObfuscatedIds(benchmark::State& st) {
  TokenMap map(seed(), 32000);
  std::string msg;
  for (int i = 0; i < 8; ++i) msg += "Tell me about the harbour, the ships and the old lighthouse at dawn. ";
  for (auto _ : st) {
    auto ids = tok().encode(msg, true);
    auto obf = map.to_server(std::span<const int32_t>(ids));
    benchmark::DoNotOptimize(obf);
  }
}
BENCHMARK(BM_PromptToObfuscatedIds)->Unit(benchmark::kMicrosecond);

}  // namespace

namespace {

using clk = std::chrono::steady_clock;
double ms(clk::time_point a, clk::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, size_t(p / 100 * double(v.size())))];
}

int latency(int requests, int ntok) {
  TokenMap map(seed(), 32000);
  std::vector<int32_t> plain;
  for (auto id : tok().encode("the quick brown fox jumps over the lazy dog and then the cat sat on the mat while a bird "
                              "sang in the tall green tree near the old house by the river and the sun went down"))
    if (id != 28705) plain.push_back(id);
  if (int(plain.size()) < ntok) ntok = int(plain.size());
  std::vector<int64_t> obf;
  for (int i = 0; i < ntok; ++i) obf.push_back(map.to_server(int64_t(plain[size_t(i)])));
  std::mutex m;
  std::vector<clk::time_point> sent;
  httplib::Server fake;
  fake.set_tcp_nodelay(true);
  fake.Get("/health", [](const httplib::Request&, httplib::Response& r) { r.set_content("{}", "application/json"); });
  fake.Post("/completion", [&](const httplib::Request&, httplib::Response& res) {
    res.set_chunked_content_provider("text/event-stream", [&](size_t, httplib::DataSink& sink) {
      for (int64_t id : obf) {
        std::string ev = "data: {\"index\":0,\"content\":\"\",\"tokens\":[" + std::to_string(id) + "],\"stop\":false}\n\n";
        {
          std::lock_guard<std::mutex> lk(m);
          sent.push_back(clk::now());
        }
        if (!sink.write(ev.data(), ev.size())) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      std::string end = "data: {\"tokens\":[],\"stop\":true,\"stop_type\":\"limit\"}\n\n";
      sink.write(end.data(), end.size());
      sink.done();
      return true;
    });
  });
  const int fport = fake.bind_to_any_port("127.0.0.1");
  std::thread ft([&] { fake.listen_after_bind(); });
  ProxyModel pm;
  pm.tokenizer = tok();
  pm.seed = seed();
  pm.vocab_size = 32000;
  pm.end_ids = {2};
  BackendOptions bo;
  bo.url = "http://127.0.0.1:" + std::to_string(fport);
  ProxyOptions po;
  po.port = 0;
  po.quiet = true;
  po.model_name = "aloe-mini";
  ProxyServer proxy(std::move(pm), bo, po);
  proxy.start();

  struct Result {
    std::vector<double> ttft, delay;
  };
  auto measure = [&](bool via_proxy, int n) {
    Result r;
    httplib::Client c(via_proxy ? proxy.url() : bo.url);
    c.set_tcp_nodelay(true);
    c.set_read_timeout(30, 0);
    for (int i = 0; i < n; ++i) {
      std::vector<clk::time_point> arrive;
      size_t first_sent;
      {
        std::lock_guard<std::mutex> lk(m);
        first_sent = sent.size();
      }
      httplib::Request q;
      q.method = "POST";
      if (via_proxy) {
        q.path = "/v1/completions";
        q.body = json{{"model", "aloe-mini"}, {"prompt", "Once upon a time"}, {"max_tokens", ntok}, {"temperature", 0}, {"stream", true}}.dump();
      } else {
        q.path = "/completion";
        q.body = json{{"prompt", {1, 2, 3, 4}}, {"n_predict", ntok}, {"temperature", 0}, {"stream", true}}.dump();
      }
      q.set_header("Content-Type", "application/json");
      std::string buf;
      q.content_receiver = [&](const char* d, size_t len, uint64_t, uint64_t) {
        const auto t = clk::now();
        buf.append(d, len);
        for (size_t e; (e = buf.find("\n\n")) != std::string::npos; buf.erase(0, e + 2)) {
          const std::string ev = buf.substr(0, e);
          if (ev.rfind("data: {", 0) != 0) continue;
          json j = json::parse(ev.substr(6));
          const bool token = via_proxy ? !j["choices"][0]["text"].get<std::string>().empty()
                                       : j.contains("tokens") && !j["tokens"].empty();
          if (token) arrive.push_back(t);
        }
        return true;
      };
      const auto t0 = clk::now();
      httplib::Response res;
      httplib::Error err;
      if (!c.send(q, res, err) || arrive.empty()) {
        std::fprintf(stderr, "request failed\n");
        std::exit(1);
      }
      std::lock_guard<std::mutex> lk(m);
      if (sent.size() - first_sent != arrive.size()) {
        std::fprintf(stderr, "%zu tokens sent, %zu arrived\n", sent.size() - first_sent, arrive.size());
        std::exit(1);
      }
      r.ttft.push_back(ms(t0, arrive[0]));
      for (size_t k = 0; k < arrive.size(); ++k) r.delay.push_back(ms(sent[first_sent + k], arrive[k]));
    }
    return r;
  };
  measure(false, 5);
  measure(true, 5);
  Result d = measure(false, requests), p = measure(true, requests);
  std::printf("in-process, %d requests x %d tokens, one token per ms (%u hardware threads)\n", requests, ntok,
              std::thread::hardware_concurrency());
  std::printf("  direct  TTFT p50 %.3f ms p99 %.3f ms | token delay p50 %.3f ms p99 %.3f ms (n %zu)\n", pct(d.ttft, 50),
              pct(d.ttft, 99), pct(d.delay, 50), pct(d.delay, 99), d.delay.size());
  std::printf("  proxy   TTFT p50 %.3f ms p99 %.3f ms | token delay p50 %.3f ms p99 %.3f ms (n %zu)\n", pct(p.ttft, 50),
              pct(p.ttft, 99), pct(p.delay, 50), pct(p.delay, 99), p.delay.size());
  std::printf("  added by the proxy: TTFT p50 %.3f ms p99 %.3f ms; per token p50 %.3f ms p99 %.3f ms\n",
              pct(p.ttft, 50) - pct(d.ttft, 50), pct(p.ttft, 99) - pct(d.ttft, 99), pct(p.delay, 50) - pct(d.delay, 50),
              pct(p.delay, 99) - pct(d.delay, 99));
  proxy.stop();
  fake.stop();
  ft.join();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "--latency") == 0)
    return latency(argc >= 3 ? std::atoi(argv[2]) : 200, argc >= 4 ? std::atoi(argv[3]) : 32);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
