// Per-family chat template renderers (see include/aloepri/chat_template.h). Each mirrors the
// Jinja template it replaces; comments name the template constructs reproduced.
#include "aloepri/client/chat_template.h"

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"

namespace aloepri {

namespace {

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }
bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}
// Python str.strip('\n') family.
std::string lstrip_nl(std::string s) { return s.erase(0, s.find_first_not_of('\n') == std::string::npos ? s.size() : s.find_first_not_of('\n')); }
std::string rstrip_nl(std::string s) {
  size_t e = s.find_last_not_of('\n');
  return e == std::string::npos ? std::string() : s.substr(0, e + 1);
}
// s.split(sep)[0] and s.split(sep)[-1].
std::string split_first(const std::string& s, const std::string& sep) { return s.substr(0, s.find(sep)); }
std::string split_last(const std::string& s, const std::string& sep) {
  size_t p = s.rfind(sep);
  return p == std::string::npos ? s : s.substr(p + sep.size());
}

[[noreturn]] void reject(const std::string& what) { throw Error("chat template", what, kExitBadInput); }

}  // namespace

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tok) {
  ChatTemplate t;
  t.bos_ = tok.bos_token();
  t.eos_ = tok.eos_token();
  std::string s = tok.chat_template();
  if (contains(s, "<|im_start|>")) {
    t.family_ = ChatFamily::kChatML;
    t.qwen3_think_ = contains(s, "<think>");
    static const char* kQwenDefault = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
    if (contains(s, kQwenDefault)) t.default_system_ = kQwenDefault;
  } else if (contains(s, "<|start_header_id|>")) {
    t.family_ = ChatFamily::kLlama3;
    if (contains(s, "Cutting Knowledge Date")) reject("the Llama-3.1+ template (tools, dates) is not supported");
    t.generation_prompt_always_ = !contains(s, "add_generation_prompt");
  } else if (contains(s, "<<SYS>>")) {
    t.family_ = ChatFamily::kLlama2;
  } else if (contains(s, "[INST]")) {
    t.family_ = ChatFamily::kMistral;
    t.mistral_space_after_eos_ = contains(s, "eos_token + ' '");
  } else if (s.empty() && (contains(tok.tokenizer_class(), "Llama") || t.bos_ == "<s>")) {
    // Llama-2 tokenizer configs predate chat_template; HF used the Llama-2 [INST] <<SYS>> format.
    t.family_ = ChatFamily::kLlama2;
  } else if (s.empty()) {
    reject("tokenizer_config.json has no chat_template and the tokenizer class '" + tok.tokenizer_class() +
           "' has no known default");
  } else {
    reject("unrecognized chat_template (supported: ChatML/Qwen, Llama-3, Llama-2, Mistral)");
  }
  return t;
}

