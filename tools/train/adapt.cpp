// aloe-adapt: noise-aware adaptation of a plaintext model before obfuscation (issue 6).
//
// Client-side and offline: the obfuscator adds noise alpha_e sigma_e N_e to the embedding and
// alpha_h sigma_h N_h to the head, both drawn from the key's seed (streams "noise/embed" and
// "noise/head", plaintext row order, src/obfuscate/transform.cpp). This tool rebuilds exactly
// that noisy embedding and head (through obf::transform_vocab_matrix with identity tau and key
// matrix, so the draws are the obfuscator's own), freezes them, and fine-tunes the body (every
// layer and the final norm) on training text so the body expects them. It writes an ordinary HF
// checkpoint whose embedding/head are the ORIGINAL plaintext ones (the obfuscator adds the same
// noise again) and whose config.json carries "aloepri_adapted": {key_id, alpha_e, alpha_h,
// noise_scale, base_fingerprint, ...}. `aloepri obfuscate` checks that record against its key
// and parameters (a different key or noise would make the adaptation useless) and strips it
// from the served config.
//
// --train-vocab (issue 14, private whole-model adaptation): the embedding and head are trained
// too, starting from the same noisy draws. The checkpoint then holds those trained noisy
// matrices (untied, each its own tensor) and records "emb_head_noise": "in_checkpoint", so
// `aloepri obfuscate` applies only the exact transforms to them and does not add the noise a
// second time. The record also carries the relative drift of every trained tensor from the
// public one ("drift"), the figure the privacy side is measured against.
//
// usage: aloe-adapt --model models/aloe-mini --key K --alpha-e 0.75 --alpha-h 0.2 --data build/corpus
//                   --out DIR [--minutes 3] [--steps N] [--lr 1e-3] [--batch 4] [--seq 256]
//                   [--noise-scale global|per-row] [--threads 2] [--seed 1] [--force]
//                   [--train-vocab [--vocab-lr 1e-3]]
// --alpha-e 0 --alpha-h 0 is the control: the same fine-tuning without noise (with the same
// --train-vocab, so the same tensors are trained on the same batches).
// GPU runs (tools/train/cuda_build.sh style, -DALOEPRI_ADAPT_STANDALONE: no obfuscate module):
// --device cuda --body-out F writes only the trained body; `--body-in F --steps 0` on the CPU
// build assembles the checkpoint (and checks the noise replica against the obfuscator's).
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>

#include "aloepri/core/error.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/attention.h"
#include "aloepri/obfuscate/ffn.h"
#include "aloepri/obfuscate/residual.h"
#include "aloepri/obfuscate/vocab.h"
#ifndef ALOEPRI_ADAPT_STANDALONE
#include "aloepri/obfuscate/executor.h"
#endif
#include "aloepri/core/output.h"
#include "aloepri/formats/safetensors.h"
#include "aloepri/formats/token_file.h"
#include "torch_model/llama.h"

namespace fs = std::filesystem;
using namespace aloepri;

