#include "aloepri/core/output.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "aloepri/core/error.h"

namespace fs = std::filesystem;

namespace aloepri {

static std::string temp_sibling(const std::string& path) {
  return path + ".tmp-" + std::to_string(::getpid());
}

void refuse_existing(const std::string& path, bool overwrite) {
  std::error_code ec;
  if (!overwrite && fs::exists(fs::symlink_status(path, ec)))
    throw Error(path, "already exists; refusing to overwrite (pass --force to replace it)",
                kExitOutputExists);
}

AtomicFile::AtomicFile(const std::string& path, bool overwrite, int mode)
    : path_(path), tmp_(temp_sibling(path)) {
  refuse_existing(path, overwrite);
  int fd = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) throw Error(path, std::string("cannot create: ") + std::strerror(errno), kExitError);
  ::fchmod(fd, mode);  // umask must not widen or narrow what we asked for (key files: 0600)
  f_ = ::fdopen(fd, "wb");
  if (!f_) {
    ::close(fd);
    throw Error(path, "cannot open stream", kExitError);
  }
  std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, f_) != n)
    throw Error(path_, std::string("write failed: ") + std::strerror(errno), kExitError);
  written_ += n;
  // Start the disk writeback of each finished stretch now, so commit()'s fsync finds little
  // left to write instead of the whole file (which the kernel would otherwise hold dirty until
  // its background threshold, a large fraction of memory).
  constexpr uint64_t kWriteback = 32 << 20;
  if (written_ - writeback_ >= kWriteback) {
    if (std::fflush(f_) != 0)
      throw Error(path_, std::string("write failed: ") + std::strerror(errno), kExitError);
    ::sync_file_range(fileno(f_), off64_t(writeback_), off64_t(written_ - writeback_), SYNC_FILE_RANGE_WRITE);
    writeback_ = written_;
  }
}

void AtomicFile::pad_to(uint64_t offset) {
  static const char zeros[4096] = {};
  while (written_ < offset) write(zeros, std::min<uint64_t>(sizeof(zeros), offset - written_));
}

void AtomicFile::commit() {
  if (std::fflush(f_) != 0 || ::fsync(fileno(f_)) != 0)
    throw Error(path_, std::string("flush failed: ") + std::strerror(errno), kExitError);
  std::fclose(f_);
  f_ = nullptr;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    throw Error(path_, std::string("rename failed: ") + std::strerror(errno), kExitError);
  committed_ = true;
}

AtomicDir::AtomicDir(const std::string& path, bool overwrite) : path_(path), tmp_(temp_sibling(path)) {
  refuse_existing(path, overwrite);
  std::error_code ec;
  fs::remove_all(tmp_, ec);
  if (!fs::create_directories(tmp_, ec) && ec)
    throw Error(path, "cannot create directory: " + ec.message(), kExitError);
}

AtomicDir::~AtomicDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

void AtomicDir::commit() {
  std::error_code ec;
  if (fs::exists(path_)) fs::remove_all(path_, ec);  // only reachable with overwrite=true
  fs::rename(tmp_, path_, ec);
  if (ec) throw Error(path_, "rename failed: " + ec.message(), kExitError);
  committed_ = true;
}

void write_file_atomic(const std::string& path, const std::string& content, bool overwrite, int mode) {
  AtomicFile f(path, overwrite, mode);
  f.write(content);
  f.commit();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace aloepri
