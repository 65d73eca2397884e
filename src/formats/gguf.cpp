// GGUF v3 writer and validating reader (format summary in include/aloepri/gguf.h).
#include "aloepri/formats/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <unordered_map>

#include "aloepri/core/dtype.h"
#include "aloepri/core/error.h"

namespace aloepri::gguf {

namespace {

std::string q(const std::string& s) { return "'" + s + "'"; }

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// Bytes of one scalar of a fixed-width type (0 for STRING/ARRAY).
size_t fixed_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8: case ValueType::INT8: case ValueType::BOOL: return 1;
    case ValueType::UINT16: case ValueType::INT16: return 2;
    case ValueType::UINT32: case ValueType::INT32: case ValueType::FLOAT32: return 4;
    case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: return 8;
    default: return 0;
  }
}

bool is_unsigned(ValueType t) {
  return t == ValueType::UINT8 || t == ValueType::UINT16 || t == ValueType::UINT32 ||
         t == ValueType::UINT64 || t == ValueType::BOOL;
}
bool is_signed(ValueType t) {
  return t == ValueType::INT8 || t == ValueType::INT16 || t == ValueType::INT32 || t == ValueType::INT64;
}
bool is_float(ValueType t) { return t == ValueType::FLOAT32 || t == ValueType::FLOAT64; }
bool value_type_known(uint32_t t) { return t <= uint32_t(ValueType::FLOAT64); }

struct TypeTraits {
  const char* name;
  int64_t block;
  size_t size;
};
// Block layouts of ggml types (elements per block, bytes per block).
const std::unordered_map<uint32_t, TypeTraits>& type_table() {
  static const std::unordered_map<uint32_t, TypeTraits> t = {
      {0, {"F32", 1, 4}},      {1, {"F16", 1, 2}},      {2, {"Q4_0", 32, 18}},
      {3, {"Q4_1", 32, 20}},   {6, {"Q5_0", 32, 22}},   {7, {"Q5_1", 32, 24}},
      {8, {"Q8_0", 32, 34}},   {9, {"Q8_1", 32, 36}},   {10, {"Q2_K", 256, 84}},
      {11, {"Q3_K", 256, 110}}, {12, {"Q4_K", 256, 144}}, {13, {"Q5_K", 256, 176}},
      {14, {"Q6_K", 256, 210}}, {15, {"Q8_K", 256, 292}}, {24, {"I8", 1, 1}},
      {25, {"I16", 1, 2}},     {26, {"I32", 1, 4}},     {27, {"I64", 1, 8}},
      {28, {"F64", 1, 8}},     {30, {"BF16", 1, 2}},
  };
  return t;
}

// ---- little-endian serialization into a byte string ----
template <class T>
void put(std::string& b, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  char tmp[sizeof(T)];
  std::memcpy(tmp, &v, sizeof(T));
  b.append(tmp, sizeof(T));
}
void put_str(std::string& b, const std::string& s) {
  put<uint64_t>(b, s.size());
  b.append(s);
}

void put_elem(std::string& b, ValueType t, const Value::Storage& s, size_t i) {
  switch (t) {
    case ValueType::UINT8: put<uint8_t>(b, uint8_t(std::get<0>(s)[i])); break;
    case ValueType::BOOL: put<uint8_t>(b, std::get<0>(s)[i] ? 1 : 0); break;
    case ValueType::UINT16: put<uint16_t>(b, uint16_t(std::get<0>(s)[i])); break;
    case ValueType::UINT32: put<uint32_t>(b, uint32_t(std::get<0>(s)[i])); break;
    case ValueType::UINT64: put<uint64_t>(b, std::get<0>(s)[i]); break;
    case ValueType::INT8: put<int8_t>(b, int8_t(std::get<1>(s)[i])); break;
    case ValueType::INT16: put<int16_t>(b, int16_t(std::get<1>(s)[i])); break;
    case ValueType::INT32: put<int32_t>(b, int32_t(std::get<1>(s)[i])); break;
    case ValueType::INT64: put<int64_t>(b, std::get<1>(s)[i]); break;
    case ValueType::FLOAT32: put<float>(b, float(std::get<2>(s)[i])); break;
    case ValueType::FLOAT64: put<double>(b, std::get<2>(s)[i]); break;
    case ValueType::STRING: put_str(b, std::get<3>(s)[i]); break;
    default: throw Error("gguf", "cannot serialize value type " + value_type_name(t), kExitError);
  }
}

