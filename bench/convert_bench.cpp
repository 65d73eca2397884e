// Benchmark of `aloepri convert` (HF f32 safetensors -> f16 GGUF): throughput and peak resident
// memory at two model sizes, to show that memory does not grow with the model.
//
//   convert_bench [--dir DIR] [--sizes 512,2048] [--keep]
//
// For each size (MiB of f32 weights) it writes a synthetic llama checkpoint (hidden 1536, vocab
// 32000 with the Llama-2 tokenizer, as many layers as fit) into DIR, then converts it in a fresh
// child process (this binary re-executed with --child) so the child's VmHWM / ru_maxrss measure
// the conversion alone. Prints a Markdown table. Not a test: nothing is asserted.
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "aloepri/export/gguf_export.h"
#include "aloepri/model/model.h"

namespace fs = std::filesystem;
using namespace aloepri;

namespace {

long status_kb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  return -1;
}

int child(const std::string& model_dir, const std::string& out) {
  auto t0 = std::chrono::steady_clock::now();
  HFModel m(model_dir);
  GGUFExportOptions o;
  o.overwrite = true;
  o.progress = false;
  GGUFExportResult r = export_gguf(m, out, DType::F16, o);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("%.3f %llu %llu %ld %ld\n", secs, (unsigned long long)r.bytes_in, (unsigned long long)r.bytes_out,
              status_kb("VmHWM"), ru.ru_maxrss);
  return 0;
}

ModelConfig config_for(int64_t mib) {
  ModelConfig c;
  c.family = Family::Llama;
  c.hidden_size = 1536;
  c.num_attention_heads = 12;
  c.num_key_value_heads = 12;
  c.head_dim = 128;
  c.intermediate_size = 4096;
  c.vocab_size = 32000;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const int64_t fixed = 2 * c.vocab_size * d * 4 + d * 4;
  const int64_t per_layer = (4 * d * d + 3 * d * f + 2 * d) * 4;
  c.num_hidden_layers = std::max<int64_t>(1, (mib * (int64_t(1) << 20) - fixed + per_layer / 2) / per_layer);
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 3 && args[0] == "--child") return child(args[1], args[2]);
  std::string dir = "/tmp/aloepri-convert-bench";
  std::string sizes = "512,2048";
  bool keep = false;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--dir" && i + 1 < args.size()) dir = args[++i];
    else if (args[i] == "--sizes" && i + 1 < args.size()) sizes = args[++i];
    else if (args[i] == "--keep") keep = true;
    else {
      std::cerr << "usage: convert_bench [--dir DIR] [--sizes MiB,MiB,...] [--keep]\n";
      return 2;
    }
  }
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  const std::string vocab = std::string(ALOEPRI_SOURCE_DIR) + "/vocab/llama2";
  fs::create_directories(dir);
  std::printf("| f32 input | layers | GGUF f16 out | wall (s) | read GB/s | peak RSS (VmHWM) |\n");
  std::printf("|---|---|---|---|---|---|\n");
  std::stringstream ss(sizes);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    int64_t mib = std::stoll(tok);
    ModelConfig c = config_for(mib);
    std::string mdir = dir + "/model-" + std::to_string(mib);
    if (!fs::exists(mdir + "/config.json")) {
      fs::remove_all(mdir);
      std::fprintf(stderr, "writing %s (%lld layers)...\n", mdir.c_str(), (long long)c.num_hidden_layers);
      write_synthetic_model(mdir, c, 1, DType::F32);
      for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(vocab + "/" + f, mdir + "/" + f);
    }
    std::string out = dir + "/out-" + std::to_string(mib) + ".gguf";
    std::string cmd = "'" + self + "' --child '" + mdir + "' '" + out + "'";
    FILE* p = ::popen(cmd.c_str(), "r");
    char buf[256] = {};
    bool got = p && std::fgets(buf, sizeof buf, p);
    int rc = p ? ::pclose(p) : -1;
    double secs = 0;
    unsigned long long in = 0, outb = 0;
    long hwm = 0, maxrss = 0;
    if (!got || rc != 0 || std::sscanf(buf, "%lf %llu %llu %ld %ld", &secs, &in, &outb, &hwm, &maxrss) != 5) {
      std::fprintf(stderr, "child failed (rc %d): %s\n", rc, buf);
      return 1;
    }
    std::printf("| %.2f GB | %lld | %.2f GB | %.2f | %.2f | %.1f MiB (ru_maxrss %.1f MiB) |\n", in / 1e9,
                (long long)c.num_hidden_layers, outb / 1e9, secs, in / 1e9 / secs, hwm / 1024.0, maxrss / 1024.0);
    std::fflush(stdout);
    fs::remove(out);
    if (!keep) fs::remove_all(mdir);
  }
  return 0;
}
