// `aloepri demo`: the main job. A fresh key, the shipped reference model obfuscated with it,
// the obfuscated GGUF served by an unmodified llama.cpp (node-llama-cpp harness on loopback),
// a prompt sent as permuted token ids, the answer mapped back and detokenized, next to the
// plaintext model's own answer (reference forward pass) and to what the server actually saw.
// Every file lives in a work directory removed afterwards (unless --keep/--work), and every
// process it starts is stopped before it returns.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <httplib.h>
#include <iostream>

#include "aloepri/engine_process.h"
#include "aloepri/error.h"
#include "aloepri/forward.h"
#include "aloepri/gguf_export.h"
#include "aloepri/keyfile.h"
#include "aloepri/model.h"
#include "aloepri/obfuscate.h"
#include "aloepri/synth.h"
#include "aloepri/tokenizer.h"
#include "command.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string model, work, prompt = "In the beginning God created";
  int64_t tokens = 24;
  int threads = 1;
  bool keep = false, json = false, exact = false, synth = false;
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string join(const std::vector<int64_t>& v, size_t max = 64) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < max; ++i) s += (i ? "," : "") + std::to_string(v[i]);
  if (v.size() > max) s += ",...";
  return s;
}

std::string printable(std::string s) {
  for (char& ch : s)
    if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
  return s;
}

