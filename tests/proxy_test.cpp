// The privacy proxy against fake engines (in-process httplib servers that speak llama-server's
// /completion, vLLM's /v1/completions and SGLang's /generate as documented, and only ever see
// obfuscated ids): id mapping both ways, what the engine receives, stop strings, streaming with
// UTF-8 characters split over byte tokens, usage and finish reasons, OpenAI-style errors for bad
// requests and for engine failures/timeouts, and that nothing plaintext is logged by default.
#include <gtest/gtest.h>

#include <set>

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "aloepri/client/backend.h"
#include "aloepri/core/error.h"
#include "aloepri/client/proxy.h"
#include "support/paths.h"

using namespace aloepri;
using nlohmann::json;

namespace {

Seed test_seed() {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(0xA5 ^ (7 * i));
  return s;
}

const Tokenizer& llama2() {
  static Tokenizer t = Tokenizer::load(aloepri::testing::vocab_dir("llama2"));
  return t;
}

constexpr int64_t kVocab = 32000;
constexpr int32_t kEos = 2;

// A fake engine: answers every generation request with `answer` (obfuscated ids), as the
// protocol of `kind` says, and records what it received.
struct FakeEngine {
  BackendKind kind = BackendKind::LlamaCpp;
  std::vector<int64_t> answer;
  int status = 200;
  int first_delay_ms = 0;
  bool midstream_error = false, malformed = false, sglang_incremental = false;
  bool vllm_logprobs = false;  // older vLLM: ids only as logprobs tokens "token_id:N"
  std::mutex m;
  std::vector<json> received;
  std::vector<std::string> raw;
  httplib::Server srv;
  std::thread th;
  int port = 0;

