// Loader for HF tokenizer.json + tokenizer_config.json (see include/aloepri/tokenizer_json.h).
#include "aloepri/formats/tokenizer_json.h"

#include <filesystem>

#include "aloepri/core/error.h"
#include "aloepri/core/output.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace aloepri {

namespace {

json parse_file(const std::string& path) {
  std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path, std::string("invalid JSON: ") + e.what());
  }
}

// tokenizer_config.json spells a special token as a string or {"content": ...}.
std::optional<std::string> token_text(const json& cfg, const std::string& key) {
  if (!cfg.is_object() || !cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

std::optional<int64_t> TokenizerJson::find(const std::string& token) const {
  auto it = token_to_id.find(token);
  if (it == token_to_id.end()) return std::nullopt;
  return it->second;
}

const AddedToken* TokenizerJson::added(int64_t id) const {
  for (const auto& a : added_tokens)
    if (a.id == id) return &a;
  return nullptr;
}

std::string TokenizerJson::split_regex() const {
  auto from = [](const json& p) -> std::string {
    if (p.is_object() && p.value("type", "") == "Split" && p.contains("pattern") && p["pattern"].is_object() &&
        p["pattern"].contains("Regex") && p["pattern"]["Regex"].is_string())
      return p["pattern"]["Regex"].get<std::string>();
    return "";
  };
  if (!pre_tokenizer.is_object()) return "";
  if (pre_tokenizer.value("type", "") == "Sequence" && pre_tokenizer.contains("pretokenizers"))
    for (const auto& p : pre_tokenizer["pretokenizers"])
      if (auto r = from(p); !r.empty()) return r;
  return from(pre_tokenizer);
}

TokenizerJson TokenizerJson::load(const std::string& dir_or_file) {
  TokenizerJson t;
  fs::path p(dir_or_file);
  fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  t.path = fs::is_directory(p) ? (p / "tokenizer.json").string() : p.string();
  require(fs::exists(t.path), t.path, "not found (a Hugging Face fast tokenizer is needed)");
  const std::string& f = t.path;
  json j = parse_file(f);
  require(j.is_object() && j.contains("model") && j["model"].is_object(), f, "no 'model' object");
  const json& m = j["model"];
  t.model_type = m.value("type", std::string(m.contains("merges") ? "BPE" : ""));
  require(t.model_type == "BPE", f + ": model.type",
          "'" + t.model_type + "' is not supported (only BPE tokenizers: Llama, Mistral, Qwen)");
  if (m.contains("byte_fallback") && m["byte_fallback"].is_boolean()) t.byte_fallback = m["byte_fallback"].get<bool>();
  if (m.contains("ignore_merges") && m["ignore_merges"].is_boolean()) t.ignore_merges = m["ignore_merges"].get<bool>();
  if (m.contains("unk_token") && m["unk_token"].is_string()) t.unk_token = m["unk_token"].get<std::string>();

  // Vocabulary.
  require(m.contains("vocab") && m["vocab"].is_object(), f + ": model.vocab", "missing or not an object");
  auto claim = [&](int64_t id, const std::string& text, const std::string& where) {
    require(id >= 0 && id < (int64_t(1) << 31), f + ": " + where, "id " + std::to_string(id) + " out of range");
    if (int64_t(t.id_to_token.size()) <= id) t.id_to_token.resize(size_t(id) + 1);
    std::string& slot = t.id_to_token[size_t(id)];
    if (!slot.empty() && slot != text)
      throw Error(f + ": " + where, "id " + std::to_string(id) + " is both '" + slot + "' and '" + text + "'");
    slot = text;
    auto [it, fresh] = t.token_to_id.emplace(text, id);
    if (!fresh && it->second != id)
      throw Error(f + ": " + where, "token '" + text + "' has two ids, " + std::to_string(it->second) + " and " +
                                        std::to_string(id));
  };
  t.token_to_id.reserve(m["vocab"].size() + 512);
  t.id_to_token.reserve(m["vocab"].size() + 512);
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    require(it.value().is_number_integer(), f + ": model.vocab", "token '" + it.key() + "' has a non-integer id");
    claim(it.value().get<int64_t>(), it.key(), "model.vocab");
  }

  // Added tokens.
  if (j.contains("added_tokens")) {
    require(j["added_tokens"].is_array(), f + ": added_tokens", "not an array");
    for (const auto& a : j["added_tokens"]) {
      require(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                  a["content"].is_string(),
              f + ": added_tokens", "entry without integer 'id' and string 'content'");
      AddedToken at;
      at.id = a["id"].get<int64_t>();
      at.content = a["content"].get<std::string>();
      at.special = a.value("special", false);
      at.normalized = a.value("normalized", false);
      at.lstrip = a.value("lstrip", false);
      at.rstrip = a.value("rstrip", false);
      at.single_word = a.value("single_word", false);
      claim(at.id, at.content, "added_tokens");
      t.added_tokens.push_back(std::move(at));
    }
  }

  // Merges: "a b" strings (tokenizers < 0.20) or ["a", "b"] pairs (parts may then hold spaces).
  if (m.contains("merges")) {
    require(m["merges"].is_array(), f + ": model.merges", "not an array");
    t.merges.reserve(m["merges"].size());
    size_t i = 0;
    for (const auto& mg : m["merges"]) {
      if (mg.is_string()) {
        const std::string& s = mg.get_ref<const std::string&>();
        size_t sp = s.find(' ', 1);
        require(sp != std::string::npos && sp + 1 < s.size(), f + ": model.merges[" + std::to_string(i) + "]",
                "'" + s + "' is not 'left right'");
        t.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else {
        require(mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string(),
                f + ": model.merges[" + std::to_string(i) + "]", "not a string or a pair of strings");
        t.merges.emplace_back(mg[0].get<std::string>(), mg[1].get<std::string>());
      }
      ++i;
    }
  }
  if (j.contains("normalizer")) t.normalizer = j["normalizer"];
  if (j.contains("pre_tokenizer")) t.pre_tokenizer = j["pre_tokenizer"];
  if (j.contains("decoder")) t.decoder = j["decoder"];
  if (j.contains("post_processor")) t.post_processor = j["post_processor"];

  // tokenizer_config.json: special tokens resolve through the added tokens first (that is where
  // HF keeps them), then the vocabulary, as llama.cpp's converter does.
  fs::path cfg_path = dir / "tokenizer_config.json";
  if (fs::exists(cfg_path)) t.config = parse_file(cfg_path.string());
  const json& cfg = t.config;
  auto resolve = [&](const std::string& key) -> std::optional<int64_t> {
    auto text = token_text(cfg, key);
    if (!text) return std::nullopt;
    for (const auto& a : t.added_tokens)
      if (a.content == *text) return a.id;
    auto id = t.find(*text);
    require(id.has_value(), cfg_path.string() + ": " + key, "token '" + *text + "' is not in the vocabulary");
    return id;
  };
  t.bos_id = resolve("bos_token");
  t.eos_id = resolve("eos_token");
  t.unk_id = resolve("unk_token");
  t.pad_id = resolve("pad_token");
  if (!t.unk_id && !t.unk_token.empty()) t.unk_id = t.find(t.unk_token);
  if (cfg.is_object()) {
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) t.add_bos = cfg["add_bos_token"].get<bool>();
    if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) t.add_eos = cfg["add_eos_token"].get<bool>();
    if (cfg.contains("chat_template") && cfg["chat_template"].is_string())
      t.chat_template = cfg["chat_template"].get<std::string>();
  }
  if (t.chat_template.empty() && fs::exists(dir / "chat_template.jinja"))
    t.chat_template = read_file((dir / "chat_template.jinja").string());

  // Without an explicit add_bos_token, a TemplateProcessing post-processor whose single-sequence
  // template starts (ends) with the BOS (EOS) token means the tokenizer adds it.
  if ((!t.add_bos || !t.add_eos) && t.post_processor.is_object()) {
    std::vector<json> procs;
    if (t.post_processor.value("type", "") == "Sequence" && t.post_processor.contains("processors"))
      for (const auto& p : t.post_processor["processors"]) procs.push_back(p);
    else
      procs.push_back(t.post_processor);
    for (const auto& pr : procs) {
      if (pr.value("type", "") != "TemplateProcessing" || !pr.contains("single") || !pr["single"].is_array()) continue;
      const json& single = pr["single"];
      if (single.size() < 2) continue;
      auto special_id = [&](const json& e) -> std::optional<int64_t> {
        if (e.contains("SpecialToken") && e["SpecialToken"].contains("id") && e["SpecialToken"]["id"].is_string())
          return t.find(e["SpecialToken"]["id"].get<std::string>());
        return std::nullopt;
      };
      auto first = special_id(single.front());
      auto last = special_id(single.back());
      if (!t.add_bos) t.add_bos = first.has_value() && (!t.bos_id || *first == *t.bos_id);
      if (!t.bos_id && first) t.bos_id = first;
      if (!t.add_eos) t.add_eos = last.has_value() && t.eos_id && *last == *t.eos_id;
    }
  }
  return t;
}

}  // namespace aloepri
