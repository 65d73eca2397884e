// safetensors reader and streaming writer.
//
// The rules checked here are the format's own (huggingface/safetensors README and reference
// implementation): an 8-byte little-endian header length N (at most 100 MiB); N bytes of UTF-8
// JSON starting with '{', optionally padded with spaces; keys are tensor names plus an optional
// "__metadata__" string->string map; duplicate keys are not allowed; each tensor's
// data_offsets [begin, end) are relative to the data buffer and their span equals
// numel * dtype size; the byte buffer must be entirely indexed (no holes, no overlaps, nothing
// after the last tensor). A file that breaks any rule is refused with an Error naming the file
// and the tensor or field, never read out of bounds.
#include "aloepri/formats/safetensors.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/core/output.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace aloepri {

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // the reference implementation's limit
const char* kIndexName = "model.safetensors.index.json";
const char* kSingleName = "model.safetensors";

std::string qname(const std::string& s) { return "'" + s + "'"; }

// numel * size with overflow checks; nullopt when it does not fit in 64 bits.
std::optional<uint64_t> checked_nbytes(const std::vector<int64_t>& shape, size_t elem) {
  uint64_t n = elem;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > UINT64_MAX / uint64_t(d)) return std::nullopt;
    n *= uint64_t(d);
  }
  return n;
}

// Parse JSON refusing duplicate object keys at any depth (nlohmann would silently keep the
// last one, which is the classic way to make two readers disagree about a file).
json parse_json_strict(const char* begin, const char* end, const std::string& file,
                       const std::string& what) {
  std::vector<std::set<std::string>> keys;
  std::string dup;
  json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == json::parse_event_t::key && !keys.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second && dup.empty()) dup = k;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    throw Error(file, "invalid JSON " + what + ": " + e.what());
  }
  if (!dup.empty()) throw Error(file, "duplicate key " + qname(dup) + " in " + what);
  return j;
}

std::string shapes_and_dtype(DType t, const std::vector<int64_t>& shape) {
  return dtype_name(t) + " " + shape_to_string(shape);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// TensorView

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor TensorView::to_f32() const {
  Tensor t(shape);
  to_f32(t.ptr());
  return t;
}

void TensorView::to_f32(float* dst) const {
  if (!dtype_is_float(dtype))
    throw Error(file, "tensor " + qname(name) + " has dtype " + dtype_name(dtype) +
                          ", not a floating-point type");
  const size_t n = size_t(numel());
  if (n == 0) return;  // an empty tensor: dst may be null
  const size_t es = dtype_size(dtype);
  // Tensors follow each other without padding, so an F32 after an odd-length F16 tensor is
  // misaligned; convert through an aligned bounce buffer then (the converters cast pointers).
  if (reinterpret_cast<uintptr_t>(data) % es == 0) {
    convert_to_f32(dtype, data, dst, n);
    return;
  }
  constexpr size_t kChunk = 1 << 14;
  alignas(8) uint8_t buf[kChunk * 8];
  for (size_t i = 0; i < n; i += kChunk) {
    size_t m = std::min(kChunk, n - i);
    std::memcpy(buf, data + i * es, m * es);
    convert_to_f32(dtype, buf, dst + i, m);
  }
}

// ---------------------------------------------------------------------------------------------
// Reader

SafetensorsReader::SafetensorsReader(const std::string& path) {
  std::error_code ec;
  std::string target = path;
  if (fs::is_directory(path, ec)) {
    fs::path d(path);
    if (fs::exists(d / kIndexName)) {
      target = (d / kIndexName).string();
    } else if (fs::exists(d / kSingleName)) {
      target = (d / kSingleName).string();
    } else {
      // A directory with exactly one *.safetensors file (e.g. saved under another name).
      std::vector<std::string> found;
      for (auto& e : fs::directory_iterator(d, ec))
        if (e.path().extension() == ".safetensors") found.push_back(e.path().string());
      if (found.size() != 1)
        throw Error(path, found.empty()
                              ? std::string("no ") + kSingleName + " or " + kIndexName + " found"
                              : std::string("several .safetensors files and no ") + kIndexName);
      target = found[0];
    }
  } else if (!fs::exists(path, ec)) {
    throw Error(path, "no such file or directory");
  }

  if (fs::path(target).filename() != kIndexName &&
      fs::path(target).extension() != ".json") {
    open_file(target);
    return;
  }

  // Sharded: the index maps every tensor name to the shard holding it.
  std::string text = read_file(target);
  json idx = parse_json_strict(text.data(), text.data() + text.size(), target, "index");
  require(idx.is_object(), target, "index is not a JSON object");
  require(idx.contains("weight_map"), target, "missing required field 'weight_map'");
  const json& wm = idx["weight_map"];
  require(wm.is_object(), target, "'weight_map' is not an object");
  require(!wm.empty(), target, "'weight_map' is empty");
  fs::path base = fs::path(target).parent_path();
  std::map<std::string, std::vector<std::string>> by_shard;
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    require(it.value().is_string(), target,
            "weight_map entry for tensor " + qname(it.key()) + " is not a file name");
    std::string shard = it.value().get<std::string>();
    fs::path sp(shard);
    // Shards live next to the index; anything else would let an index read arbitrary files.
    require(!shard.empty() && sp.is_relative() && sp.filename() == sp && shard != ".." &&
                shard != ".",
            target, "weight_map entry for tensor " + qname(it.key()) +
                        " names shard " + qname(shard) + ", which is not a plain file name");
    by_shard[shard].push_back(it.key());
  }
  for (auto& [shard, tensor_names] : by_shard) {
    fs::path sp = base / shard;
    if (!fs::exists(sp, ec))
      throw Error(target, "shard " + qname(shard) + " (holding tensor " +
                              qname(tensor_names.front()) + ") does not exist");
    open_file(sp.string());
    for (auto& n : tensor_names) {
      auto t = tensors_.find(n);
      if (t == tensors_.end() || t->second.file != sp.string())
        throw Error(target, "tensor " + qname(n) + " is mapped to shard " + qname(shard) +
                                " but that shard does not contain it");
    }
  }
  for (auto& [name, view] : tensors_)
    if (!wm.contains(name))
      throw Error(view.file, "tensor " + qname(name) + " is not listed in " + target);
}

