// aloe-train: trains the project's small reference model (models/aloe-mini) with libtorch on CPU,
// evaluates it against unigram/bigram baselines, exports it as a standard HF checkpoint, and
// checks the export against the project's reference forward pass.
//
// The network is the project's shared libtorch Llama module (tools/torch_model/llama.h: the Hugging
// Face Llama semantics the rest of the project assumes), whose parameters carry their HF tensor
// names, so export is a straight copy.
//
// Subcommands (see --help): train, eval, export, verify.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "aloepri/core/dtype.h"
#include "aloepri/core/error.h"
#include "aloepri/engine/forward.h"
#include "aloepri/formats/hf_config.h"
#include "aloepri/model/model.h"
#include "aloepri/core/output.h"
#include "aloepri/formats/safetensors.h"
#include "aloepri/formats/token_file.h"
#include "torch_model/llama.h"

namespace fs = std::filesystem;
using aloepri::Error;
using aloepri::ModelConfig;
using aloepri::read_token_file;
using aloepri::torch_model::Llama;
using json = nlohmann::json;

namespace {

// Where parameters and batches live: CPU (the documented recipe) or CUDA (--device cuda, when
// libtorch was built with it). Initialisation and batch sampling always run on the CPU, so the
// starting point and the data order do not depend on the device.
torch::Device g_device = torch::kCPU;

// ---------------------------------------------------------------- data

// The batch of step `step` depends only on (seed, step), so a resumed run sees the same data.
torch::Tensor sample_batch(const std::vector<uint16_t>& ids, int64_t batch, int64_t seq, uint64_t seed,
                           int64_t step) {
  std::seed_seq ss{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                   static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32), 0x5eedu};
  std::mt19937_64 rng(ss);
  std::uniform_int_distribution<size_t> pick(0, ids.size() - static_cast<size_t>(seq) - 2);
  auto out = torch::empty({batch, seq + 1}, torch::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    const size_t off = pick(rng);
    for (int64_t t = 0; t <= seq; ++t) p[b * (seq + 1) + t] = ids[off + static_cast<size_t>(t)];
  }
  return out;
}

// ---------------------------------------------------------------- model

// The network is the shared libtorch module (tools/torch_model); a fresh one gets the HF
// initialisation: normal(0, 0.02) for matrices, ones for norms, drawn in expected_tensors order.
Llama init_model(const ModelConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  std::map<std::string, torch::Tensor> p;
  for (const auto& [name, shape] : aloepri::expected_tensors(c))
    p[name] = shape.size() == 1 ? torch::ones({shape[0]}) : torch::randn({shape[0], shape[1]}) * 0.02;
  for (auto& [n, t] : p) t = t.to(g_device).set_requires_grad(true);
  return Llama(c, std::move(p), "aloe-train flags");
}

// ---------------------------------------------------------------- checkpoints

// A checkpoint holds the config, the step, the parameters (by index, in export order) and the
// AdamW state. Written to a temporary name and renamed, so a kill never leaves a torn file.
void save_checkpoint(const std::string& path, const Llama& m, torch::optim::AdamW& opt, int64_t step,
                     const json& args) {
  torch::serialize::OutputArchive ar;
  json meta = {{"config", m.config().to_json()}, {"step", step}, {"args", args}, {"names", m.names()}};
  const std::string ms = meta.dump();
  ar.write("meta", torch::from_blob(const_cast<char*>(ms.data()), {int64_t(ms.size())}, torch::kChar).clone());
  for (size_t i = 0; i < m.names().size(); ++i) ar.write("p" + std::to_string(i), m.at(m.names()[i]).detach().cpu());
  torch::serialize::OutputArchive oa;
  opt.save(oa);
  ar.write("optim", oa);
  const std::string tmp = path + ".tmp";
  ar.save_to(tmp);
  fs::rename(tmp, path);
}

json read_meta(torch::serialize::InputArchive& ar) {
  torch::Tensor t;
  ar.read("meta", t);
  return json::parse(std::string(static_cast<const char*>(t.data_ptr()), size_t(t.numel())));
}

