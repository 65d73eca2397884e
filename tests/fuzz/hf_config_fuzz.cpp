// libFuzzer target: arbitrary bytes as config.json. Parsing must end in a valid ModelConfig or
// an aloepri::Error; a config that parses must survive to_json -> from_json unchanged.
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/formats/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    aloepri::ModelConfig c = aloepri::ModelConfig::from_json(j);
    // Keep parameter_count's loops bounded on absurd dimensions.
    if (c.num_hidden_layers <= 4096) (void)c.parameter_count();
    aloepri::ModelConfig d = aloepri::ModelConfig::from_json(c.to_json());
    if (d.family != c.family || d.hidden_size != c.hidden_size || d.head_dim != c.head_dim ||
        d.num_key_value_heads != c.num_key_value_heads || d.tie_word_embeddings != c.tie_word_embeddings ||
        d.attention_bias != c.attention_bias || d.rope_scaling.type != c.rope_scaling.type ||
        d.eos_token_id != c.eos_token_id || d.vocab_size != c.vocab_size)
      __builtin_trap();
  } catch (const aloepri::Error&) {
  }
  return 0;
}