int run(const Options& o) {
  using namespace aloepri;
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  fs::path work = o.work.empty() ? fs::temp_directory_path() / ("aloepri-demo-" + std::to_string(::getpid()))
                                 : fs::path(o.work);
  if (!o.work.empty()) refuse_existing(o.work, false);
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
  auto timed = [&](const char* what, auto&& fn) {
    auto t = clock::now();
    fn();
    report["timings_s"][what] = seconds_since(t);
  };

  // 1. The plaintext model: the one given, the shipped aloe-mini, or (--synth) a random one.
  std::string model_dir = o.model;
  if (model_dir.empty() && !o.synth) model_dir = std::string(ALOEPRI_SOURCE_DIR) + "/models/aloe-mini";
  if (model_dir.empty()) {
    SynthOptions s;
    s.preset = "small";
    s.vocab_dir = std::string(ALOEPRI_SOURCE_DIR) + "/vocab/llama2";
    s.seed = 1;
    model_dir = (work / "plain").string();
    std::cerr << "[demo] synthesizing a small llama model (real 32k Llama-2 vocabulary)\n";
    synthesize(s, model_dir);
  }
  HFModel plain(model_dir);
  const auto& c = plain.config();
  Tokenizer tok = Tokenizer::load(model_dir);
  report["model"] = {{"dir", model_dir}, {"family", family_name(c.family)}, {"hidden", c.hidden_size},
                     {"layers", c.num_hidden_layers}, {"vocab", c.vocab_size}};

  // 2. Client, offline: a fresh key and the obfuscated model (HF dir + GGUF for llama.cpp).
  std::string key_path = (work / "client.key").string(), obf_dir = (work / "obf").string(),
              gguf = (work / "obf.gguf").string();
  KeyFile key = KeyFile::generate();
  key.save(key_path);
  ObfuscateOptions oo;
  if (o.exact) oo.params = ObfuscationParams::exact();
  oo.dtype = DType::F32;
  std::cerr << "[demo] obfuscating " << model_dir << (o.exact ? " (--exact)" : " (default parameters)") << "\n";
  ObfuscateResult obf_res;
  timed("obfuscate", [&] { obf_res = obfuscate_model(model_dir, key.seed, obf_dir, oo); });
  timed("export_gguf", [&] {
    GGUFExportOptions go;
    go.opaque_vocab = true;  // the server gets placeholder token strings, never the vocabulary's
    export_gguf(HFModel(obf_dir), gguf, DType::F32, go);
  });
  report["obfuscation"] = {{"params", oo.params.to_json()}, {"hidden", obf_res.hidden},
                           {"obf_hidden", obf_res.obf_hidden}};

  // 3. Client, online: plaintext -> ids -> tau(ids).
  auto prompt32 = tok.encode(o.prompt, /*add_special=*/true);
  std::vector<int64_t> prompt(prompt32.begin(), prompt32.end());
  auto tau = derive_tau(key.seed, c.vocab_size);
  auto tau_inv = invert_permutation(tau);
  std::vector<int64_t> sent;
  for (auto id : prompt) sent.push_back(tau[size_t(id)]);

  // 4. Server: an unmodified llama.cpp serving the obfuscated GGUF, llama-server's API.
  std::cerr << "[demo] starting llama.cpp (node-llama-cpp harness) on the obfuscated model\n";
  std::vector<int64_t> served;
  EngineProcessOptions eo;
  eo.model = gguf;
  eo.threads = o.threads;
  eo.log_path = (work / "engine.log").string();
  {
    auto t = clock::now();
    EngineProcess engine(eo);
    report["timings_s"]["engine_start"] = seconds_since(t);
    t = clock::now();
    httplib::Client http(engine.url());
    http.set_read_timeout(300, 0);
    nlohmann::json req = {{"prompt", sent}, {"n_predict", o.tokens}, {"temperature", 0.0}};
    auto res = http.Post("/completion", req.dump(), "application/json");
    if (!res || res->status != 200)
      throw Error(engine.url() + "/completion",
                  res ? "HTTP " + std::to_string(res->status) + ": " + res->body : "no response", kExitError);
    served = nlohmann::json::parse(res->body).at("tokens").get<std::vector<int64_t>>();
    report["timings_s"]["engine_generate"] = seconds_since(t);
  }  // engine stopped here

  // 5. Client: tau^-1 and detokenize; compare with the plaintext model run locally.
  std::vector<int64_t> answer;
  for (auto id : served) {
    if (id < 0 || id >= c.vocab_size) throw Error("engine", "returned token id out of range", kExitError);
    answer.push_back(tau_inv[size_t(id)]);
  }
  std::vector<int64_t> ref;
  timed("reference_generate", [&] { ref = ReferenceModel::load(model_dir).greedy(prompt, o.tokens); });
  // The engine stops at the published tau(eos); stop the reference there too.
  if (c.eos_token_id)
    for (size_t i = 0; i < ref.size(); ++i)
      if (ref[i] == *c.eos_token_id) {
        ref.resize(i + 1);
        break;
      }
  auto to32 = [](const std::vector<int64_t>& v) { return std::vector<int32_t>(v.begin(), v.end()); };
  std::string answer_text = tok.decode(to32(answer)), ref_text = tok.decode(to32(ref));
  std::string seen_prompt_text = tok.decode(to32(sent)), seen_answer_text = tok.decode(to32(served));
  size_t agree = 0;
  while (agree < ref.size() && agree < answer.size() && ref[agree] == answer[agree]) ++agree;

  report["prompt"] = {{"text", o.prompt}, {"ids", prompt}};
  report["server_saw"] = {{"prompt_ids", sent}, {"answer_ids", served}, {"prompt_as_text", seen_prompt_text},
                          {"answer_as_text", seen_answer_text}};
  report["answer"] = {{"ids", answer}, {"text", answer_text}};
  report["plaintext_reference"] = {{"ids", ref}, {"text", ref_text}};
  report["greedy_agreement"] = {{"identical_prefix", agree}, {"tokens", ref.size()}};
  report["timings_s"]["total"] = seconds_since(t0);
  const bool ok = !o.exact || (agree == ref.size() && answer.size() == ref.size());
  report["ok"] = ok;

  if (o.json) {
    std::cout << report.dump(2) << "\n";
    return ok ? 0 : kExitError;
  }
  auto& tm = report["timings_s"];
  std::printf("\nmodel          %s (%s, d=%lld -> d'=%lld, %lld layers, vocab %lld)\n", model_dir.c_str(),
              family_name(c.family).c_str(), (long long)c.hidden_size, (long long)obf_res.obf_hidden,
              (long long)c.num_hidden_layers, (long long)c.vocab_size);
  std::printf("parameters     %s\n\n", oo.params.to_json().dump().c_str());
  std::printf("YOU SEND       \"%s\"\n", printable(o.prompt).c_str());
  std::printf("  as ids       %s\n", join(prompt).c_str());
  std::printf("SERVER SEES    ids %s\n", join(sent).c_str());
  std::printf("  as text      \"%s\"\n", printable(seen_prompt_text).c_str());
  std::printf("SERVER ANSWERS ids %s\n", join(served).c_str());
  std::printf("  as text      \"%s\"\n\n", printable(seen_answer_text).c_str());
  std::printf("YOU GET        \"%s\"\n", printable(answer_text).c_str());
  std::printf("PLAINTEXT MODEL (reference forward, same prompt, greedy):\n               \"%s\"\n\n",
              printable(ref_text).c_str());
  std::printf("greedy agreement: %zu of %zu tokens identical before the first difference%s\n", agree, ref.size(),
              o.exact ? "" : " (default parameters add noise on purpose; --exact shows the exact pipeline)");
  std::printf("timings: obfuscate %.1fs, GGUF %.1fs, engine start %.1fs, llama.cpp generate %.2fs, total %.1fs\n",
              tm["obfuscate"].get<double>(), tm["export_gguf"].get<double>(), tm["engine_start"].get<double>(),
              tm["engine_generate"].get<double>(), tm["total"].get<double>());
  if (!ok) std::printf("MISMATCH: with --exact the answers must be identical\n");
  return ok ? 0 : kExitError;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("--model", o->model, "Plaintext HF model dir (default: the shipped models/aloe-mini)");
  sub.add_flag("--synth", o->synth, "Use a randomly initialised small llama instead of aloe-mini");
  sub.add_option("--prompt", o->prompt, "Plaintext prompt");
  sub.add_option("--tokens", o->tokens, "Greedy tokens to generate")->check(CLI::Range(1, 4096));
  sub.add_flag("--exact", o->exact, "Exact setting (no noise, lambda 0, h 0, beta 1): answers must be identical");
  sub.add_option("--threads", o->threads, "llama.cpp threads")->check(CLI::Range(1, 256));
  sub.add_option("--work", o->work, "Work directory (must not exist; kept); default: a temporary one, removed");
  sub.add_flag("--keep", o->keep, "Keep the temporary work directory");
  sub.add_flag("--json", o->json, "Machine-readable report on stdout");
  sub.footer(
      "Runs the whole pipeline on one machine: keygen -> obfuscate -> GGUF -> llama.cpp serving\n"
      "the obfuscated model -> permuted ids in, permuted ids out -> mapped back and detokenized,\n"
      "next to the plaintext model's answer and to what the server saw.\n"
      "Your own model: aloepri demo --model /path/to/hf_dir (llama, mistral or qwen2 family:\n"
      "config.json + safetensors + tokenizer.json). Step by step, the same is:\n"
      "  aloepri keygen --out client.key\n"
      "  aloepri obfuscate MODEL --key client.key --out obf/ --gguf obf.gguf\n"
      "  node engine/llamacpp/server.mjs --model obf.gguf --port 8081\n"
      "  aloepri encode --key client.key --ids ...   /   aloepri decode --key client.key --ids ...");
  return [o] { return run(*o); };
}
}  // namespace
ALOEPRI_COMMAND(demo, "demo", 1, "The main job: obfuscate a model, serve it with llama.cpp, talk to it privately", setup);
