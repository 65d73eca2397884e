// safetensors: read (mmap; single file or sharded via model.safetensors.index.json) and
// write (streaming and sharded: tensors are declared first, then each goes straight to disk).
// Format: u64 LE header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[b,e]},
// "__metadata__": {str: str}}, then the data buffer; offsets are relative to the buffer.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "aloepri/core/dtype.h"
#include "aloepri/core/mmap.h"
#include "aloepri/core/tensor.h"

namespace aloepri {

class AtomicFile;

// A tensor as stored: a view into a mapped file (valid while its reader lives).
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // the shard it lives in (for error messages)

  int64_t numel() const;
  Tensor to_f32() const;                    // converts F32/F16/BF16/F64
  void to_f32(float* dst) const;            // into a caller buffer of numel() floats
};

class SafetensorsReader {
 public:
  // path: a .safetensors file, a model.safetensors.index.json, or a directory holding either.
  explicit SafetensorsReader(const std::string& path);
  bool has(const std::string& name) const;
  const TensorView& get(const std::string& name) const;  // throws Error naming the tensor
  std::vector<std::string> names() const;                 // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::vector<std::string> files() const;                 // shard paths
  uint64_t total_bytes() const;

 private:
  void open_file(const std::string& file);
  std::vector<std::unique_ptr<MappedFile>> maps_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  size_t nbytes() const;
};

// Streaming writer. Usage: declare every tensor with add(), then call write() for each, in the
// declared order, with data already in the declared dtype (or write_f32 to convert), then
// finish(). Output goes to <dir>/model.safetensors, or to model-0000i-of-0000n.safetensors plus
// model.safetensors.index.json when the total exceeds max_shard_bytes. Files are written under
// temporary names and renamed by finish(); an unfinished writer leaves nothing behind (and
// removes <dir> again if it created it). Existing outputs are refused (kExitOutputExists).
// Memory stays bounded: only the header of the shard being written is held, never its data.
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::string dir, uint64_t max_shard_bytes = 0 /* 0 = one file */,
                    std::map<std::string, std::string> metadata = {{"format", "pt"}});
  ~SafetensorsWriter();
  void add(const TensorSpec& spec);
  void write(const std::string& name, const void* data, size_t nbytes);
  void write_f32(const std::string& name, const float* data, size_t numel);  // converts to spec dtype
  void finish();
  // Paths of the final shard files (valid after the first write or finish); the index, when
  // sharded, is <dir>/model.safetensors.index.json.
  std::vector<std::string> files() const;

 private:
  AtomicFile& begin_tensor(const std::string& name, size_t nbytes);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aloepri
