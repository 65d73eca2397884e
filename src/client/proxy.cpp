// The privacy proxy (include/aloepri/proxy.h): OpenAI request parsing and validation, the
// plaintext <-> obfuscated id pipeline, streaming (SSE) and non-streaming answers, errors.
#include "aloepri/client/proxy.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "aloepri/client/chat_template.h"
#include "aloepri/core/error.h"
#include "aloepri/core/keyfile.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace aloepri {

// ---------------------------------------------------------------------------------------------
// tau

TokenMap::TokenMap(const Seed& seed, int64_t n, const std::vector<int64_t>& copies) : map_(seed, n, copies) {}

int64_t TokenMap::to_server(int64_t plain) const {
  if (plain < 0 || plain >= plain_size())
    throw Error("prompt", "token id " + std::to_string(plain) + " is outside the vocabulary", kExitBadInput);
  const int64_t k = map_.copies(plain);
  return map_.id(plain, k > 1 ? int64_t(random_below(uint32_t(k))) : 0);
}

std::vector<int64_t> TokenMap::all_copies(int64_t plain) const {
  if (plain < 0 || plain >= plain_size())
    throw Error("prompt", "token id " + std::to_string(plain) + " is outside the vocabulary", kExitBadInput);
  std::vector<int64_t> v;
  for (int64_t c = 0; c < map_.copies(plain); ++c) v.push_back(map_.id(plain, c));
  return v;
}

int64_t TokenMap::from_server(int64_t obf) const {
  if (obf < 0 || obf >= size())
    throw BackendError(502, "backend returned token id " + std::to_string(obf) + ", outside the vocabulary (" +
                                std::to_string(size()) + ")");
  return map_.plain(obf);
}

std::vector<int64_t> TokenMap::to_server(std::span<const int32_t> plain) const {
  std::vector<int64_t> v;
  v.reserve(plain.size());
  for (auto id : plain) v.push_back(to_server(int64_t(id)));
  return v;
}

// ---------------------------------------------------------------------------------------------
// Plaintext output with stop strings

TextStream::TextStream(const Tokenizer& tok, std::vector<std::string> stop)
    : dec_(tok.decoder(DecodeOptions{true, std::nullopt})) {
  for (auto& s : stop)
    if (!s.empty()) stop_.push_back(std::move(s));
}