namespace {

torch::Tensor to_torch(const Tensor& t) {
  std::vector<int64_t> shape(t.shape.begin(), t.shape.end());
  return torch::from_blob(const_cast<float*>(t.ptr()), shape, torch::kFloat).clone();
}

// The obfuscator's noise on a vocabulary matrix [n, d], replicated with the core RNG alone (for
// GPU builds without the obfuscate module): same stream, same row order, same sigma rule as
// obf::transform_vocab_matrix (checked against it by the CPU build on every run).
Tensor noisy_replica(const Tensor& W, double alpha, obf::NoiseScale ns, const Seed& seed, const std::string& stream) {
  const int64_t n = W.rows(), d = W.cols();
  Tensor out = W;
  if (alpha == 0) return out;
  RngStream rng(seed, stream);
  double gstd = 0;
  if (ns == obf::NoiseScale::Global) {
    double sum = 0, s2 = 0;
    for (int64_t i = 0; i < n * d; ++i) sum += W.data[size_t(i)];
    const double mean = sum / double(n * d);
    for (int64_t i = 0; i < n * d; ++i) s2 += (W.data[size_t(i)] - mean) * (W.data[size_t(i)] - mean);
    gstd = std::sqrt(s2 / double(n * d));
  }
  for (int64_t r = 0; r < n; ++r) {
    float* row = out.ptr() + r * d;
    double sigma = gstd;
    if (ns == obf::NoiseScale::PerRow) {
      double s = 0, q = 0;
      for (int64_t k = 0; k < d; ++k) s += row[k];
      const double mean = s / double(d);
      for (int64_t k = 0; k < d; ++k) q += (row[k] - mean) * (row[k] - mean);
      sigma = std::sqrt(q / double(d));
    }
    sigma *= alpha;
    for (int64_t k = 0; k < d; ++k) row[k] = float(double(row[k]) + sigma * rng.normal());
  }
  return out;
}

#ifndef ALOEPRI_ADAPT_STANDALONE
Tensor noisy_obfuscator(const Tensor& W, double alpha, obf::NoiseScale ns, const Seed& seed, const std::string& stream) {
  const int64_t n = W.rows(), d = W.cols();
  std::vector<int64_t> id(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) id[size_t(i)] = i;
  Tensor I({d, d});
  for (int64_t i = 0; i < d; ++i) I.at(i, i) = 1.0f;
  RngStream rng(seed, stream);
  auto fetch = [&W](int64_t r0, int64_t m, float* dst) {
    std::copy(W.ptr() + r0 * W.cols(), W.ptr() + (r0 + m) * W.cols(), dst);
  };
  return obf::transform_vocab_matrix(n, d, fetch, id, alpha, ns, rng, {}, I, false);
}
#endif

Tensor noisy(const Tensor& W, double alpha, obf::NoiseScale ns, const Seed& seed, const std::string& stream) {
  Tensor r = noisy_replica(W, alpha, ns, seed, stream);
#ifndef ALOEPRI_ADAPT_STANDALONE
  const Tensor o = noisy_obfuscator(W, alpha, ns, seed, stream);
  require(o.data == r.data, stream, "noise replica differs from the obfuscator's noise", kExitError);
#endif
  return r;
}

std::string key_id(const Seed& seed) {
  RngStream r(seed, "adapt/key-id");  // = aloepri::adaptation_key_id (obfuscate/executor.h)
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)r.next_u64());
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"aloe-adapt: noise-aware adaptation of a plaintext model before obfuscation"};
  std::string model, key_path, data, out, noise_scale = "global", device = "cpu", body_in, body_out;
  double alpha_e = 0.75, alpha_h = 0.2, lr = 1e-3, minutes = 3, wd = 0.0, vocab_lr = -1;
  int64_t steps = 0, batch = 4, seq = 256, threads = 2, seed_opt = 1, warmup = 10;
  bool force = false, train_vocab = false;
  app.add_option("--model", model, "Plaintext HF model directory")->required();
  app.add_option("--key", key_path, "Client key file (the seed the obfuscation will use)")->required();
  app.add_option("--data", data, "Corpus directory with train.bin (uint16 ids)");
  app.add_option("--out", out, "Adapted checkpoint directory to create");
  app.add_option("--device", device, "cpu | cuda");
  app.add_option("--body-in", body_in, "Start from the body tensors in this safetensors file");
  app.add_option("--body-out", body_out, "Write only the trained body (f32 safetensors) here, no checkpoint");
  app.add_option("--alpha-e", alpha_e, "Embedding noise the obfuscation will use");
  app.add_option("--alpha-h", alpha_h, "Head noise the obfuscation will use");
  app.add_option("--noise-scale", noise_scale, "global | per-row (as the obfuscation will use)");
  app.add_option("--lr", lr, "AdamW learning rate (default 1e-3)");
  app.add_option("--weight-decay", wd, "AdamW weight decay (default 0)");
  app.add_option("--minutes", minutes, "Wall-clock budget (default 3)");
  app.add_option("--steps", steps, "Step budget (0 = minutes only)");
  app.add_option("--warmup", warmup, "Linear warm-up steps (default 10)");
  app.add_option("--batch", batch, "Sequences per step (default 4)");
  app.add_option("--seq", seq, "Sequence length (default 256)");
  app.add_option("--threads", threads, "Torch threads (default 2)");
  app.add_option("--seed", seed_opt, "Data sampling seed (default 1)");
  app.add_flag("--force", force, "Replace an existing --out");
  app.add_flag("--train-vocab", train_vocab,
               "Also train the embedding and head from their noisy draws; the checkpoint then carries them "
               "(aloepri_adapted.emb_head_noise = in_checkpoint) and obfuscate adds no noise to them");
  app.add_option("--vocab-lr", vocab_lr, "Learning rate of the embedding/head with --train-vocab (default: --lr)");
  CLI11_PARSE(app, argc, argv);
  try {
    torch::set_num_threads(int(threads));
    torch::manual_seed(uint64_t(seed_opt));
    const obf::NoiseScale ns = noise_scale == "per-row" ? obf::NoiseScale::PerRow : obf::NoiseScale::Global;
    require(noise_scale == "global" || noise_scale == "per-row", "--noise-scale", "global or per-row", kExitUsage);
    require(!out.empty() || !body_out.empty(), "--out", "give --out or --body-out", kExitUsage);
    require(train_vocab || vocab_lr < 0, "--vocab-lr", "only with --train-vocab", kExitUsage);
    if (vocab_lr < 0) vocab_lr = lr;
    if (!out.empty()) refuse_existing(out, force);
    if (!body_out.empty()) refuse_existing(body_out, force);
    const torch::Device dev(device == "cuda" ? torch::kCUDA : torch::kCPU);
    std::unique_ptr<SafetensorsReader> bin_body;
    if (!body_in.empty()) bin_body = std::make_unique<SafetensorsReader>(body_in);
    KeyFile key = KeyFile::load(key_path);
    HFModel hf(model);
    const ModelConfig& c = hf.config();
    const int64_t n = c.vocab_size;

    // The noisy embedding / head (HF layout [n, d]): frozen, or with --train-vocab trained from
    // the draw. --body-in with --train-vocab resumes from the trained ones it holds.
    const Tensor emb_pub = hf.tensor_f32(tensor_names::embed()), head_pub = hf.lm_head_f32();
    const Tensor emb_noisy = noisy(emb_pub, alpha_e, ns, key.seed, "noise/embed");
    const Tensor head_noisy = noisy(head_pub, alpha_h, ns, key.seed, "noise/head");
    auto vocab_start = [&](const std::string& name, const Tensor& draw) {
      if (!train_vocab || !bin_body) return to_torch(draw);
      require(bin_body->has(name), body_in, "has no tensor '" + name + "' (written without --train-vocab?)");
      return to_torch(bin_body->get(name).to_f32());
    };
    torch::Tensor E = vocab_start(tensor_names::embed(), emb_noisy).to(dev);
    torch::Tensor H = vocab_start(tensor_names::lm_head(), head_noisy).to(dev);

    // The model the body is trained in: the shared libtorch module (tools/torch_model) with the
    // noisy embedding and head as two tensors of their own, whatever the config ties (the two
    // noise draws differ), and the body from the plaintext model or --body-in.
    ModelConfig untied = c;
    untied.tie_word_embeddings = false;
    std::map<std::string, torch::Tensor> init;
    for (const auto& [name, shape] : expected_tensors(untied)) {
      if (name == tensor_names::embed()) init[name] = E;
      else if (name == tensor_names::lm_head()) init[name] = H;
      else init[name] = to_torch(bin_body ? bin_body->get(name).to_f32() : hf.tensor_f32(name)).to(dev);
    }
    torch_model::Llama net(untied, std::move(init), model);
    const std::vector<std::string> body = net.body_names();
    net.train_only(train_vocab ? net.names() : body);
    std::vector<torch::Tensor> params = net.tensors(body);

    // Training text.
    const std::vector<uint16_t> ids = steps == 0 && minutes == 0 ? std::vector<uint16_t>(2 * size_t(seq), 0)
                                                                 : read_token_file(data + "/train.bin");
    const int64_t N = int64_t(ids.size());
    require(N > seq + 1, data + "/train.bin", "too short");
    const uint16_t* tok = ids.data();
    std::mt19937_64 rng{static_cast<uint64_t>(seed_opt)};
    std::uniform_int_distribution<int64_t> start(0, N - seq - 2);

    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(params, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).weight_decay(wd)));
    std::vector<double> base_lr = {lr};
    if (train_vocab) {
      groups.emplace_back(std::vector<torch::Tensor>{E, H},
                          std::make_unique<torch::optim::AdamWOptions>(
                              torch::optim::AdamWOptions(vocab_lr).betas({0.9, 0.95}).weight_decay(wd)));
      base_lr.push_back(vocab_lr);
      params.push_back(E);
      params.push_back(H);
    }
    torch::optim::AdamW opt(groups);
    const auto t0 = std::chrono::steady_clock::now();
    double ema = 0;
    int64_t step = 0, tokens = 0;
    for (;; ++step) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if ((steps > 0 && step >= steps) || (minutes > 0 && el >= minutes * 60) || (steps == 0 && minutes == 0)) break;
      std::vector<int64_t> x(size_t(batch * seq)), t(size_t(batch * seq));
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t s = start(rng);
        for (int64_t i = 0; i < seq; ++i) x[size_t(b * seq + i)] = tok[s + i], t[size_t(b * seq + i)] = tok[s + i + 1];
      }
      auto xi = torch::tensor(x, torch::kLong).view({batch, seq}).to(dev);
      auto ti = torch::tensor(t, torch::kLong).view({batch * seq}).to(dev);
      // Linear warm-up, then linear decay to 10% over the budget (steps or minutes).
      double prog = 0;
      if (steps > 0) prog = std::max(prog, double(step) / double(steps));
      if (minutes > 0) prog = std::max(prog, el / (minutes * 60));
      const double sched = std::min(1.0, double(step + 1) / double(std::max<int64_t>(warmup, 1))) *
                           (1.0 - 0.9 * std::min(1.0, prog));
      for (size_t gi = 0; gi < opt.param_groups().size(); ++gi)
        static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[gi].options()).lr(base_lr[gi] * sched);
      opt.zero_grad();
      auto loss = torch::nn::functional::cross_entropy(net.logits(xi).view({batch * seq, n}), ti);
      loss.backward();
      torch::nn::utils::clip_grad_norm_(params, 1.0);
      opt.step();
      tokens += batch * seq;
      const double lv = loss.item<double>();
      ema = step == 0 ? lv : 0.9 * ema + 0.1 * lv;
      if (step % 10 == 0) {
        // ETA from the binding budget: steps at the mean step time so far, or the minutes left.
        double eta = -1;
        if (step > 0 && steps > 0) eta = el / double(step) * double(steps - step);
        if (minutes > 0) eta = eta < 0 ? minutes * 60 - el : std::min(eta, minutes * 60 - el);
        const std::string at = std::to_string(step) + (steps > 0 ? "/" + std::to_string(steps) : std::string());
        const std::string eta_s = eta < 0 ? "?" : std::to_string(int64_t(eta)) + " s";
        std::fprintf(stderr, "step %s  loss %.4f  (ema %.4f)  %.0f s  %.0f tok/s  eta %s\n", at.c_str(), lv, ema, el,
                     el > 1 ? double(tokens) / el : 0.0, eta_s.c_str());
      }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    // Export: the vocabulary matrices (the public ones, or with --train-vocab the trained noisy
    // ones, untied), the adapted body, f32.
    auto cpu = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU).contiguous(); };
    std::vector<std::pair<std::string, torch::Tensor>> vocab, outs;
    if (train_vocab) {
      vocab = {{tensor_names::embed(), cpu(E)}, {tensor_names::lm_head(), cpu(H)}};
    } else {
      vocab = {{tensor_names::embed(), to_torch(emb_pub)}};
      if (!c.tie_word_embeddings) vocab.push_back({tensor_names::lm_head(), to_torch(head_pub)});
    }
    for (const auto& name : body) outs.push_back({name, cpu(net.at(name))});

    // Relative Frobenius drift of the weights that will be served (before the exact transforms)
    // from the public ones: per vocabulary matrix (also of the bare draw, which is what is served
    // without --train-vocab, and of training alone), per body tensor kind over all layers, and the body's matrices
    // together (the set the audit's NN drift report calls "body").
    auto fro2 = [](const torch::Tensor& t) { return t.to(torch::kDouble).pow(2).sum().item<double>(); };
    nlohmann::json drift;
    {
      auto rel = [&](const torch::Tensor& a, const torch::Tensor& b) { return std::sqrt(fro2(a - b) / fro2(b)); };
      const torch::Tensor ep = to_torch(emb_pub), hp = to_torch(head_pub);
      const torch::Tensor& ef = vocab[0].second;
      const torch::Tensor hf_ = train_vocab ? vocab[1].second : hp;
      drift["embedding"] = rel(train_vocab ? ef : to_torch(emb_noisy), ep);
      drift["embedding_draw"] = rel(to_torch(emb_noisy), ep);
      drift["embedding_by_training"] = rel(train_vocab ? ef : to_torch(emb_noisy), to_torch(emb_noisy));
      drift["head"] = rel(train_vocab ? hf_ : to_torch(head_noisy), hp);
      drift["head_draw"] = rel(to_torch(head_noisy), hp);
      drift["head_by_training"] = rel(train_vocab ? hf_ : to_torch(head_noisy), to_torch(head_noisy));
      std::map<std::string, std::pair<double, double>> kinds;  // kind -> (|delta|^2, |W|^2)
      for (const auto& [name, t] : outs) {
        const torch::Tensor pub = to_torch(hf.tensor_f32(name));
        std::string kind = "other";
        for (const auto& [part, k] : std::vector<std::pair<std::string, std::string>>{
                 {"input_layernorm", "attn_norm"}, {"post_attention_layernorm", "ffn_norm"}, {".bias", "bias"},
                 {"q_proj", "q"}, {"k_proj", "k"}, {"v_proj", "v"}, {"o_proj", "o"}, {"gate_proj", "gate"},
                 {"up_proj", "up"}, {"down_proj", "down"}})
          if (kind == "other" && name.find(part) != std::string::npos) kind = k;
        if (name == tensor_names::final_norm()) kind = "final_norm";
        auto& k = kinds[kind];
        k.first += fro2(t - pub), k.second += fro2(pub);
      }
      double bd = 0, bw = 0;
      for (const auto& [kind, v] : kinds) {
        drift[kind] = std::sqrt(v.first / v.second);
        if (kind == "q" || kind == "k" || kind == "v" || kind == "o" || kind == "gate" || kind == "up" || kind == "down")
          bd += v.first, bw += v.second;
      }
      drift["body"] = std::sqrt(bd / bw);
    }
    std::fprintf(stderr, "drift from the public weights (relative Frobenius): embedding %.4f (draw %.4f), head %.4f "
                 "(draw %.4f), body %.4f\n", drift["embedding"].get<double>(), drift["embedding_draw"].get<double>(),
                 drift["head"].get<double>(), drift["head_draw"].get<double>(), drift["body"].get<double>());

    if (!body_out.empty()) {
      // With --train-vocab the trained vocabulary matrices travel with the body (--body-in reads them).
      std::vector<std::pair<std::string, torch::Tensor>> file = outs;
      if (train_vocab) file.insert(file.end(), vocab.begin(), vocab.end());
      const std::string tmp = body_out + ".d";
      fs::create_directories(tmp);
      {
        SafetensorsWriter bw(tmp);
        for (auto& [name, t] : file) bw.add({name, DType::F32, std::vector<int64_t>(t.sizes().begin(), t.sizes().end())});
        for (auto& [name, t] : file) bw.write_f32(name, t.data_ptr<float>(), size_t(t.numel()));
        bw.finish();
      }
      fs::rename(fs::path(tmp) / "model.safetensors", body_out);
      fs::remove_all(tmp);
      std::fprintf(stderr, "wrote body %s: %lld steps, %lld tokens, %.0f s, final loss (ema) %.4f\n", body_out.c_str(),
                   (long long)step, (long long)tokens, secs, ema);
      if (out.empty()) return 0;
    }
    outs.insert(outs.begin(), vocab.begin(), vocab.end());
    AtomicDir od(out, force);
    SafetensorsWriter w(od.temp_path());
    for (auto& [name, t] : outs) w.add({name, DType::F32, std::vector<int64_t>(t.sizes().begin(), t.sizes().end())});
    for (auto& [name, t] : outs) w.write_f32(name, t.data_ptr<float>(), size_t(t.numel()));
    w.finish();
    nlohmann::json cfg = c.to_json();
    cfg["torch_dtype"] = "float32";