void SafetensorsReader::open_file(const std::string& file) {
  auto map = std::make_unique<MappedFile>(file);
  const uint8_t* p = map->data();
  const uint64_t size = map->size();
  if (size < 8)
    throw Error(file, "truncated: " + std::to_string(size) +
                          " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | p[i];  // little-endian
  if (n > kMaxHeader)
    throw Error(file, "header length " + std::to_string(n) + " exceeds the 100 MiB limit");
  if (n > size - 8)
    throw Error(file, "truncated: header length " + std::to_string(n) + " runs past the end of the " +
                          std::to_string(size) + "-byte file");
  if (n < 2 || p[8] != '{') throw Error(file, "header does not start with '{'");
  const char* hb = reinterpret_cast<const char*>(p + 8);
  json h = parse_json_strict(hb, hb + n, file, "header");
  require(h.is_object(), file, "header is not a JSON object");

  const uint64_t data_size = size - 8 - n;
  const uint8_t* data = p + 8 + n;
  struct Span {
    uint64_t b, e;
    std::string name;
  };
  std::vector<Span> spans;
  bool first_file = maps_.empty();
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      require(v.is_object(), file, "'__metadata__' is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        require(m.value().is_string(), file,
                "'__metadata__' value for " + qname(m.key()) + " is not a string");
        if (first_file) metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor " + qname(name);
    require(v.is_object(), file, where + ": entry is not an object");
    require(v.contains("dtype") && v["dtype"].is_string(), file, where + ": missing or non-string 'dtype'");
    require(v.contains("shape") && v["shape"].is_array(), file, where + ": missing or non-array 'shape'");
    require(v.contains("data_offsets") && v["data_offsets"].is_array() && v["data_offsets"].size() == 2,
            file, where + ": 'data_offsets' must be an array of two integers");
    std::string dn = v["dtype"].get<std::string>();
    auto dt = dtype_from_name(dn);
    require(dt.has_value(), file,
            where + ": unsupported dtype " + qname(dn) + " (supported: F32, F16, BF16, F64, I32, I64, U8, I8)");
    std::vector<int64_t> shape;
    for (auto& d : v["shape"]) {
      require(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), file,
              where + ": shape entries must be non-negative integers");
      require(d.get<uint64_t>() <= uint64_t(INT64_MAX), file, where + ": shape entry too large");
      shape.push_back(d.get<int64_t>());
    }
    for (auto& o : v["data_offsets"])
      require(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0), file,
              where + ": data_offsets must be non-negative integers");
    uint64_t b = v["data_offsets"][0].get<uint64_t>(), e = v["data_offsets"][1].get<uint64_t>();
    require(b <= e, file, where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                              "] end before they begin");
    auto need = checked_nbytes(shape, dtype_size(*dt));
    require(need.has_value(), file, where + ": shape " + shape_to_string(shape) + " overflows");
    require(e - b == *need, file,
            where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "] span " +
                std::to_string(e - b) + " bytes but " + shapes_and_dtype(*dt, shape) + " needs " +
                std::to_string(*need));
    require(e <= data_size, file,
            where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                "] run past the end of the " + std::to_string(data_size) +
                "-byte data buffer (truncated file?)");
    if (tensors_.count(name))
      throw Error(file, where + " is also stored in " + tensors_.at(name).file);
    TensorView tv;
    tv.name = name;
    tv.dtype = *dt;
    tv.shape = std::move(shape);
    tv.data = data + b;
    tv.nbytes = size_t(e - b);
    tv.file = file;
    spans.push_back({b, e, name});
    tensors_.emplace(name, std::move(tv));
  }

  // The buffer must be tiled exactly: sorted by offset, each tensor starts where the previous
  // one ended, the first at 0 and the last at the end of the file.
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.b != b.b ? a.b < b.b : a.e < b.e; });
  uint64_t pos = 0;
  std::string prev;
  for (auto& s : spans) {
    if (s.b < pos)
      throw Error(file, "tensor " + qname(s.name) + " overlaps tensor " + qname(prev) +
                            " in the data buffer (bytes " + std::to_string(s.b) + ".." +
                            std::to_string(pos) + ")");
    if (s.b > pos)
      throw Error(file, "bytes " + std::to_string(pos) + ".." + std::to_string(s.b) +
                            " of the data buffer belong to no tensor (a hole before tensor " +
                            qname(s.name) + ")");
    pos = s.e;
    prev = s.name;
  }
  if (pos != data_size)
    throw Error(file, "bytes " + std::to_string(pos) + ".." + std::to_string(data_size) +
                          " of the data buffer belong to no tensor (trailing data)");
  maps_.push_back(std::move(map));
}