// Reads a checkpoint's meta block and parameters (by name, on g_device), and optionally the
// optimizer state.
json read_checkpoint(const std::string& path, std::map<std::string, torch::Tensor>& params,
                     torch::optim::AdamW* opt) {
  if (!fs::exists(path)) throw Error(path, "checkpoint not found");
  torch::serialize::InputArchive ar;
  ar.load_from(path);
  json meta = read_meta(ar);
  const auto names = meta.at("names").get<std::vector<std::string>>();
  for (size_t i = 0; i < names.size(); ++i) {
    torch::Tensor t;
    ar.read("p" + std::to_string(i), t);
    params[names[i]] = t.to(g_device);
  }
  if (opt) {
    torch::serialize::InputArchive oa;
    ar.read("optim", oa);
    opt->load(oa);
  }
  return meta;
}

// A checkpoint's model (for eval and export).
Llama load_checkpoint(const std::string& path, json* meta_out = nullptr) {
  std::map<std::string, torch::Tensor> p;
  json meta = read_checkpoint(path, p, nullptr);
  Llama m(ModelConfig::from_json(meta.at("config"), path), std::move(p), path);
  if (meta_out) *meta_out = meta;
  return m;
}

// ---------------------------------------------------------------- evaluation

struct EvalResult {
  double nll = 0;        // mean negative log-likelihood (nats)
  double top1 = 0;       // next-token accuracy
  int64_t targets = 0;
  double ppl() const { return std::exp(nll); }
};

// Non-overlapping windows of seq tokens over the held-out stream; every position after the first
// of a window is a target (predicted from the window's earlier tokens). The baselines below use
// exactly the same targets. With max_windows > 0, that many windows spread evenly over the stream
// (the stream is ordered by source, so a prefix would see one source only).
std::vector<int64_t> eval_windows_of(size_t n_ids, int64_t seq, int64_t max_windows) {
  const int64_t total = int64_t(n_ids) / seq;
  const int64_t n = max_windows > 0 ? std::min(total, max_windows) : total;
  std::vector<int64_t> w(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) w[size_t(i)] = i * total / n;
  return w;
}

EvalResult eval_model(const Llama& m, const std::vector<uint16_t>& ids, int64_t seq, int64_t max_windows,
                      int64_t batch = 8) {
  torch::NoGradGuard ng;
  const auto wins = eval_windows_of(ids.size(), seq, max_windows);
  const int64_t nwin = int64_t(wins.size());
  double nll = 0;
  int64_t correct = 0, n = 0;
  for (int64_t w0 = 0; w0 < nwin; w0 += batch) {
    const int64_t b = std::min(batch, nwin - w0);
    auto x = torch::empty({b, seq}, torch::kLong);
    auto* p = x.data_ptr<int64_t>();
    for (int64_t j = 0; j < b; ++j)
      for (int64_t t = 0; t < seq; ++t) p[j * seq + t] = ids[size_t(wins[size_t(w0 + j)] * seq + t)];
    x = x.to(g_device);
    auto logits = m.logits(x.narrow(1, 0, seq - 1)).to(torch::kFloat);
    auto tgt = x.narrow(1, 1, seq - 1);
    auto lp = torch::log_softmax(logits, -1);
    nll -= lp.gather(-1, tgt.unsqueeze(-1)).sum().item<double>();
    correct += (logits.argmax(-1) == tgt).sum().item<int64_t>();
    n += b * (seq - 1);
  }
  return {nll / double(n), double(correct) / double(n), n};
}

