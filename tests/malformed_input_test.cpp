// Every way a safetensors file, a shard index, a config or a checkpoint can be malformed must
// end in an Error (exit code 3) whose one-line message names the file and the problem, and the
// CLI must print exactly that line and nothing on stdout.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/model/model.h"
#include "aloepri/formats/safetensors.h"
#include "support/paths.h"

using namespace aloepri;
namespace fs = std::filesystem;
using aloepri::testing::scratch_dir;
using nlohmann::json;

namespace {

// A safetensors file from a literal header and data size; `len` overrides the length prefix.
void write_raw(const std::string& path, const std::string& header, size_t data_bytes,
               std::optional<uint64_t> len = std::nullopt) {
  std::ofstream f(path, std::ios::binary);
  uint64_t n = len.value_or(header.size());
  for (int i = 0; i < 8; ++i) f.put(char(n >> (8 * i)));
  f << header << std::string(data_bytes, '\x01');
}

// The message of the Error that opening `path` throws ("" when none).
std::string open_error(const std::string& path) {
  try {
    SafetensorsReader r(path);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kExitBadInput) << e.what();
    std::string w = e.what();
    EXPECT_EQ(w.find('\n'), std::string::npos) << "error must be one line: " << w;
    return w;
  }
  return "";
}

struct Case {
  const char* name;
  std::string header;
  size_t data;
  std::optional<uint64_t> len;
  const char* expect;  // substring of the message besides the file name
};

}  // namespace

TEST(MalformedSafetensors, EachDefectIsRefusedWithAMessageNamingFileAndProblem) {
  const std::string ok2 = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::vector<Case> cases = {
      {"truncated_prefix", "", 0, 3, "truncated"},
      {"len_beyond_file", "{}", 0, 4096, "runs past the end"},
      {"len_absurd", "{}", 0, uint64_t(1) << 40, "exceeds the 100 MiB limit"},
      {"not_json", "{\"a\": [1, 2", 0, {}, "invalid JSON header"},
      {"not_brace", "[1, 2, 3]", 0, {}, "does not start with '{'"},
      {"not_object_entry", R"({"a": 3})", 0, {}, "tensor 'a': entry is not an object"},
      {"unknown_dtype", R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2, {},
       "tensor 'a': unsupported dtype 'F8_E4M3'"},
      {"size_mismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, {},
       "tensor 'a': data_offsets [0, 8] span 8 bytes but F32 [3] needs 12"},
      {"out_of_range", "{" + ok2 + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 12, {},
       "tensor 'b': data_offsets [8, 16] run past the end"},
      {"overlap", "{" + ok2 + R"(,"b":{"dtype":"F16","shape":[2],"data_offsets":[6,10]}})", 10, {},
       "tensor 'b' overlaps tensor 'a'"},
      {"hole", "{" + ok2 + R"(,"b":{"dtype":"F16","shape":[2],"data_offsets":[12,16]}})", 16, {},
       "bytes 8..12 of the data buffer belong to no tensor"},
      {"hole_at_start", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8, {},
       "bytes 0..4"},
      {"trailing", "{" + ok2 + "}", 12, {}, "trailing data"},
      {"truncated_data", "{" + ok2 + "}", 5, {}, "run past the end of the 5-byte data buffer"},
      {"duplicate_name", "{" + ok2 + "," + ok2 + "}", 8, {}, "duplicate key 'a'"},
      {"reversed_offsets", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8, {},
       "end before they begin"},
      {"negative_dim", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, {},
       "shape entries must be non-negative"},
      {"overflowing_shape",
       R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8, {},
       "overflows"},
      {"missing_offsets", R"({"a":{"dtype":"F32","shape":[2]}})", 8, {}, "'data_offsets'"},
      {"metadata_not_string", R"({"__metadata__":{"format":1},)" + ok2 + "}", 8, {},
       "'__metadata__' value for 'format' is not a string"},
      {"bad_utf8", std::string("{\"a\xff\":{}}"), 0, {}, "invalid JSON header"},
  };
  std::string dir = scratch_dir("malformed_st");
  for (auto& c : cases) {
    std::string path = dir + "/" + c.name + ".safetensors";
    write_raw(path, c.header, c.data, c.len);
    std::string e = open_error(path);
    EXPECT_NE(e.find(path), std::string::npos) << c.name << ": " << e;
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.name << ": " << e;
  }
}