void put_value(std::string& b, const Value& v) {
  put<uint32_t>(b, uint32_t(v.type()));
  if (v.is_array()) {
    put<uint32_t>(b, uint32_t(v.elem_type()));
    put<uint64_t>(b, v.size());
  }
  for (size_t i = 0; i < v.size(); ++i) put_elem(b, v.elem_type(), v.storage(), i);
}

// Storage alternative for an element type: 0 unsigned, 1 signed, 2 float, 3 string.
size_t storage_index(ValueType t) {
  if (is_unsigned(t)) return 0;
  if (is_signed(t)) return 1;
  if (is_float(t)) return 2;
  if (t == ValueType::STRING) return 3;
  throw Error("gguf", "no element storage for value type " + value_type_name(t), kExitError);
}

void check_range(ValueType t, const Value::Storage& s) {
  auto fail = [&](const std::string& v) {
    throw Error("gguf", "value " + v + " does not fit in " + value_type_name(t), kExitError);
  };
  uint64_t umax = 0;
  int64_t imin = 0, imax = 0;
  switch (t) {
    case ValueType::UINT8: umax = 0xff; break;
    case ValueType::BOOL: umax = 1; break;
    case ValueType::UINT16: umax = 0xffff; break;
    case ValueType::UINT32: umax = 0xffffffffu; break;
    case ValueType::UINT64: umax = std::numeric_limits<uint64_t>::max(); break;
    case ValueType::INT8: imin = -128; imax = 127; break;
    case ValueType::INT16: imin = -32768; imax = 32767; break;
    case ValueType::INT32: imin = std::numeric_limits<int32_t>::min(); imax = std::numeric_limits<int32_t>::max(); break;
    case ValueType::INT64: imin = std::numeric_limits<int64_t>::min(); imax = std::numeric_limits<int64_t>::max(); break;
    default: return;
  }
  if (is_unsigned(t)) {
    for (uint64_t v : std::get<0>(s)) if (v > umax) fail(std::to_string(v));
  } else {
    for (int64_t v : std::get<1>(s)) if (v < imin || v > imax) fail(std::to_string(v));
  }
}

// ---- bounds-checked cursor over the input bytes ----
struct Cursor {
  const uint8_t* p;
  size_t n, pos = 0;
  const std::string& file;