#ifndef ALOEPRI_ADAPT_STANDALONE
    require(key_id(key.seed) == adaptation_key_id(key.seed), "key id", "differs from the obfuscator's", kExitError);
#endif
    cfg["aloepri_adapted"] = {{"key_id", key_id(key.seed)},
                              {"alpha_e", alpha_e},
                              {"alpha_h", alpha_h},
                              {"noise_scale", noise_scale},
                              {"base_fingerprint", hf.fingerprint()},
                              {"steps", step},
                              {"tokens", tokens},
                              {"seconds", secs},
                              {"lr", lr},
                              {"final_loss_ema", ema},
                              {"batch", batch},
                              {"seq", seq},
                              {"data_seed", seed_opt},
                              {"trained", train_vocab ? "body, embedding, head" : "body"},
                              {"emb_head_noise", train_vocab ? "in_checkpoint" : "obfuscate"},
                              {"drift", drift}};
    if (train_vocab) {
      cfg["aloepri_adapted"]["vocab_lr"] = vocab_lr;
      cfg["tie_word_embeddings"] = false;  // the head is its own trained tensor
    }
    write_file_atomic(od.file("config.json"), cfg.dump(2) + "\n");
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                          "generation_config.json"}) {
      const fs::path src = fs::path(model) / f;
      if (fs::is_regular_file(src)) fs::copy_file(src, od.file(f), fs::copy_options::overwrite_existing);
    }
    od.commit();
    std::fprintf(stderr, "wrote %s: %lld steps, %lld tokens, %.0f s, final loss (ema) %.4f\n", out.c_str(),
                 (long long)step, (long long)tokens, secs, ema);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "aloe-adapt: %s\n", e.what());
    return e.code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "aloe-adapt: %s\n", e.what());
    return 1;
  }
}