bool SafetensorsReader::has(const std::string& name) const { return tensors_.count(name) > 0; }

const TensorView& SafetensorsReader::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end())
    throw Error("tensor " + qname(name),
                "not found in " + (maps_.empty() ? std::string("checkpoint") : maps_[0]->path()));
  return it->second;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> v;
  for (auto& [k, _] : tensors_) v.push_back(k);
  return v;
}

std::vector<std::string> SafetensorsReader::files() const {
  std::vector<std::string> v;
  for (auto& m : maps_) v.push_back(m->path());
  return v;
}

uint64_t SafetensorsReader::total_bytes() const {
  uint64_t n = 0;
  for (auto& [_, t] : tensors_) n += t.nbytes;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Writer

size_t TensorSpec::nbytes() const {
  auto n = checked_nbytes(shape, dtype_size(dtype));
  if (!n) throw Error("tensor " + qname(name), "shape " + shape_to_string(shape) + " overflows");
  return size_t(*n);
}

struct SafetensorsWriter::Impl {
  std::string dir;
  uint64_t max_shard_bytes;
  std::map<std::string, std::string> metadata;
  bool created_dir = false;

  std::vector<TensorSpec> specs;
  std::vector<uint64_t> sizes;
  std::map<std::string, size_t> index;  // name -> position in specs

  struct Shard {
    std::string name;
    size_t first = 0, last = 0;  // tensor range [first, last)
    std::unique_ptr<AtomicFile> file;
  };
  std::vector<Shard> shards;
  bool planned = false, finished = false;
  size_t next = 0;  // the next tensor to write
  std::vector<float> bounce;  // write_f32 conversion buffer (bounded)

  std::string path(const std::string& name) const { return (fs::path(dir) / name).string(); }
  bool sharded() const { return shards.size() > 1; }

  // Fix the shard boundaries once every tensor is declared: greedy, in declared order, a new
  // shard whenever the next tensor would push the current one past max_shard_bytes.
  void plan() {
    if (planned) return;
    planned = true;
    std::vector<std::pair<size_t, size_t>> ranges;
    size_t start = 0;
    uint64_t cur = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      if (max_shard_bytes && i > start && cur + sizes[i] > max_shard_bytes) {
        ranges.push_back({start, i});
        start = i;
        cur = 0;
      }
      cur += sizes[i];
    }
    ranges.push_back({start, specs.size()});
    for (size_t s = 0; s < ranges.size(); ++s) {
      Shard sh;
      if (ranges.size() == 1) {
        sh.name = kSingleName;
      } else {
        char buf[64];
        std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", s + 1, ranges.size());
        sh.name = buf;
      }
      sh.first = ranges[s].first;
      sh.last = ranges[s].second;
      shards.push_back(std::move(sh));
    }
    // Refuse before writing gigabytes, not at the end.
    for (auto& sh : shards) refuse_existing(path(sh.name), false);
    if (sharded()) refuse_existing(path(kIndexName), false);
  }

  Shard& shard_of(size_t i) {
    for (auto& sh : shards)
      if (i >= sh.first && i < sh.last) return sh;
    return shards.back();
  }

  void open(Shard& sh) {
    // Metadata first, then tensors in layout order, as the reference writer does.
    nlohmann::ordered_json oh;
    if (!metadata.empty()) {
      nlohmann::ordered_json m = nlohmann::ordered_json::object();
      for (auto& [k, v] : metadata) m[k] = v;
      oh["__metadata__"] = m;
    }
    uint64_t off = 0;
    for (size_t i = sh.first; i < sh.last; ++i) {
      nlohmann::ordered_json e;
      e["dtype"] = dtype_name(specs[i].dtype);
      e["shape"] = specs[i].shape;
      e["data_offsets"] = {off, off + sizes[i]};
      off += sizes[i];
      oh[specs[i].name] = e;
    }
    if (oh.empty()) oh = nlohmann::ordered_json::object();
    std::string header = oh.dump();
    header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned
    sh.file = std::make_unique<AtomicFile>(path(sh.name));
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(header.size()) >> (8 * i));
    sh.file->write(len, 8);
    sh.file->write(header);
  }
};