  [[noreturn]] void fail(const std::string& what) const { throw Error(file, what); }
  size_t left() const { return n - pos; }
  void need(size_t k, const std::string& what) const {
    if (k > left())
      fail("truncated " + what + " at byte " + std::to_string(pos) + " (needs " + std::to_string(k) +
           " bytes, " + std::to_string(left()) + " left)");
  }
  template <class T>
  T get(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string str(const std::string& what) {
    uint64_t len = get<uint64_t>(what + " length");
    if (len > left()) fail(what + " has length " + std::to_string(len) + " but only " + std::to_string(left()) + " bytes remain (truncated)");
    std::string s(reinterpret_cast<const char*>(p + pos), size_t(len));
    pos += size_t(len);
    return s;
  }
};

Value read_value(Cursor& c, ValueType t, const std::string& where) {
  if (t == ValueType::ARRAY) {
    uint32_t et = c.get<uint32_t>(where + " array type");
    if (!value_type_known(et)) c.fail(where + ": unknown array element type " + std::to_string(et));
    ValueType e = ValueType(et);
    if (e == ValueType::ARRAY) c.fail(where + ": nested arrays are not supported");
    uint64_t count = c.get<uint64_t>(where + " array length");
    size_t min_elem = e == ValueType::STRING ? 8 : fixed_size(e);
    if (count > c.left() / min_elem)
      c.fail(where + ": array of " + std::to_string(count) + " " + value_type_name(e) +
             " elements cannot fit in the " + std::to_string(c.left()) + " bytes left (truncated or absurd count)");
    // Elements are decoded straight into the storage vector (token lists hold ~150k entries).
    Value::Storage s;
    switch (storage_index(e)) {
      case 0: {
        std::vector<uint64_t> v(count);
        for (auto& x : v) {
          switch (e) {
            case ValueType::UINT8: x = c.get<uint8_t>(where); break;
            case ValueType::BOOL:
              x = c.get<uint8_t>(where);
              if (x > 1) c.fail(where + ": bool element " + std::to_string(x) + " is neither 0 nor 1");
              break;
            case ValueType::UINT16: x = c.get<uint16_t>(where); break;
            case ValueType::UINT32: x = c.get<uint32_t>(where); break;
            default: x = c.get<uint64_t>(where);
          }
        }
        s = std::move(v);
        break;
      }
      case 1: {
        std::vector<int64_t> v(count);
        for (auto& x : v) {
          switch (e) {
            case ValueType::INT8: x = c.get<int8_t>(where); break;
            case ValueType::INT16: x = c.get<int16_t>(where); break;
            case ValueType::INT32: x = c.get<int32_t>(where); break;
            default: x = c.get<int64_t>(where);
          }
        }
        s = std::move(v);
        break;
      }
      case 2: {
        std::vector<double> v(count);
        for (auto& x : v) x = e == ValueType::FLOAT32 ? double(c.get<float>(where)) : c.get<double>(where);
        s = std::move(v);
        break;
      }
      default: {
        std::vector<std::string> v(count);
        for (auto& x : v) x = c.str(where + " string element");
        s = std::move(v);
      }
    }
    return Value::make(ValueType::ARRAY, e, std::move(s));
  }
  switch (t) {
    case ValueType::UINT8: return Value::u8(c.get<uint8_t>(where));
    case ValueType::INT8: return Value::i8(c.get<int8_t>(where));
    case ValueType::UINT16: return Value::u16(c.get<uint16_t>(where));
    case ValueType::INT16: return Value::i16(c.get<int16_t>(where));
    case ValueType::UINT32: return Value::u32(c.get<uint32_t>(where));
    case ValueType::INT32: return Value::i32(c.get<int32_t>(where));
    case ValueType::UINT64: return Value::u64(c.get<uint64_t>(where));
    case ValueType::INT64: return Value::i64(c.get<int64_t>(where));
    case ValueType::FLOAT32: return Value::f32(c.get<float>(where));
    case ValueType::FLOAT64: return Value::f64(c.get<double>(where));
    case ValueType::BOOL: {
      uint8_t b = c.get<uint8_t>(where);
      if (b > 1) c.fail(where + ": bool value " + std::to_string(b) + " is neither 0 nor 1");
      return Value::boolean(b != 0);
    }
    case ValueType::STRING: return Value::string(c.str(where));
    default: c.fail(where + ": unknown value type " + std::to_string(uint32_t(t)));
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
std::string value_type_name(ValueType t) {
  static const char* names[] = {"UINT8", "INT8",   "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
                                "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64", "FLOAT64"};
  uint32_t i = uint32_t(t);
  return i < 13 ? names[i] : "type#" + std::to_string(i);
}

bool ggml_type_known(uint32_t t) { return type_table().count(t) > 0; }

std::string ggml_type_name(GGMLType t) {
  auto it = type_table().find(uint32_t(t));
  return it == type_table().end() ? "ggml#" + std::to_string(uint32_t(t)) : it->second.name;
}
int64_t ggml_block_size(GGMLType t) { return type_table().at(uint32_t(t)).block; }
size_t ggml_type_size(GGMLType t) { return type_table().at(uint32_t(t)).size; }

uint64_t ggml_nbytes(GGMLType t, const std::vector<int64_t>& ne, const std::string& where) {
  auto it = type_table().find(uint32_t(t));
  if (it == type_table().end()) throw Error(where, "unknown ggml type " + std::to_string(uint32_t(t)));
  if (ne.empty()) throw Error(where, "tensor has no dimensions");
  const auto& tr = it->second;
  if (ne[0] % tr.block != 0)
    throw Error(where, "ne[0]=" + std::to_string(ne[0]) + " is not a multiple of the " + tr.name +
                           " block size " + std::to_string(tr.block));
  // Checked after every factor, the first included: a single huge ne[0] times the type size
  // must not wrap to a small byte count that the bounds checks would then accept.
  constexpr auto kMax = (unsigned __int128)(std::numeric_limits<int64_t>::max());
  unsigned __int128 total = (unsigned __int128)(ne[0] / tr.block) * tr.size;
  for (size_t i = 0; i < ne.size(); ++i) {
    if (i > 0) total *= (unsigned __int128)ne[i];
    if (total > kMax) throw Error(where, "tensor size overflows");
  }
  return uint64_t(total);
}

// ---- Value ----
Value Value::make(ValueType type, ValueType elem, Storage data) {
  if (type != ValueType::ARRAY) elem = type;
  if (elem == ValueType::ARRAY) throw Error("gguf", "nested arrays are not supported", kExitError);
  if (data.index() != storage_index(elem))
    throw Error("gguf", "value storage does not match type " + value_type_name(elem), kExitError);
  check_range(elem, data);
  Value v;
  v.type_ = type;
  v.elem_ = elem;
  v.data_ = std::move(data);
  if (type != ValueType::ARRAY && v.size() != 1)
    throw Error("gguf", "a scalar " + value_type_name(type) + " must hold exactly one value", kExitError);
  return v;
}

Value Value::array(ValueType elem, std::vector<uint64_t> v) { return make(ValueType::ARRAY, elem, std::move(v)); }
Value Value::array(ValueType elem, std::vector<int64_t> v) { return make(ValueType::ARRAY, elem, std::move(v)); }
Value Value::array(ValueType elem, std::vector<double> v) { return make(ValueType::ARRAY, elem, std::move(v)); }
Value Value::array_strings(std::vector<std::string> v) {
  return make(ValueType::ARRAY, ValueType::STRING, std::move(v));
}
Value Value::array_i32(const std::vector<int32_t>& v) {
  return make(ValueType::ARRAY, ValueType::INT32, std::vector<int64_t>(v.begin(), v.end()));
}
Value Value::array_f32(const std::vector<float>& v) {
  return make(ValueType::ARRAY, ValueType::FLOAT32, std::vector<double>(v.begin(), v.end()));
}

size_t Value::size() const {
  return std::visit([](const auto& v) { return v.size(); }, data_);
}

static void need_scalar(const Value& v, const std::string& where) {
  if (v.is_array()) throw Error(where, "expected a scalar, found an array of " + value_type_name(v.elem_type()));
}

uint64_t Value::as_u64(const std::string& where) const {
  need_scalar(*this, where);
  if (is_unsigned(type_) && type_ != ValueType::BOOL) return uints()[0];
  if (is_signed(type_) && ints()[0] >= 0) return uint64_t(ints()[0]);
  throw Error(where, "expected a non-negative integer, found " + value_type_name(type_));
}
int64_t Value::as_i64(const std::string& where) const {
  need_scalar(*this, where);
  if (is_signed(type_)) return ints()[0];
  if (is_unsigned(type_) && type_ != ValueType::BOOL &&
      uints()[0] <= uint64_t(std::numeric_limits<int64_t>::max()))
    return int64_t(uints()[0]);
  throw Error(where, "expected an integer, found " + value_type_name(type_));
}
double Value::as_f64(const std::string& where) const {
  need_scalar(*this, where);
  if (is_float(type_)) return floats()[0];
  if (is_signed(type_)) return double(ints()[0]);
  if (is_unsigned(type_) && type_ != ValueType::BOOL) return double(uints()[0]);
  throw Error(where, "expected a number, found " + value_type_name(type_));
}
bool Value::as_bool(const std::string& where) const {
  need_scalar(*this, where);
  if (type_ != ValueType::BOOL) throw Error(where, "expected BOOL, found " + value_type_name(type_));
  return uints()[0] != 0;
}
const std::string& Value::as_string(const std::string& where) const {
  need_scalar(*this, where);
  if (type_ != ValueType::STRING) throw Error(where, "expected STRING, found " + value_type_name(type_));
  return strings()[0];
}

// ---- Writer ----
GGUFWriter::GGUFWriter(std::string path, bool overwrite, uint32_t alignment)
    : path_(std::move(path)), alignment_(alignment) {
  require(alignment_ > 0 && (alignment_ & (alignment_ - 1)) == 0, path_,
          "alignment " + std::to_string(alignment_) + " is not a power of two", kExitError);
  // Opened (and an existing output refused) now, before the caller spends minutes converting.
  out_ = std::make_unique<AtomicFile>(path_, overwrite);
}

GGUFWriter::~GGUFWriter() = default;  // an unfinished AtomicFile removes its temporary

void GGUFWriter::set(const std::string& key, Value v) {
  require(!out_ || data_start_ == 0, path_, "metadata " + q(key) + " set after tensor data started", kExitError);
  require(!key.empty(), path_, "empty metadata key", kExitError);
  require(!has(key), path_, "duplicate metadata key " + q(key), kExitError);
  if (key == "general.alignment")
    require(v.type() == ValueType::UINT32 && v.uints()[0] == alignment_, path_,
            "general.alignment must be UINT32 " + std::to_string(alignment_), kExitError);
  kvs_.emplace_back(key, std::move(v));
}

bool GGUFWriter::has(const std::string& key) const {
  return std::any_of(kvs_.begin(), kvs_.end(), [&](const KV& kv) { return kv.first == key; });
}

void GGUFWriter::add_tensor(const std::string& name, std::vector<int64_t> ne, GGMLType type) {
  std::string where = path_ + ": tensor " + q(name);
  require(data_start_ == 0, where, "declared after tensor data started", kExitError);
  // llama.cpp stores names in a 64-byte buffer (GGML_MAX_NAME) and at most 4 dims.
  require(!name.empty() && name.size() < 64, where, "name must be 1..63 bytes", kExitError);
  require(!ne.empty() && ne.size() <= 4, where, "must have 1..4 dimensions", kExitError);
  for (int64_t d : ne) require(d > 0, where, "dimension " + std::to_string(d) + " is not positive", kExitError);
  for (const auto& t : tensors_) require(t.name != name, where, "declared twice", kExitError);
  uint64_t nb = ggml_nbytes(type, ne, where);
  uint64_t off = align_up(data_size_, alignment_);
  tensors_.push_back({name, std::move(ne), type, nb, off});
  data_size_ = off + nb;
}

void GGUFWriter::write_header() {
  std::string b;
  std::vector<const KV*> kvs;
  KV align_kv{"general.alignment", Value::u32(alignment_)};
  if (!has("general.alignment")) kvs.push_back(&align_kv);
  for (const auto& kv : kvs_) kvs.push_back(&kv);

  put<uint32_t>(b, kMagic);
  put<uint32_t>(b, kVersion);
  put<uint64_t>(b, tensors_.size());
  put<uint64_t>(b, kvs.size());
  for (const KV* kv : kvs) {
    put_str(b, kv->first);
    put_value(b, kv->second);
  }
  for (const auto& t : tensors_) {
    put_str(b, t.name);
    put<uint32_t>(b, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(b, uint64_t(d));
    put<uint32_t>(b, uint32_t(t.type));
    put<uint64_t>(b, t.offset);
  }
  out_->write(b);
  data_start_ = align_up(out_->tell(), alignment_);
  out_->pad_to(data_start_);
}

void GGUFWriter::begin_tensor(const std::string& name) {
  require(!finished_, path_, "writer already finished", kExitError);
  require(!in_tensor_, path_, "begin_tensor(" + q(name) + ") while " + q(tensors_[next_].name) + " is open", kExitError);
  if (data_start_ == 0) write_header();
  require(next_ < tensors_.size(), path_ + ": tensor " + q(name), "not declared (or written twice)", kExitError);
  require(tensors_[next_].name == name, path_ + ": tensor " + q(name),
          "written out of order; expected " + q(tensors_[next_].name), kExitError);
  out_->pad_to(data_start_ + tensors_[next_].offset);
  in_tensor_ = true;
  tensor_written_ = 0;
}

void GGUFWriter::write_data(const void* data, size_t nbytes) {
  require(in_tensor_, path_, "write_data outside begin_tensor/end_tensor", kExitError);
  const auto& t = tensors_[next_];
  require(tensor_written_ + nbytes <= t.nbytes, path_ + ": tensor " + q(t.name),
          "more data than its declared " + std::to_string(t.nbytes) + " bytes", kExitError);
  out_->write(data, nbytes);
  tensor_written_ += nbytes;
}

void GGUFWriter::end_tensor() {
  require(in_tensor_, path_, "end_tensor without begin_tensor", kExitError);
  const auto& t = tensors_[next_];
  require(tensor_written_ == t.nbytes, path_ + ": tensor " + q(t.name),
          "got " + std::to_string(tensor_written_) + " bytes, declared " + std::to_string(t.nbytes), kExitError);
  in_tensor_ = false;
  ++next_;
}

void GGUFWriter::write_tensor(const std::string& name, const void* data, size_t nbytes) {
  begin_tensor(name);
  write_data(data, nbytes);
  end_tensor();
}

void GGUFWriter::finish() {
  require(!finished_, path_, "writer already finished", kExitError);
  require(!in_tensor_, path_, "finish() while a tensor is open", kExitError);
  if (data_start_ == 0) write_header();
  require(next_ == tensors_.size(), path_,
          std::to_string(tensors_.size() - next_) + " declared tensor(s) not written, first " +
              (next_ < tensors_.size() ? q(tensors_[next_].name) : std::string()),
          kExitError);
  out_->pad_to(data_start_ + align_up(data_size_, alignment_));
  out_->commit();
  finished_ = true;
}

uint64_t GGUFWriter::bytes_written() const { return out_ ? out_->tell() : 0; }

// ---- Reader ----
int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

GGUFReader::GGUFReader(const std::string& path) : map_(std::make_unique<MappedFile>(path)), name_(path) {
  parse(map_->data(), map_->size());
}

GGUFReader::GGUFReader(const uint8_t* data, size_t size, std::string name) : name_(std::move(name)) {
  parse(data, size);
}

void GGUFReader::parse(const uint8_t* p, size_t n) {
  Cursor c{p, n, 0, name_};
  if (n < 4) c.fail("not a GGUF file: " + std::to_string(n) + " bytes, too short for the magic");
  uint32_t magic = c.get<uint32_t>("magic");
  if (magic != kMagic) {
    char m[5] = {char(magic & 0xff), char(magic >> 8 & 0xff), char(magic >> 16 & 0xff), char(magic >> 24), 0};
    bool printable = std::all_of(m, m + 4, [](char ch) { return ch >= 32 && ch < 127; });
    c.fail(std::string("not a GGUF file: bad magic ") + (printable ? "'" + std::string(m) + "'" : "(binary)") +
           ", expected 'GGUF'");
  }
  version_ = c.get<uint32_t>("header (version)");
  if (version_ != 2 && version_ != 3)
    c.fail("unsupported GGUF version " + std::to_string(version_) + " (supported: 2, 3)");
  uint64_t n_tensors = c.get<uint64_t>("header (tensor count)");
  uint64_t n_kv = c.get<uint64_t>("header (metadata count)");
  // Smallest possible KV: 8-byte key length + 1-byte key + 4-byte type + 1-byte value.
  if (n_kv > c.left() / 14)
    c.fail("absurd metadata count " + std::to_string(n_kv) + ": the " + std::to_string(c.left()) +
           " bytes left cannot hold them (truncated or corrupt file)");
  // Smallest possible tensor info: 8 + 1 (name) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
  if (n_tensors > c.left() / 33)
    c.fail("absurd tensor count " + std::to_string(n_tensors) + ": the " + std::to_string(c.left()) +
           " bytes left cannot hold their infos (truncated or corrupt file)");

  std::set<std::string> keys;
  kvs_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string what = "metadata #" + std::to_string(i);
    std::string key = c.str(what + " key");
    if (key.empty()) c.fail(what + " has an empty key");
    std::string where = "metadata " + q(key);
    if (!keys.insert(key).second) c.fail("duplicate metadata key " + q(key));
    uint32_t t = c.get<uint32_t>(where + " type");
    if (!value_type_known(t)) c.fail(where + " has unknown value type " + std::to_string(t));
    kvs_.emplace_back(key, read_value(c, ValueType(t), where));
  }
  if (has("general.alignment")) {
    const Value& a = get("general.alignment");
    if (a.type() != ValueType::UINT32) c.fail("general.alignment must be UINT32, found " + value_type_name(a.type()));
    uint64_t al = a.uints()[0];
    if (al == 0 || (al & (al - 1)) != 0) c.fail("general.alignment " + std::to_string(al) + " is not a power of two");
    alignment_ = uint32_t(al);
  }

  std::set<std::string> names;
  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = c.str("tensor info #" + std::to_string(i) + " name");
    std::string where = "tensor " + q(t.name);
    if (t.name.empty()) c.fail("tensor info #" + std::to_string(i) + " has an empty name");
    if (!names.insert(t.name).second) c.fail("duplicate " + where);
    uint32_t nd = c.get<uint32_t>(where + " dimension count");
    if (nd == 0 || nd > 4) c.fail(where + " has " + std::to_string(nd) + " dimensions (must be 1..4)");
    for (uint32_t d = 0; d < nd; ++d) {
      uint64_t v = c.get<uint64_t>(where + " dimensions");
      if (v == 0 || v > uint64_t(std::numeric_limits<int64_t>::max()))
        c.fail(where + " has invalid dimension ne[" + std::to_string(d) + "]=" + std::to_string(v));
      t.ne.push_back(int64_t(v));
    }
    uint32_t ty = c.get<uint32_t>(where + " type");
    if (!ggml_type_known(ty)) c.fail(where + " has unknown ggml type " + std::to_string(ty));
    t.type = GGMLType(ty);
    t.offset = c.get<uint64_t>(where + " offset");
    t.nbytes = ggml_nbytes(t.type, t.ne, name_ + ": " + where);
    tensors_.push_back(std::move(t));
  }

  data_offset_ = align_up(c.pos, alignment_);
  if (n_tensors > 0 && data_offset_ > n)
    c.fail("data section starts at byte " + std::to_string(data_offset_) + ", past the end of the file (" +
           std::to_string(n) + " bytes)");
  const uint64_t data_size = n > data_offset_ ? n - data_offset_ : 0;
  std::vector<const TensorInfo*> by_offset;
  for (auto& t : tensors_) {
    std::string where = "tensor " + q(t.name);
    if (t.offset % alignment_ != 0)
      c.fail(where + " data offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
             std::to_string(alignment_));
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      c.fail(where + " data [" + std::to_string(t.offset) + ", " + std::to_string(t.offset + t.nbytes) +
             ") extends past the end of the file (data section holds " + std::to_string(data_size) + " bytes)");
    t.data = p + data_offset_ + t.offset;
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->offset + by_offset[i - 1]->nbytes > by_offset[i]->offset)
      c.fail("tensor " + q(by_offset[i]->name) + " overlaps tensor " + q(by_offset[i - 1]->name));
}

bool GGUFReader::has(const std::string& key) const {
  return std::any_of(kvs_.begin(), kvs_.end(), [&](const KV& kv) { return kv.first == key; });
}

const Value& GGUFReader::get(const std::string& key) const {
  for (const auto& kv : kvs_)
    if (kv.first == key) return kv.second;
  throw Error(name_, "missing metadata key " + q(key));
}

bool GGUFReader::has_tensor(const std::string& name) const {
  return std::any_of(tensors_.begin(), tensors_.end(), [&](const TensorInfo& t) { return t.name == name; });
}

const TensorInfo& GGUFReader::tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return t;
  throw Error(name_, "no tensor " + q(name));
}

std::vector<float> GGUFReader::read_f32(const std::string& name) const {
  const TensorInfo& t = tensor(name);
  std::vector<float> out(size_t(t.numel()));
  switch (t.type) {
    case GGMLType::F32: convert_to_f32(DType::F32, t.data, out.data(), out.size()); break;
    case GGMLType::F16: convert_to_f32(DType::F16, t.data, out.data(), out.size()); break;
    case GGMLType::BF16: convert_to_f32(DType::BF16, t.data, out.data(), out.size()); break;
    default: throw Error(name_ + ": tensor " + q(name), "cannot read " + ggml_type_name(t.type) + " as f32");
  }
  return out;
}

}  // namespace aloepri::gguf
