// `aloepri demo`: the main job. A model travels HF safetensors -> GGUF -> llama.cpp (the
// unmodified engine, through the harness) and its greedy continuation is printed next to the
// reference forward pass's. Every file it makes lives in a work directory it removes afterwards
// (unless --keep), and every process it starts is stopped before it returns.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <httplib.h>
#include <iostream>

#include "aloepri/engine_process.h"
#include "aloepri/error.h"
#include "aloepri/forward.h"
#include "aloepri/gguf_export.h"
#include "aloepri/model.h"
#include "aloepri/synth.h"
#include "command.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string model, work, prompt_ids = "1,450,4996,17354,1701,432,17204,975,278,17366,11203,29889";
  int64_t tokens = 24;
  int threads = 2;
  bool keep = false, json = false;
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

int run(const Options& o) {
  using namespace aloepri;
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  fs::path work = o.work.empty() ? fs::temp_directory_path() / ("aloepri-demo-" + std::to_string(::getpid()))
                                 : fs::path(o.work);
  fs::create_directories(work);
  struct Cleanup {
    fs::path p;
    bool keep;
    ~Cleanup() {
      std::error_code ec;
      if (!keep) fs::remove_all(p, ec);
    }
  } cleanup{work, o.keep || !o.work.empty()};
  nlohmann::json report;

  // 1. The model: the one given, else a synthesized small Llama with the real Llama-2 vocabulary.
  std::string model_dir = o.model;
  if (model_dir.empty()) {
    SynthOptions s;
    s.family = Family::Llama;
    s.preset = "small";
    s.vocab_dir = std::string(ALOEPRI_SOURCE_DIR) + "/vocab/llama2";
    s.seed = 1;
    model_dir = (work / "model").string();
    std::cerr << "[demo] synthesizing a small llama model (real 32k Llama-2 vocabulary) in " << model_dir << "\n";
    synthesize(s, model_dir);
  }
  HFModel model(model_dir);
  const auto& c = model.config();
  report["model"] = {{"dir", model_dir}, {"family", family_name(c.family)}, {"hidden", c.hidden_size},
                     {"layers", c.num_hidden_layers}, {"vocab", c.vocab_size}};

  // 2. HF -> GGUF.
  auto t = clock::now();
  std::string gguf = (work / "model.gguf").string();
  std::cerr << "[demo] converting to GGUF (f32)\n";
  export_gguf(model, gguf, DType::F32);
  report["timings_s"]["convert"] = seconds_since(t);

  // 3. The reference engine's greedy continuation.
  auto prompt = cli::parse_ids_csv(o.prompt_ids);
  for (auto id : prompt)
    if (id >= c.vocab_size) throw Error("--prompt-ids", "id " + std::to_string(id) + " outside the vocabulary", kExitUsage);
  t = clock::now();
  auto ref = ReferenceModel::load(model_dir).greedy(prompt, o.tokens);
  report["timings_s"]["reference_generate"] = seconds_since(t);

  // 4. llama.cpp through the harness's llama-server API.
  t = clock::now();
  std::cerr << "[demo] starting llama.cpp (node-llama-cpp harness)\n";
  EngineProcessOptions eo;
  eo.model = gguf;
  eo.threads = o.threads;
  eo.log_path = (work / "engine.log").string();
  EngineProcess engine(eo);
  report["timings_s"]["engine_start"] = seconds_since(t);
  t = clock::now();
  httplib::Client http(engine.url());
  http.set_read_timeout(300, 0);
  nlohmann::json req = {{"prompt", prompt}, {"n_predict", o.tokens}, {"temperature", 0.0}, {"ignore_eos", true}};
  auto res = http.Post("/completion", req.dump(), "application/json");
  if (!res || res->status != 200)
    throw Error(engine.url() + "/completion", res ? "HTTP " + std::to_string(res->status) + ": " + res->body
                                                 : "no response", kExitError);
  auto body = nlohmann::json::parse(res->body);
  std::vector<int64_t> served = body.at("tokens").get<std::vector<int64_t>>();
  report["timings_s"]["engine_generate"] = seconds_since(t);
  engine.stop();

  size_t agree = 0;
  while (agree < ref.size() && agree < served.size() && ref[agree] == served[agree]) ++agree;
  report["prompt_ids"] = prompt;
  report["reference_greedy"] = ref;
  report["llamacpp_greedy"] = served;
  report["identical_prefix"] = agree;
  report["identical"] = agree == ref.size() && served.size() == ref.size();
  report["timings_s"]["total"] = seconds_since(t0);

  if (o.json) {
    std::cout << report.dump(2) << "\n";
  } else {
    std::printf("\nmodel      %s (%s, d=%lld, %lld layers, vocab %lld)\n", model_dir.c_str(), family_name(c.family).c_str(),
                (long long)c.hidden_size, (long long)c.num_hidden_layers, (long long)c.vocab_size);
    std::printf("prompt     %s\n\n", join(prompt).c_str());
    std::printf("  #  reference   llama.cpp\n");
    for (size_t i = 0; i < std::max(ref.size(), served.size()); ++i)
      std::printf("%3zu  %9s   %9s %s\n", i, i < ref.size() ? std::to_string(ref[i]).c_str() : "-",
                  i < served.size() ? std::to_string(served[i]).c_str() : "-",
                  (i < ref.size() && i < served.size() && ref[i] == served[i]) ? "" : "  <- differs");
    std::printf("\n%s: %zu of %zu greedy tokens identical\n", report["identical"].get<bool>() ? "OK" : "MISMATCH",
                agree, ref.size());
    std::printf("timings: convert %.2fs, engine start %.2fs, llama.cpp %.2fs, reference %.2fs, total %.2fs\n",
                report["timings_s"]["convert"].get<double>(), report["timings_s"]["engine_start"].get<double>(),
                report["timings_s"]["engine_generate"].get<double>(),
                report["timings_s"]["reference_generate"].get<double>(), report["timings_s"]["total"].get<double>());
  }
  return report["identical"].get<bool>() ? 0 : kExitError;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("--model", o->model, "HF model dir to use (default: synthesize a small llama)");
  sub.add_option("--prompt-ids", o->prompt_ids, "Prompt token ids, comma-separated");
  sub.add_option("--tokens", o->tokens, "Greedy tokens to generate")->check(CLI::Range(1, 4096));
  sub.add_option("--threads", o->threads, "llama.cpp threads")->check(CLI::Range(1, 256));
  sub.add_option("--work", o->work, "Work directory (kept); default: a temporary one, removed");
  sub.add_flag("--keep", o->keep, "Keep the temporary work directory");
  sub.add_flag("--json", o->json, "Machine-readable report on stdout");
  sub.footer(
      "Runs the whole pipeline on one machine: model -> GGUF -> llama.cpp (node-llama-cpp\n"
      "harness on loopback), and compares llama.cpp's greedy continuation with the reference\n"
      "forward pass token by token. To try your own model: aloepri demo --model /path/to/hf_dir\n"
      "(llama, mistral or qwen2 family, safetensors + config.json + tokenizer.json).");
  return [o] { return run(*o); };
}
}  // namespace
ALOEPRI_COMMAND(demo, "demo", 1, "The main job: model -> GGUF -> llama.cpp, checked against the reference engine", setup);
