// The README's main job, end to end: aloe-mini obfuscated, served by llama.cpp, answered.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "support/paths.h"

namespace at = aloepri::testing;

static bool engine_installed() {
  return std::filesystem::exists(at::source_dir() + "/harness/llamacpp/node_modules/node-llama-cpp");
}

// With no flags the demo runs the default profile, which is exact (issue 14): the user's answer
// must be the plaintext model's, token for token.
TEST(Demo, DefaultPipelineGivesThePlaintextAnswerAndHidesThePrompt) {
  if (!engine_installed()) GTEST_SKIP() << "llama.cpp harness not installed (run ./setup.sh)";
  std::string out;
  int rc = at::run_command(at::aloepri_exe() + " -q demo --json --tokens 16", &out);
  ASSERT_EQ(rc, 0) << out;
  auto j = nlohmann::json::parse(out);
  EXPECT_TRUE(j["ok"].get<bool>());
  EXPECT_TRUE(j["exact"].get<bool>());
  EXPECT_EQ(j["profile"], "exact");
  EXPECT_EQ(j["answer"]["ids"], j["plaintext_reference"]["ids"]);
  EXPECT_EQ(j["answer"]["text"], j["plaintext_reference"]["text"]);
  EXPECT_FALSE(j["answer"]["text"].get<std::string>().empty());
  // What the server saw is the permuted prompt, not the plaintext one.
  auto plain = j["prompt"]["ids"].get<std::vector<int64_t>>();
  auto seen = j["server_saw"]["prompt_ids"].get<std::vector<int64_t>>();
  ASSERT_EQ(plain.size(), seen.size());
  size_t same = 0;
  for (size_t i = 0; i < plain.size(); ++i) same += plain[i] == seen[i];
  EXPECT_LT(same, plain.size() / 2 + 1);
  EXPECT_EQ(j["server_saw"]["prompt_as_text"].get<std::string>().find(j["prompt"]["text"].get<std::string>()),
            std::string::npos);
  // The answer came through the proxy's OpenAI chat API, streamed.
  EXPECT_EQ(j["api"]["request"]["messages"][0]["content"], j["prompt"]["text"]);
  EXPECT_TRUE(j["api"]["request"]["stream"].get<bool>());
  EXPECT_EQ(j["api"]["usage"]["completion_tokens"], j["answer"]["ids"].size());
  EXPECT_EQ(j["api"]["usage"]["prompt_tokens"], plain.size());
  EXPECT_EQ(j["server_saw"]["answer_ids"].size(), j["answer"]["ids"].size());
  EXPECT_NE(j["server_saw"]["answer_ids"], j["answer"]["ids"]);
  const std::string fin = j["api"]["finish_reason"];
  EXPECT_TRUE(fin == "stop" || fin == "length") << fin;
  EXPECT_GE(j["api"]["chunks"].get<int>(), 1);
  for (const char* k : {"obfuscate", "export_gguf", "engine_start", "proxy_start", "request_ttft", "request_total", "total"})
    EXPECT_TRUE(j["timings_s"].contains(k)) << k;
}

TEST(Demo, HelpSaysHowToRunItOnYourOwnModel) {
  std::string out;
  ASSERT_EQ(at::run_command(at::aloepri_exe() + " demo --help", &out), 0);
  EXPECT_NE(out.find("--model"), std::string::npos);
  EXPECT_NE(out.find("aloepri proxy --key"), std::string::npos);
  EXPECT_NE(out.find("/v1/chat/completions"), std::string::npos);
}

// A noisy profile runs the same pipeline; agreement is reported, not required.
TEST(Demo, NoiseProfileRunsAndReportsAgreement) {
  if (!engine_installed()) GTEST_SKIP() << "llama.cpp harness not installed (run ./setup.sh)";
  std::string out;
  int rc = at::run_command(at::aloepri_exe() + " -q demo --profile noise --json --tokens 8", &out);
  ASSERT_EQ(rc, 0) << out;
  auto j = nlohmann::json::parse(out);
  EXPECT_FALSE(j["exact"].get<bool>());
  EXPECT_EQ(j["profile"], "noise");
  EXPECT_EQ(j["obfuscation"]["obf_hidden"], 256 + 2 * 128);
  // At most max_tokens; fewer when the (noisy) model emits its end token early.
  EXPECT_GE(j["answer"]["ids"].size(), 1u);
  EXPECT_LE(j["answer"]["ids"].size(), 8u);
  EXPECT_EQ(j["api"]["usage"]["completion_tokens"], j["answer"]["ids"].size());
  EXPECT_LE(j["greedy_agreement"]["identical_prefix"].get<size_t>(), 8u);
}