std::string TextStream::take(std::string piece) {
  if (stopped_) return {};
  pending_ += piece;
  if (stop_.empty()) {
    std::string out;
    out.swap(pending_);
    return out;
  }
  size_t first = std::string::npos;
  for (const auto& s : stop_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back the longest suffix that is the start of a stop string (it starts at a character
  // boundary, since a stop string starts with a whole character).
  size_t keep = 0;
  for (const auto& s : stop_)
    for (size_t k = std::min(s.size() - 1, pending_.size()); k > keep; --k)
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string TextStream::push(int32_t id) { return take(dec_.push(id)); }

std::string TextStream::finish() {
  std::string out = take(dec_.finish());
  if (stopped_) return out;
  out += pending_;
  pending_.clear();
  return out;
}

// ---------------------------------------------------------------------------------------------
// Key + tokenizer

namespace {

void add_ids(const json& v, std::vector<int32_t>& out) {
  if (v.is_number_integer()) out.push_back(v.get<int32_t>());
  else if (v.is_array())
    for (const auto& x : v)
      if (x.is_number_integer()) out.push_back(x.get<int32_t>());
}

}  // namespace

ProxyModel ProxyModel::load(const std::string& key_path, const std::string& tokenizer_dir) {
  ProxyModel m;
  KeyFile key = KeyFile::load(key_path);
  const ObfuscationRecord& rec = key.require_record(key_path);
  m.seed = key.seed;
  m.vocab_size = rec.vocab_size;
  m.copies = rec.copies;
  m.tokenizer = Tokenizer::load(tokenizer_dir);
  if (int64_t(m.tokenizer.vocab_size()) > m.vocab_size)
    throw Error(key_path, "this key obfuscated a model with a " + std::to_string(m.vocab_size) +
                              "-token vocabulary, but the tokenizer in " + tokenizer_dir + " has " +
                              std::to_string(m.tokenizer.vocab_size()) + " tokens (wrong key or tokenizer?)",
                kExitKeyMismatch);
  std::vector<int32_t> ends;
  if (auto e = m.tokenizer.eos_id()) ends.push_back(*e);
  // The model's own end ids (config.json / generation_config.json next to the tokenizer).
  for (const char* f : {"config.json", "generation_config.json"}) {
    fs::path p = fs::path(tokenizer_dir) / f;
    if (!fs::is_regular_file(p)) continue;
    try {
      std::ifstream in(p);
      json j = json::parse(in);
      if (j.contains("eos_token_id")) add_ids(j["eos_token_id"], ends);
    } catch (const std::exception&) {
      throw Error(p.string(), "is not valid JSON", kExitBadInput);
    }
  }
  // Chat end-of-turn tokens of the supported families.
  for (const char* t : {"<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>"})
    if (auto id = m.tokenizer.token_to_id(t); id && m.tokenizer.is_special(*id)) ends.push_back(*id);
  // The end id the obfuscation published (tau(eos)) must be one of them: else the key and the
  // tokenizer do not belong together.
  if (rec.extra.is_object() && rec.extra.contains("obf_eos_token_id") && !ends.empty()) {
    TokenMap map(m.seed, m.vocab_size, m.copies);
    const int64_t obf_eos = rec.extra["obf_eos_token_id"].get<int64_t>();
    bool found = false;
    for (auto e : ends)
      if (e >= 0 && e < m.vocab_size)
        for (int64_t o : map.all_copies(e)) found |= o == obf_eos;
    if (!found)
      throw Error(key_path, "the end-of-sequence id this key published does not map to an end token of the tokenizer in " +
                                tokenizer_dir + " (wrong key or tokenizer?)",
                  kExitKeyMismatch);
  }
  std::unordered_set<int32_t> seen;
  for (auto e : ends)
    if (e >= 0 && e < m.vocab_size && seen.insert(e).second) m.end_ids.push_back(e);
  return m;
}

// ---------------------------------------------------------------------------------------------
// The server

namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t).count();
}

// An error answered to the client, OpenAI-style.
struct ApiError : std::exception {
  int status;
  std::string message, type, param, code;
  ApiError(int s, std::string m, std::string t, std::string p = "", std::string c = "")
      : status(s), message(std::move(m)), type(std::move(t)), param(std::move(p)), code(std::move(c)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

[[noreturn]] void bad(const std::string& param, const std::string& msg) {
  throw ApiError(400, msg, "invalid_request_error", param);
}

json error_json(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

ApiError from_backend(const BackendError& e) {
  if (e.status() == 504) return ApiError(504, e.what(), "timeout_error", "", "backend_timeout");
  if (e.status() == 400) return ApiError(400, e.what(), "invalid_request_error", "", "backend_rejected");
  return ApiError(502, e.what(), "upstream_error", "", "backend_error");
}

// What one request asks for, after validation.
struct Job {
  bool chat = false, stream = false, include_usage = false;
  std::vector<int32_t> prompt;
  int64_t max_tokens = -1;
  double temperature = 1.0, top_p = 1.0, min_p = 0.0;
  int64_t top_k = 0;
  std::optional<int64_t> seed;
  std::vector<std::string> stop;
  std::string plain_prompt;  // for --log-plaintext only
};

struct Outcome {
  std::string finish = "length";
  int64_t completion_tokens = 0;
  std::string text;  // accumulated (used by non-streaming answers and --log-plaintext)
  double ttft_ms = 0;
};

const json* field(const json& b, const char* k) {
  auto it = b.find(k);
  return it == b.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& b, const char* k, double def, double lo, double hi) {
  const json* v = field(b, k);
  if (!v) return def;
  if (!v->is_number()) bad(k, std::string("'") + k + "' must be a number");
  double x = v->get<double>();
  if (!(x >= lo && x <= hi))
    bad(k, std::string("'") + k + "' must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " + v->dump());
  return x;
}

int64_t integer(const json& b, const char* k, int64_t def, int64_t lo, int64_t hi) {
  const json* v = field(b, k);
  if (!v) return def;
  if (!v->is_number_integer() && !(v->is_number_float() && v->get<double>() == std::floor(v->get<double>())))
    bad(k, std::string("'") + k + "' must be an integer");
  if (v->is_number_float() && std::abs(v->get<double>()) > 9e15) bad(k, std::string("'") + k + "' is out of range");
  int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX
              : v->is_number_float()                                              ? int64_t(v->get<double>())
                                                                                   : v->get<int64_t>();
  if (x < lo || x > hi)
    bad(k, std::string("'") + k + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v->dump());
  return x;
}

bool boolean(const json& b, const char* k, bool def) {
  const json* v = field(b, k);
  if (!v) return def;
  if (!v->is_boolean()) bad(k, std::string("'") + k + "' must be a boolean");
  return v->get<bool>();
}

std::string message_text(const json& content, size_t i) {
  const std::string where = "messages[" + std::to_string(i) + "].content";
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {
    std::string s;
    for (const auto& part : content) {
      if (!part.is_object() || part.value("type", std::string()) != "text" || !part.contains("text") ||
          !part["text"].is_string())
        bad(where, "only text content parts ({\"type\":\"text\",\"text\":...}) are supported");
      s += part["text"].get<std::string>();
    }
    return s;
  }
  bad(where, "'" + where + "' must be a string or an array of text parts");
}

std::string random_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%016llx%08llx", prefix, (unsigned long long)rng(),
                (unsigned long long)(rng() & 0xffffffffu));
  return buf;
}

std::string sse(const json& j) { return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n"; }

}  // namespace

struct ProxyServer::Impl {
  ProxyModel model;
  TokenMap map;
  Backend backend;
  ProxyOptions opt;
  std::unordered_set<int32_t> end_set;
  std::vector<int64_t> obf_end_ids;
  httplib::Server server;
  std::thread thread;
  std::mutex run_m;
  std::condition_variable run_cv;
  bool running = false;
  int64_t created = 0;

  Impl(ProxyModel m, BackendOptions b, ProxyOptions o)
      : model(std::move(m)), map(model.seed, model.vocab_size, model.copies), backend(std::move(b)), opt(std::move(o)) {
    for (auto e : model.end_ids) {
      end_set.insert(e);
      for (int64_t o : map.all_copies(int64_t(e))) obf_end_ids.push_back(o);  // the engine may end on any copy
    }
    created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  }

  void log(const std::string& line) const {
    if (opt.quiet) return;
    if (opt.logger) opt.logger(line);
    else std::cerr << line + "\n";
  }

  // ---- request parsing ----------------------------------------------------------------------

  Job parse(const httplib::Request& req, bool chat) const {
    json b;
    try {
      b = json::parse(req.body);
    } catch (const std::exception&) {
      bad("", "the request body is not valid JSON");
    }
    if (!b.is_object()) bad("", "the request body must be a JSON object");
    Job job;
    job.chat = chat;
    if (const json* m = field(b, "model")) {
      if (!m->is_string()) bad("model", "'model' must be a string");
      if (m->get<std::string>() != opt.model_name)
        throw ApiError(404, "The model '" + m->get<std::string>() + "' does not exist (this proxy serves '" +
                                opt.model_name + "')",
                       "invalid_request_error", "model", "model_not_found");
    }
    if (integer(b, "n", 1, 1, 1) != 1) bad("n", "'n' must be 1");
    job.stream = boolean(b, "stream", false);
    if (const json* so = field(b, "stream_options")) {
      if (!so->is_object()) bad("stream_options", "'stream_options' must be an object");
      job.include_usage = boolean(*so, "include_usage", false);
    }
    const int64_t kMax = int64_t(1) << 40;
    if (chat) {
      job.max_tokens = integer(b, "max_completion_tokens", -1, 1, kMax);
      if (job.max_tokens < 0) job.max_tokens = integer(b, "max_tokens", -1, 1, kMax);
    } else {
      job.max_tokens = integer(b, "max_tokens", 16, 1, kMax);  // OpenAI's legacy default
    }
    job.temperature = number(b, "temperature", 1.0, 0.0, 2.0);
    job.top_p = number(b, "top_p", 1.0, 0.0, 1.0);
    job.top_k = integer(b, "top_k", 0, -1, kMax);
    job.min_p = number(b, "min_p", 0.0, 0.0, 1.0);
    if (field(b, "seed")) job.seed = integer(b, "seed", 0, -1, 4294967295LL);
    if (const json* s = field(b, "stop")) {
      if (s->is_string()) job.stop.push_back(s->get<std::string>());
      else if (s->is_array()) {
        for (const auto& x : *s) {
          if (!x.is_string()) bad("stop", "'stop' must be a string or an array of strings");
          job.stop.push_back(x.get<std::string>());
        }
      } else {
        bad("stop", "'stop' must be a string or an array of strings");
      }
      if (job.stop.size() > 16) bad("stop", "at most 16 stop strings");
      for (const auto& x : job.stop)
        if (x.empty()) bad("stop", "stop strings must not be empty");
    }
    // Features the proxy does not offer: refuse rather than ignore.
    auto unsupported = [&](const char* k, auto ok) {
      if (const json* v = field(b, k); v && !ok(*v)) bad(k, std::string("'") + k + "' is not supported by the aloepri proxy");
    };
    auto zero = [](const json& v) { return (v.is_number() && v.get<double>() == 0) || (v.is_boolean() && !v.get<bool>()); };
    unsupported("logprobs", zero);
    unsupported("top_logprobs", zero);
    unsupported("echo", zero);
    unsupported("presence_penalty", zero);
    unsupported("frequency_penalty", zero);
    unsupported("best_of", [](const json& v) { return v.is_number_integer() && v.get<int64_t>() == 1; });
    unsupported("suffix", [](const json& v) { return v.is_string() && v.get<std::string>().empty(); });
    unsupported("logit_bias", [](const json& v) { return v.is_object() && v.empty(); });
    unsupported("tools", [](const json& v) { return v.is_array() && v.empty(); });
    unsupported("functions", [](const json& v) { return v.is_array() && v.empty(); });
    unsupported("tool_choice", [](const json& v) { return v.is_string() && v.get<std::string>() == "none"; });
    unsupported("response_format", [](const json& v) { return v.is_object() && v.value("type", std::string()) == "text"; });

    const Tokenizer& tok = model.tokenizer;
    if (chat) {
      const json* msgs = field(b, "messages");
      if (!msgs) bad("messages", "'messages' is required");
      if (!msgs->is_array() || msgs->empty()) bad("messages", "'messages' must be a non-empty array");
      std::vector<ChatMessage> cm;
      for (size_t i = 0; i < msgs->size(); ++i) {
        const json& m = (*msgs)[i];
        const std::string where = "messages[" + std::to_string(i) + "]";
        if (!m.is_object()) bad(where, "'" + where + "' must be an object");
        if (!m.contains("role") || !m["role"].is_string()) bad(where + ".role", "'" + where + ".role' must be a string");
        ChatMessage c;
        c.role = m["role"].get<std::string>();
        if (c.role == "developer") c.role = "system";
        c.content = message_text(m.contains("content") ? m["content"] : json(nullptr), i);
        if (m.contains("reasoning_content") && m["reasoning_content"].is_string())
          c.reasoning_content = m["reasoning_content"].get<std::string>();
        cm.push_back(std::move(c));
      }
      try {
        ChatTemplate tpl = ChatTemplate::for_tokenizer(tok);
        job.prompt = tpl.encode(tok, cm);
        if (opt.log_plaintext) job.plain_prompt = tpl.render(cm);
      } catch (const Error& e) {
        bad("messages", e.message());
      }
    } else {
      const json* p = field(b, "prompt");
      if (!p) bad("prompt", "'prompt' is required");
      const json* one = p;
      if (p->is_array() && !p->empty() && (p->front().is_string() || p->front().is_array())) {
        if (p->size() != 1) bad("prompt", "only one prompt per request is supported");
        one = &p->front();
      }
      if (one->is_string()) {
        job.prompt = tok.encode(one->get<std::string>(), /*add_special=*/true);
        if (opt.log_plaintext) job.plain_prompt = one->get<std::string>();
      } else if (one->is_array()) {
        for (const auto& x : *one) {
          if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= model.vocab_size)
            bad("prompt", "'prompt' token ids must be integers in [0, " + std::to_string(model.vocab_size) + ")");
          job.prompt.push_back(x.get<int32_t>());
        }
        if (opt.log_plaintext) job.plain_prompt = tok.decode(job.prompt);
      } else {
        bad("prompt", "'prompt' must be a string, an array of token ids, or a one-element array of either");
      }
    }
    if (job.prompt.empty()) bad(chat ? "messages" : "prompt", "the prompt is empty");
    return job;
  }

  // ---- the pipeline -------------------------------------------------------------------------

  // Runs one generation. on_first: the engine answered (ids or end). emit(text): plaintext ready
  // to send; returns false when the client has gone. Throws BackendError.
  Outcome run(const Job& job, const std::function<void()>& on_first,
              const std::function<bool(const std::string&)>& emit) const {
    const auto t0 = clock_type::now();
    BackendRequest br;
    br.prompt = map.to_server(std::span<const int32_t>(job.prompt));
    br.max_tokens = job.max_tokens;
    br.temperature = job.temperature;
    br.top_p = job.top_p;
    br.top_k = job.top_k;
    br.min_p = job.min_p;
    br.seed = job.seed;
    br.stop_ids = obf_end_ids;
    br.stream = job.stream || !job.stop.empty();  // stop strings: read token by token, cancel early

    Outcome out;
    TextStream ts(model.tokenizer, job.stop);
    bool first = true, done = false, gone = false;
    std::optional<BackendError> failure;
    ProxyOptions::Exchange ex;
    const bool observe = bool(opt.observer);
    auto send = [&](const std::string& t) {
      if (t.empty() || gone) return;
      if (opt.log_plaintext || !job.stream) out.text += t;
      if (!emit(t)) gone = true;
    };
    auto on_ids = [&](std::span<const int64_t> ids) -> bool {
      if (first) {
        first = false;
        out.ttft_ms = ms_since(t0);
        on_first();
      }
      try {
        for (int64_t id : ids) {
          if (done) break;
          const int64_t p = map.from_server(id);
          ++out.completion_tokens;
          if (observe) {
            ex.received.push_back(id);
            ex.plain_answer.push_back(p);
          }
          if (end_set.count(int32_t(p))) {
            out.finish = "stop";
            done = true;
            break;
          }
          send(ts.push(int32_t(p)));
          if (ts.stopped()) {
            out.finish = "stop";
            done = true;
          } else if (gone) {
            done = true;
          } else if (job.max_tokens >= 0 && out.completion_tokens >= job.max_tokens) {
            out.finish = "length";
            done = true;
          }
        }
      } catch (const BackendError& e) {
        failure = e;
        return false;
      }
      return !done;
    };
    BackendResult r = backend.generate(br, on_ids);
    if (failure) throw *failure;
    if (first) {
      out.ttft_ms = ms_since(t0);
      on_first();
    }
    if (!ts.stopped() && !gone) send(ts.finish());
    if (observe) {
      ex.plain_prompt.assign(job.prompt.begin(), job.prompt.end());
      ex.sent_prompt = br.prompt;
      ex.ttft_s = out.ttft_ms / 1e3;
      ex.total_s = ms_since(t0) / 1e3;
      opt.observer(ex);
    }
    return out;
  }

  // ---- response shapes ----------------------------------------------------------------------

  json usage(const Job& job, const Outcome& o) const {
    return {{"prompt_tokens", int64_t(job.prompt.size())},
            {"completion_tokens", o.completion_tokens},
            {"total_tokens", int64_t(job.prompt.size()) + o.completion_tokens}};
  }

  json chunk(const Job& job, const std::string& id, const std::string* text, const char* finish, bool role = false) const {
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish ? json(finish) : json(nullptr)}};
    if (job.chat) {
      json delta = json::object();
      if (role) delta = {{"role", "assistant"}, {"content", ""}};
      else if (text) delta["content"] = *text;
      choice["delta"] = delta;
    } else {
      choice["text"] = text ? *text : std::string();
    }
    return {{"id", id},
            {"object", job.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", now_s()},
            {"model", opt.model_name},
            {"choices", json::array({choice})}};
  }

  static int64_t now_s() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  }

  void reply_error(httplib::Response& res, const ApiError& e) const {
    res.status = e.status;
    res.set_content(error_json(e).dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
  }

  void log_request(const httplib::Request& req, int status, const Job* job, const Outcome* o, double total_ms,
                   const ApiError* err) const {
    if (opt.quiet) return;
    char buf[512];
    std::string line;
    if (job && o) {
      std::snprintf(buf, sizeof buf, "[proxy] %s %s %d%s prompt=%zu completion=%lld finish=%s ttft=%.1fms total=%.1fms",
                    req.method.c_str(), req.path.c_str(), status, job->stream ? " stream" : "", job->prompt.size(),
                    (long long)o->completion_tokens, o->finish.c_str(), o->ttft_ms, total_ms);
      line = buf;
      if (opt.log_plaintext)
        line += " prompt_text=" + json(job->plain_prompt).dump(-1, ' ', false, json::error_handler_t::replace) +
                " answer_text=" + json(o->text).dump(-1, ' ', false, json::error_handler_t::replace);
    } else {
      std::snprintf(buf, sizeof buf, "[proxy] %s %s %d %.1fms", req.method.c_str(), req.path.c_str(), status, total_ms);
      line = buf;
      if (err) {
        line += " " + err->type + (err->param.empty() ? "" : " param=" + err->param);
        // 400 messages can quote request fields; backend messages never carry plaintext.
        if (err->status != 400 || opt.log_plaintext) line += ": " + err->message;
      }
    }
    log(line);
  }

  // ---- handlers -----------------------------------------------------------------------------

  void completions(const httplib::Request& req, httplib::Response& res, bool chat) {
    const auto t0 = clock_type::now();
    Job job;
    try {
      job = parse(req, chat);
    } catch (const ApiError& e) {
      reply_error(res, e);
      log_request(req, e.status, nullptr, nullptr, ms_since(t0), &e);
      return;
    }
    const std::string id = random_id(chat ? "chatcmpl-" : "cmpl-");
    if (!job.stream) {
      try {
        Outcome o = run(job, [] {}, [](const std::string&) { return true; });
        json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", o.finish}};
        if (chat) choice["message"] = {{"role", "assistant"}, {"content", o.text}};
        else choice["text"] = o.text;
        json body = {{"id", id},
                     {"object", chat ? "chat.completion" : "text_completion"},
                     {"created", now_s()},
                     {"model", opt.model_name},
                     {"choices", json::array({choice})},
                     {"usage", usage(job, o)}};
        res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
        log_request(req, 200, &job, &o, ms_since(t0), nullptr);
      } catch (const BackendError& e) {
        ApiError a = from_backend(e);
        reply_error(res, a);
        log_request(req, a.status, nullptr, nullptr, ms_since(t0), &a);
      }
      return;
    }
    stream(req, res, std::move(job), id, t0);
  }

  // Streaming: the generation runs on its own thread. The HTTP status is decided once the engine
  // has answered (an engine failure before the first token is a proper 502/504, after it an
  // in-band error event). Until the response is under way, events are queued; then the worker
  // writes each event to the client itself (the HTTP thread only waits), so a token costs no
  // thread hand-off.
  struct Stream {
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::string> q;
    httplib::DataSink* sink = nullptr;  // set while the HTTP thread is inside the content provider
    bool started = false, finished = false;
    std::optional<ApiError> early;
    std::atomic<bool> gone{false};
    std::thread worker;
    // Sends (or queues) one event; false once the client has gone.
    bool push(std::string s) {
      std::lock_guard<std::mutex> lk(m);
      if (gone) return false;
      if (sink) {
        if (!sink->write(s.data(), s.size())) gone = true;
      } else {
        q.push_back(std::move(s));
      }
      return !gone;
    }
    ~Stream() {
      if (worker.joinable()) worker.join();
    }
  };

  void stream(const httplib::Request& req, httplib::Response& res, Job job, const std::string& id,
              clock_type::time_point t0) {
    auto st = std::make_shared<Stream>();
    if (job.chat) st->push(sse(chunk(job, id, nullptr, nullptr, /*role=*/true)));
    auto jobp = std::make_shared<Job>(std::move(job));
    auto method = std::make_shared<httplib::Request>();  // what the log line needs
    method->method = req.method;
    method->path = req.path;
    st->worker = std::thread([this, st, jobp, id, method, t0] {
      const Job& job = *jobp;
      try {
        Outcome o = run(
            job,
            [&] {
              std::lock_guard<std::mutex> lk(st->m);
              st->started = true;
              st->cv.notify_all();
            },
            [&](const std::string& t) { return st->push(sse(chunk(job, id, &t, nullptr))); });
        std::string tail = sse(chunk(job, id, nullptr, o.finish.c_str()));
        if (job.include_usage) {
          json u = chunk(job, id, nullptr, nullptr);
          u["choices"] = json::array();
          u["usage"] = usage(job, o);
          tail += sse(u);
        }
        tail += "data: [DONE]\n\n";
        st->push(std::move(tail));
        log_request(*method, 200, &job, &o, ms_since(t0), nullptr);
      } catch (const BackendError& e) {
        ApiError a = from_backend(e);
        bool early;
        {
          std::lock_guard<std::mutex> lk(st->m);
          early = !st->started;
          if (early) st->early = a;
        }
        if (!early) st->push(sse(error_json(a)) + "data: [DONE]\n\n");
        log_request(*method, early ? a.status : 200, nullptr, nullptr, ms_since(t0), &a);
      } catch (const std::exception& e) {
        ApiError a(500, std::string("internal error: ") + e.what(), "server_error");
        bool early;
        {
          std::lock_guard<std::mutex> lk(st->m);
          early = !st->started;
          if (early) st->early = a;
        }
        if (!early) st->push(sse(error_json(a)) + "data: [DONE]\n\n");
      }
      std::lock_guard<std::mutex> lk(st->m);
      st->started = true;
      st->finished = true;
      st->cv.notify_all();
    });
    {
      std::unique_lock<std::mutex> lk(st->m);
      st->cv.wait(lk, [&] { return st->started; });
      if (st->early) {
        ApiError a = *st->early;
        lk.unlock();
        st->worker.join();
        reply_error(res, a);
        return;
      }
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [st](size_t, httplib::DataSink& sink) {
          std::unique_lock<std::mutex> lk(st->m);
          // Flush what was queued, then let the worker write directly until it is done.
          while (!st->q.empty() && !st->gone) {
            if (!sink.write(st->q.front().data(), st->q.front().size())) st->gone = true;
            st->q.pop_front();
          }
          st->sink = &sink;
          st->cv.wait(lk, [&] { return st->finished || st->gone.load(); });
          st->sink = nullptr;
          if (st->gone) return false;
          sink.done();
          return true;
        },
        [st](bool) {
          {
            std::lock_guard<std::mutex> lk(st->m);
            st->gone = true;
            st->sink = nullptr;
          }
          if (st->worker.joinable()) st->worker.join();
        });
  }

  void setup() {
    server.new_task_queue = [n = opt.threads] { return new httplib::ThreadPool(size_t(std::max(n, 2))); };
    server.set_tcp_nodelay(true);
    server.set_payload_max_length(opt.max_body);
    server.set_keep_alive_timeout(5);
    server.set_read_timeout(60, 0);
    server.set_write_timeout(60, 0);
    server.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      std::string why;
      if (backend.healthy(&why)) {
        res.set_content(R"({"status":"ok"})", "application/json");
      } else {
        reply_error(res, ApiError(503, why, "service_unavailable", "", "backend_unhealthy"));
      }
    });
    auto model_obj = [this] {
      return json{{"id", opt.model_name}, {"object", "model"}, {"created", created}, {"owned_by", "aloepri"}};
    };
    server.Get("/v1/models", [this, model_obj](const httplib::Request&, httplib::Response& res) {
      res.set_content(json{{"object", "list"}, {"data", json::array({model_obj()})}}.dump(), "application/json");
    });
    server.Get(R"(/v1/models/(.+))", [this, model_obj](const httplib::Request& req, httplib::Response& res) {
      if (req.matches[1] == opt.model_name) res.set_content(model_obj().dump(), "application/json");
      else reply_error(res, ApiError(404, "The model '" + std::string(req.matches[1]) + "' does not exist",
                                     "invalid_request_error", "model", "model_not_found"));
    });
    server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { completions(req, res, false); });
    server.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { completions(req, res, true); });
    server.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string msg = "internal error";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        msg += std::string(": ") + e.what();
      } catch (...) {
      }
      reply_error(res, ApiError(500, msg, "server_error"));
    });
    server.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty() || res.content_length_ > 0) return httplib::Server::HandlerResponse::Unhandled;
      if (res.status == 404)
        reply_error(res, ApiError(404, "no route " + req.method + " " + req.path, "invalid_request_error", "", "not_found"));
      else if (res.status == 413)
        reply_error(res, ApiError(413, "request body larger than " + std::to_string(opt.max_body) + " bytes",
                                  "invalid_request_error"));
      else
        reply_error(res, ApiError(res.status, "HTTP " + std::to_string(res.status), "invalid_request_error"));
      return httplib::Server::HandlerResponse::Handled;
    }));
  }
};

