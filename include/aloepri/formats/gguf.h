// GGUF v3 (the llama.cpp model format): a streaming writer and a validating mmap reader.
//
// Layout (little endian): "GGUF" u32 version=3, u64 tensor_count, u64 kv_count; kv_count
// metadata pairs (key string, u32 value type, value); tensor_count tensor infos (name string,
// u32 n_dims, u64 ne[n_dims] listed fastest-first, u32 ggml type, u64 offset relative to the data
// section); zero padding to `general.alignment` (default 32); then the data section, where every
// tensor starts at an aligned offset. Strings are u64 length + bytes (no terminator). Arrays are
// u32 element type + u64 count + elements.
//
// ne[0] is the contiguous dimension: an HF nn.Linear weight (out x in, row-major) is stored with
// ne = {in, out}.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "aloepri/core/mmap.h"
#include "aloepri/core/output.h"

namespace aloepri::gguf {

inline constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
inline constexpr uint32_t kVersion = 3;
inline constexpr uint32_t kDefaultAlignment = 32;

enum class ValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
std::string value_type_name(ValueType t);  // "UINT32", "ARRAY", ...

// ggml tensor types. The writer emits F32/F16/BF16; the reader also knows the block layout of the
// common quantized types so it can validate sizes of files produced elsewhere.
enum class GGMLType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30,
};
bool ggml_type_known(uint32_t t);
std::string ggml_type_name(GGMLType t);  // "F32", "F16", "BF16", "Q4_0", ...
int64_t ggml_block_size(GGMLType t);     // elements per block (1 for plain types)
size_t ggml_type_size(GGMLType t);       // bytes per block
// Bytes of a tensor with these dims (ne[0] must be a multiple of the block size); throws Error
// naming `where` on overflow or a bad ne[0].
uint64_t ggml_nbytes(GGMLType t, const std::vector<int64_t>& ne, const std::string& where = "");

// llama.cpp token types (tokenizer.ggml.token_type).
enum TokenType : int32_t {
  kTokNormal = 1, kTokUnknown = 2, kTokControl = 3, kTokUserDefined = 4, kTokUnused = 5, kTokByte = 6,
};

// llama.cpp general.file_type values for the types we write.
enum FileType : uint32_t { kFileAllF32 = 0, kFileMostlyF16 = 1, kFileMostlyBF16 = 32 };

// One metadata value: a scalar or a homogeneous array (nested arrays are not supported, as in
// llama.cpp). Integers are held widened; the declared GGUF type decides the on-disk width.
class Value {
 public:
  using Storage = std::variant<std::vector<uint64_t>,    // UINT8/16/32/64, BOOL
                               std::vector<int64_t>,     // INT8/16/32/64
                               std::vector<double>,      // FLOAT32/64
                               std::vector<std::string>  // STRING
                               >;
  Value() = default;

  static Value u8(uint8_t v) { return scalar(ValueType::UINT8, std::vector<uint64_t>{v}); }
  static Value i8(int8_t v) { return scalar(ValueType::INT8, std::vector<int64_t>{v}); }
  static Value u16(uint16_t v) { return scalar(ValueType::UINT16, std::vector<uint64_t>{v}); }
  static Value i16(int16_t v) { return scalar(ValueType::INT16, std::vector<int64_t>{v}); }
  static Value u32(uint32_t v) { return scalar(ValueType::UINT32, std::vector<uint64_t>{v}); }
  static Value i32(int32_t v) { return scalar(ValueType::INT32, std::vector<int64_t>{v}); }
  static Value u64(uint64_t v) { return scalar(ValueType::UINT64, std::vector<uint64_t>{v}); }
  static Value i64(int64_t v) { return scalar(ValueType::INT64, std::vector<int64_t>{v}); }
  static Value f32(float v) { return scalar(ValueType::FLOAT32, std::vector<double>{v}); }
  static Value f64(double v) { return scalar(ValueType::FLOAT64, std::vector<double>{v}); }
  static Value boolean(bool v) { return scalar(ValueType::BOOL, std::vector<uint64_t>{v ? 1u : 0u}); }
  static Value string(std::string v) { return scalar(ValueType::STRING, std::vector<std::string>{std::move(v)}); }

  // Arrays: elem is the element type; values are range-checked against it.
  static Value array(ValueType elem, std::vector<uint64_t> v);
  static Value array(ValueType elem, std::vector<int64_t> v);
  static Value array(ValueType elem, std::vector<double> v);
  static Value array_strings(std::vector<std::string> v);
  static Value array_i32(const std::vector<int32_t>& v);
  static Value array_f32(const std::vector<float>& v);

  ValueType type() const { return type_; }
  bool is_array() const { return type_ == ValueType::ARRAY; }
  ValueType elem_type() const { return is_array() ? elem_ : type_; }
  size_t size() const;  // 1 for a scalar