  explicit FakeEngine(BackendKind k) : kind(k) {
    srv.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"status":"ok"})", "application/json");
    });
    srv.Get("/v1/models", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"object":"list","data":[{"id":"obf-model","object":"model","owned_by":"vllm"}]})",
                      "application/json");
    });
    auto h = [this](const httplib::Request& req, httplib::Response& res) { handle(req, res); };
    srv.Post("/completion", h);
    srv.Post("/v1/completions", h);
    srv.Post("/generate", h);
    port = srv.bind_to_any_port("127.0.0.1");
    th = std::thread([this] { srv.listen_after_bind(); });
  }
  ~FakeEngine() {
    srv.stop();
    th.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
  json last() {
    std::lock_guard<std::mutex> lk(m);
    return received.empty() ? json() : received.back();
  }

  void handle(const httplib::Request& req, httplib::Response& res) {
    json b = json::parse(req.body);
    {
      std::lock_guard<std::mutex> lk(m);
      received.push_back(b);
      raw.push_back(req.body);
    }
    if (first_delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(first_delay_ms));
    if (status != 200) {
      res.status = status;
      res.set_content(R"({"error":{"code":500,"message":"engine exploded","type":"server_error"}})", "application/json");
      return;
    }
    if (malformed) {
      res.set_content("this is not json", "application/json");
      return;
    }
    int64_t limit = int64_t(answer.size());
    if (kind == BackendKind::LlamaCpp && b["n_predict"].get<int64_t>() >= 0) limit = std::min(limit, b["n_predict"].get<int64_t>());
    if (kind == BackendKind::VLLM && b["max_tokens"].is_number()) limit = std::min(limit, b["max_tokens"].get<int64_t>());
    if (kind == BackendKind::SGLang && b["sampling_params"]["max_new_tokens"].is_number())
      limit = std::min(limit, b["sampling_params"]["max_new_tokens"].get<int64_t>());
    std::vector<int64_t> ids(answer.begin(), answer.begin() + limit);
    const bool stream = b.value("stream", false);
    if (!stream) {
      res.set_content(whole(ids).dump(), "application/json");
      return;
    }
    res.set_chunked_content_provider("text/event-stream", [this, ids](size_t, httplib::DataSink& sink) {
      std::vector<int64_t> so_far;
      for (size_t i = 0; i < ids.size(); ++i) {
        so_far.push_back(ids[i]);
        std::string ev = "data: " + event(ids[i], so_far).dump() + "\n\n";
        if (!sink.write(ev.data(), ev.size())) return false;
        if (midstream_error && i == 0) {
          std::string e = kind == BackendKind::LlamaCpp
                              ? "error: {\"error\":{\"code\":500,\"message\":\"slot died\",\"type\":\"server_error\"}}\n\n"
                              : "data: {\"error\":{\"message\":\"slot died\",\"type\":\"InternalServerError\"}}\n\n";
          sink.write(e.data(), e.size());
          sink.done();
          return true;
        }
      }
      std::string tail;
      if (kind == BackendKind::LlamaCpp) tail = "data: " + json{{"stop", true}, {"tokens", json::array()}, {"stop_type", "limit"}}.dump() + "\n\n";
      else if (kind == BackendKind::VLLM) tail = "data: " + vllm_chunk({}, "length").dump() + "\n\ndata: [DONE]\n\n";
      else tail = "data: " + sglang_obj(so_far, {}, true).dump() + "\n\ndata: [DONE]\n\n";
      sink.write(tail.data(), tail.size());
      sink.done();
      return true;
    });
  }

  json vllm_chunk(const std::vector<int64_t>& ids, const char* finish) const {
    json c = {{"index", 0}, {"text", "<garbled>"}, {"logprobs", nullptr},
              {"finish_reason", finish ? json(finish) : json(nullptr)}, {"stop_reason", nullptr}};
    if (!vllm_logprobs) {
      c["token_ids"] = ids;
    } else if (!ids.empty()) {
      json toks = json::array(), lps = json::array();
      for (auto id : ids) {
        toks.push_back("token_id:" + std::to_string(id));
        lps.push_back(-0.5);
      }
      c["logprobs"] = {{"tokens", toks}, {"token_logprobs", lps}, {"top_logprobs", nullptr}, {"text_offset", json::array()}};
    }
    return {{"id", "cmpl-1"}, {"object", "text_completion"}, {"created", 1}, {"model", "obf-model"},
            {"choices", json::array({c})}};
  }
  json sglang_obj(const std::vector<int64_t>& all, const std::vector<int64_t>& delta, bool final) const {
    json fr = final ? json{{"type", "length"}, {"length", all.size()}} : json(nullptr);
    return {{"text", "<garbled>"},
            {"output_ids", sglang_incremental && !final ? delta : all},
            {"meta_info", {{"id", "r1"}, {"finish_reason", fr}, {"prompt_tokens", 5}, {"completion_tokens", all.size()},
                           {"cached_tokens", 0}}}};
  }
  json event(int64_t id, const std::vector<int64_t>& so_far) const {
    switch (kind) {
      case BackendKind::LlamaCpp:
        return {{"index", 0}, {"content", "<garbled>"}, {"tokens", {id}}, {"stop", false}, {"tokens_predicted", so_far.size()}};
      case BackendKind::VLLM: return vllm_chunk({id}, nullptr);
      case BackendKind::SGLang: return sglang_obj(so_far, {id}, false);
    }
    return {};
  }
  json whole(const std::vector<int64_t>& ids) const {
    switch (kind) {
      case BackendKind::LlamaCpp:
        return {{"index", 0}, {"content", "<garbled>"}, {"tokens", ids}, {"stop", true}, {"stop_type", "limit"},
                {"tokens_predicted", ids.size()}};
      case BackendKind::VLLM: {
        json j = vllm_chunk(ids, "length");
        j["usage"] = {{"prompt_tokens", 5}, {"completion_tokens", ids.size()}, {"total_tokens", 5 + ids.size()}};
        return j;
      }
      case BackendKind::SGLang: return sglang_obj(ids, ids, true);
    }
    return {};
  }
};

struct Rig {
  FakeEngine fake;
  std::vector<int64_t> copies;  // homophone copies per id (empty: plain tau)
  TokenMap map;
  std::mutex log_m;
  std::vector<std::string> logs;
  std::unique_ptr<ProxyServer> proxy;
  std::unique_ptr<httplib::Client> client;