TEST(MalformedSafetensors, ValidEdgeCasesAreAccepted) {
  std::string dir = scratch_dir("valid_edge");
  // Spaces after the JSON (the spec's padding), an empty tensor, a scalar, no tensors at all.
  write_raw(dir + "/pad.safetensors",
            R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"BF16","shape":[],"data_offsets":[0,2]}}   )",
            2);
  SafetensorsReader r(dir + "/pad.safetensors");
  EXPECT_EQ(r.get("e").numel(), 0);
  EXPECT_EQ(r.get("s").numel(), 1);
  write_raw(dir + "/empty.safetensors", "{}", 0);
  EXPECT_TRUE(SafetensorsReader(dir + "/empty.safetensors").names().empty());
}

namespace {

// A valid two-shard checkpoint whose index we then break in various ways.
std::string sharded_fixture(const std::string& name) {
  std::string dir = scratch_dir(name) + "/m";
  SafetensorsWriter w(dir, 8);
  w.add({"a", DType::F32, {2}});
  w.add({"b", DType::F32, {2}});
  float v[2] = {1, 2};
  w.write_f32("a", v, 2);
  w.write_f32("b", v, 2);
  w.finish();
  return dir;
}

void write_index(const std::string& dir, const json& j) {
  fs::remove(dir + "/model.safetensors.index.json");
  std::ofstream(dir + "/model.safetensors.index.json") << j.dump();
}

}  // namespace