  // Scalar accessors (throw Error naming `where` if the type does not fit).
  uint64_t as_u64(const std::string& where = "") const;  // any non-negative integer
  int64_t as_i64(const std::string& where = "") const;   // any integer that fits
  double as_f64(const std::string& where = "") const;    // float or integer
  bool as_bool(const std::string& where = "") const;
  const std::string& as_string(const std::string& where = "") const;

  // Array (or scalar) element storage.
  const std::vector<uint64_t>& uints() const { return std::get<0>(data_); }
  const std::vector<int64_t>& ints() const { return std::get<1>(data_); }
  const std::vector<double>& floats() const { return std::get<2>(data_); }
  const std::vector<std::string>& strings() const { return std::get<3>(data_); }
  const Storage& storage() const { return data_; }

  bool operator==(const Value& o) const = default;

  // Construction used by the reader.
  static Value make(ValueType type, ValueType elem, Storage data);

 private:
  static Value scalar(ValueType t, Storage s) { return make(t, t, std::move(s)); }
  ValueType type_ = ValueType::UINT32;
  ValueType elem_ = ValueType::UINT32;
  Storage data_;
};

using KV = std::pair<std::string, Value>;

// Streaming GGUF writer. Usage:
//   GGUFWriter w(path);  w.set(key, value)...;  w.add_tensor(name, ne, type)...;
//   then for each tensor in declared order: w.write_tensor(name, data, n)  (or begin_tensor(name),
//   write_data(...) any number of times, end_tensor());  finally w.finish().
// The header and tensor infos go out at the first tensor write; data are streamed straight to an
// AtomicFile, so memory stays bounded by what the caller passes in. Nothing appears at `path`
// unless finish() succeeds.
class GGUFWriter {
 public:
  explicit GGUFWriter(std::string path, bool overwrite = false, uint32_t alignment = kDefaultAlignment);
  ~GGUFWriter();
  GGUFWriter(const GGUFWriter&) = delete;
  GGUFWriter& operator=(const GGUFWriter&) = delete;

  // Metadata, kept in insertion order. A duplicate key is an error. `general.alignment` is written
  // automatically (first) unless set explicitly.
  void set(const std::string& key, Value v);
  bool has(const std::string& key) const;
  // Declare a tensor (ne fastest-first). Allowed only before the first data write.
  void add_tensor(const std::string& name, std::vector<int64_t> ne, GGMLType type);

  void write_tensor(const std::string& name, const void* data, size_t nbytes);
  void begin_tensor(const std::string& name);  // must be the next declared tensor
  void write_data(const void* data, size_t nbytes);
  void end_tensor();                           // checks the byte count
  void finish();                               // every tensor written; commit

  uint64_t bytes_written() const;
  const std::string& path() const { return path_; }

 private:
  void write_header();
  struct PendingTensor {
    std::string name;
    std::vector<int64_t> ne;
    GGMLType type;
    uint64_t nbytes, offset;
  };
  std::string path_;
  uint32_t alignment_;
  std::vector<KV> kvs_;
  std::vector<PendingTensor> tensors_;
  uint64_t data_size_ = 0;  // running size of the data section (with padding)
  std::unique_ptr<AtomicFile> out_;
  uint64_t data_start_ = 0;
  size_t next_ = 0;          // index of the next tensor to write
  bool in_tensor_ = false;
  uint64_t tensor_written_ = 0;
  bool finished_ = false;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // fastest-first
  GGMLType type;
  uint64_t offset = 0;      // relative to the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // into the mapping (valid while the reader lives)
  int64_t numel() const;
};

// Parses and validates a whole GGUF file (memory-mapped). Every structural problem — bad magic,
// unsupported version, truncated header / KV / string / array, absurd counts, unknown value or
// tensor types, duplicate keys or tensor names, misaligned or overlapping tensor data, data past
// the end of the file — throws Error("<file>: <what is wrong>").
class GGUFReader {
 public:
  explicit GGUFReader(const std::string& path);
  // Parse a buffer the caller keeps alive (fuzzing, tests). `name` is used in errors.
  GGUFReader(const uint8_t* data, size_t size, std::string name);

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  const std::string& path() const { return name_; }

  const std::vector<KV>& metadata() const { return kvs_; }
  bool has(const std::string& key) const;
  const Value& get(const std::string& key) const;  // throws Error naming the key

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  bool has_tensor(const std::string& name) const;
  const TensorInfo& tensor(const std::string& name) const;  // throws Error naming the tensor
  // Element values of an F32/F16/BF16 tensor, converted to f32 (in storage order).
  std::vector<float> read_f32(const std::string& name) const;

 private:
  void parse(const uint8_t* p, size_t n);
  std::unique_ptr<MappedFile> map_;
  std::string name_;
  uint32_t version_ = 0, alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<KV> kvs_;
  std::vector<TensorInfo> tensors_;
};

}  // namespace aloepri::gguf