// Unigram (add-one) and bigram (Witten-Bell interpolated with that unigram) models counted on
// the training stream, scored on the same targets as eval_model.
std::pair<EvalResult, EvalResult> eval_baselines(const std::vector<uint16_t>& train,
                                                 const std::vector<uint16_t>& held, int64_t seq,
                                                 int64_t max_windows, int64_t vocab) {
  const size_t V = static_cast<size_t>(vocab);
  std::vector<double> uni(V, 0.0);
  std::vector<std::unordered_map<uint16_t, uint32_t>> bi(V);
  for (size_t i = 0; i < train.size(); ++i) {
    if (train[i] >= vocab) throw Error("train.bin", "token id " + std::to_string(train[i]) + " >= vocab");
    uni[train[i]] += 1;
    if (i + 1 < train.size()) bi[train[i]][train[i + 1]]++;
  }
  const double N = double(train.size());
  std::vector<double> puni(V);
  for (int64_t v = 0; v < vocab; ++v) puni[size_t(v)] = (uni[size_t(v)] + 1.0) / (N + double(vocab));
  const auto uni_best = uint16_t(std::max_element(uni.begin(), uni.end()) - uni.begin());
  // Per context: total count, distinct followers, argmax follower.
  std::vector<double> ctot(V, 0.0), ctypes(V, 0.0);
  std::vector<uint16_t> cbest(V, uni_best);
  for (int64_t v = 0; v < vocab; ++v) {
    uint32_t best = 0;
    for (const auto& [w, c] : bi[size_t(v)]) {
      ctot[size_t(v)] += c;
      if (c > best || (c == best && w < cbest[size_t(v)])) best = c, cbest[size_t(v)] = w;
    }
    ctypes[size_t(v)] = double(bi[size_t(v)].size());
  }
  EvalResult u, b;
  int64_t uc = 0, bc = 0;
  for (int64_t w : eval_windows_of(held.size(), seq, max_windows))
    for (int64_t t = 1; t < seq; ++t) {
      const uint16_t prev = held[size_t(w * seq + t - 1)], cur = held[size_t(w * seq + t)];
      u.nll -= std::log(puni[cur]);
      uc += cur == uni_best;
      double pb = puni[cur];
      if (ctot[prev] > 0) {
        const auto it = bi[prev].find(cur);
        const double c = it == bi[prev].end() ? 0.0 : double(it->second);
        const double lam = ctot[prev] / (ctot[prev] + ctypes[prev]);
        pb = lam * c / ctot[prev] + (1 - lam) * puni[cur];
      }
      b.nll -= std::log(pb);
      bc += cur == cbest[prev];
      u.targets++;
    }
  b.targets = u.targets;
  u.nll /= double(u.targets);
  b.nll /= double(b.targets);
  u.top1 = double(uc) / double(u.targets);
  b.top1 = double(bc) / double(b.targets);
  return {u, b};
}

// ---------------------------------------------------------------- export / import

// Writes config.json + model.safetensors (bf16) + the tokenizer files into a new directory.
void export_model(const Llama& m, const std::string& out_dir, const std::string& tokenizer_dir,
                  bool overwrite, const std::map<std::string, std::string>& metadata) {
  aloepri::AtomicDir dir(out_dir, overwrite);
  ModelConfig c = m.config();
  c.torch_dtype = "bfloat16";
  aloepri::write_file_atomic(dir.file("config.json"), c.to_json().dump(2) + "\n", true);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path src = fs::path(tokenizer_dir) / f;
    if (!fs::exists(src)) throw Error(src.string(), "tokenizer file missing");
    fs::copy_file(src, dir.file(f), fs::copy_options::overwrite_existing);
  }
  // Keep files the caller put there earlier (the model card) when overwriting.
  if (fs::exists(fs::path(out_dir) / "MODEL_CARD.md"))
    fs::copy_file(fs::path(out_dir) / "MODEL_CARD.md", dir.file("MODEL_CARD.md"));
  std::map<std::string, std::string> md = metadata;
  md["format"] = "pt";
  aloepri::SafetensorsWriter w(dir.temp_path(), 0, md);
  for (const auto& n : m.names()) w.add({n, aloepri::DType::BF16, m.at(n).sizes().vec()});
  for (const auto& n : m.names()) {
    auto t = m.at(n).detach().cpu().to(torch::kFloat).contiguous();
    w.write_f32(n, t.data_ptr<float>(), size_t(t.numel()));
  }
  w.finish();
  if (overwrite && fs::exists(out_dir)) fs::remove_all(out_dir);
  dir.commit();
}

