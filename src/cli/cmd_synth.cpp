// `aloepri synth`: write a randomly initialised HF checkpoint (llama / mistral / qwen2 / qwen3 /
// qwen3moe / deepseek_v2 / deepseek_v3)
// with a real tokenizer, for tests and benchmarks. Deterministic for a given --seed.
#include <iostream>
#include <memory>

#include "aloepri/core/error.h"
#include "aloepri/engine/synth.h"
#include "command.h"

namespace {

struct Options {
  std::string arch, preset = "tiny", vocab_from, dtype = "f32", out, rope_scaling;
  int64_t hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0;
  int64_t experts = 0, experts_per_tok = 0, moe_ffn = 0, q_lora = -1;
  bool no_norm_topk = false;
  int64_t max_position = 4096;
  double rope_theta = 0, rope_factor = 8.0;
  bool tie = false, no_tie = false, force = false;
  uint64_t seed = 0;
  uint64_t shard_mb = 0;
};

int run(const Options& o) {
  using namespace aloepri;
  SynthOptions s;
  if (o.arch == "llama") s.family = Family::Llama;
  else if (o.arch == "mistral") s.family = Family::Mistral;
  else if (o.arch == "qwen2") s.family = Family::Qwen2;
  else if (o.arch == "qwen3") s.family = Family::Qwen3;
  else if (o.arch == "qwen3moe") s.family = Family::Qwen3Moe;
  else if (o.arch == "deepseek_v2") s.family = Family::DeepseekV2;
  else if (o.arch == "deepseek_v3") s.family = Family::DeepseekV3;
  else throw Error("--arch", "unknown architecture '" + o.arch +
                                 "' (supported: llama, mistral, qwen2, qwen3, qwen3moe, deepseek_v2, deepseek_v3)",
                   kExitUsage);
  s.preset = o.preset;
  auto set = [](std::optional<int64_t>& dst, int64_t v, const char* flag) {
    if (v == 0) return;
    if (v < 0) throw Error(flag, "must be positive", kExitUsage);
    dst = v;
  };
  set(s.hidden, o.hidden, "--hidden");
  set(s.layers, o.layers, "--layers");
  set(s.heads, o.heads, "--heads");
  set(s.kv_heads, o.kv_heads, "--kv-heads");
  set(s.head_dim, o.head_dim, "--head-dim");
  set(s.ffn, o.ffn, "--ffn");
  set(s.experts, o.experts, "--experts");
  set(s.experts_per_tok, o.experts_per_tok, "--experts-per-tok");
  set(s.moe_ffn, o.moe_ffn, "--moe-ffn");
  if (o.no_norm_topk) s.norm_topk_prob = false;
  if (o.q_lora >= 0) s.q_lora = o.q_lora;
  if (o.tie && o.no_tie) throw Error("--tie", "conflicts with --no-tie", kExitUsage);
  if (o.tie) s.tie = true;
  if (o.no_tie) s.tie = false;
  if (o.rope_theta > 0) s.rope_theta = o.rope_theta;
  s.rope_scaling = o.rope_scaling == "none" ? "" : o.rope_scaling;
  s.rope_factor = o.rope_factor;
  s.max_position_embeddings = o.max_position;
  s.vocab_dir = o.vocab_from.empty() ? std::string(ALOEPRI_SOURCE_DIR) + "/vocab/llama2" : o.vocab_from;
  if (o.dtype == "f32") s.dtype = DType::F32;
  else if (o.dtype == "bf16") s.dtype = DType::BF16;
  else if (o.dtype == "f16") s.dtype = DType::F16;
  else throw Error("--dtype", "unknown dtype '" + o.dtype + "' (supported: f32, bf16, f16)", kExitUsage);
  s.seed = o.seed;
  s.max_shard_bytes = o.shard_mb * (uint64_t(1) << 20);
  synthesize(s, o.out, o.force);
  const ModelConfig c = synth_config(s);
  std::cerr << "wrote " << o.out << ": " << o.arch << " d=" << c.hidden_size << " layers=" << c.num_hidden_layers
            << " heads=" << c.num_attention_heads << "/" << c.num_key_value_heads << " head_dim=" << c.head_dim
            << " ffn=" << c.intermediate_size;
  if (c.is_moe())
    std::cerr << " experts=" << c.num_experts << "/" << c.num_experts_per_tok << " expert_ffn=" << c.moe_intermediate_size
              << (c.norm_topk_prob ? " norm_topk" : "");
  std::cerr << " vocab=" << c.vocab_size
            << (c.tie_word_embeddings ? " tied" : " untied") << " " << o.dtype << ", "
            << c.parameter_count() << " parameters\n";
  return 0;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("--arch", o->arch, "llama | mistral | qwen2 | qwen3 | qwen3moe | deepseek_v2 | deepseek_v3")->required();
  sub.add_option("--preset", o->preset, "tiny (d=64, 2 layers) | small (d=256, 4 layers)")->capture_default_str();
  sub.add_option("--hidden", o->hidden, "Hidden size (overrides the preset)");
  sub.add_option("--layers", o->layers, "Number of layers");
  sub.add_option("--heads", o->heads, "Attention heads");
  sub.add_option("--kv-heads", o->kv_heads, "Key/value heads (GQA when fewer than --heads)");
  sub.add_option("--head-dim", o->head_dim, "Head dimension (default: hidden / heads when either is given)");
  sub.add_option("--ffn", o->ffn, "MLP intermediate size");
  sub.add_option("--experts", o->experts, "qwen3moe / deepseek: experts per layer (tiny 8, small 16)");
  sub.add_option("--experts-per-tok", o->experts_per_tok, "qwen3moe / deepseek: experts each token uses (tiny 2, small 4)");
  sub.add_option("--moe-ffn", o->moe_ffn, "qwen3moe / deepseek: expert intermediate size (tiny 32, small 128)");
  sub.add_flag("--no-norm-topk", o->no_norm_topk, "qwen3moe / deepseek: norm_topk_prob false (top-k weights not renormalised)");
  sub.add_option("--q-lora", o->q_lora, "deepseek: query latent rank (tiny 48, small 192; 0: q_proj from the residual, as V2-Lite)");
  sub.add_option("--vocab-from", o->vocab_from,
                 "Directory with tokenizer.json + tokenizer_config.json (default: vocab/llama2)");
  sub.add_flag("--tie", o->tie, "Tie the output head to the embedding (default for qwen2/qwen3)");
  sub.add_flag("--no-tie", o->no_tie, "Separate lm_head (default for llama/mistral)");
  sub.add_option("--dtype", o->dtype, "f32 | bf16 | f16")->capture_default_str();
  sub.add_option("--rope-theta", o->rope_theta, "RoPE base (default 10000 for llama, 1e6 otherwise)");
  sub.add_option("--rope-scaling", o->rope_scaling,
                 "none | llama3 (low 1, high 4, original 8192) | linear | yarn (deepseek only: DeepSeek's\n"
                 "released settings, original 4096, betas 32/1, mscale = mscale_all_dim 0.707 on V2, 1 on V3;\n"
                 "e.g. --rope-factor 40 as both releases)");
  sub.add_option("--rope-factor", o->rope_factor, "Factor for --rope-scaling")->capture_default_str();
  sub.add_option("--max-position", o->max_position, "max_position_embeddings")->capture_default_str();
  sub.add_option("--shard-mb", o->shard_mb, "Split model.safetensors into shards of at most this many MiB (0: one file)");
  sub.add_option("--seed", o->seed, "Integer seed (same seed, same weights)")->required();
  sub.add_option("--out", o->out, "Output directory (must not exist)")->required();
  sub.add_flag("--force", o->force, "Replace an existing output directory");
  return [o] { return run(*o); };
}

}  // namespace

ALOEPRI_COMMAND(synth, "synth", 60, "Write a randomly initialised HF checkpoint (for tests and benchmarks)", setup);
