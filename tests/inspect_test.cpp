// `aloepri inspect` on both inputs it accepts: an HF directory and a GGUF file (what the server
// operator sees), checked through the JSON output against the converted model's known shape.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "support/paths.h"

namespace at = aloepri::testing;
using nlohmann::json;

namespace {

json inspect_json(const std::string& path) {
  std::string out;
  const int rc = at::run_command(at::aloepri_exe() + " inspect " + path + " --json --no-fingerprint", &out);
  EXPECT_EQ(rc, 0) << out;
  return json::parse(out);
}

TEST(Inspect, HfDirectoryAndItsGgufAgree) {
  const std::string w = at::scratch_dir("inspect"), exe = at::aloepri_exe();
  std::string out;
  ASSERT_EQ(at::run_command(exe + " synth --arch llama --preset tiny --seed 7 --vocab-from " + at::vocab_dir("llama2") + " --out " + w + "/m", &out, true), 0) << out;
  ASSERT_EQ(at::run_command(exe + " convert " + w + "/m --gguf " + w + "/m.gguf --dtype f16", &out, true), 0) << out;

  const json hf = inspect_json(w + "/m");
  const json gg = inspect_json(w + "/m.gguf");
  EXPECT_EQ(gg["format"], "gguf");
  EXPECT_EQ(gg["architecture"], "llama");
  EXPECT_EQ(gg["metadata"]["llama.embedding_length"], hf["hidden_size"]);
  EXPECT_EQ(gg["metadata"]["llama.block_count"], hf["num_hidden_layers"]);
  EXPECT_EQ(gg["metadata"]["llama.attention.head_count_kv"], hf["num_key_value_heads"]);
  EXPECT_EQ(gg["vocab_size"], hf["vocab_size"]);
  // f16 matrices, f32 norms: both types present, and the byte total is the file's data section.
  EXPECT_TRUE(gg["types"].contains("F16"));
  EXPECT_TRUE(gg["types"].contains("F32"));
  EXPECT_LT(gg["tensor_bytes"].get<uint64_t>(), gg["file_bytes"].get<uint64_t>());
  // Vocabulary arrays are summarised, not dumped.
  EXPECT_EQ(gg["metadata"]["tokenizer.ggml.tokens"]["length"], hf["vocab_size"]);
  EXPECT_LE(gg["metadata"]["tokenizer.ggml.tokens"]["first"].size(), 8u);

  // The human table names the architecture; a truncated file is a clear exit-3 error.
  ASSERT_EQ(at::run_command(exe + " inspect " + w + "/m.gguf", &out, true), 0) << out;
  EXPECT_NE(out.find("arch         llama"), std::string::npos) << out;
  {
    std::ifstream in(w + "/m.gguf", std::ios::binary);
    std::string head(200, '\0');
    in.read(head.data(), 200);
    std::ofstream(w + "/cut.gguf", std::ios::binary) << head;
  }
  EXPECT_EQ(at::run_command(exe + " inspect " + w + "/cut.gguf", &out, true), 3) << out;
  EXPECT_NE(out.find("cut.gguf"), std::string::npos) << out;
}

}  // namespace