  explicit Rig(BackendKind kind = BackendKind::LlamaCpp, bool log_plaintext = false, double read_timeout = 30,
               std::vector<int64_t> copies_ = {})
      : fake(kind), copies(std::move(copies_)), map(test_seed(), kVocab, copies) {
    ProxyModel pm;
    pm.tokenizer = llama2();
    pm.seed = test_seed();
    pm.vocab_size = kVocab;
    pm.copies = copies;
    pm.end_ids = {kEos};
    BackendOptions bo;
    bo.kind = kind;
    bo.url = fake.url();
    bo.read_timeout_s = read_timeout;
    ProxyOptions po;
    po.port = 0;
    po.model_name = "aloe-test";
    po.log_plaintext = log_plaintext;
    po.logger = [this](const std::string& l) {
      std::lock_guard<std::mutex> lk(log_m);
      logs.push_back(l);
    };
    proxy = std::make_unique<ProxyServer>(std::move(pm), bo, po);
    proxy->start();
    client = std::make_unique<httplib::Client>(proxy->url());
    client->set_read_timeout(30, 0);
  }
  // The engine will answer with these plaintext ids (it only ever holds their tau images).
  void answer(const std::vector<int32_t>& plain) {
    fake.answer.clear();
    for (auto id : plain) fake.answer.push_back(map.to_server(int64_t(id)));
  }
  httplib::Result post(const std::string& path, const json& body) {
    return client->Post(path, body.dump(), "application/json");
  }
};

std::vector<int32_t> enc(const std::string& s, bool special = false) { return llama2().encode(s, special); }

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Splits an SSE body into its JSON events; *done is set when "data: [DONE]" was seen.
std::vector<json> sse_events(const std::string& body, bool* done) {
  std::vector<json> out;
  *done = false;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    if (ev.rfind("data: ", 0) != 0) continue;
    std::string d = ev.substr(6);
    if (d == "[DONE]") *done = true;
    else out.push_back(json::parse(d));
  }
  return out;
}

bool valid_utf8(const std::string& s) { return utf8_sanitize(s) == s; }

}  // namespace

TEST(TokenMap, MapsBothWaysAndRejectsOutOfRange) {
  TokenMap m(test_seed(), kVocab);
  int fixed = 0;
  for (int64_t i = 0; i < kVocab; ++i) {
    const int64_t o = m.to_server(i);
    ASSERT_GE(o, 0);
    ASSERT_LT(o, kVocab);
    ASSERT_EQ(m.from_server(o), i);
    fixed += o == i;
  }
  EXPECT_LT(fixed, 10);  // a uniform permutation has ~1 fixed point
  EXPECT_THROW(m.from_server(kVocab), BackendError);
  EXPECT_THROW(m.from_server(-1), BackendError);
  EXPECT_THROW(m.to_server(int64_t(kVocab)), aloepri::Error);
}

TEST(TextStream, WithoutStopStringsEqualsDecodeAndUtf8ComesOutWhole) {
  const std::string text = "Caf\xC3\xA9 \xF0\x9F\xA6\x99 llama \xE4\xBD\xA0\xE5\xA5\xBD, ok!";  // é, 🦙, 你好
  auto ids = enc(text);
  int byte_tokens = 0;
  for (auto id : ids) byte_tokens += llama2().id_to_token(id).rfind("<0x", 0) == 0;
  ASSERT_GE(byte_tokens, 4) << "the test needs a character split over byte tokens";
  TextStream ts(llama2(), {});
  std::string all;
  for (auto id : ids) {
    std::string piece = ts.push(id);
    EXPECT_TRUE(valid_utf8(piece)) << "a streamed piece split a UTF-8 character";
    all += piece;
  }
  all += ts.finish();
  EXPECT_EQ(all, llama2().decode(ids, DecodeOptions{true, std::nullopt}));
  EXPECT_EQ(all, text);
  EXPECT_FALSE(ts.stopped());
}

TEST(TextStream, StopStringsAcrossTokensAreCutAndHeldBack) {
  const std::string text = "Hello world, and goodbye to all";
  auto ids = enc(text);
  TextStream ts(llama2(), {"xyz", "d, and g"});
  std::string all;
  size_t pushed = 0;
  for (auto id : ids) {
    all += ts.push(id);
    ++pushed;
    // Never send text that could still turn out to start a stop string.
    EXPECT_EQ(all.find("d, and g"), std::string::npos);
    if (ts.stopped()) break;
  }
  EXPECT_TRUE(ts.stopped());
  EXPECT_LT(pushed, ids.size());
  EXPECT_EQ(all, "Hello worl");
  // finish() after a stop adds nothing.
  EXPECT_EQ(ts.finish(), "");
  // A held-back prefix that never completes is released at the end.
  TextStream t2(llama2(), {"world, or"});
  std::string s2;
  for (auto id : enc("Hello world, and")) s2 += t2.push(id);
  s2 += t2.finish();
  EXPECT_EQ(s2, "Hello world, and");
}