SafetensorsWriter::SafetensorsWriter(std::string dir, uint64_t max_shard_bytes,
                                     std::map<std::string, std::string> metadata)
    : impl_(std::make_unique<Impl>()) {
  impl_->dir = std::move(dir);
  impl_->max_shard_bytes = max_shard_bytes;
  impl_->metadata = std::move(metadata);
  std::error_code ec;
  if (!fs::exists(impl_->dir, ec)) {
    if (!fs::create_directories(impl_->dir, ec) && ec)
      throw Error(impl_->dir, "cannot create directory: " + ec.message(), kExitError);
    impl_->created_dir = true;
  } else if (!fs::is_directory(impl_->dir, ec)) {
    throw Error(impl_->dir, "not a directory", kExitError);
  }
  refuse_existing(impl_->path(kSingleName), false);
  refuse_existing(impl_->path(kIndexName), false);
}

SafetensorsWriter::~SafetensorsWriter() {
  if (!impl_) return;
  bool remove_dir = impl_->created_dir && !impl_->finished;
  std::string dir = impl_->dir;
  impl_->shards.clear();  // AtomicFile destructors delete the temporaries
  if (remove_dir) {
    std::error_code ec;
    fs::remove(dir, ec);  // only if empty: never delete anything we did not create
  }
}

