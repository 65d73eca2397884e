// `aloepri convert MODEL --gguf OUT.gguf`: HF checkpoint (plain or obfuscated) -> GGUF for llama.cpp.
#include <iostream>
#include <memory>

#include "aloepri/core/error.h"
#include "aloepri/export/gguf_export.h"
#include "aloepri/formats/gguf_quant.h"
#include "aloepri/model/model.h"
#include "command.h"

namespace {

struct Options {
  std::string model, gguf, dtype = "f16", name, tokenizer, arch, tokenizer_pre;
  bool force = false, opaque_vocab = false;
};

int run(const Options& o) {
  using namespace aloepri;
  const auto dt = gguf::parse_gguf_dtype(o.dtype);
  if (!dt) throw Error("--dtype", "unknown dtype '" + o.dtype + "' (supported: f32, f16, bf16, q8_0, q4_0)", kExitUsage);
  // Fail on an existing output before loading anything.
  refuse_existing(o.gguf, o.force);
  HFModel model(o.model);
  GGUFExportOptions opt;
  opt.overwrite = o.force;
  opt.name = o.name;
  opt.tokenizer_dir = o.tokenizer;
  opt.arch = o.arch;
  opt.tokenizer_pre = o.tokenizer_pre;
  opt.opaque_vocab = o.opaque_vocab;
  GGUFExportResult r = export_gguf(model, o.gguf, *dt, opt);
  std::cerr << "wrote " << o.gguf << ": arch " << r.arch << ", " << r.n_tensors << " tensors, " << o.dtype
            << ", vocab " << r.n_vocab << " (tokenizer " << r.tokenizer_model << "/" << r.tokenizer_pre;
  if (!o.opaque_vocab) std::cerr << ", " << r.n_tokenizer_tokens << " tokenizer ids";
  std::cerr << "), " << r.bytes_out / (1 << 20) << " MiB\n";
  return 0;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Options>();
  sub.add_option("MODEL", o->model, "HF checkpoint directory (config.json, *.safetensors, tokenizer.json)")
      ->required();
  sub.add_option("--gguf", o->gguf, "Output GGUF file (written atomically)")->required();
  sub.add_option("--dtype", o->dtype, "Matrix type: f32 | f16 | bf16 | q8_0 | q4_0 (norms and biases stay f32; q4_0 keeps\n"
                  "the output head q8_0; rows not a multiple of 32 stay f16)")
      ->capture_default_str();
  sub.add_flag("--force", o->force, "Replace an existing output file");
  sub.add_option("--name", o->name, "general.name (default: the model directory's name)");
  sub.add_option("--tokenizer", o->tokenizer,
                 "Directory with tokenizer.json + tokenizer_config.json (default: MODEL)");
  sub.add_option("--arch", o->arch,
                 "Force the llama.cpp architecture: 'llama' (default: llama/mistral -> llama, qwen2 -> "
                 "qwen2, qwen3 -> qwen3, qwen3_moe -> qwen3moe, deepseek_v2/v3 -> deepseek2)");
  sub.add_option("--tokenizer-pre", o->tokenizer_pre,
                 "llama.cpp pre-tokenizer name (default: detected; 'qwen2', 'llama-bpe', 'gpt-2')");
  sub.add_flag("--opaque-vocab", o->opaque_vocab,
               "For obfuscated models: placeholder tokens [T{i}] instead of the (now meaningless) real\n"
               "vocabulary, bos/eos/pad ids from config.json (the permuted ids); no tokenizer needed");
  sub.footer(
      "Writes GGUF v3 for llama.cpp, one tensor at a time (memory stays bounded):\n"
      "  * llama / mistral go out as arch 'llama' with Q/K rows permuted to llama.cpp's rotary layout;\n"
      "    qwen2 as 'qwen2' (or 'llama' when hidden_size != heads * head_dim); qwen3 as 'qwen3'; qwen3_moe as 'qwen3moe';\n"
      "    deepseek_v2 / deepseek_v3 as 'deepseek2' (absorbed MLA: kv_b_proj split into attn_k_b / attn_v_b;\n"
      "    YaRN rope scaling with mscale == mscale_all_dim, as every released checkpoint has it).\n"
      "  * attention.key_length / value_length are always written, so obfuscated models whose\n"
      "    hidden size differs from heads * head_dim load correctly; output.weight is always written.\n"
      "  * The vocabulary comes from tokenizer.json: SentencePiece-style BPE (Llama-2, Mistral) as\n"
      "    tokenizer 'llama' with scores and byte tokens, byte-level BPE (Llama-3, Qwen) as 'gpt2' with\n"
      "    merges; ids past the tokenizer up to vocab_size become [PAD{i}] placeholders.\n"
      "  * q8_0 / q4_0: ggml's block formats, byte-identical to llama-quantize's reference quantizer\n"
      "    (llama-quantize makes the head Q6_K for q4_0; aloepri writes it Q8_0).\n"
      "  * Obfuscated models: use --opaque-vocab. Their token ids are secretly permuted, and llama.cpp\n"
      "    reads meaning into token text (e.g. '<|im_end|>' ends generation wherever it sits).\n"
      "Example:\n"
      "  aloepri convert models/qwen2-obf --gguf qwen2-obf.f16.gguf --dtype f16\n"
      "Exit codes: 0 ok, 2 bad command line, 3 unsupported/malformed model or tokenizer,\n"
      "  4 output exists (use --force), 1 I/O failure.");
  return [o] { return run(*o); };
}

}  // namespace
ALOEPRI_COMMAND(convert, "convert", 50, "Convert an HF checkpoint to GGUF for llama.cpp", setup);
