// Element types of stored tensors and exact conversions between them.
// f32 -> f16 / bf16 round to nearest, ties to even; NaN stays NaN; overflow goes to inf.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace aloepri {

enum class DType { F32, F16, BF16, F64, I32, I64, U8, I8 };

size_t dtype_size(DType t);
// Names as safetensors spells them: "F32", "F16", "BF16", "F64", "I32", "I64", "U8", "I8".
std::string dtype_name(DType t);
std::optional<DType> dtype_from_name(const std::string& s);  // safetensors spelling
bool dtype_is_float(DType t);

uint16_t f32_to_f16(float x);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float x);
inline float bf16_to_f32(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// Convert n elements of type `from` at src into f32 at dst (float types only).
void convert_to_f32(DType from, const void* src, float* dst, size_t n);
// Convert n f32 values into type `to` at dst (float types only).
void convert_from_f32(DType to, const float* src, void* dst, size_t n);

}  // namespace aloepri