void SafetensorsWriter::add(const TensorSpec& spec) {
  auto& I = *impl_;
  if (I.planned)
    throw Error("tensor " + qname(spec.name), "declared after writing started", kExitError);
  if (spec.name.empty() || spec.name == "__metadata__")
    throw Error("tensor " + qname(spec.name), "invalid tensor name", kExitError);
  if (I.index.count(spec.name))
    throw Error("tensor " + qname(spec.name), "declared twice", kExitError);
  I.index[spec.name] = I.specs.size();
  I.specs.push_back(spec);
  I.sizes.push_back(spec.nbytes());
}

// Checks that `name` is the next declared tensor and that `nbytes` is its size, opens its shard
// when it is the first tensor there, and returns the file to stream it into.
AtomicFile& SafetensorsWriter::begin_tensor(const std::string& name, size_t nbytes) {
  auto& I = *impl_;
  if (I.finished) throw Error("tensor " + qname(name), "write after finish()", kExitError);
  I.plan();
  if (I.next >= I.specs.size())
    throw Error("tensor " + qname(name), "written but every declared tensor is already written",
                kExitError);
  const TensorSpec& s = I.specs[I.next];
  if (s.name != name)
    throw Error("tensor " + qname(name),
                I.index.count(name) ? "written out of order (expected " + qname(s.name) + ")"
                                    : std::string("written but never declared"),
                kExitError);
  if (nbytes != I.sizes[I.next])
    throw Error("tensor " + qname(name),
                std::to_string(nbytes) + " bytes given, " + shapes_and_dtype(s.dtype, s.shape) +
                    " needs " + std::to_string(I.sizes[I.next]),
                kExitError);
  auto& sh = I.shard_of(I.next);
  if (!sh.file) I.open(sh);
  return *sh.file;
}

void SafetensorsWriter::write(const std::string& name, const void* data, size_t nbytes) {
  AtomicFile& f = begin_tensor(name, nbytes);
  f.write(data, nbytes);
  ++impl_->next;
}

void SafetensorsWriter::write_f32(const std::string& name, const float* data, size_t numel) {
  auto& I = *impl_;
  auto it = I.index.find(name);
  if (it == I.index.end())
    throw Error("tensor " + qname(name), "written but never declared", kExitError);
  const DType dt = I.specs[it->second].dtype;
  if (!dtype_is_float(dt))
    throw Error("tensor " + qname(name), "declared " + dtype_name(dt) + ", cannot convert from F32",
                kExitError);
  const size_t es = dtype_size(dt);
  AtomicFile& f = begin_tensor(name, numel * es);
  // Convert in bounded chunks so a large tensor never needs a second full-size copy.
  constexpr size_t kChunk = 1 << 16;
  std::vector<uint8_t> buf(std::min(numel, kChunk) * es);
  for (size_t i = 0; i < numel; i += kChunk) {
    size_t m = std::min(kChunk, numel - i);
    convert_from_f32(dt, data + i, buf.data(), m);
    f.write(buf.data(), m * es);
  }
  ++I.next;
}

void SafetensorsWriter::finish() {
  auto& I = *impl_;
  if (I.finished) return;
  I.plan();
  if (I.next < I.specs.size())
    throw Error("tensor " + qname(I.specs[I.next].name), "declared but never written", kExitError);
  for (auto& sh : I.shards)
    if (!sh.file) I.open(sh);  // only an empty checkpoint has a shard with no writes
  for (auto& sh : I.shards) sh.file->commit();
  if (I.sharded()) {
    json idx;
    uint64_t total = 0;
    for (auto s : I.sizes) total += s;
    idx["metadata"] = {{"total_size", total}};
    idx["weight_map"] = json::object();
    for (auto& sh : I.shards)
      for (size_t i = sh.first; i < sh.last; ++i) idx["weight_map"][I.specs[i].name] = sh.name;
    write_file_atomic(I.path(kIndexName), idx.dump(2) + "\n");
  }
  I.finished = true;
}

std::vector<std::string> SafetensorsWriter::files() const {
  std::vector<std::string> v;
  for (auto& sh : impl_->shards) v.push_back(impl_->path(sh.name));
  return v;
}

}  // namespace aloepri