TEST(MalformedIndex, EachDefectIsRefused) {
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  struct IdxCase {
    const char* name;
    json index;
    const char* expect;
  };
  std::vector<IdxCase> cases = {
      {"missing_shard", {{"weight_map", {{"a", s1}, {"b", "model-00009-of-00009.safetensors"}}}},
       "shard 'model-00009-of-00009.safetensors' (holding tensor 'b') does not exist"},
      {"wrong_shard", {{"weight_map", {{"a", s2}, {"b", s2}}}},
       "tensor 'a' is mapped to shard 'model-00002-of-00002.safetensors' but that shard does not contain it"},
      {"unlisted", {{"weight_map", {{"a", s1}, {"b", s1}}}}, "does not contain it"},
      {"traversal", {{"weight_map", {{"a", "../m/" + s1}, {"b", s2}}}}, "not a plain file name"},
      {"no_weight_map", {{"metadata", {{"total_size", 16}}}}, "missing required field 'weight_map'"},
      {"weight_map_not_object", {{"weight_map", {1, 2}}}, "'weight_map' is not an object"},
      {"non_string_entry", {{"weight_map", {{"a", 1}, {"b", s2}}}}, "weight_map entry for tensor 'a'"},
  };
  for (auto& c : cases) {
    std::string dir = sharded_fixture(std::string("idx_") + c.name);
    write_index(dir, c.index);
    std::string e = open_error(dir);
    EXPECT_NE(e.find(dir), std::string::npos) << c.name << ": " << e;
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.name << ": " << e;
  }
  // "not_listed_in_index" lists only 'a' but shard 2 holds 'b'.
  std::string dir = sharded_fixture("idx_unlisted_b");
  write_index(dir, {{"weight_map", {{"a", s1}}}});
  EXPECT_EQ(open_error(dir), "");  // shard 2 is not opened, so 'b' is simply not part of the model

  dir = sharded_fixture("idx_badjson");
  fs::remove(dir + "/model.safetensors.index.json");
  std::ofstream(dir + "/model.safetensors.index.json") << "{\"weight_map\": ";
  EXPECT_NE(open_error(dir).find("invalid JSON index"), std::string::npos);

  // The same tensor stored in two shards.
  dir = sharded_fixture("idx_dup");
  write_raw(dir + "/" + s2, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  write_index(dir, {{"weight_map", {{"a", s1}}}});
  std::string e = open_error(dir);  // shard 2 not referenced: fine
  EXPECT_EQ(e, "");
  write_index(dir, {{"weight_map", {{"a", s1}, {"b", s2}}}});
  e = open_error(dir);
  EXPECT_NE(e.find("tensor 'a' is also stored in"), std::string::npos) << e;

  // A shard holding a tensor the index does not mention.
  dir = sharded_fixture("idx_extra");
  fs::remove(dir + "/" + s2);
  write_raw(dir + "/" + s2,
            R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"c":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
            12);
  write_index(dir, {{"weight_map", {{"a", s1}, {"b", s2}}}});
  e = open_error(dir);
  EXPECT_NE(e.find("tensor 'c' is not listed in"), std::string::npos) << e;

  // A directory with nothing to read.
  dir = scratch_dir("idx_empty_dir");
  EXPECT_NE(open_error(dir).find("no model.safetensors or model.safetensors.index.json"), std::string::npos);
}

namespace {

ModelConfig tiny_config() {
  return ModelConfig::from_json({{"model_type", "llama"}, {"hidden_size", 16}, {"num_hidden_layers", 2},
                                 {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                                 {"intermediate_size", 32}, {"vocab_size", 50}});
}

struct CliRun {
  int rc;
  std::string out, err;
};

CliRun inspect(const std::string& args) {
  std::string errfile = aloepri::testing::scratch_dir("cli_stderr") + "/err.txt";
  CliRun r;
  r.rc = aloepri::testing::run_command(aloepri::testing::aloepri_exe() + " inspect " + args + " 2>" + errfile, &r.out);
  std::ifstream in(errfile);
  r.err.assign(std::istreambuf_iterator<char>(in), {});
  return r;
}

}  // namespace

TEST(MalformedModelCli, ExitCode3AndOneLineNamingFileAndField) {
  std::string base = scratch_dir("cli_malformed");
  // Missing config field.
  std::string m1 = base + "/nofield";
  write_synthetic_model(m1, tiny_config(), 1);
  json cfg = json::parse(std::ifstream(m1 + "/config.json"));
  cfg.erase("num_attention_heads");
  fs::remove(m1 + "/config.json");
  std::ofstream(m1 + "/config.json") << cfg.dump();
  CliRun r = inspect(m1);
  EXPECT_EQ(r.rc, kExitBadInput);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "aloepri: error: " + m1 + "/config.json: missing required field 'num_attention_heads'\n");

  // Truncated weights: the last bytes of the file are gone.
  std::string m2 = base + "/truncated";
  write_synthetic_model(m2, tiny_config(), 1);
  fs::resize_file(m2 + "/model.safetensors", fs::file_size(m2 + "/model.safetensors") - 10);
  r = inspect(m2);
  EXPECT_EQ(r.rc, kExitBadInput);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(m2 + "/model.safetensors: tensor '"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("truncated file?"), std::string::npos) << r.err;

  // A config that disagrees with the weights.
  std::string m3 = base + "/shape";
  write_synthetic_model(m3, tiny_config(), 1);
  cfg = json::parse(std::ifstream(m3 + "/config.json"));
  cfg["intermediate_size"] = 48;
  fs::remove(m3 + "/config.json");
  std::ofstream(m3 + "/config.json") << cfg.dump();
  r = inspect(m3);
  EXPECT_EQ(r.rc, kExitBadInput);
  EXPECT_NE(r.err.find("tensor 'model.layers.0.mlp.gate_proj.weight' has shape [32, 16], expected [48, 16]"),
            std::string::npos)
      << r.err;

  // Not a model at all / not there.
  r = inspect(base + "/does-not-exist");
  EXPECT_EQ(r.rc, kExitBadInput);
  EXPECT_NE(r.err.find("does-not-exist: no such directory"), std::string::npos) << r.err;

  // Bad command line is a usage error, not an input error.
  r = inspect("");
  EXPECT_EQ(r.rc, kExitUsage);
}
