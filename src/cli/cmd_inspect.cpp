// `aloepri inspect MODEL [--json]`: what a checkpoint is (family, dimensions, dtypes, size,
// tensors) and its fingerprint, after the same validation every other command applies.
// A .gguf file gets the llama.cpp view instead: architecture, the hyper-parameters llama.cpp
// reads, tokenizer, tensor types and sizes (what a server operator sees of an obfuscated model).
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/formats/gguf.h"
#include "aloepri/model/model.h"
#include "command.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string fmt_g(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", x);
  return b;
}


std::string with_commas(uint64_t n) {
  std::string s = std::to_string(n);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(size_t(i), ",");
  return s;
}

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(n);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", v, units[u]);
  return buf;
}

struct Options {
  std::string model;
  bool json_out = false;
  bool no_fingerprint = false;
  int show = 3;
};

// A metadata value as JSON (arrays summarised: their length and first elements, since a
// vocabulary array has tens of thousands of entries).
json value_json(const aloepri::gguf::Value& v, size_t max_elems) {
  using aloepri::gguf::ValueType;
  auto one = [&](size_t i) -> json {
    return std::visit([&](const auto& vec) -> json { return json(vec[i]); }, v.storage());
  };
  if (!v.is_array()) {
    if (v.type() == ValueType::BOOL) return json(v.as_bool());
    return one(0);
  }
  json a = json::array();
  for (size_t i = 0; i < std::min(v.size(), max_elems); ++i) a.push_back(one(i));
  return {{"array_of", aloepri::gguf::value_type_name(v.elem_type())}, {"length", v.size()}, {"first", a}};
}