ProxyServer::ProxyServer(ProxyModel model, BackendOptions backend, ProxyOptions opt)
    : impl_(std::make_unique<Impl>(std::move(model), std::move(backend), std::move(opt))) {
  if (impl_->opt.model_name.empty()) impl_->opt.model_name = "aloepri";
  impl_->setup();
}

ProxyServer::~ProxyServer() { stop(); }

void ProxyServer::start() {
  Impl& I = *impl_;
  if (I.opt.port == 0) {
    port_ = I.server.bind_to_any_port(I.opt.host);
    if (port_ <= 0) throw Error("--listen", "cannot listen on " + I.opt.host, kExitError);
  } else {
    if (!I.server.bind_to_port(I.opt.host, I.opt.port))
      throw Error("--listen", "cannot listen on " + I.opt.host + ":" + std::to_string(I.opt.port) + " (in use?)",
                  kExitError);
    port_ = I.opt.port;
  }
  {
    std::lock_guard<std::mutex> lk(I.run_m);
    I.running = true;
  }
  I.thread = std::thread([&I] {
    I.server.listen_after_bind();
    std::lock_guard<std::mutex> lk(I.run_m);
    I.running = false;
    I.run_cv.notify_all();
  });
}

std::string ProxyServer::url() const { return "http://" + impl_->opt.host + ":" + std::to_string(port_); }

void ProxyServer::stop() {
  if (!impl_) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

void ProxyServer::wait() {
  std::unique_lock<std::mutex> lk(impl_->run_m);
  impl_->run_cv.wait(lk, [&] { return !impl_->running; });
}

}  // namespace aloepri
