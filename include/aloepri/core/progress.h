// A progress bar on stderr for long work. Silent when stderr is not a terminal unless forced,
// or when ALOEPRI_NO_PROGRESS is set. Thread-compatible (one owner).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace aloepri {

class Progress {
 public:
  Progress(std::string label, uint64_t total, std::string unit = "");
  ~Progress();
  void advance(uint64_t n = 1);
  void set(uint64_t done);
  void finish();
  static void set_enabled(bool on);  // global switch (e.g. --quiet)

 private:
  void draw(bool final);
  std::string label_, unit_;
  uint64_t total_, done_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool active_, finished_ = false;
};

}  // namespace aloepri