TEST(Proxy, CompletionMapsIdsBothWaysAndTheEngineSeesNoPlaintext) {
  Rig r;
  const std::string prompt = "The secret meeting is on Tuesday at the harbour";
  const auto answer = enc(" at dawn, near the old lighthouse");
  r.answer(cat(cat(answer, {kEos}), enc(" ignored after eos")));
  auto res = r.post("/v1/completions", {{"model", "aloe-test"}, {"prompt", prompt}, {"max_tokens", 64}, {"temperature", 0}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  auto j = json::parse(res->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "aloe-test");
  EXPECT_EQ(j["choices"][0]["text"], llama2().decode(answer));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  const auto plain_prompt = enc(prompt, true);
  EXPECT_EQ(j["usage"]["prompt_tokens"], plain_prompt.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], answer.size() + 1);
  EXPECT_EQ(j["usage"]["total_tokens"], plain_prompt.size() + answer.size() + 1);

  // What the engine got: tau(prompt ids), nothing else recognisable.
  json got = r.fake.last();
  auto sent = got["prompt"].get<std::vector<int64_t>>();
  ASSERT_EQ(sent.size(), plain_prompt.size());
  size_t same = 0;
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(sent[i], r.map.to_server(int64_t(plain_prompt[i])));
    same += sent[i] == plain_prompt[i];
  }
  EXPECT_LE(same, 1u);
  EXPECT_EQ(got["temperature"], 0.0);
  EXPECT_EQ(got["n_predict"], 64);
  const std::string raw = r.fake.raw.back();
  EXPECT_EQ(raw.find("secret"), std::string::npos);
  EXPECT_EQ(raw.find("harbour"), std::string::npos);
  std::string plain_csv;
  for (size_t i = 1; i < 4; ++i) plain_csv += std::to_string(plain_prompt[i]) + (i < 3 ? "," : "");
  EXPECT_EQ(raw.find(plain_csv), std::string::npos);
}

// A homophonic key (homophones.h): the engine gets one copy per prompt token (so a repeated token
// is not always the same id), answers with any copies, and the client maps every copy back.
TEST(Proxy, HomophonicKeySendsCopiesAndMapsEveryCopyBack) {
  std::vector<int64_t> copies(size_t(kVocab), 1);
  const std::string prompt = "the the the the the the the the the the the the and the and the";
  const auto plain_prompt = enc(prompt, true);
  for (auto id : plain_prompt)
    if (id != kEos) copies[size_t(id)] = 6;
  const auto answer = enc(" the end of the the the line");
  for (auto id : answer) copies[size_t(id)] = 4;
  Rig r(BackendKind::LlamaCpp, false, 30, copies);
  ASSERT_EQ(r.map.size(), kVocab + [&] { int64_t e = 0; for (auto k : copies) e += k - 1; return e; }());
  // The engine answers with a different copy at every occurrence.
  r.fake.answer.clear();
  for (size_t i = 0; i < answer.size(); ++i) r.fake.answer.push_back(r.map.all_copies(answer[i])[i % 4]);
  r.fake.answer.push_back(r.map.to_server(kEos));
  auto res = r.post("/v1/completions", {{"model", "aloe-test"}, {"prompt", prompt}, {"max_tokens", 64}, {"temperature", 0}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["choices"][0]["text"], llama2().decode(answer));
  const auto sent = r.fake.last()["prompt"].get<std::vector<int64_t>>();
  ASSERT_EQ(sent.size(), plain_prompt.size());
  std::set<int64_t> ids_of_the;
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(r.map.from_server(sent[i]), plain_prompt[i]);
    if (plain_prompt[i] == plain_prompt[2]) ids_of_the.insert(sent[i]);
  }
  // 12+ occurrences over 6 copies: one id for all of them has probability 6 * 6^-12.
  EXPECT_GE(ids_of_the.size(), 2u);
}

