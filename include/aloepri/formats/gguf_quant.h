// ggml's Q8_0 and Q4_0 block formats (what `llama-quantize` writes for those file types), so the
// GGUF exporter can write quantized models directly.
//
// Both use blocks of 32 consecutive values along a row (ne[0], the contiguous dimension) with one
// f16 scale d per block, rounded to nearest-even from the f32 scale:
//   Q8_0 (34 bytes): d = amax / 127; q[j] = round-half-away-from-zero(x[j] / d) as int8;
//                    value = q[j] * d.
//   Q4_0 (18 bytes): m = the value of largest magnitude (the first one on a tie), d = m / -8;
//                    q[j] = min(15, trunc(x[j] / d + 8.5)) in 0..15; value = (q[j] - 8) * d.
//                    Byte j (0..15) holds element j in its low nibble and element j + 16 in its
//                    high nibble.
// The division is a multiplication by the f32 inverse of the unrounded f32 scale, as in ggml's
// reference quantizers (the ones llama-quantize uses), so the bytes match llama.cpp's for the
// same f32 input. A block of zeros gets d = 0 and all codes 0 (Q8_0) or 8 (Q4_0).
//
// Tensor types (llama.cpp's conventions for these file types): only 2-D weight matrices are
// quantized; norms, biases and other 1-D tensors stay F32. Q8_0 files: every matrix Q8_0. Q4_0
// files: every matrix Q4_0 (token_embd included) except output.weight, which llama.cpp's
// quantizer makes Q6_K; we do not write k-quants and use Q8_0 there (the fallback llama.cpp
// itself uses for the output head when Q6_K does not fit). A matrix whose rows are not a multiple
// of 32 values (llama-quantize refuses those) is written F16 instead.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "aloepri/formats/gguf.h"

namespace aloepri::gguf {

inline constexpr int64_t kQK = 32;  // values per Q8_0 / Q4_0 block
inline constexpr uint32_t kQuantizationVersion = 2;  // general.quantization_version (GGML_QNT_VERSION)

// llama.cpp general.file_type values of the quantized file types.
enum QuantFileType : uint32_t { kFileMostlyQ4_0 = 2, kFileMostlyQ8_0 = 7 };

struct BlockQ8_0 {
  uint16_t d;      // f16 scale
  int8_t qs[kQK];  // codes
};
struct BlockQ4_0 {
  uint16_t d;           // f16 scale
  uint8_t qs[kQK / 2];  // low nibble: element j, high nibble: element j + 16
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 18 bytes");

// n must be a multiple of kQK (throws Error otherwise). Output: n / 32 blocks.
void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n);
void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n);
void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n);
void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n);

// Any of F32 / F16 / BF16 / Q8_0 / Q4_0: n values (one row or several whole rows) to the type's
// bytes (ggml_row_bytes(t, n) of them) and back.
bool ggml_type_writable(GGMLType t);
size_t ggml_row_bytes(GGMLType t, int64_t n);
void quantize_values(GGMLType t, const float* x, void* out, int64_t n);
void dequantize_values(GGMLType t, const void* in, float* y, int64_t n);

// "f32" | "f16" | "bf16" | "q8_0" | "q4_0" (case-insensitive) -> the GGUF matrix type; nullopt
// for anything else.
std::optional<GGMLType> parse_gguf_dtype(const std::string& s);
inline bool ggml_type_is_block_quant(GGMLType t) { return t == GGMLType::Q8_0 || t == GGMLType::Q4_0; }
// general.file_type for a file whose matrices are `matrix_type`.
uint32_t gguf_file_type_for(GGMLType matrix_type);

// The type a tensor gets in a file of matrix type `file_type` (rules above). `two_d` is whether
// it is a weight matrix; ne0 its row length.
GGMLType gguf_tensor_type(const std::string& name, bool two_d, int64_t ne0, GGMLType file_type);

// A tensor of any writable type, read back as f32 values (storage order).
std::vector<float> read_dequantized(const GGUFReader& r, const std::string& name);

}  // namespace aloepri::gguf
