// Obfuscation throughput and memory.
//   obfuscate_bench [--work DIR] [--hidden 2048] [--ffn 5632] [--layers 2,20] [--vocab-from DIR]
//                   [--keep] [--reuse] [--profile paper|noise|exact] [--peak-only]
// 1. sgemm peak on this machine (square 2048 f32 GEMM, best of 5) and the BLAS kernel in use.
// 2. For each layer count: synthesizes a llama checkpoint (f32) under DIR (--reuse: keep one
//    already there), obfuscates it with a named parameter set (--profile; default "paper", the
//    report's parameters with h = 128, the heaviest, and the set earlier figures used) in a
//    child process, and reports wall time, GFLOP/s of the weight GEMMs
//    (readers 2 out d d', writers 2 d' d in, embedding and head 2 n d d') against the sgemm peak,
//    seconds per billion parameters, and the child's peak RSS (getrusage) next to the model size:
//    the executor streams layer by layer, so peak RSS must not grow with the layer count. Two
//    RSS figures: at the end of the transform, and including the fingerprints of both models
//    (HFModel::fingerprint streams the mmaps, and touched file pages count in RSS).
// A main() rather than Google Benchmark fixtures: each measurement is one long run in its own
// process, which is what peak RSS needs.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "aloepri/formats/hf_config.h"
#include "aloepri/linalg/linalg.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/engine/synth.h"

namespace fs = std::filesystem;
using namespace aloepri;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static double sgemm_peak_gflops(int n) {
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = now();
    linalg::gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    double dt = now() - t0;
    best = std::max(best, 2.0 * n * n * double(n) / dt / 1e9);
  }
  return best;
}

static double weight_gflop(const ModelConfig& c, int64_t h) {
  const double d = double(c.hidden_size), dp = d + 2.0 * double(h), n = double(c.vocab_size);
  const double q = double(c.q_dim()), kv = double(c.kv_dim()), ff = double(c.intermediate_size);
  const double layer = 2 * dp * d * (q + 2 * kv + 2 * ff) + 2 * dp * d * (q + ff);
  return (double(c.num_hidden_layers) * layer + 2 * 2 * n * d * dp) / 1e9;
}

static uint64_t dir_bytes(const std::string& d) {
  uint64_t s = 0;
  for (auto& e : fs::recursive_directory_iterator(d))
    if (e.is_regular_file()) s += e.file_size();
  return s;
}

int main(int argc, char** argv) {
  std::string work = "/tmp/aloepri-obf-bench", vocab = std::string(ALOEPRI_SOURCE_DIR) + "/vocab/llama2";
  int64_t hidden = 2048, ffn = 5632;
  std::vector<int64_t> layer_counts = {2, 20};
  bool keep = false, reuse = false;
  std::string profile = "paper";
  bool peak_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--work") work = next();
    else if (a == "--hidden") hidden = std::stoll(next());
    else if (a == "--ffn") ffn = std::stoll(next());
    else if (a == "--vocab-from") vocab = next();
    else if (a == "--keep") keep = true;
    else if (a == "--reuse") reuse = keep = true;
    else if (a == "--profile") profile = next();
    else if (a == "--peak-only") peak_only = true;  // the sgemm peak alone, to bracket another run
    else if (a == "--layers") {
      layer_counts.clear();
      std::string s = next();
      size_t p = 0;
      while (p < s.size()) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        layer_counts.push_back(std::stoll(s.substr(p, q - p)));
        p = q + 1;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--work DIR] [--hidden N] [--ffn N] [--layers 2,20] [--vocab-from DIR] [--keep] [--reuse] [--profile paper|noise|exact] [--peak-only]\n",
                   argv[0]);
      return 2;
    }
  }
  const char* ct = std::getenv("OPENBLAS_CORETYPE");
  std::printf("OpenBLAS kernel: %s (OPENBLAS_CORETYPE=%s), threads %d\n", linalg::blas_kernel().c_str(), ct ? ct : "unset",
              linalg::blas_threads());
  const double peak = sgemm_peak_gflops(2048);
  std::printf("sgemm peak (2048^3, best of 5): %.1f GFLOP/s; profile %s\n\n", peak, profile.c_str());
  if (peak_only) return 0;
  std::printf("| layers | model size | params | wall (incl. fingerprints) | transform | weight GEMM GFLOP | GFLOP/s (transform) | %% of sgemm peak | s / 1B params (wall) | peak RSS transform | peak RSS incl. fingerprints |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);

  fs::create_directories(work);
  for (int64_t L : layer_counts) {
    const std::string model = work + "/plain-L" + std::to_string(L), out = work + "/obf-L" + std::to_string(L);
    const bool have = reuse && fs::exists(fs::path(model) / "config.json");
    if (!have) fs::remove_all(model);
    fs::remove_all(out);
    SynthOptions so;
    so.family = Family::Llama;
    so.preset = "small";
    so.hidden = hidden;
    so.layers = L;
    so.heads = hidden / 128;
    so.kv_heads = std::max<int64_t>(1, hidden / 512);
    so.head_dim = 128;
    so.ffn = ffn;
    so.vocab_dir = vocab;
    so.seed = 1;
    if (!have) synthesize(so, model);
    const ModelConfig c = synth_config(so);
    const uint64_t bytes = dir_bytes(model);

    // Obfuscate in a child so its peak RSS is measured alone.
    const double t0 = now();
    pid_t pid = fork();
    if (pid == 0) {
      Seed seed{};
      for (size_t i = 0; i < seed.size(); ++i) seed[i] = uint8_t(i);
      try {
        ObfuscateOptions opt;
        opt.params = ObfuscationParams::profile(profile);
        ObfuscateResult r = obfuscate_model(model, seed, out, opt);
        if (FILE* f = std::fopen((work + "/rss").c_str(), "w")) {
          std::fprintf(f, "%llu %.3f\n", (unsigned long long)r.peak_rss_transform, r.seconds_transform);
          std::fclose(f);
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "obfuscate failed: %s\n", e.what());
        _exit(1);
      }
      _exit(0);
    }
    int status = 0;
    struct rusage ru {};
    wait4(pid, &status, 0, &ru);
    const double wall = now() - t0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "child failed\n");
      return 1;
    }
    unsigned long long rss_transform = 0;
    double t_transform = 0;
    if (FILE* f = std::fopen((work + "/rss").c_str(), "r")) {
      if (std::fscanf(f, "%llu %lf", &rss_transform, &t_transform) != 2) rss_transform = 0;
      std::fclose(f);
    }
    const double gf = weight_gflop(c, ObfuscationParams::profile(profile).expansion);
    const double params = double(c.parameter_count());
    std::printf("| %ld | %.2f GB | %.2fB | %.1f s | %.1f s | %.0f | %.1f | %.0f%% | %.1f | %.2f GB | %.2f GB |\n",
                long(L), bytes / 1e9, params / 1e9, wall, t_transform, gf, gf / t_transform,
                100 * gf / t_transform / peak, wall / (params / 1e9), double(rss_transform) / 1e9,
                double(ru.ru_maxrss) * 1024 / 1e9);
    std::fflush(stdout);
    if (!keep) {
      fs::remove_all(model);
      fs::remove_all(out);
    }
  }
  return 0;
}
