#include "aloepri/core/progress.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace aloepri {

static bool g_enabled = true;
void Progress::set_enabled(bool on) { g_enabled = on; }

Progress::Progress(std::string label, uint64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
  active_ = g_enabled && !std::getenv("ALOEPRI_NO_PROGRESS") && ::isatty(2);
  if (active_) draw(false);
}

Progress::~Progress() { finish(); }

void Progress::advance(uint64_t n) { set(done_ + n); }

void Progress::set(uint64_t done) {
  done_ = done;
  if (!active_) return;
  auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ > std::chrono::milliseconds(100) || done_ >= total_) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (active_) {
    draw(true);
    std::fputc('\n', stderr);
  }
}

void Progress::draw(bool final) {
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double frac = total_ ? double(done_) / double(total_) : 1.0;
  if (frac > 1) frac = 1;
  const int width = 30;
  int fill = int(frac * width);
  char bar[width + 1];
  for (int i = 0; i < width; ++i) bar[i] = i < fill ? '#' : '-';
  bar[width] = 0;
  double eta = (frac > 0 && !final) ? secs / frac - secs : 0;
  std::fprintf(stderr, "\r%-24s [%s] %5.1f%% %llu/%llu%s%s %.1fs%s", label_.c_str(), bar, frac * 100,
               (unsigned long long)done_, (unsigned long long)total_, unit_.empty() ? "" : " ",
               unit_.c_str(), secs, final ? "" : (" eta " + std::to_string(int(eta)) + "s").c_str());
  std::fflush(stderr);
}

}  // namespace aloepri