const char* ChatTemplate::family_name() const {
  switch (family_) {
    case ChatFamily::kChatML: return qwen3_think_ ? "chatml-qwen3" : "chatml";
    case ChatFamily::kLlama3: return "llama3";
    case ChatFamily::kLlama2: return "llama2";
    case ChatFamily::kMistral: return "mistral";
  }
  return "?";
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& msgs, const ChatOptions& opt) const {
  if (msgs.empty()) reject("no messages");
  for (const auto& m : msgs)
    if (m.role != "system" && m.role != "user" && m.role != "assistant" && !(m.role == "tool" && family_ == ChatFamily::kChatML))
      reject("unsupported role '" + m.role + "'");
  std::string out;
  const size_t n = msgs.size();
  switch (family_) {
    case ChatFamily::kChatML: {
      if (msgs[0].role == "system") out += "<|im_start|>system\n" + msgs[0].content + "<|im_end|>\n";
      else if (!default_system_.empty()) out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
      // Qwen3: ns.last_query_index = the last user turn that is not a wrapped tool response.
      size_t last_query = n - 1;
      for (size_t k = n; k-- > 0;) {
        const auto& m = msgs[k];
        if (m.role == "user" && !(starts_with(m.content, "<tool_response>") && ends_with(m.content, "</tool_response>"))) {
          last_query = k;
          break;
        }
      }
      for (size_t i = 0; i < n; ++i) {
        const auto& m = msgs[i];
        if (m.role == "user" || (m.role == "system" && i > 0)) {
          out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
        } else if (m.role == "assistant") {
          if (!qwen3_think_) {
            out += "<|im_start|>assistant\n" + m.content + "<|im_end|>\n";
            continue;
          }
          std::string content = m.content, reasoning;
          if (m.reasoning_content) {
            reasoning = *m.reasoning_content;
          } else if (contains(content, "</think>")) {
            reasoning = lstrip_nl(split_last(rstrip_nl(split_first(m.content, "</think>")), "<think>"));
            content = lstrip_nl(split_last(m.content, "</think>"));
          }
          if (i > last_query && (i == n - 1 || !reasoning.empty())) {
            std::string r = lstrip_nl(rstrip_nl(reasoning));
            out += "<|im_start|>assistant\n<think>\n" + r + "\n</think>\n\n" + lstrip_nl(content);
          } else {
            out += "<|im_start|>assistant\n" + content;
          }
          out += "<|im_end|>\n";
        } else if (m.role == "tool") {
          if (i == 0 || msgs[i - 1].role != "tool") out += "<|im_start|>user";
          out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
          if (i == n - 1 || msgs[i + 1].role != "tool") out += "<|im_end|>\n";
        }
      }
      if (opt.add_generation_prompt) {
        out += "<|im_start|>assistant\n";
        if (qwen3_think_ && opt.enable_thinking == false) out += "<think>\n\n</think>\n\n";
      }
      break;
    }
    case ChatFamily::kLlama3: {
      for (size_t i = 0; i < n; ++i) {
        if (i == 0) out += bos_;
        out += "<|start_header_id|>" + msgs[i].role + "<|end_header_id|>\n\n" + js_trim(msgs[i].content) + "<|eot_id|>";
      }
      if (opt.add_generation_prompt || generation_prompt_always_) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    }
    case ChatFamily::kLlama2: {
      size_t first = 0;
      std::optional<std::string> system;
      if (msgs[0].role == "system") system = msgs[0].content, first = 1;
      for (size_t i = first; i < n; ++i) {
        const auto& m = msgs[i];
        size_t k = i - first;
        if (m.role == "system") reject("Llama-2: a system message is only allowed first");
        if ((m.role == "user") != (k % 2 == 0)) reject("Conversation roles must alternate user/assistant/user/assistant/...");
        std::string content = k == 0 && system ? "<<SYS>>\n" + *system + "\n<</SYS>>\n\n" + m.content : m.content;
        if (m.role == "user") out += bos_ + "[INST] " + js_trim(content) + " [/INST]";
        else out += " " + js_trim(content) + " " + eos_;
      }
      break;
    }
    case ChatFamily::kMistral: {
      out += bos_;
      // The Mistral template rejects system messages; we fold one into the first user turn
      // (what later Mistral templates do) rather than refuse an OpenAI request.
      std::optional<std::string> system;
      size_t first = 0;
      if (msgs[0].role == "system") system = msgs[0].content, first = 1;
      for (size_t i = first; i < n; ++i) {
        const auto& m = msgs[i];
        size_t k = i - first;
        if (m.role == "system") reject("Mistral: a system message is only allowed first");
        if ((m.role == "user") != (k % 2 == 0)) reject("Conversation roles must alternate user/assistant/user/assistant/...");
        if (m.role == "user") out += "[INST] " + (k == 0 && system ? *system + "\n\n" + m.content : m.content) + " [/INST]";
        else out += m.content + eos_ + (mistral_space_after_eos_ ? " " : "");
      }
      break;
    }
  }
  return out;
}

std::vector<int32_t> ChatTemplate::encode(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                                          const ChatOptions& opt) const {
  return tok.encode(render(messages, opt), false);
}

}  // namespace aloepri
