// Write-behind for the obfuscation executor: finished tensors are handed to one background
// thread that converts and writes them in the order they were pushed, so the dtype conversion
// and the copy into the page cache run while the next GEMM computes instead of between GEMMs
// (where the BLAS threads would spin idle). The output bytes are the same as writing inline:
// one writer thread, push order kept.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace aloepri {

class WriteBehind {
 public:
  // sink(name, data, numel): writes one tensor; called on the background thread only.
  using Sink = std::function<void(const std::string&, const float*, size_t)>;
  // max_bytes bounds the f32 bytes waiting (the memory a slow disk may hold back); a tensor
  // larger than it still goes through, alone.
  WriteBehind(Sink sink, size_t max_bytes);
  ~WriteBehind();  // stops the thread; tensors not yet written are dropped (an error path)
  WriteBehind(const WriteBehind&) = delete;
  WriteBehind& operator=(const WriteBehind&) = delete;

  // Queues one tensor (takes the buffer). Blocks while the queue is full. Rethrows the first
  // error the sink raised.
  void push(std::string name, std::vector<float> data);
  // Waits until everything pushed is written; rethrows the sink's error.
  void drain();

 private:
  struct Item {
    std::string name;
    std::vector<float> data;
  };
  void run();
  void rethrow_locked();

  Sink sink_;
  size_t max_bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  size_t queued_bytes_ = 0;
  bool busy_ = false, stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace aloepri
