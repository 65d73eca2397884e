// Outputs that never lose data: write to a temporary sibling, fsync, rename into place.
// An existing destination is refused unless `overwrite` is set.
#pragma once
#include <cstdio>
#include <cstdint>
#include <string>

namespace aloepri {

// A file written at "<path>.tmp-<pid>" and renamed to <path> by commit(). If the object is
// destroyed without commit() (exception, interruption), the temporary is removed.
class AtomicFile {
 public:
  AtomicFile(const std::string& path, bool overwrite = false, int mode = 0644);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  void pad_to(uint64_t offset);  // zero-fill up to an absolute offset
  uint64_t tell() const { return written_; }
  void commit();
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  uint64_t written_ = 0;
  uint64_t writeback_ = 0;  // bytes whose writeback has been started
  bool committed_ = false;
};

// A directory built at "<path>.tmp-<pid>" and renamed to <path> by commit().
class AtomicDir {
 public:
  AtomicDir(const std::string& path, bool overwrite = false);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;
  // Path of a file inside the temporary directory.
  std::string file(const std::string& name) const { return tmp_ + "/" + name; }
  const std::string& temp_path() const { return tmp_; }
  const std::string& path() const { return path_; }
  void commit();

 private:
  std::string path_, tmp_;
  bool committed_ = false;
};

// Throws Error(kExitOutputExists) if path exists and !overwrite.
void refuse_existing(const std::string& path, bool overwrite);
// Whole-file helpers (atomic write).
void write_file_atomic(const std::string& path, const std::string& content, bool overwrite = false,
                       int mode = 0644);
std::string read_file(const std::string& path);  // throws Error naming the path

}  // namespace aloepri
