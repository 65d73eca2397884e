// `aloepri demo`: the main job. A fresh key, the shipped reference model obfuscated with it,
// the obfuscated GGUF served by an unmodified llama.cpp (node-llama-cpp harness on loopback),
// the privacy proxy (in process) in front of it, and a chat request sent through the proxy's
// OpenAI-compatible API over HTTP, like any application would. Prints the plaintext answer the
// user gets, what the server saw (ids and what they would mean as text), the plaintext model's
// own answer (reference forward pass) and timings. Every file lives in a work directory removed
// afterwards (unless --keep/--work), and everything it starts is stopped before it returns.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <httplib.h>
#include <iostream>
#include <mutex>

#include "aloepri/client/engine_process.h"
#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/export/gguf_export.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/client/proxy.h"
#include "aloepri/client/sse.h"
#include "aloepri/engine/synth.h"
#include "aloepri/client/tokenizer.h"
#include "command.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string model, work, prompt = "In the beginning God created", profile = "exact";
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
  const std::string model_name = fs::path(model_dir).lexically_normal().filename().empty()
                                     ? fs::path(model_dir).lexically_normal().parent_path().filename().string()
                                     : fs::path(model_dir).lexically_normal().filename().string();
  report["model"] = {{"dir", model_dir}, {"family", family_name(c.family)}, {"hidden", c.hidden_size},
                     {"layers", c.num_hidden_layers}, {"vocab", c.vocab_size}};

  // 2. Client, offline: a fresh key and the obfuscated model (HF dir + GGUF for llama.cpp).
  std::string key_path = (work / "client.key").string(), obf_dir = (work / "obf").string(),
              gguf = (work / "obf.gguf").string();
  KeyFile key = KeyFile::generate();
  ObfuscateOptions oo;
  oo.params = o.exact ? ObfuscationParams::exact() : ObfuscationParams::profile(o.profile);
  // An exact setting must reproduce the plaintext answer token for token; anything else is a bug.
  const bool exact = oo.params.is_exact_setting();
  oo.dtype = DType::F32;
  std::cerr << "[demo] obfuscating " << model_dir << (o.exact ? " (--exact)" : " (profile " + o.profile + ")") << "\n";
  ObfuscateResult obf_res;
  timed("obfuscate", [&] { obf_res = obfuscate_model(model_dir, key.seed, obf_dir, oo); });
  // The key records what it obfuscated (as `aloepri obfuscate` does): the proxy checks it.
  key.record = obf_res.key_record();
  key.save(key_path);
  timed("export_gguf", [&] {
    GGUFExportOptions go;
    go.opaque_vocab = true;  // the server gets placeholder token strings, never the vocabulary's
    export_gguf(HFModel(obf_dir), gguf, DType::F32, go);
  });
  report["obfuscation"] = {{"params", oo.params.to_json()}, {"hidden", obf_res.hidden},
                           {"obf_hidden", obf_res.obf_hidden}};

  // 3. Server: an unmodified llama.cpp serving the obfuscated GGUF (llama-server's API); client:
  //    the privacy proxy in front of it; the application talks OpenAI's API to the proxy.
  std::cerr << "[demo] starting llama.cpp (node-llama-cpp harness) on the obfuscated model, and the privacy proxy\n";
  EngineProcessOptions eo;
  eo.model = gguf;
  eo.threads = o.threads;
  eo.log_path = (work / "engine.log").string();
  std::mutex ex_m;
  std::vector<ProxyOptions::Exchange> exchanges;
  nlohmann::json api;
  std::string answer_text;
  {
    auto t = clock::now();
    EngineProcess engine(eo);
    report["timings_s"]["engine_start"] = seconds_since(t);
    t = clock::now();
    BackendOptions bo;
    bo.kind = BackendKind::LlamaCpp;
    bo.url = engine.url();
    ProxyOptions po;
    po.port = 0;
    po.model_name = model_name;
    po.quiet = true;
    po.observer = [&](const ProxyOptions::Exchange& e) {
      std::lock_guard<std::mutex> lk(ex_m);
      exchanges.push_back(e);
    };
    ProxyServer proxy(ProxyModel::load(key_path, model_dir), bo, po);
    proxy.start();
    report["timings_s"]["proxy_start"] = seconds_since(t);

    // What an application sends: POST /v1/chat/completions, streamed.
    nlohmann::json req = {{"model", model_name},
                          {"messages", {{{"role", "user"}, {"content", o.prompt}}}},
                          {"max_tokens", o.tokens},
                          {"temperature", 0},
                          {"stream", true},
                          {"stream_options", {{"include_usage", true}}}};
    httplib::Client http(proxy.url());
    http.set_read_timeout(300, 0);
    httplib::Request hr;
    hr.method = "POST";
    hr.path = "/v1/chat/completions";
    hr.body = req.dump();
    hr.set_header("Content-Type", "application/json");
    std::string err_body, finish, stream_error;
    SseParser sse;
    int status = 0, chunks = 0;
    double ttft = -1;
    nlohmann::json usage;
    t = clock::now();
    hr.response_handler = [&](const httplib::Response& r) {
      status = r.status;
      return true;
    };
    hr.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
      if (status != 200) {
        err_body.append(d, n);
        return true;
      }
      // The proxy's OpenAI stream: "data: {chunk}" events, then "data: [DONE]".
      return sse.feed(d, n, [&](const SseEvent& ev) {
        if (ev.error) {
          stream_error = *ev.error;
          return false;
        }
        if (ev.data == "[DONE]") return true;
        auto j = nlohmann::json::parse(ev.data);
        if (j.contains("error")) {
          stream_error = j["error"].value("message", std::string("error"));
          return false;
        }
        if (j.contains("usage") && !j["usage"].is_null()) usage = j["usage"];
        if (j["choices"].empty()) return true;
        const auto& ch = j["choices"][0];
        if (ch["delta"].contains("content") && !ch["delta"].contains("role")) {
          if (ttft < 0) ttft = seconds_since(t);
          answer_text += ch["delta"]["content"].get<std::string>();
          ++chunks;
        }
        if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
        return true;
      });
    };
    httplib::Response res;
    httplib::Error herr;
    const bool sent = http.send(hr, res, herr);
    if (!stream_error.empty()) throw Error(proxy.url() + "/v1/chat/completions", stream_error, kExitError);
    if (!sent)
      throw Error(proxy.url() + "/v1/chat/completions", "request failed: " + httplib::to_string(herr), kExitError);
    if (status != 200)
      throw Error(proxy.url() + "/v1/chat/completions", "HTTP " + std::to_string(status) + ": " + err_body, kExitError);
    report["timings_s"]["request_total"] = seconds_since(t);
    report["timings_s"]["request_ttft"] = ttft < 0 ? seconds_since(t) : ttft;
    api = {{"url", proxy.url() + "/v1/chat/completions"}, {"request", req}, {"finish_reason", finish},
           {"usage", usage}, {"chunks", chunks}};
    proxy.stop();
  }  // proxy and engine stopped here
  if (exchanges.size() != 1) throw Error("demo", "expected one exchange with the engine", kExitError);
  const auto& ex = exchanges[0];

  // 4. The plaintext model run locally on the same plaintext prompt ids, for comparison.
  std::vector<int64_t> ref;
  timed("reference_generate", [&] { ref = ReferenceModel::load(model_dir).greedy(ex.plain_prompt, o.tokens); });
  // The engine stops at the published tau(eos); stop the reference there too.
  if (c.eos_token_id)
    for (size_t i = 0; i < ref.size(); ++i)
      if (ref[i] == *c.eos_token_id) {
        ref.resize(i + 1);
        break;
      }
  auto to32 = [](const std::vector<int64_t>& v) {
    std::vector<int32_t> r;
    for (auto x : v)
      if (x >= 0 && x < INT32_MAX) r.push_back(int32_t(x));
    return r;
  };
  DecodeOptions skip;
  skip.skip_special = true;
  std::string ref_text = tok.decode(to32(ref), skip);
  std::string seen_prompt_text = tok.decode(to32(ex.sent_prompt)), seen_answer_text = tok.decode(to32(ex.received));
  size_t agree = 0;
  while (agree < ref.size() && agree < ex.plain_answer.size() && ref[agree] == ex.plain_answer[agree]) ++agree;

  report["prompt"] = {{"text", o.prompt}, {"chat_template_text", tok.decode(to32(ex.plain_prompt))}, {"ids", ex.plain_prompt}};
  report["server_saw"] = {{"prompt_ids", ex.sent_prompt}, {"answer_ids", ex.received}, {"prompt_as_text", seen_prompt_text},
                          {"answer_as_text", seen_answer_text}};
  report["answer"] = {{"ids", ex.plain_answer}, {"text", answer_text}};
  report["api"] = api;
  report["plaintext_reference"] = {{"ids", ref}, {"text", ref_text}};
  report["greedy_agreement"] = {{"identical_prefix", agree}, {"tokens", ref.size()}};
  report["timings_s"]["proxy_ttft"] = ex.ttft_s;
  report["timings_s"]["total"] = seconds_since(t0);
  report["profile"] = o.exact ? "exact" : o.profile;
  report["exact"] = exact;
  const bool ok = !exact || (agree == ref.size() && ex.plain_answer.size() == ref.size() && answer_text == ref_text);
  report["ok"] = ok;

  if (o.json) {
    std::cout << report.dump(2) << "\n";
    return ok ? 0 : kExitError;
  }
  auto& tm = report["timings_s"];
  const double gen_s = tm["request_total"].get<double>() - tm["request_ttft"].get<double>();
  const int64_t ntok = int64_t(ex.plain_answer.size());
  std::printf("\nmodel          %s (%s, d=%lld -> d'=%lld, %lld layers, vocab %lld)\n", model_dir.c_str(),
              family_name(c.family).c_str(), (long long)c.hidden_size, (long long)obf_res.obf_hidden,
              (long long)c.num_hidden_layers, (long long)c.vocab_size);
  std::printf("parameters     %s\n\n", oo.params.to_json().dump().c_str());
  std::printf("YOUR APP SENDS POST %s  (OpenAI chat API, streamed)\n", api["url"].get<std::string>().c_str());
  std::printf("  message      \"%s\"\n", printable(o.prompt).c_str());
  std::printf("  templated    \"%s\"\n", printable(report["prompt"]["chat_template_text"].get<std::string>()).c_str());
  std::printf("  as ids       %s\n\n", join(ex.plain_prompt).c_str());
  std::printf("SERVER SEES    ids %s\n", join(ex.sent_prompt).c_str());
  std::printf("  as text      \"%s\"\n", printable(seen_prompt_text).c_str());
  std::printf("SERVER ANSWERS ids %s\n", join(ex.received).c_str());
  std::printf("  as text      \"%s\"\n\n", printable(seen_answer_text).c_str());
  std::printf("YOUR APP GETS  \"%s\"  (finish_reason %s, %lld tokens)\n", printable(answer_text).c_str(),
              api["finish_reason"].get<std::string>().c_str(), (long long)ntok);
  std::printf("PLAINTEXT MODEL (reference forward pass, same prompt, greedy):\n               \"%s\"\n\n",
              printable(ref_text).c_str());
  std::printf("greedy agreement: %zu of %zu tokens identical before the first difference%s\n", agree, ref.size(),
              exact ? "" : " (this profile adds noise on purpose; the default, exact, keeps the answers)");
  std::printf("privacy: the server saw only permuted ids. To whoever lacks the obfuscated weights they are a\n"
              "         substitution cipher (long traffic and a close public corpus break part of it); the\n"
              "         server holding the weights can recover the vocabulary at every profile that keeps\n"
              "         the model useful (docs/THREAT_MODEL.md)\n");
  std::printf("timings: obfuscate %.1fs, GGUF %.1fs, engine start %.1fs, proxy start %.3fs,\n"
              "         first token %.0f ms (at the proxy %.0f ms), then %.1f ms/token, total %.1fs\n",
              tm["obfuscate"].get<double>(), tm["export_gguf"].get<double>(), tm["engine_start"].get<double>(),
              tm["proxy_start"].get<double>(), 1e3 * tm["request_ttft"].get<double>(), 1e3 * ex.ttft_s,
              ntok > 1 ? 1e3 * gen_s / double(ntok - 1) : 0.0, tm["total"].get<double>());
  if (!ok) std::printf("MISMATCH: with an exact setting the answers must be identical\n");
  return ok ? 0 : kExitError;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("--model", o->model, "Plaintext HF model dir (default: the shipped models/aloe-mini)");
  sub.add_flag("--synth", o->synth, "Use a randomly initialised small llama instead of aloe-mini");
  sub.add_option("--prompt", o->prompt, "The user's chat message");
  sub.add_option("--tokens", o->tokens, "Greedy tokens to generate at most (max_tokens)")->check(CLI::Range(1, 4096));
  sub.add_flag("--exact", o->exact, "Exact setting (no noise, lambda 0, h 0, beta 1): answers must be identical");
  sub.add_option("--profile", o->profile,
                 "Privacy parameters, as `aloepri obfuscate --profile`: exact (the default: answers identical to\n"
                 "the plaintext model's), noise (the former default, alpha_e 0.5), paper (the report's values)")
      ->capture_default_str();
  sub.add_option("--threads", o->threads, "llama.cpp threads")->check(CLI::Range(1, 256));
  sub.add_option("--work", o->work, "Work directory (must not exist; kept); default: a temporary one, removed");
  sub.add_flag("--keep", o->keep, "Keep the temporary work directory");
  sub.add_flag("--json", o->json, "Machine-readable report on stdout");
  sub.footer(
      "Runs the whole pipeline on one machine: keygen -> obfuscate -> GGUF -> llama.cpp serving the\n"
      "obfuscated model -> the privacy proxy (OpenAI API) in front of it -> one chat request over\n"
      "HTTP -> the plaintext answer, next to what the server saw and the plaintext model's answer.\n"
      "\n"
      "Your own model: aloepri demo --model /path/to/hf_dir   (llama, mistral, qwen2 or qwen3 family:\n"
      "config.json + *.safetensors + tokenizer.json [+ tokenizer_config.json with a chat template]).\n"
      "The same, step by step, with any OpenAI client:\n"
      "  aloepri keygen --out client.key\n"
      "  aloepri obfuscate MODEL --key client.key --out obf/ --gguf obf.gguf\n"
      "  node harness/llamacpp/server.mjs --model obf.gguf --port 8081      # the untrusted server\n"
      "  aloepri proxy --key client.key --tokenizer MODEL --backend http://127.0.0.1:8081 --listen 127.0.0.1:8080\n"
      "  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
      "       -d '{\"model\":\"NAME\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'\n"
      "(NAME: the model directory's name, or --model-name; vLLM / SGLang: --backend-kind vllm|sglang.)");
  return [o] { return run(*o); };
}
}  // namespace
ALOEPRI_COMMAND(demo, "demo", 1, "The main job: obfuscate a model, serve it with llama.cpp behind the privacy proxy, chat with it", setup);
