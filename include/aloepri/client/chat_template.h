// Chat templates of the supported model families, rendered in C++ (no Jinja engine): the family
// is chosen from tokenizer_config.json's chat_template string (or, when there is none, the
// tokenizer class), and each renderer reproduces that family's official template for
// system/user/assistant turns and the generation prompt. Tests compare the resulting ids with
// transformers.js apply_chat_template.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "aloepri/client/tokenizer.h"

namespace aloepri {

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant" (ChatML also: "tool")
  std::string content;
  std::optional<std::string> reasoning_content{};  // Qwen3 thinking, when given separately
};

struct ChatOptions {
  bool add_generation_prompt = true;
  std::optional<bool> enable_thinking;  // Qwen3: false adds an empty <think></think> block
};

enum class ChatFamily {
  kChatML,   // <|im_start|>role\n...<|im_end|> (Qwen2/2.5; Qwen3 with <think> handling)
  kLlama3,   // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
  kLlama2,   // <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] answer </s>
  kMistral,  // <s>[INST] ... [/INST]answer</s>
};

class ChatTemplate {
 public:
  // Detects the family from the tokenizer's config; throws Error for an unknown template.
  static ChatTemplate for_tokenizer(const Tokenizer& tok);
  ChatFamily family() const { return family_; }
  const char* family_name() const;
  // The prompt text; throws Error(kExitBadInput) for conversations the template rejects.
  std::string render(const std::vector<ChatMessage>& messages, const ChatOptions& opt = {}) const;
  // render() then encode without adding special tokens (what apply_chat_template(tokenize) does).
  std::vector<int32_t> encode(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                              const ChatOptions& opt = {}) const;

 private:
  ChatFamily family_ = ChatFamily::kChatML;
  std::string bos_, eos_;
  bool qwen3_think_ = false;          // template handles <think> (Qwen3)
  std::string default_system_;        // ChatML default system prompt (Qwen2.5), "" if none
  bool generation_prompt_always_ = false;  // template ignores add_generation_prompt (old Llama-3)
  bool mistral_space_after_eos_ = false;   // Mistral v0.1: eos_token + ' '
};

}  // namespace aloepri