TEST(Proxy, ChatStreamsWholeCharactersAndEndsProperly) {
  Rig r;
  const auto answer = enc("Voil\xC3\xA0 \xF0\x9F\xA6\x99 \xE4\xBD\xA0\xE5\xA5\xBD!");
  r.answer(cat(answer, {kEos}));
  auto res = r.post("/v1/chat/completions", {{"model", "aloe-test"},
                                              {"messages", {{{"role", "system"}, {"content", "Be brief."}},
                                                            {{"role", "user"}, {"content", "Say hi"}}}},
                                              {"stream", true},
                                              {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  bool done = false;
  auto ev = sse_events(res->body, &done);
  EXPECT_TRUE(done);
  ASSERT_GE(ev.size(), 4u);
  EXPECT_EQ(ev[0]["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  std::string finish;
  int content_chunks = 0;
  for (const auto& e : ev) {
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    if (e["choices"].empty()) continue;
    const auto& c = e["choices"][0];
    if (c["delta"].contains("content") && !c["delta"].contains("role")) {
      std::string piece = c["delta"]["content"];
      EXPECT_TRUE(valid_utf8(piece));
      text += piece;
      ++content_chunks;
    }
    if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
  }
  EXPECT_EQ(text, "Voil\xC3\xA0 \xF0\x9F\xA6\x99 \xE4\xBD\xA0\xE5\xA5\xBD!");
  EXPECT_GE(content_chunks, 3);
  EXPECT_EQ(finish, "stop");
  ASSERT_TRUE(ev.back().contains("usage"));
  EXPECT_EQ(ev.back()["usage"]["completion_tokens"], answer.size() + 1);
  // The engine got the templated conversation as tau ids, streaming.
  auto chat_ids = enc("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nSay hi [/INST]");
  auto sent = r.fake.last()["prompt"].get<std::vector<int64_t>>();
  ASSERT_EQ(sent.size(), chat_ids.size());
  for (size_t i = 0; i < sent.size(); ++i) EXPECT_EQ(sent[i], r.map.to_server(int64_t(chat_ids[i])));
  EXPECT_TRUE(r.fake.last()["stream"].get<bool>());
}

TEST(Proxy, StopStringsAndMaxTokens) {
  Rig r;
  r.answer(enc(" one two three four five six"));
  for (bool stream : {false, true}) {
    auto res = r.post("/v1/completions", {{"model", "aloe-test"}, {"prompt", "Count:"}, {"stop", {"nope", "three"}},
                                          {"max_tokens", 50}, {"stream", stream}});
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    std::string text, finish;
    if (stream) {
      bool done = false;
      for (const auto& e : sse_events(res->body, &done)) {
        text += e["choices"][0]["text"].get<std::string>();
        if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
      }
      EXPECT_TRUE(done);
    } else {
      auto j = json::parse(res->body);
      text = j["choices"][0]["text"];
      finish = j["choices"][0]["finish_reason"];
      EXPECT_LT(j["usage"]["completion_tokens"].get<int64_t>(), int64_t(r.fake.answer.size()));
    }
    EXPECT_EQ(text, " one two ") << (stream ? "stream" : "non-stream");
    EXPECT_EQ(finish, "stop");
    // Stop strings make the proxy read the engine token by token so it can stop early.
    EXPECT_TRUE(r.fake.last()["stream"].get<bool>());
  }
  auto res = r.post("/v1/completions", {{"model", "aloe-test"}, {"prompt", "Count:"}, {"max_tokens", 3}});
  ASSERT_EQ(res->status, 200);
  auto j = json::parse(res->body);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 3);
  EXPECT_EQ(r.fake.last()["n_predict"], 3);
  EXPECT_FALSE(r.fake.last()["stream"].get<bool>());
  // Default max_tokens of /v1/completions is 16 (OpenAI's); chat has none.
  r.post("/v1/completions", {{"model", "aloe-test"}, {"prompt", "x"}});
  EXPECT_EQ(r.fake.last()["n_predict"], 16);
  r.post("/v1/chat/completions", {{"model", "aloe-test"}, {"messages", {{{"role", "user"}, {"content", "x"}}}}});
  EXPECT_EQ(r.fake.last()["n_predict"], -1);
}

TEST(Proxy, SamplingParametersReachTheEngine) {
  Rig r;
  r.answer(enc(" ok"));
  auto res = r.post("/v1/completions", {{"model", "aloe-test"}, {"prompt", "x"}, {"temperature", 0.7}, {"top_p", 0.9},
                                        {"top_k", 20}, {"seed", 1234}, {"max_tokens", 5}});
  ASSERT_EQ(res->status, 200) << res->body;
  json got = r.fake.last();
  EXPECT_DOUBLE_EQ(got["temperature"].get<double>(), 0.7);
  EXPECT_DOUBLE_EQ(got["top_p"].get<double>(), 0.9);
  EXPECT_EQ(got["top_k"], 20);
  EXPECT_EQ(got["seed"], 1234);
  EXPECT_EQ(got["min_p"], 0.0);
  // A token-id prompt (plaintext ids) is mapped too.
  res = r.post("/v1/completions", {{"model", "aloe-test"}, {"prompt", {1, 15043, 3186}}});
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(r.fake.last()["prompt"], json({r.map.to_server(1), r.map.to_server(15043), r.map.to_server(3186)}));
}

TEST(Proxy, BadRequestsGetOpenAIErrorsNamingTheField) {
  Rig r;
  r.answer(enc(" ok"));
  struct Case {
    const char* path;
    std::string body;
    int status;
    const char* param;
  };
  const std::string msgs = R"("messages":[{"role":"user","content":"hi"}])";
  std::vector<Case> cases = {
      {"/v1/chat/completions", "{not json", 400, nullptr},
      {"/v1/chat/completions", "[1,2]", 400, nullptr},
      {"/v1/chat/completions", R"({"model":"aloe-test"})", 400, "messages"},
      {"/v1/chat/completions", R"({"messages":"hi"})", 400, "messages"},
      {"/v1/chat/completions", R"({"messages":[{"content":"hi"}]})", 400, "messages[0].role"},
      {"/v1/chat/completions", R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", 400, "messages[0].content"},
      {"/v1/chat/completions", R"({"messages":[{"role":"wizard","content":"hi"}]})", 400, "messages"},
      {"/v1/chat/completions", "{" + msgs + R"(,"temperature":"hot"})", 400, "temperature"},
      {"/v1/chat/completions", "{" + msgs + R"(,"temperature":3})", 400, "temperature"},
      {"/v1/chat/completions", "{" + msgs + R"(,"top_p":1.5})", 400, "top_p"},
      {"/v1/chat/completions", "{" + msgs + R"(,"max_tokens":0})", 400, "max_tokens"},
      {"/v1/chat/completions", "{" + msgs + R"(,"max_tokens":2.5})", 400, "max_tokens"},
      {"/v1/chat/completions", "{" + msgs + R"(,"n":2})", 400, "n"},
      {"/v1/chat/completions", "{" + msgs + R"(,"stream":"yes"})", 400, "stream"},
      {"/v1/chat/completions", "{" + msgs + R"(,"stop":[1]})", 400, "stop"},
      {"/v1/chat/completions", "{" + msgs + R"(,"logprobs":true})", 400, "logprobs"},
      {"/v1/chat/completions", "{" + msgs + R"(,"model":"gpt-4"})", 404, "model"},
      {"/v1/completions", R"({"model":"aloe-test"})", 400, "prompt"},
      {"/v1/completions", R"({"prompt":{"a":1}})", 400, "prompt"},
      {"/v1/completions", R"({"prompt":["a","b"]})", 400, "prompt"},
      {"/v1/completions", R"({"prompt":[1,99999999]})", 400, "prompt"},
      {"/v1/completions", R"({"prompt":"x","echo":true})", 400, "echo"},
      {"/v1/completions", R"({"prompt":"x","seed":"s"})", 400, "seed"},
  };
  const size_t before = r.fake.received.size();
  for (const auto& c : cases) {
    auto res = r.client->Post(c.path, c.body, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, c.status) << c.body;
    json j;
    ASSERT_NO_THROW(j = json::parse(res->body)) << res->body;
    ASSERT_TRUE(j.contains("error")) << res->body;
    EXPECT_TRUE(j["error"]["message"].is_string());
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    if (c.param) {
      EXPECT_EQ(j["error"]["param"], c.param) << c.body << " -> " << res->body;
    }
  }
  EXPECT_EQ(r.fake.received.size(), before) << "bad requests must not reach the engine";
  auto res = r.client->Get("/v1/nothing");
  EXPECT_EQ(res->status, 404);
  EXPECT_TRUE(json::parse(res->body).contains("error"));
}

TEST(Proxy, EngineFailuresBecome502And504) {
  const json req = {{"model", "aloe-test"}, {"prompt", "x"}, {"max_tokens", 4}};
  auto expect_error = [](const httplib::Result& res, int status, const char* type) {
    ASSERT_TRUE(res) << "expected HTTP " << status << ", got " << httplib::to_string(res.error());
    EXPECT_EQ(res->status, status) << res->body;
    auto j = json::parse(res->body);
    EXPECT_EQ(j["error"]["type"], type) << res->body;
    EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
  };
  {
    Rig r;
    r.answer(enc(" ok"));
    r.fake.status = 500;
    expect_error(r.post("/v1/completions", req), 502, "upstream_error");
    json s = req;
    s["stream"] = true;
    expect_error(r.post("/v1/completions", s), 502, "upstream_error");  // before the first token: a real status
    r.fake.status = 200;
    r.fake.malformed = true;
    expect_error(r.post("/v1/completions", req), 502, "upstream_error");
    r.fake.malformed = false;
    r.fake.answer = {kVocab + 5};  // an id outside the vocabulary
    expect_error(r.post("/v1/completions", req), 502, "upstream_error");
  }
  {
    Rig r(BackendKind::LlamaCpp, false, /*read_timeout=*/0.3);
    r.answer(enc(" ok"));
    r.fake.first_delay_ms = 1200;
    expect_error(r.post("/v1/completions", req), 504, "timeout_error");
  }
  {
    Rig r;
    r.answer(enc(" one two three"));
    r.fake.midstream_error = true;
    json s = req;
    s["stream"] = true;
    auto res = r.post("/v1/completions", s);
    ASSERT_EQ(res->status, 200);
    bool done = false;
    auto ev = sse_events(res->body, &done);
    ASSERT_FALSE(ev.empty());
    EXPECT_TRUE(ev.back().contains("error")) << res->body;
    EXPECT_EQ(ev.back()["error"]["type"], "upstream_error");
  }
  {
    // Nothing listening: 502 for requests, 503 for /health.
    const int dead_port = 1;  // nothing listens on port 1 (and nobody may bind it unprivileged)
    ProxyModel pm;
    pm.tokenizer = llama2();
    pm.seed = test_seed();
    pm.vocab_size = kVocab;
    pm.end_ids = {kEos};
    BackendOptions bo;
    bo.url = "http://127.0.0.1:" + std::to_string(dead_port);
    ProxyOptions po;
    po.port = 0;
    po.quiet = true;
    po.model_name = "aloe-test";
    ProxyServer p(std::move(pm), bo, po);
    p.start();
    httplib::Client c(p.url());
    auto res = c.Post("/v1/completions", req.dump(), "application/json");
    expect_error(res, 502, "upstream_error");
    res = c.Get("/health");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 503);
  }
}

TEST(Proxy, ModelsAndHealth) {
  Rig r;
  auto res = r.client->Get("/v1/models");
  ASSERT_EQ(res->status, 200);
  auto j = json::parse(res->body);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "aloe-test");
  EXPECT_EQ(r.client->Get("/v1/models/aloe-test")->status, 200);
  EXPECT_EQ(r.client->Get("/v1/models/other")->status, 404);
  res = r.client->Get("/health");
  ASSERT_EQ(res->status, 200);
  EXPECT_EQ(json::parse(res->body)["status"], "ok");
}

TEST(Proxy, NothingPlaintextIsLoggedUnlessAsked) {
  for (bool log_plain : {false, true}) {
    Rig r(BackendKind::LlamaCpp, log_plain);
    r.answer(cat(enc(" purple elephants dance"), {kEos}));
    auto res = r.post("/v1/chat/completions",
                      {{"model", "aloe-test"}, {"messages", {{{"role", "user"}, {"content", "my password is hunter2"}}}}});
    ASSERT_EQ(res->status, 200);
    res = r.post("/v1/completions", {{"model", "aloe-test"}, {"prompt", "hunter2 again"}, {"stream", true}});
    ASSERT_EQ(res->status, 200);
    r.post("/v1/chat/completions", {{"messages", {{{"role", "hunter2"}, {"content", "x"}}}}});  // 400
    // The streaming request's log line is written just after its last event: wait for it.
    for (int i = 0; i < 500; ++i) {
      {
        std::lock_guard<std::mutex> lk(r.log_m);
        if (r.logs.size() >= 3) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::lock_guard<std::mutex> lk(r.log_m);
    ASSERT_GE(r.logs.size(), 3u);
    std::string all;
    for (const auto& l : r.logs) all += l + "\n";
    const bool has_prompt = all.find("hunter2") != std::string::npos;
    const bool has_answer = all.find("elephants") != std::string::npos;
    EXPECT_EQ(has_prompt, log_plain) << all;
    EXPECT_EQ(has_answer, log_plain) << all;
    EXPECT_NE(all.find("/v1/chat/completions 200"), std::string::npos) << all;
  }
}

// vLLM and SGLang: the requests follow their documented APIs, and their answers (recorded
// shapes: vLLM's return_token_ids chunks or, for older servers, logprobs tokens "token_id:N";
// SGLang's cumulative or incremental output_ids) map back.
TEST(Proxy, VllmAndSglangBackends) {
  const auto answer = enc(" the tide turns \xF0\x9F\x8C\x8A at noon");
  for (BackendKind kind : {BackendKind::VLLM, BackendKind::SGLang}) {
    for (bool incremental : {false, true}) {
      Rig r(kind);
      r.fake.sglang_incremental = incremental;
      r.fake.vllm_logprobs = incremental;
      r.answer(answer);
      for (bool stream : {false, true}) {
        auto res = r.post("/v1/completions", {{"model", "aloe-test"}, {"prompt", "When?"}, {"max_tokens", 40},
                                              {"temperature", 0}, {"stream", stream}, {"seed", 7}});
        ASSERT_TRUE(res);
        ASSERT_EQ(res->status, 200) << backend_kind_name(kind) << ": " << res->body;
        std::string text, finish;
        if (stream) {
          bool done = false;
          for (const auto& e : sse_events(res->body, &done)) {
            text += e["choices"][0]["text"].get<std::string>();
            if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
          }
        } else {
          auto j = json::parse(res->body);
          text = j["choices"][0]["text"];
          finish = j["choices"][0]["finish_reason"];
          EXPECT_EQ(j["usage"]["completion_tokens"], answer.size());
        }
        EXPECT_EQ(text, llama2().decode(answer)) << backend_kind_name(kind) << (stream ? " stream" : "");
        EXPECT_EQ(finish, "length");
        json got = r.fake.last();
        const auto plain_prompt = enc("When?", true);
        std::vector<int64_t> want;
        for (auto id : plain_prompt) want.push_back(r.map.to_server(int64_t(id)));
        const json tau_eos = json::array({r.map.to_server(int64_t(kEos))});
        if (kind == BackendKind::VLLM) {
          EXPECT_EQ(got["model"], "obf-model");  // from the engine's /v1/models
          EXPECT_EQ(got["prompt"], want);
          EXPECT_EQ(got["return_token_ids"], true);
          EXPECT_EQ(got["max_tokens"], 40);
          EXPECT_EQ(got["seed"], 7);
          EXPECT_EQ(got["stop_token_ids"], tau_eos);
          EXPECT_EQ(got["stream"], stream);
        } else {
          EXPECT_EQ(got["input_ids"], want);
          EXPECT_EQ(got["sampling_params"]["max_new_tokens"], 40);
          EXPECT_EQ(got["sampling_params"]["temperature"], 0.0);
          EXPECT_EQ(got["sampling_params"]["stop_token_ids"], tau_eos);
          EXPECT_EQ(got["stream"], stream);
        }
      }
    }
  }
}

TEST(Backend, RequestShapesAndKinds) {
  EXPECT_EQ(parse_backend_kind("llamacpp"), BackendKind::LlamaCpp);
  EXPECT_EQ(parse_backend_kind("vllm"), BackendKind::VLLM);
  EXPECT_EQ(parse_backend_kind("sglang"), BackendKind::SGLang);
  EXPECT_THROW(parse_backend_kind("tgi"), aloepri::Error);
  BackendRequest q;
  q.prompt = {5, 6};
  q.max_tokens = -1;
  q.top_k = 0;
  Backend v({BackendKind::VLLM, "http://127.0.0.1:1/v1", "m"});
  EXPECT_EQ(v.request_path(), "/v1/completions");
  auto b = v.request_body(q);
  EXPECT_TRUE(b["max_tokens"].is_null());  // vLLM: until the context is full
  EXPECT_EQ(b["top_k"], -1);
  Backend s({BackendKind::SGLang, "127.0.0.1:1", ""});
  EXPECT_EQ(s.request_path(), "/generate");
  EXPECT_TRUE(s.request_body(q)["sampling_params"]["max_new_tokens"].is_null());
  Backend l({BackendKind::LlamaCpp, "http://127.0.0.1:1/", ""});
  EXPECT_EQ(l.request_path(), "/completion");
  EXPECT_EQ(l.request_body(q)["n_predict"], -1);
  EXPECT_THROW(Backend({BackendKind::LlamaCpp, "https://x", ""}), aloepri::Error);
}