std::vector<int64_t> parse_ids(const std::string& s) {
  std::vector<int64_t> ids;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ',')) ids.push_back(std::stoll(tok));
  if (ids.empty()) throw Error("--ids", "no token ids given");
  return ids;
}

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"aloe-train: train / evaluate / export the aloe-mini reference model (libtorch, CPU)"};
  app.require_subcommand(1);
  int threads = 2;
  app.add_option("--threads", threads, "libtorch intra-op threads")->capture_default_str();
  std::string device = "cpu";
  app.add_option("--device", device,
                 "cpu, or cuda when libtorch has CUDA (see tools/train/cuda_build.sh); results match the "
                 "CPU recipe statistically, not bit for bit")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();

  // train
  auto* tr = app.add_subcommand("train", "train (or --resume) a model; checkpoints to --run-dir");
  std::string data_dir = "build/corpus", run_dir;
  ModelConfig cfg;
  cfg.family = aloepri::Family::Llama;
  cfg.hidden_size = 256, cfg.num_hidden_layers = 4, cfg.num_attention_heads = 8;
  cfg.num_key_value_heads = 4, cfg.head_dim = 32, cfg.intermediate_size = 688, cfg.vocab_size = 32000;
  cfg.max_position_embeddings = 2048, cfg.rms_norm_eps = 1e-5, cfg.rope_theta = 10000.0;
  cfg.tie_word_embeddings = true, cfg.bos_token_id = 1, cfg.eos_token_id = 2;
  int64_t steps = 1000, batch = 8, seq = 256, warmup = 50, ckpt_every = 100, eval_every = 100,
          eval_windows = 16, log_every = 10;
  double lr = 3e-3, min_lr_frac = 0.1, wd = 0.1, clip = 1.0, max_minutes = 0, minutes = 0;
  uint64_t seed = 1;
  bool resume = false, untied = false;
  tr->add_option("--data", data_dir, "directory with train.bin / heldout.bin")->capture_default_str();
  tr->add_option("--run-dir", run_dir, "checkpoints and log go here")->required();
  tr->add_option("--hidden", cfg.hidden_size)->capture_default_str();
  tr->add_option("--layers", cfg.num_hidden_layers)->capture_default_str();
  tr->add_option("--heads", cfg.num_attention_heads)->capture_default_str();
  tr->add_option("--kv-heads", cfg.num_key_value_heads)->capture_default_str();
  tr->add_option("--head-dim", cfg.head_dim)->capture_default_str();
  tr->add_option("--ffn", cfg.intermediate_size)->capture_default_str();
  tr->add_flag("--untied", untied, "separate lm_head (default: tied to the embedding)");
  tr->add_option("--steps", steps)->capture_default_str();
  tr->add_option("--batch", batch, "sequences per step")->capture_default_str();
  tr->add_option("--seq", seq, "tokens per sequence")->capture_default_str();
  tr->add_option("--lr", lr, "peak learning rate")->capture_default_str();
  tr->add_option("--min-lr-frac", min_lr_frac, "cosine floor as a fraction of --lr")->capture_default_str();
  tr->add_option("--warmup", warmup, "linear warmup steps")->capture_default_str();
  tr->add_option("--weight-decay", wd, "AdamW decay on matrices (not norms)")->capture_default_str();
  tr->add_option("--clip", clip, "gradient-norm clip")->capture_default_str();
  tr->add_option("--seed", seed)->capture_default_str();
  tr->add_option("--ckpt-every", ckpt_every)->capture_default_str();
  tr->add_option("--eval-every", eval_every)->capture_default_str();
  tr->add_option("--eval-windows", eval_windows, "held-out windows for the periodic eval")->capture_default_str();
  tr->add_option("--log-every", log_every)->capture_default_str();
  tr->add_option("--max-minutes", max_minutes, "stop (with a checkpoint) after this wall time; 0 = none")
      ->capture_default_str();
  tr->add_flag("--resume", resume, "continue from <run-dir>/last.pt");
  // The machine is shared, so step throughput swings several-fold within an hour; a schedule
  // over a wall-time budget ends the cosine on time whatever the throughput. The cost is that
  // the step count is an outcome (logged, and stored in the checkpoint), not an input.
  tr->add_option("--minutes", minutes,
                 "time-budget schedule: cosine over this many minutes of training time (excluding "
                 "evals/checkpoints, summed across resumes), stop when spent; --steps is then a cap")
      ->capture_default_str();

  // eval
  auto* ev = app.add_subcommand("eval", "held-out perplexity / top-1 of a checkpoint or model dir, plus baselines");
  std::string ckpt, model_dir, json_out;
  int64_t ev_windows = 0, ev_seq = 256;
  bool baselines = true;
  ev->add_option("--checkpoint", ckpt, "a .pt checkpoint");
  ev->add_option("--model", model_dir, "an exported HF directory (evaluates the stored bf16 weights)");
  ev->add_option("--data", data_dir)->capture_default_str();
  ev->add_option("--seq", ev_seq)->capture_default_str();
  ev->add_option("--windows", ev_windows, "windows spread evenly over the held-out stream; 0 = all")->capture_default_str();
  ev->add_option("--json", json_out, "write the figures here");
  ev->add_flag("!--no-baselines", baselines, "skip unigram/bigram");

  // export
  auto* ex = app.add_subcommand("export", "checkpoint -> HF directory (config.json, bf16 model.safetensors, tokenizer)");
  std::string out_dir, tok_dir = "vocab/llama2";
  bool overwrite = false;
  ex->add_option("--checkpoint", ckpt)->required();
  ex->add_option("--out", out_dir)->required();
  ex->add_option("--tokenizer", tok_dir, "directory with tokenizer.json + tokenizer_config.json")->capture_default_str();
  ex->add_flag("--overwrite", overwrite);

  // verify
  auto* vf = app.add_subcommand("verify", "libtorch (f64) vs the project's ReferenceModel on an exported model");
  std::string ids_str = "1,415,2936,9060,285,2";
  double tol = 1e-6;
  vf->add_option("--model", model_dir)->required();
  vf->add_option("--ids", ids_str, "comma-separated token ids")->capture_default_str();
  vf->add_option("--tol", tol, "max abs logit difference allowed")->capture_default_str();
  int64_t greedy_n = 0;
  vf->add_option("--greedy", greedy_n, "also print the reference model's greedy continuation of --ids")
      ->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(threads);
  if (device == "cuda") {
    if (!torch::cuda::is_available()) {
      std::cerr << "aloe-train: --device cuda, but this libtorch sees no CUDA device" << std::endl;
      return 2;
    }
    g_device = torch::Device(torch::kCUDA);
  }

  try {
    if (*tr) {
      cfg.tie_word_embeddings = !untied;
      cfg.validate("aloe-train flags");
      fs::create_directories(run_dir);
      const auto train_ids = read_token_file(data_dir + "/train.bin");
      const auto held_ids = read_token_file(data_dir + "/heldout.bin");
      const std::string last = run_dir + "/last.pt";
      json args = {{"steps", steps}, {"batch", batch}, {"seq", seq}, {"lr", lr}, {"min_lr_frac", min_lr_frac},
                   {"warmup", warmup}, {"weight_decay", wd}, {"clip", clip}, {"seed", seed},
                   {"data", data_dir}, {"train_tokens", train_ids.size()}, {"threads", threads},
                   {"minutes", minutes}};
      Llama m = init_model(cfg, seed);
      // Decay matrices only (norm gains stay at their scale), as is usual for AdamW on LLMs.
      std::vector<torch::Tensor> decay, no_decay;
      for (const auto& n : m.names()) (m.at(n).dim() >= 2 ? decay : no_decay).push_back(m.at(n));
      std::vector<torch::optim::OptimizerParamGroup> groups;
      groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                     torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).weight_decay(wd)));
      groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                        torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).weight_decay(0.0)));
      torch::optim::AdamW opt(std::move(groups));
      int64_t step = 0;
      double train_s = 0;  // time spent in training steps, carried across resumes
      if (resume) {
        std::map<std::string, torch::Tensor> saved;
        json meta = read_checkpoint(last, saved, &opt);
        step = meta.at("step").get<int64_t>();
        train_s = meta.at("args").value("train_seconds", 0.0);
        if (meta.at("config") != cfg.to_json())
          throw Error(last, "checkpoint config differs from the flags given with --resume");
        torch::NoGradGuard ng;
        for (const auto& [n, t] : saved) m.at(n).copy_(t);
        std::cout << "resumed from " << last << " at step " << step << std::endl;
      }
      std::cout << "model: " << cfg.parameter_count() << " parameters; train " << train_ids.size()
                << " tokens, held-out " << held_ids.size() << "; " << steps << " steps x " << batch << " x "
                << seq << " tokens" << std::endl;
      const double t0 = now_s();
      double tl = t0, loss_acc = 0;
      int64_t loss_n = 0;
      while (step < steps) {
        // Linear warmup, then cosine from lr down to min_lr_frac*lr at the last step.
        // With --minutes, progress is the share of the time budget spent instead of steps.
        double cur = lr;
        if (minutes > 0 && train_s >= minutes * 60) {
          std::cout << "time budget of " << minutes << " min spent at step " << step << std::endl;
          break;
        }
        if (step < warmup) {
          cur = lr * double(step + 1) / double(warmup);
        } else {
          const double pr = minutes > 0 ? train_s / (minutes * 60)
                                         : double(step - warmup) / double(std::max<int64_t>(1, steps - warmup));
          cur = lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + std::cos(M_PI * pr)));
        }
        for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(cur);
        const double ts = now_s();
        auto b = sample_batch(train_ids, batch, seq, seed, step).to(g_device);
        auto logits = m.logits(b.narrow(1, 0, seq));
        auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, cfg.vocab_size}),
                                                         b.narrow(1, 1, seq).reshape({-1}));
        opt.zero_grad();
        loss.backward();
        torch::nn::utils::clip_grad_norm_(m.tensors(m.names()), clip);
        opt.step();
        ++step;
        loss_acc += loss.item<double>();
        train_s += now_s() - ts;
        args["train_seconds"] = train_s;
        args["tokens_seen"] = step * batch * seq;
        ++loss_n;
        if (step % log_every == 0 || step == steps) {
          const double t = now_s();
          std::cout << "step " << step << " loss " << fmt("%.4f", loss_acc / double(loss_n)) << " lr "
                    << fmt("%.2e", cur) << " tok/s " << fmt("%.0f", double(loss_n * batch * seq) / (t - tl))
                    << " elapsed " << fmt("%.1f", (t - t0) / 60) << "min" << std::endl;
          tl = t, loss_acc = 0, loss_n = 0;
        }
        const bool out_of_time = max_minutes > 0 && (now_s() - t0) / 60 > max_minutes;
        if (step % eval_every == 0 || step == steps || out_of_time) {
          auto r = eval_model(m, held_ids, seq, eval_windows);
          std::cout << "eval step " << step << " heldout_loss " << fmt("%.4f", r.nll) << " ppl "
                    << fmt("%.2f", r.ppl()) << " top1 " << fmt("%.4f", r.top1) << std::endl;
        }
        const bool budget_done = minutes > 0 && train_s >= minutes * 60;
        if (budget_done && step % eval_every != 0 && step != steps && !out_of_time) {
          auto r = eval_model(m, held_ids, seq, eval_windows);
          std::cout << "eval step " << step << " heldout_loss " << fmt("%.4f", r.nll) << " ppl "
                    << fmt("%.2f", r.ppl()) << " top1 " << fmt("%.4f", r.top1) << std::endl;
        }
        if (step % ckpt_every == 0 || step == steps || out_of_time || budget_done) {
          save_checkpoint(last, m, opt, step, args);
          std::cout << "checkpoint " << last << " step " << step << std::endl;
        }
        if (out_of_time) {
          std::cout << "stopping: --max-minutes " << max_minutes << " reached at step " << step << std::endl;
          break;
        }
      }
      std::cout << "training wall time " << fmt("%.1f", (now_s() - t0) / 60) << " min (this run), "
                << fmt("%.1f", train_s / 60) << " min in steps (all runs), " << step << " steps, "
                << step * batch * seq << " tokens" << std::endl;
      return 0;
    }

    if (*ev) {
      if (ckpt.empty() && model_dir.empty()) throw Error("eval", "give --checkpoint or --model");
      const std::string what = ckpt.empty() ? model_dir : ckpt;
      const Llama m = ckpt.empty() ? Llama::load(model_dir, torch::kFloat, g_device) : load_checkpoint(ckpt);
      const auto held = read_token_file(data_dir + "/heldout.bin");
      const double t0 = now_s();
      auto r = eval_model(m, held, ev_seq, ev_windows);
      json j = {{"model", what},
                {"seq", ev_seq},
                {"targets", r.targets},
                {"model_nll", r.nll},
                {"model_ppl", r.ppl()},
                {"model_top1", r.top1},
                {"eval_seconds", now_s() - t0}};
      if (baselines) {
        const auto train = read_token_file(data_dir + "/train.bin");
        auto [u, b] = eval_baselines(train, held, ev_seq, ev_windows, m.config().vocab_size);
        j["unigram_ppl"] = u.ppl(), j["unigram_top1"] = u.top1;
        j["bigram_ppl"] = b.ppl(), j["bigram_top1"] = b.top1;
      }
      std::cout << j.dump(2) << std::endl;
      if (!json_out.empty()) aloepri::write_file_atomic(json_out, j.dump(2) + "\n", true);
      return 0;
    }

    if (*ex) {
      json meta;
      const Llama m = load_checkpoint(ckpt, &meta);
      export_model(m, out_dir, tok_dir, overwrite,
                   {{"aloepri.trained_by", "tools/train aloe-train"},
                    {"aloepri.step", std::to_string(meta.at("step").get<int64_t>())},
                    {"aloepri.args", meta.at("args").dump()}});
      std::cout << "exported step " << meta.at("step") << " to " << out_dir << std::endl;
      return 0;
    }

    if (*vf) {
      // Both sides read the same stored bf16 weights; libtorch computes in f64, the reference
      // holds f32 weights (exact for bf16 values) and accumulates in f64.
      const Llama m = Llama::load(model_dir, torch::kDouble, g_device);
      const auto ids = parse_ids(ids_str);
      torch::Tensor x = torch::tensor(ids, torch::kLong).unsqueeze(0);
      torch::Tensor lt;
      {
        torch::NoGradGuard ng;
        lt = m.logits(x.to(g_device)).squeeze(0).cpu().contiguous();  // [T, V]
      }
      auto ref = aloepri::ReferenceModel::load(model_dir);
      const auto rl = ref.forward(ids);
      const int64_t V = m.config().vocab_size;
      if (int64_t(rl.size()) != int64_t(ids.size()) * V)
        throw Error("verify", "reference returned " + std::to_string(rl.size()) + " logits");
      const double* a = lt.data_ptr<double>();
      double maxdiff = 0, maxabs = 0;
      int64_t agree = 0;
      for (size_t t = 0; t < ids.size(); ++t) {
        int64_t am = 0, bm = 0;
        for (int64_t v = 0; v < V; ++v) {
          const double x1 = a[t * V + v], x2 = rl[t * V + v];
          maxdiff = std::max(maxdiff, std::abs(x1 - x2));
          maxabs = std::max(maxabs, std::abs(x2));
          if (x1 > a[t * V + am]) am = v;
          if (x2 > rl[t * V + bm]) bm = v;
        }
        agree += am == bm;
      }
      std::cout << "verify " << model_dir << ": " << ids.size() << " positions, max |logit| " << fmt("%.4f", maxabs)
                << ", max abs diff " << fmt("%.3e", maxdiff) << ", argmax agree " << agree << "/" << ids.size()
                << std::endl;
      if (greedy_n > 0) {
        std::cout << "greedy:";
        for (int64_t id : ref.greedy(ids, greedy_n)) std::cout << " " << id;
        std::cout << std::endl;
      }
      return maxdiff <= tol ? 0 : 1;
    }
  } catch (const Error& e) {
    std::cerr << "aloe-train: " << e.what() << std::endl;
    return e.code();
  } catch (const std::exception& e) {
    std::cerr << "aloe-train: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