int run_gguf(const Options& o) {
  using namespace aloepri;
  gguf::GGUFReader r(o.model);
  const std::string arch = r.has("general.architecture") ? r.get("general.architecture").as_string() : "";
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_type;  // ggml type -> (tensors, bytes)
  uint64_t total = 0, params = 0;
  for (const auto& t : r.tensors()) {
    auto& e = by_type[gguf::ggml_type_name(t.type)];
    e.first += 1, e.second += t.nbytes;
    total += t.nbytes, params += uint64_t(t.numel());
  }
  const uint64_t file_bytes = fs::file_size(o.model);
  auto ne_str = [](const std::vector<int64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
  };
  const size_t n = r.tensors().size(), k = size_t(std::max(0, o.show));
  std::vector<size_t> listed;
  for (size_t i = 0; i < n; ++i)
    if (i < k || i + k >= n) listed.push_back(i);
  const std::string vocab_key = "tokenizer.ggml.tokens";
  const size_t vocab = r.has(vocab_key) ? r.get(vocab_key).size() : 0;

  if (o.json_out) {
    json j;
    j["path"] = o.model;
    j["format"] = "gguf";
    j["version"] = r.version();
    j["alignment"] = r.alignment();
    j["architecture"] = arch;
    j["file_bytes"] = file_bytes;
    j["tensor_count"] = n;
    j["tensor_bytes"] = total;
    j["parameters"] = params;
    j["vocab_size"] = vocab;
    json md = json::object();
    for (const auto& [key, value] : r.metadata()) md[key] = value_json(value, 8);
    j["metadata"] = md;
    json d = json::object();
    for (auto& [name, e] : by_type) d[name] = {{"tensors", e.first}, {"bytes", e.second}};
    j["types"] = d;
    json ts = json::array();
    for (size_t i : listed) {
      const auto& t = r.tensors()[i];
      ts.push_back({{"name", t.name}, {"type", gguf::ggml_type_name(t.type)}, {"ne", t.ne}, {"bytes", t.nbytes}});
    }
    j["tensors_shown"] = ts;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  auto row = [](const std::string& key, const std::string& v) { std::printf("%-12s %s\n", key.c_str(), v.c_str()); };
  auto scalar = [&](const std::string& key) -> std::string {
    if (!r.has(key)) return "";
    const auto& v = r.get(key);
    if (v.is_array()) return "array of " + std::to_string(v.size());
    if (v.type() == gguf::ValueType::STRING) return v.as_string();
    if (v.type() == gguf::ValueType::BOOL) return v.as_bool() ? "true" : "false";
    if (v.type() == gguf::ValueType::FLOAT32 || v.type() == gguf::ValueType::FLOAT64) {
      char b[32];
      std::snprintf(b, sizeof b, "%g", v.as_f64());
      return b;
    }
    return v.type() == gguf::ValueType::INT32 || v.type() == gguf::ValueType::INT64 ? std::to_string(v.as_i64())
                                                                                      : std::to_string(v.as_u64());
  };
  row("model", o.model);
  row("format", "GGUF v" + std::to_string(r.version()) + ", alignment " + std::to_string(r.alignment()) + ", " +
                    human_bytes(file_bytes));
  row("arch", arch.empty() ? "(general.architecture missing)" : arch);
  if (r.has("general.name")) row("name", scalar("general.name"));
  const std::pair<const char*, const char*> keys[] = {
      {"hidden", "embedding_length"},       {"layers", "block_count"},
      {"heads", "attention.head_count"},    {"kv heads", "attention.head_count_kv"},
      {"key len", "attention.key_length"},  {"value len", "attention.value_length"},
      {"ffn", "feed_forward_length"},       {"context", "context_length"},
      {"rope theta", "rope.freq_base"},     {"norm eps", "attention.layer_norm_rms_epsilon"}};
  for (const auto& [label, suffix] : keys) {
    const std::string v = scalar(arch + "." + suffix);
    if (!v.empty()) row(label, v);
  }
  std::string tok = scalar("tokenizer.ggml.model");
  if (r.has("tokenizer.ggml.pre")) tok += ", pre " + scalar("tokenizer.ggml.pre");
  row("tokenizer", (tok.empty() ? std::string("(none)") : tok) + ", " + std::to_string(vocab) + " tokens" +
                       (r.has("tokenizer.ggml.eos_token_id") ? ", eos " + scalar("tokenizer.ggml.eos_token_id") : ""));
  char buf[64];
  const double pc = double(params);
  std::snprintf(buf, sizeof buf, pc >= 1e9 ? " (%.2f B)" : " (%.2f M)", pc >= 1e9 ? pc / 1e9 : pc / 1e6);
  row("parameters", with_commas(params) + buf);
  row("tensors", std::to_string(n) + ", " + human_bytes(total));
  for (auto& [name, e] : by_type) row("  " + name, std::to_string(e.first) + " tensors, " + human_bytes(e.second));
  for (size_t li = 0; li < listed.size(); ++li) {
    const auto& t = r.tensors()[listed[li]];
    if (li == k && n > 2 * k) row("", "...");
    row(li == 0 ? "names" : "", t.name + " " + gguf::ggml_type_name(t.type) + " " + ne_str(t.ne));
  }
  row("metadata", std::to_string(r.metadata().size()) + " keys (--json lists them)");
  return 0;
}

int run(const Options& o) {
  using namespace aloepri;
  std::error_code ec;
  if (fs::path(o.model).extension() == ".gguf") return run_gguf(o);
  HFModel m(o.model);
  const ModelConfig& c = m.config();
  const SafetensorsReader& w = m.weights();
  auto names = w.names();

  std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // dtype -> (tensors, bytes)
  for (auto& n : names) {
    auto& t = w.get(n);
    auto& e = by_dtype[dtype_name(t.dtype)];
    e.first += 1;
    e.second += t.nbytes;
  }
  // Tensors in checkpoint order (the order the expected list gives), first and last few.
  auto expected = expected_tensors(c);
  std::vector<std::string> listed;
  int k = std::max(0, o.show);
  for (size_t i = 0; i < expected.size(); ++i)
    if (int(i) < k || i + size_t(k) >= expected.size()) listed.push_back(expected[i].first);
  std::string fp = o.no_fingerprint ? "" : m.fingerprint();
  std::vector<std::string> files;
  for (auto& f : w.files()) files.push_back(fs::path(f).filename().string());

  if (o.json_out) {
    json j;
    j["path"] = o.model;
    j["family"] = family_name(c.family);
    j["hidden_size"] = c.hidden_size;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["head_dim"] = c.head_dim;
    j["intermediate_size"] = c.intermediate_size;
    j["vocab_size"] = c.vocab_size;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["rms_norm_eps"] = c.rms_norm_eps;
    j["rope_theta"] = c.rope_theta;
    j["rope_scaling"] = c.rope_scaling.type.empty() ? json(nullptr) : c.to_json()["rope_scaling"];
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["attention_bias"] = c.attention_bias;
    j["qk_norm"] = c.qk_norm;
    if (c.mla())
      j["mla"] = {{"q_lora_rank", c.q_lora_rank},           {"kv_lora_rank", c.kv_lora_rank},
                  {"qk_nope_head_dim", c.qk_nope_head_dim}, {"qk_rope_head_dim", c.qk_rope_head_dim},
                  {"v_head_dim", c.v_head_dim}};
    if (c.is_moe()) {
      int64_t sparse = 0;
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) sparse += c.is_moe_layer(l);
      j["moe"] = {{"num_experts", c.num_experts},
                  {"num_experts_per_tok", c.num_experts_per_tok},
                  {"moe_intermediate_size", c.moe_intermediate_size},
                  {"norm_topk_prob", c.norm_topk_prob},
                  {"sparse_layers", sparse}};
      if (c.mla()) {
        j["moe"]["n_shared_experts"] = c.n_shared_experts;
        j["moe"]["scoring_func"] = c.scoring_func;
        j["moe"]["topk_method"] = c.topk_method;
        j["moe"]["n_group"] = c.n_group;
        j["moe"]["topk_group"] = c.topk_group;
        j["moe"]["routed_scaling_factor"] = c.routed_scaling_factor;
      }
    }
    j["parameters"] = c.parameter_count();
    j["tensor_count"] = names.size();
    j["tensor_bytes"] = w.total_bytes();
    j["files"] = files;
    json d = json::object();
    for (auto& [name, e] : by_dtype) d[name] = {{"tensors", e.first}, {"bytes", e.second}};
    j["dtypes"] = d;
    json ts = json::array();
    for (auto& n : listed) {
      auto& t = w.get(n);
      ts.push_back({{"name", n}, {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}});
    }
    j["tensors_shown"] = ts;
    j["tokenizer"] = m.tokenizer_json_path().empty() ? json(nullptr) : json(m.tokenizer_json_path());
    j["fingerprint"] = o.no_fingerprint ? json(nullptr) : json(fp);
    std::cout << j.dump(2) << "\n";
    return 0;
  }

  auto row = [](const std::string& k, const std::string& v) {
    std::printf("%-12s %s\n", k.c_str(), v.c_str());
  };
  row("model", o.model);
  row("family", family_name(c.family) + " (" + c.to_json()["architectures"][0].get<std::string>() + ")");
  row("hidden", std::to_string(c.hidden_size));
  row("layers", std::to_string(c.num_hidden_layers));
  row("heads", std::to_string(c.num_attention_heads) + " query, " + std::to_string(c.num_key_value_heads) +
                   " kv (group " + std::to_string(c.group_size()) + "), head_dim " + std::to_string(c.head_dim));
  row("ffn", std::to_string(c.intermediate_size));
  row("vocab", std::to_string(c.vocab_size));
  row("context", std::to_string(c.max_position_embeddings));
  char buf[256];
  std::snprintf(buf, sizeof buf, "theta %g%s", c.rope_theta,
                c.rope_scaling.type.empty() ? "" : (", scaling " + c.rope_scaling.type).c_str());
  std::string rope = buf;
  if (!c.rope_scaling.type.empty()) {
    std::snprintf(buf, sizeof buf, " (factor %g", c.rope_scaling.factor);
    rope += buf;
    if (c.rope_scaling.type == "llama3") {
      std::snprintf(buf, sizeof buf, ", low %g, high %g, original %lld", c.rope_scaling.low_freq_factor,
                    c.rope_scaling.high_freq_factor, (long long)c.rope_scaling.original_max_position_embeddings);
      rope += buf;
    }
    if (c.rope_scaling.type == "yarn") {
      const RopeScaling& rs = c.rope_scaling;
      std::snprintf(buf, sizeof buf, ", original %lld, beta %g/%g, mscale %g, mscale_all_dim %g",
                    (long long)rs.original_max_position_embeddings, rs.beta_fast, rs.beta_slow, rs.mscale,
                    rs.mscale_all_dim);
      rope += buf;
    }
    rope += ")";
  }
  row("rope", rope);
  std::snprintf(buf, sizeof buf, "%g", c.rms_norm_eps);
  row("norm eps", buf);
  row("tied head", c.tie_word_embeddings ? "yes (lm_head = embed_tokens)" : "no");
  row("attn bias", c.o_bias() ? "q, k, v, o" : c.attention_bias ? "q, k, v" : "none");
  row("qk norm", c.qk_norm ? "yes" : "no");
  if (c.mla())
    row("latent attn", "q latent " + (c.q_lora_rank > 0 ? std::to_string(c.q_lora_rank) : std::string("none")) +
                           ", kv latent " + std::to_string(c.kv_lora_rank) + ", per head nope " +
                           std::to_string(c.qk_nope_head_dim) + " + rope " + std::to_string(c.qk_rope_head_dim) +
                           ", v " + std::to_string(c.v_head_dim));
  if (c.is_moe()) {
    int64_t sparse = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) sparse += c.is_moe_layer(l);
    row("experts", std::to_string(c.num_experts) + " per layer, " + std::to_string(c.num_experts_per_tok) +
                       " per token, expert ffn " + std::to_string(c.moe_intermediate_size) + ", top-k " +
                       (c.norm_topk_prob ? "renormalised" : "not renormalised") + ", " + std::to_string(sparse) +
                       " of " + std::to_string(c.num_hidden_layers) + " layers sparse");
    if (c.mla())
      row("routing", c.scoring_func + " scores, " + c.topk_method + ", " + std::to_string(c.topk_group) + " of " +
                         std::to_string(c.n_group) + " groups, scale " + fmt_g(c.routed_scaling_factor) +
                         ", " + std::to_string(c.n_shared_experts) + " shared expert(s)");
  }
  double pc = double(c.parameter_count());
  std::snprintf(buf, sizeof buf, pc >= 1e9 ? " (%.2f B)" : " (%.2f M)", pc >= 1e9 ? pc / 1e9 : pc / 1e6);
  row("parameters", with_commas(uint64_t(c.parameter_count())) + buf);
  row("tensors", std::to_string(names.size()) + " in " + std::to_string(files.size()) + " file" +
                     (files.size() == 1 ? "" : "s") + ", " + human_bytes(w.total_bytes()));
  for (auto& [name, e] : by_dtype)
    row("  " + name, std::to_string(e.first) + " tensors, " + human_bytes(e.second));
  for (size_t i = 0; i < listed.size(); ++i) {
    auto& t = w.get(listed[i]);
    if (i == size_t(k) && expected.size() > 2 * size_t(k)) row("", "...");
    row(i == 0 ? "names" : "", listed[i] + " " + dtype_name(t.dtype) + " " + shape_to_string(t.shape));
  }
  row("tokenizer", m.tokenizer_json_path().empty() ? "(none)" : m.tokenizer_json_path());
  if (!o.no_fingerprint) row("fingerprint", "sha256:" + fp);
  return 0;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("MODEL", o->model,
                 "An HF checkpoint directory (config.json + model.safetensors or a sharded\n"
                 "model.safetensors.index.json, optionally tokenizer.json), or a .gguf file")
      ->required();
  sub.add_flag("--json", o->json_out, "Print one JSON object instead of the table");
  sub.add_flag("--no-fingerprint", o->no_fingerprint,
               "Skip the SHA-256 fingerprint (it reads every weight byte)");
  sub.add_option("--show", o->show, "Tensors to list from each end of the checkpoint")
      ->default_val(3)
      ->check(CLI::Range(0, 1000000));
  sub.footer(
      "Every tensor the config implies is checked for presence and shape, and every\n"
      "safetensors header is validated (offsets, sizes, overlaps, holes); a malformed model\n"
      "exits with code 3 and a one-line message naming the file and tensor or field.\n"
      "The fingerprint is SHA-256 over the model-defining config fields and every tensor's\n"
      "name, dtype, shape and bytes; keys record it to refuse use with another model.\n\n" +
      sub.get_footer());
  return [o] { return run(*o); };
}

}  // namespace

ALOEPRI_COMMAND(inspect, "inspect", 10, "Describe an HF checkpoint (family, dimensions, dtypes, tensors, fingerprint) or a GGUF file",
                setup);
