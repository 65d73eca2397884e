// The executor's write-behind queue: order kept, memory bounded, errors surfaced.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

#include "aloepri/obfuscate/write_behind.h"

using namespace aloepri;

TEST(WriteBehind, WritesEveryTensorInPushOrder) {
  std::vector<std::pair<std::string, std::vector<float>>> got;
  {
    WriteBehind wb(
        [&](const std::string& n, const float* p, size_t k) {
          std::this_thread::sleep_for(std::chrono::microseconds(200));  // a slow disk: the queue fills
          got.push_back({n, std::vector<float>(p, p + k)});
        },
        64);
    for (int i = 0; i < 50; ++i) wb.push("t" + std::to_string(i), std::vector<float>(size_t(i % 7), float(i)));
    wb.drain();
    ASSERT_EQ(got.size(), 50u);
  }
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(got[size_t(i)].first, "t" + std::to_string(i));
    EXPECT_EQ(got[size_t(i)].second, std::vector<float>(size_t(i % 7), float(i)));
  }
}

TEST(WriteBehind, HoldsBackAtMostTheBoundPlusOneTensor) {
  std::atomic<bool> release{false};
  std::atomic<int> written{0};
  WriteBehind wb(
      [&](const std::string&, const float*, size_t) {
        while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        ++written;
      },
      4 * sizeof(float));
  wb.push("a", std::vector<float>(4));  // taken by the writer, which blocks
  std::atomic<int> pushed{1};
  std::thread producer([&] {
    for (int i = 0; i < 3; ++i) {
      wb.push("b", std::vector<float>(4));
      ++pushed;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // "a" (4 floats, in flight) fills the bound; the first "b" waits until the queue is empty
  // of waiting items, so at most one more tensor is accepted while the writer is stuck.
  EXPECT_LE(pushed.load(), 2);
  release = true;
  producer.join();
  wb.drain();
  EXPECT_EQ(written.load(), 4);
}

TEST(WriteBehind, SurfacesTheSinkErrorAndWritesNothingAfterIt) {
  std::vector<std::string> got;
  WriteBehind wb(
      [&](const std::string& n, const float*, size_t) {
        if (n == "bad") throw std::runtime_error("disk full");
        got.push_back(n);
      },
      1 << 20);
  wb.push("ok", {1.0f});
  wb.push("bad", {1.0f});
  EXPECT_THROW(
      {
        for (int i = 0; i < 100; ++i) wb.push("after", {1.0f});
        wb.drain();
      },
      std::runtime_error);
  EXPECT_EQ(got, std::vector<std::string>{"ok"});
}
