// `aloepri proxy`: the OpenAI-compatible privacy proxy (include/aloepri/proxy.h) as a command.
// Runs until SIGINT/SIGTERM.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <iostream>

#include "aloepri/core/error.h"
#include "aloepri/client/proxy.h"
#include "command.h"

namespace {

struct Options {
  std::string key, tokenizer, backend, kind = "llamacpp", listen = "127.0.0.1:8080", model_name, backend_model;
  double timeout = 300;
  int threads = 64;
  bool log_plaintext = false, quiet = false;
};

int run(const Options& o) {
  using namespace aloepri;
  const size_t colon = o.listen.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw Error("--listen", "expected HOST:PORT, got '" + o.listen + "'", kExitUsage);
  ProxyOptions po;
  po.host = o.listen.substr(0, colon);
  if (po.host.size() > 2 && po.host.front() == '[' && po.host.back() == ']') po.host = po.host.substr(1, po.host.size() - 2);
  try {
    size_t used = 0;
    po.port = std::stoi(o.listen.substr(colon + 1), &used);
    if (used != o.listen.size() - colon - 1 || po.port < 0 || po.port > 65535) throw std::out_of_range("port");
  } catch (const std::exception&) {
    throw Error("--listen", "bad port in '" + o.listen + "'", kExitUsage);
  }
  po.model_name = o.model_name;
  if (po.model_name.empty()) {
    std::filesystem::path p = std::filesystem::absolute(o.tokenizer).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    po.model_name = p.filename() == "tokenizer.json" ? p.parent_path().filename().string() : p.filename().string();
  }
  po.log_plaintext = o.log_plaintext;
  po.quiet = o.quiet;
  po.threads = o.threads;
  BackendOptions bo;
  bo.kind = parse_backend_kind(o.kind);
  bo.url = o.backend;
  bo.model = o.backend_model;
  bo.read_timeout_s = o.timeout;

  ProxyModel model = ProxyModel::load(o.key, o.tokenizer);
  // Signals are taken by sigwait below: block them before any thread starts.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  ProxyServer proxy(std::move(model), bo, po);
  proxy.start();
  std::string why;
  Backend probe(bo);
  const bool up = probe.healthy(&why);
  std::fprintf(stderr, "aloepri proxy: listening on %s (model '%s', backend %s %s%s)%s\n", proxy.url().c_str(),
               po.model_name.c_str(), backend_kind_name(bo.kind), bo.url.c_str(), up ? "" : (": " + why).c_str(),
               o.log_plaintext ? " -- LOGGING PLAINTEXT" : "");
  std::fflush(stderr);
  int sig = 0;
  sigwait(&set, &sig);
  std::fprintf(stderr, "aloepri proxy: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  proxy.stop();
  return 0;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("--key", o->key, "Key file that obfuscated the served model (0600)")->required();
  sub.add_option("--tokenizer", o->tokenizer, "The PLAINTEXT model directory (tokenizer.json, tokenizer_config.json)")
      ->required();
  sub.add_option("--backend", o->backend, "Engine URL serving the obfuscated model, e.g. http://127.0.0.1:8081")
      ->required();
  sub.add_option("--backend-kind", o->kind, "llamacpp (llama-server /completion), vllm (/v1/completions) or sglang (/generate)")
      ->check(CLI::IsMember({"llamacpp", "vllm", "sglang"}));
  sub.add_option("--backend-model", o->backend_model, "vllm: the served model name (default: the first of /v1/models)");
  sub.add_option("--backend-timeout", o->timeout, "Seconds to wait for the engine's next token before answering 504")
      ->check(CLI::Range(0.1, 86400.0));
  sub.add_option("--listen", o->listen, "HOST:PORT to serve the OpenAI API on (port 0: any free port)");
  sub.add_option("--model-name", o->model_name, "Model id in /v1/models and responses (default: the tokenizer dir's name)");
  sub.add_option("--threads", o->threads, "HTTP worker threads (each open client connection holds one)")
      ->check(CLI::Range(2, 4096));
  sub.add_flag("--log-plaintext", o->log_plaintext, "Log prompts and answers in clear (off by default: sizes and timings only)");
  sub.add_flag("--quiet", o->quiet, "No per-request log lines");
  sub.footer(
      "Serves /v1/models, /v1/completions, /v1/chat/completions (streaming and not) and /health.\n"
      "Prompts are tokenized and chat-templated here in plaintext, mapped through the key's tau and\n"
      "sent to the engine as token ids; answers come back as ids, are mapped back and detokenized.\n"
      "Example (llama.cpp harness serving an obfuscated GGUF):\n"
      "  node harness/llamacpp/server.mjs --model obf.gguf --port 8081 &\n"
      "  aloepri proxy --key client.key --tokenizer models/aloe-mini --backend http://127.0.0.1:8081\n"
      "  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
      "       -d '{\"model\":\"aloe-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'\n"
      "Once ready it prints 'aloepri proxy: listening on http://HOST:PORT ...' on stderr.");
  return [o] { return run(*o); };
}

}  // namespace

ALOEPRI_COMMAND(proxy, "proxy", 6, "OpenAI-compatible privacy proxy in front of an engine serving the obfuscated model", setup);
