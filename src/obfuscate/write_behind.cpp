// Ordered write-behind queue (see write_behind.h).
#include "aloepri/obfuscate/write_behind.h"

namespace aloepri {

WriteBehind::WriteBehind(Sink sink, size_t max_bytes) : sink_(std::move(sink)), max_bytes_(max_bytes) {
  thread_ = std::thread([this] { run(); });
}

WriteBehind::~WriteBehind() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  thread_.join();
}

void WriteBehind::rethrow_locked() {
  if (error_) std::rethrow_exception(error_);
}

void WriteBehind::push(std::string name, std::vector<float> data) {
  const size_t bytes = data.size() * sizeof(float);
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return error_ || queue_.empty() || queued_bytes_ + bytes <= max_bytes_; });
  rethrow_locked();
  queued_bytes_ += bytes;
  queue_.push_back({std::move(name), std::move(data)});
  lk.unlock();
  cv_.notify_all();
}

void WriteBehind::drain() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return error_ || (queue_.empty() && !busy_); });
  rethrow_locked();
}

void WriteBehind::run() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    Item it = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lk.unlock();
    std::exception_ptr err;
    try {
      sink_(it.name, it.data.data(), it.data.size());
    } catch (...) {
      err = std::current_exception();
    }
    const size_t bytes = it.data.size() * sizeof(float);
    it.data = std::vector<float>();  // free before taking the lock: the producer may be waiting for room
    lk.lock();
    busy_ = false;
    queued_bytes_ -= bytes;
    if (err && !error_) error_ = err;
    cv_.notify_all();
    if (error_) {
      // Nothing after a failed tensor may be written: the file would have a hole.
      for (const Item& q : queue_) queued_bytes_ -= q.data.size() * sizeof(float);
      queue_.clear();
    }
  }
}

}  // namespace aloepri
