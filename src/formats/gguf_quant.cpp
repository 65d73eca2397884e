// ggml Q8_0 / Q4_0 blocks (see include/aloepri/gguf_quant.h for the formats and the rules).
#include "aloepri/formats/gguf_quant.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include "aloepri/core/dtype.h"
#include "aloepri/core/error.h"

namespace aloepri::gguf {

namespace {

void require_blocks(int64_t n, const char* what) {
  require(n >= 0 && n % kQK == 0, what, "row of " + std::to_string(n) + " values is not a multiple of 32");
}

}  // namespace

void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n) {
  require_blocks(n, "quantize_row_q8_0");
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* v = x + b * kQK;
    float amax = 0.0f;
    for (int64_t j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    const float inv = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_f16(d);
    // std::round: halves away from zero, as C's roundf. |v * inv| <= 127 up to rounding, so
    // clamping only guards against the last ulp.
    for (int64_t j = 0; j < kQK; ++j)
      y[b].qs[j] = int8_t(std::clamp(std::round(v[j] * inv), -127.0f, 127.0f));
  }
}

void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n) {
  require_blocks(n, "quantize_row_q4_0");
  constexpr int64_t half = kQK / 2;
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* v = x + b * kQK;
    float amax = 0.0f, m = 0.0f;  // the signed value of largest magnitude (first on a tie)
    for (int64_t j = 0; j < kQK; ++j) {
      if (std::fabs(v[j]) > amax) {
        amax = std::fabs(v[j]);
        m = v[j];
      }
    }
    const float d = m / -8.0f;
    const float inv = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_f16(d);
    // v * inv lies in [-8, 8] (m maps to -8), so v * inv + 8.5 is in [0.5, 16.5]: truncation is
    // rounding to nearest (halves up) with 8 as zero; 16 (the largest value of the other sign,
    // when it equals |m|) is clamped to 15.
    auto code = [&](float t) { return uint8_t(std::min(15, std::max(0, int(t * inv + 8.5f)))); };
    for (int64_t j = 0; j < half; ++j)
      y[b].qs[j] = uint8_t(code(v[j]) | (code(v[j + half]) << 4));
  }
}

void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n) {
  require_blocks(n, "dequantize_row_q8_0");
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = f16_to_f32(x[b].d);
    for (int64_t j = 0; j < kQK; ++j) y[b * kQK + j] = float(x[b].qs[j]) * d;
  }
}

void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n) {
  require_blocks(n, "dequantize_row_q4_0");
  constexpr int64_t half = kQK / 2;
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = f16_to_f32(x[b].d);
    for (int64_t j = 0; j < half; ++j) {
      y[b * kQK + j] = float(int(x[b].qs[j] & 0x0F) - 8) * d;
      y[b * kQK + j + half] = float(int(x[b].qs[j] >> 4) - 8) * d;
    }
  }
}

bool ggml_type_writable(GGMLType t) {
  return t == GGMLType::F32 || t == GGMLType::F16 || t == GGMLType::BF16 || t == GGMLType::Q8_0 ||
         t == GGMLType::Q4_0;
}

size_t ggml_row_bytes(GGMLType t, int64_t n) {
  switch (t) {
    case GGMLType::F32: return size_t(n) * 4;
    case GGMLType::F16:
    case GGMLType::BF16: return size_t(n) * 2;
    case GGMLType::Q8_0: require_blocks(n, "Q8_0"); return size_t(n / kQK) * sizeof(BlockQ8_0);
    case GGMLType::Q4_0: require_blocks(n, "Q4_0"); return size_t(n / kQK) * sizeof(BlockQ4_0);
    default: throw Error("ggml_row_bytes", "type " + ggml_type_name(t) + " is not written by aloepri");
  }
}

void quantize_values(GGMLType t, const float* x, void* out, int64_t n) {
  switch (t) {
    case GGMLType::F32: convert_from_f32(DType::F32, x, out, size_t(n)); return;
    case GGMLType::F16: convert_from_f32(DType::F16, x, out, size_t(n)); return;
    case GGMLType::BF16: convert_from_f32(DType::BF16, x, out, size_t(n)); return;
    case GGMLType::Q8_0: quantize_row_q8_0(x, static_cast<BlockQ8_0*>(out), n); return;
    case GGMLType::Q4_0: quantize_row_q4_0(x, static_cast<BlockQ4_0*>(out), n); return;
    default: throw Error("quantize_values", "type " + ggml_type_name(t) + " is not written by aloepri");
  }
}

void dequantize_values(GGMLType t, const void* in, float* y, int64_t n) {
  switch (t) {
    case GGMLType::F32: convert_to_f32(DType::F32, in, y, size_t(n)); return;
    case GGMLType::F16: convert_to_f32(DType::F16, in, y, size_t(n)); return;
    case GGMLType::BF16: convert_to_f32(DType::BF16, in, y, size_t(n)); return;
    case GGMLType::Q8_0: dequantize_row_q8_0(static_cast<const BlockQ8_0*>(in), y, n); return;
    case GGMLType::Q4_0: dequantize_row_q4_0(static_cast<const BlockQ4_0*>(in), y, n); return;
    default: throw Error("dequantize_values", "type " + ggml_type_name(t) + " is not read by aloepri");
  }
}

std::optional<GGMLType> parse_gguf_dtype(const std::string& s) {
  std::string l;
  for (char c : s) l += char(std::tolower(static_cast<unsigned char>(c)));
  if (l == "f32") return GGMLType::F32;
  if (l == "f16") return GGMLType::F16;
  if (l == "bf16") return GGMLType::BF16;
  if (l == "q8_0") return GGMLType::Q8_0;
  if (l == "q4_0") return GGMLType::Q4_0;
  return std::nullopt;
}

uint32_t gguf_file_type_for(GGMLType t) {
  switch (t) {
    case GGMLType::F32: return kFileAllF32;
    case GGMLType::F16: return kFileMostlyF16;
    case GGMLType::BF16: return kFileMostlyBF16;
    case GGMLType::Q8_0: return kFileMostlyQ8_0;
    case GGMLType::Q4_0: return kFileMostlyQ4_0;
    default: throw Error("general.file_type", "no file type for matrices of type " + ggml_type_name(t));
  }
}

GGMLType gguf_tensor_type(const std::string& name, bool two_d, int64_t ne0, GGMLType file_type) {
  if (!two_d) return GGMLType::F32;
  if (!ggml_type_is_block_quant(file_type)) return file_type;
  GGMLType t = file_type;
  if (name == "output.weight" && file_type == GGMLType::Q4_0) t = GGMLType::Q8_0;
  // As llama.cpp's quantizer: the MoE router stays unquantized (a small error flips top-k choices).
  if (name.size() >= 19 && name.compare(name.size() - 19, 19, "ffn_gate_inp.weight") == 0) t = GGMLType::F32;
  if (ne0 % kQK != 0) t = GGMLType::F16;
  return t;
}

std::vector<float> read_dequantized(const GGUFReader& r, const std::string& name) {
  const TensorInfo& t = r.tensor(name);
  require(ggml_type_writable(t.type), r.path() + ": tensor '" + name + "'",
          "cannot dequantize type " + ggml_type_name(t.type));
  std::vector<float> out(size_t(t.numel()));
  dequantize_values(t.type, t.data, out.data(), t.numel());
  return out;
}

}  // namespace aloepri::gguf
