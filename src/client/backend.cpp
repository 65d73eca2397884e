// Backend wire protocols (see include/aloepri/backend.h): request bodies, SSE parsing, and the
// mapping of transport failures to the HTTP statuses the proxy answers with.
#include "aloepri/client/backend.h"

#include <httplib.h>

#include <chrono>
#include <cmath>

#include "aloepri/core/error.h"
#include "aloepri/client/sse.h"

namespace aloepri {

namespace {

using clock_type = std::chrono::steady_clock;

void set_timeout(double s, time_t* sec, time_t* usec) {
  if (!(s > 0)) s = 1e6;
  *sec = time_t(s);
  *usec = time_t((s - double(*sec)) * 1e6);
}

// The engine's own error message from an error body (llama-server / vLLM / SGLang shapes), short.
std::string error_message(const std::string& body) {
  std::string msg;
  try {
    auto j = nlohmann::json::parse(body);
    if (j.is_object()) {
      if (j.contains("error")) {
        const auto& e = j["error"];
        if (e.is_object() && e.contains("message") && e["message"].is_string()) msg = e["message"];
        else if (e.is_string()) msg = e.get<std::string>();
      } else if (j.contains("message") && j["message"].is_string()) {
        msg = j["message"];
      } else if (j.contains("detail")) {
        msg = j["detail"].dump();
      }
    }
  } catch (...) {
  }
  if (msg.empty()) msg = "(no error message)";
  if (msg.size() > 400) msg = msg.substr(0, 400) + "...";
  return msg;
}

std::vector<int64_t> id_array(const nlohmann::json& j, const char* what) {
  if (!j.is_array()) throw BackendError(502, std::string("backend answer: '") + what + "' is not an array of token ids");
  std::vector<int64_t> v;
  v.reserve(j.size());
  for (const auto& x : j) {
    if (!x.is_number_integer()) throw BackendError(502, std::string("backend answer: '") + what + "' holds a non-integer");
    v.push_back(x.get<int64_t>());
  }
  return v;
}

// vLLM before return_token_ids: logprobs.tokens as "token_id:123" (return_tokens_as_token_ids).
std::vector<int64_t> vllm_logprob_ids(const nlohmann::json& choice) {
  std::vector<int64_t> v;
  auto lp = choice.find("logprobs");
  if (lp == choice.end() || !lp->is_object() || !lp->contains("tokens")) {
    throw BackendError(502, "backend answer: choices[0] has neither 'token_ids' nor logprobs.tokens "
                            "(vLLM too old for return_token_ids / return_tokens_as_token_ids?)");
  }
  for (const auto& t : (*lp)["tokens"]) {
    std::string s = t.is_string() ? t.get<std::string>() : "";
    if (s.rfind("token_id:", 0) != 0) throw BackendError(502, "backend answer: logprobs token not of the form token_id:N");
    try {
      v.push_back(std::stoll(s.substr(9)));
    } catch (...) {
      throw BackendError(502, "backend answer: bad token id in logprobs");
    }
  }
  return v;
}

// One parsed answer (a whole non-streamed body or one streamed event).
struct Piece {
  std::vector<int64_t> ids;  // new ids
  bool final = false;        // the engine says generation ended
  std::string finish;
};

}  // namespace

BackendKind parse_backend_kind(const std::string& s) {
  if (s == "llamacpp" || s == "llama.cpp" || s == "llama-server") return BackendKind::LlamaCpp;
  if (s == "vllm") return BackendKind::VLLM;
  if (s == "sglang") return BackendKind::SGLang;
  throw Error("--backend-kind", "unknown backend kind '" + s + "' (llamacpp, vllm or sglang)", kExitUsage);
}

const char* backend_kind_name(BackendKind k) {
  switch (k) {
    case BackendKind::LlamaCpp: return "llamacpp";
    case BackendKind::VLLM: return "vllm";
    case BackendKind::SGLang: return "sglang";
  }
  return "?";
}

Backend::Backend(BackendOptions o) : o_(std::move(o)), model_(o_.model) {
  std::string u = o_.url;
  if (u.rfind("https://", 0) == 0)
    throw Error("--backend", "https is not supported (put the engine on loopback or a private network)", kExitUsage);
  if (u.rfind("http://", 0) != 0) u = "http://" + u;
  size_t slash = u.find('/', 7);
  host_url_ = slash == std::string::npos ? u : u.substr(0, slash);
  prefix_ = slash == std::string::npos ? "" : u.substr(slash);
  while (!prefix_.empty() && prefix_.back() == '/') prefix_.pop_back();
  if (host_url_.size() <= 7) throw Error("--backend", "no host in URL '" + o_.url + "'", kExitUsage);
}

std::string Backend::request_path() const {
  switch (o_.kind) {
    case BackendKind::LlamaCpp: return prefix_ + "/completion";
    case BackendKind::VLLM: {
      const bool v1 = prefix_.size() >= 3 && prefix_.compare(prefix_.size() - 3, 3, "/v1") == 0;
      return prefix_ + (v1 ? "/completions" : "/v1/completions");
    }
    case BackendKind::SGLang: return prefix_ + "/generate";
  }
  return "/";
}

nlohmann::json Backend::request_body(const BackendRequest& r) const {
  using nlohmann::json;
  json b;
  switch (o_.kind) {
    case BackendKind::LlamaCpp:
      // llama-server /completion: prompt as ids, tokens returned ("return_tokens"), no text stops.
      b = {{"prompt", r.prompt},       {"n_predict", r.max_tokens}, {"temperature", r.temperature},
           {"top_k", std::max<int64_t>(r.top_k, 0)}, {"top_p", r.top_p}, {"min_p", r.min_p},
           {"seed", r.seed ? *r.seed : -1}, {"stream", r.stream}, {"return_tokens", true},
           {"cache_prompt", false}};
      break;
    case BackendKind::VLLM:
      // vLLM OpenAI /v1/completions: a token-id prompt; token ids back via return_token_ids
      // (and, for older servers, logprobs tokens rendered as "token_id:N").
      b = {{"model", resolve_model()},
           {"prompt", r.prompt},
           {"max_tokens", r.max_tokens < 0 ? json(nullptr) : json(r.max_tokens)},
           {"temperature", r.temperature},
           {"top_p", r.top_p},
           {"top_k", r.top_k > 0 ? r.top_k : -1},
           {"min_p", r.min_p},
           {"stream", r.stream},
           {"return_token_ids", true},
           {"return_tokens_as_token_ids", true},
           {"logprobs", 0},
           {"stop_token_ids", r.stop_ids},
           {"skip_special_tokens", false}};
      if (r.seed) b["seed"] = *r.seed;
      break;
    case BackendKind::SGLang: {
      json sp = {{"max_new_tokens", r.max_tokens < 0 ? json(nullptr) : json(r.max_tokens)},
                 {"temperature", r.temperature},
                 {"top_p", r.top_p},
                 {"top_k", r.top_k > 0 ? r.top_k : -1},
                 {"min_p", r.min_p},
                 {"stop_token_ids", r.stop_ids},
                 {"skip_special_tokens", false}};
      if (r.seed) sp["sampling_seed"] = *r.seed;
      b = {{"input_ids", r.prompt}, {"sampling_params", sp}, {"stream", r.stream}};
      break;
    }
  }
  return b;
}

std::string Backend::resolve_model() const {
  std::lock_guard<std::mutex> lk(model_m_);
  if (!model_.empty()) return model_;
  httplib::Client cli(host_url_);
  time_t s, us;
  set_timeout(o_.connect_timeout_s, &s, &us);
  cli.set_connection_timeout(s, us);
  cli.set_read_timeout(s, us);
  const bool v1 = prefix_.size() >= 3 && prefix_.compare(prefix_.size() - 3, 3, "/v1") == 0;
  auto res = cli.Get(prefix_ + (v1 ? "/models" : "/v1/models"));
  if (!res) throw BackendError(502, "backend " + o_.url + ": cannot list models (" + httplib::to_string(res.error()) + ")");
  if (res->status != 200) throw BackendError(502, "backend " + o_.url + ": GET /v1/models answered HTTP " + std::to_string(res->status));
  try {
    auto j = nlohmann::json::parse(res->body);
    model_ = j.at("data").at(0).at("id").get<std::string>();
  } catch (...) {
    throw BackendError(502, "backend " + o_.url + ": GET /v1/models gave no model id (pass --backend-model)");
  }
  return model_;
}

bool Backend::healthy(std::string* why) const {
  httplib::Client cli(host_url_);
  cli.set_connection_timeout(2, 0);
  cli.set_read_timeout(5, 0);
  auto res = cli.Get(prefix_ + "/health");
  if (!res) {
    if (why) *why = "backend unreachable (" + httplib::to_string(res.error()) + ")";
    return false;
  }
  if (res->status != 200) {
    if (why) *why = "backend /health answered HTTP " + std::to_string(res->status);
    return false;
  }
  return true;
}

BackendResult Backend::generate(const BackendRequest& req, const OnIds& on_ids) const {
  const BackendKind kind = o_.kind;
  nlohmann::json body = request_body(req);  // may throw BackendError (vllm model lookup)
  httplib::Client cli(host_url_);
  time_t s, us;
  set_timeout(o_.connect_timeout_s, &s, &us);
  cli.set_connection_timeout(s, us);
  cli.set_write_timeout(s, us);
  set_timeout(o_.read_timeout_s, &s, &us);
  cli.set_read_timeout(s, us);
  cli.set_tcp_nodelay(true);
  cli.set_keep_alive(false);

  httplib::Request hr;
  hr.method = "POST";
  hr.path = request_path();
  hr.body = body.dump();
  hr.set_header("Content-Type", "application/json");
  hr.set_header("Accept", req.stream ? "text/event-stream" : "application/json");

  BackendResult out;
  int status = 0;
  std::string raw;
  SseParser sse;
  bool user_stop = false, saw_final = false;
  int fail_status = 0;
  std::string fail_msg;
  int64_t seen_total = 0;  // sglang: completion tokens received so far
  auto last_data = clock_type::now();

  // Interprets one answer object (a whole body or one SSE event) of the engine's protocol.
  auto parse = [&](const nlohmann::json& j) -> Piece {
    Piece p;
    if (!j.is_object()) throw BackendError(502, "backend answer is not a JSON object");
    if (j.contains("error")) throw BackendError(502, "backend error: " + error_message(j.dump()));
    switch (kind) {
      case BackendKind::LlamaCpp: {
        if (j.contains("tokens")) p.ids = id_array(j["tokens"], "tokens");
        else if (!j.value("stop", false)) throw BackendError(502, "backend answer has no 'tokens' (not llama-server?)");
        p.final = j.value("stop", !req.stream);
        if (p.final) p.finish = j.value("stop_type", std::string(j.value("stopped_eos", false) ? "eos" : "limit"));
        break;
      }
      case BackendKind::VLLM: {
        auto ch = j.find("choices");
        if (ch == j.end() || !ch->is_array()) throw BackendError(502, "backend answer has no 'choices' (not vLLM?)");
        if (ch->empty()) break;  // e.g. a usage-only chunk
        const auto& c0 = (*ch)[0];
        const bool has_finish = c0.contains("finish_reason") && c0["finish_reason"].is_string();
        const bool has_lp = c0.contains("logprobs") && c0["logprobs"].is_object();
        if (c0.contains("token_ids") && !c0["token_ids"].is_null()) p.ids = id_array(c0["token_ids"], "token_ids");
        else if (has_lp || !has_finish) p.ids = vllm_logprob_ids(c0);  // a final chunk may carry no ids
        if (c0.contains("finish_reason") && c0["finish_reason"].is_string()) {
          p.final = true;
          p.finish = c0["finish_reason"].get<std::string>();
        } else if (!req.stream) {
          p.final = true;
        }
        break;
      }
      case BackendKind::SGLang: {
        if (!j.contains("output_ids")) throw BackendError(502, "backend answer has no 'output_ids' (not SGLang?)");
        auto ids = id_array(j["output_ids"], "output_ids");
        const auto& mi = j.contains("meta_info") ? j["meta_info"] : nlohmann::json::object();
        int64_t total = mi.contains("completion_tokens") && mi["completion_tokens"].is_number_integer()
                            ? mi["completion_tokens"].get<int64_t>()
                            : seen_total + int64_t(ids.size());
        // Cumulative (SGLang's default) or incremental chunks: completion_tokens counts all so far.
        int64_t fresh = std::min<int64_t>(std::max<int64_t>(total - seen_total, 0), int64_t(ids.size()));
        p.ids.assign(ids.end() - fresh, ids.end());
        seen_total += fresh;
        if (mi.contains("finish_reason") && !mi["finish_reason"].is_null()) {
          p.final = true;
          const auto& fr = mi["finish_reason"];
          p.finish = fr.is_object() ? fr.value("type", std::string("stop")) : fr.dump();
          if (p.finish == "abort") throw BackendError(502, "backend aborted the request: " + fr.value("message", std::string("")));
        } else if (!req.stream) {
          p.final = true;
        }
        break;
      }
    }
    return p;
  };

  auto deliver = [&](Piece&& p) -> bool {
    if (p.final) {
      saw_final = true;
      out.finish = p.finish;
    }
    if (!p.ids.empty()) {
      out.ids.insert(out.ids.end(), p.ids.begin(), p.ids.end());
      if (!on_ids(p.ids)) {
        user_stop = true;
        return false;
      }
    }
    return true;
  };

  hr.response_handler = [&](const httplib::Response& r) {
    status = r.status;
    return true;
  };
  hr.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) -> bool {
    last_data = clock_type::now();
    if (status != 200 || !req.stream) {
      if (raw.size() < (64u << 20)) raw.append(data, n);
      return true;
    }
    try {
      // An event: "data: {...}" lines (joined), or llama-server's in-band "error: {...}".
      return sse.feed(data, n, [&](const SseEvent& ev) {
        if (ev.error) throw BackendError(502, "backend error: " + error_message(*ev.error));
        if (ev.data.empty()) return true;
        if (ev.data == "[DONE]") {
          saw_final = true;
          return true;
        }
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(ev.data);
        } catch (...) {
          throw BackendError(502, "backend sent an event that is not JSON");
        }
        return deliver(parse(j));
      });
    } catch (const BackendError& e) {
      fail_status = e.status();
      fail_msg = e.what();
      return false;
    }
  };

  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = cli.send(hr, res, err);
  if (user_stop) {
    out.cancelled = true;
    return out;
  }
  if (fail_status) throw BackendError(fail_status, fail_msg);
  if (!sent) {
    const double silent = std::chrono::duration<double>(clock_type::now() - last_data).count();
    if (err == httplib::Error::ConnectionTimeout)
      throw BackendError(504, "backend " + o_.url + " did not accept the connection within " +
                                  std::to_string(int(o_.connect_timeout_s)) + " s");
    if (err == httplib::Error::Read && silent >= 0.95 * o_.read_timeout_s)
      throw BackendError(504, "backend " + o_.url + " sent nothing for " + std::to_string(int(silent)) + " s (timeout)");
    if (err == httplib::Error::Connection)
      throw BackendError(502, "cannot connect to backend " + o_.url);
    throw BackendError(502, "backend " + o_.url + ": " + httplib::to_string(err));
  }
  if (status != 200) {
    const std::string msg = error_message(raw);
    if (status == 400 || status == 413 || status == 422)
      throw BackendError(400, "the engine rejected the request (HTTP " + std::to_string(status) + "): " + msg);
    if (status == 404)
      throw BackendError(502, "backend " + o_.url + hr.path + " not found (HTTP 404; wrong --backend-kind?)");
    throw BackendError(502, "backend answered HTTP " + std::to_string(status) + ": " + msg);
  }
  if (!req.stream) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(raw);
    } catch (...) {
      throw BackendError(502, "backend answer is not JSON");
    }
    Piece p = parse(j);
    p.final = true;
    deliver(std::move(p));
    if (user_stop) out.cancelled = true;
  } else if (!saw_final) {
    throw BackendError(502, "backend closed the stream before the end of generation");
  }
  return out;
}

}  // namespace aloepri
