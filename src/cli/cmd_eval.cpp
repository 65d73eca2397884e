// `aloepri eval --plain MODEL --obf OBF_DIR --key K`: accuracy of an obfuscated model against its
// plaintext model on held-out text, on the reference forward and/or llama.cpp, with the
// per-layer error attribution (see include/aloepri/eval.h).
// `aloepri eval-frontier POINT.json... [--attacks AUDIT.json]`: joins sweep points with the
// privacy audit's attack figures and draws the frontier.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>

#include "aloepri/core/error.h"
#include "aloepri/audit/eval.h"
#include "aloepri/core/output.h"
#include "command.h"

namespace fs = std::filesystem;

namespace {

struct Opts {
  std::string plain, obf, obf_source, key, text, engine = "reference", json_out, html_out, engine_dir;
  int64_t tokens = 2048, window = 256, greedy = 32, prompts = 4, llamacpp_tokens = 1024;
  bool no_attribution = false, force = false;
  std::vector<std::string> tags;
};

nlohmann::json parse_tags(const std::vector<std::string>& tags) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& t : tags) {
    const auto eq = t.find('=');
    if (eq == std::string::npos || eq == 0)
      throw aloepri::Error("--tag", "expected KEY=VALUE, got '" + t + "'", aloepri::kExitUsage);
    j[t.substr(0, eq)] = t.substr(eq + 1);
  }
  return j;
}

std::string make_work_dir() {
  std::string tmpl = (fs::temp_directory_path() / "aloepri-eval-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw aloepri::Error(tmpl, "cannot create a scratch directory", aloepri::kExitError);
  return tmpl;
}

int run(const Opts& o) {
  using namespace aloepri;
  eval::EvalConfig c;
  c.plain_dir = o.plain;
  c.obf_dir = o.obf;
  c.key_path = o.key;
  c.obf_source = o.obf_source;
  c.text_file = o.text;
  if (c.text_file.empty()) {
    c.text_file = std::string(ALOEPRI_SOURCE_DIR) + "/build/corpus/heldout.txt";
    require(fs::exists(c.text_file), "--text-file",
            "no held-out text given and " + c.text_file + " does not exist (build it with tools/corpus)", kExitUsage);
  }
  if (o.engine == "both") c.engines = {"reference", "llamacpp"};
  else if (o.engine == "reference" || o.engine == "llamacpp") c.engines = {o.engine};
  else throw Error("--engine", "unknown engine '" + o.engine + "' (reference, llamacpp, both)", kExitUsage);
  c.tokens = o.tokens;
  c.window = o.window;
  c.greedy_tokens = o.greedy;
  c.greedy_prompts = o.prompts;
  c.llamacpp_tokens = o.llamacpp_tokens;
  c.attribution = !o.no_attribution;
  c.engine_dir = o.engine_dir;
  if (!o.json_out.empty()) refuse_existing(o.json_out, o.force);
  if (!o.html_out.empty()) refuse_existing(o.html_out, o.force);
  const nlohmann::json tags = parse_tags(o.tags);
  c.work_dir = make_work_dir();
  c.log = [](const std::string& s) { std::fprintf(stderr, "eval: %s\n", s.c_str()); };
  nlohmann::json r;
  try {
    r = eval::run_eval(c);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(c.work_dir, ec);
    throw;
  }
  std::error_code ec;
  fs::remove_all(c.work_dir, ec);
  if (!tags.empty()) r["tags"] = tags;
  if (!o.json_out.empty()) write_file_atomic(o.json_out, r.dump(1) + "\n", o.force);
  if (!o.html_out.empty()) write_file_atomic(o.html_out, eval::render_html(r), o.force);

  std::printf("%-10s %9s %9s %9s %8s %9s %9s %9s %9s %7s\n", "engine", "top1-pl", "top1-obf", "rel.loss", "KL",
              "KL max", "ppl-pl", "ppl-obf", "agree", "greedy");
  for (auto& [name, s] : r["engines"].items())
    std::printf("%-10s %9.4f %9.4f %8.2f%% %8.4f %9.4f %9.2f %9.2f %9.4f %7.3f\n", name.c_str(),
                s.value("top1_plain", 0.0), s.value("top1_obf", 0.0), 100 * s.value("rel_loss", 0.0),
                s.value("kl_mean", 0.0), s.value("kl_max", 0.0), s.value("ppl_plain", 0.0), s.value("ppl_obf", 0.0),
                s.value("top1_agreement", 0.0), s.value("greedy_agreement", 0.0));
  if (!r["layers"].empty()) {
    std::printf("\nresidual-stream relative error (emb, after each layer):\n");
    for (auto& v : r["layers"]) {
      std::printf("  %-34s", v.value("name", "").c_str());
      for (double e : v["rel_err"]) std::printf(" %9.2e", e);
      std::printf("   KL %.4g, rel.loss %.2f%%\n", v["scores"].value("kl_mean", 0.0),
                  100 * v["scores"].value("rel_loss", 0.0));
    }
  }
  return 0;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  sub.add_option("--plain", o->plain, "Plaintext HF model directory")->required();
  sub.add_option("--obf", o->obf, "Obfuscated model directory (from `aloepri obfuscate` with --key)")->required();
  sub.add_option("--obf-source", o->obf_source,
                 "The checkpoint that was obfuscated when it is not --plain (a noise-adapted copy, aloe-adapt)");
  sub.add_option("--key", o->key, "The key file that made --obf (its record holds the parameters)")->required();
  sub.add_option("--text-file", o->text,
                 "Held-out text (tokenized with the plaintext tokenizer) or a .bin of uint16 ids "
                 "(default: build/corpus/heldout.txt)");
  sub.add_option("--engine", o->engine, "reference | llamacpp | both (default reference)");
  sub.add_option("--tokens", o->tokens, "Scored positions in total (default 2048)");
  sub.add_option("--window", o->window, "Window length; windows are spread over the text (default 256)");
  sub.add_option("--greedy", o->greedy, "Greedy continuation length per prompt (default 32)");
  sub.add_option("--prompts", o->prompts, "Greedy prompts (first 16 tokens of the first windows; default 4)");
  sub.add_option("--llamacpp-tokens", o->llamacpp_tokens, "Scored positions on llama.cpp (default 1024)");
  sub.add_flag("--no-attribution", o->no_attribution, "Skip the per-ingredient re-obfuscations");
  sub.add_option("--engine-dir", o->engine_dir, "llama.cpp harness directory (default harness/llamacpp)");
  sub.add_option("--json", o->json_out, "Write the report as JSON");
  sub.add_option("--html", o->html_out, "Write the report as HTML (inline SVG plots)");
  sub.add_option("--tag", o->tags, "KEY=VALUE stored under \"tags\" in the JSON (sweeps)")->take_all();
  sub.add_flag("--force", o->force, "Overwrite existing --json/--html files");
  return [o] { return run(*o); };
}

struct FOpts {
  std::vector<std::string> points, exclude;
  std::string attacks, json_out, html_out;
  bool force = false;
};

int run_frontier(const FOpts& o) {
  using namespace aloepri;
  std::vector<nlohmann::json> pts;
  auto load = [](const std::string& f) {
    try {
      return nlohmann::json::parse(read_file(f));
    } catch (const nlohmann::json::exception& e) {
      throw Error(f, std::string("invalid JSON: ") + e.what());
    }
  };
  for (const auto& p : o.points) {
    if (fs::is_directory(p)) {
      std::vector<std::string> files;
      for (auto& e : fs::directory_iterator(p))
        if (e.path().extension() == ".json") files.push_back(e.path().string());
      std::sort(files.begin(), files.end());
      for (auto& f : files) {
        auto j = load(f);
        j["source"] = f;
        pts.push_back(j);
      }
    } else {
      auto j = load(p);
      j["source"] = p;
      pts.push_back(j);
    }
  }
  nlohmann::json attacks;
  if (!o.attacks.empty()) {
    if (fs::is_directory(o.attacks)) {
      attacks = nlohmann::json::array();
      for (auto& e : fs::directory_iterator(o.attacks))
        if (e.path().extension() == ".json") attacks.push_back(load(e.path().string()));
    } else {
      attacks = load(o.attacks);
    }
  }
  nlohmann::json f = eval::frontier(pts, attacks, o.exclude);
  if (!o.json_out.empty()) write_file_atomic(o.json_out, f.dump(1) + "\n", o.force);
  if (!o.html_out.empty()) write_file_atomic(o.html_out, eval::render_frontier_html(f), o.force);
  std::printf("%zu points, %d attack entries joined; frontier: %zu points\n", pts.size(),
              f.value("attack_entries", 0), f["frontier"].size());
  for (auto& p : f["points"]) {
    std::string tags;
    if (p["tags"].is_object())
      for (auto& [k, v] : p["tags"].items()) tags += k + "=" + (v.is_string() ? v.get<std::string>() : v.dump()) + " ";
    std::printf("  loss %6.2f%%  worst attack %s  %s\n", 100 * p["loss"].get<double>(),
                p.contains("worst_attack") ? (std::to_string(100 * p["worst_attack"].get<double>()) + "%").c_str() : "-",
                tags.c_str());
  }
  return 0;
}

auto setup_frontier(CLI::App& sub) {
  auto o = std::make_shared<FOpts>();
  sub.add_option("points", o->points, "Eval JSON files or directories of them")->required();
  sub.add_option("--attacks", o->attacks, "The privacy audit's JSON (file or directory); optional");
  sub.add_option("--exclude-attack", o->exclude, "Attack name left out of the worst-attack figure (repeatable)");
  sub.add_option("--json", o->json_out, "Write the joined points and the frontier as JSON");
  sub.add_option("--html", o->html_out, "Write sweep plots and the frontier as HTML");
  sub.add_flag("--force", o->force, "Overwrite existing outputs");
  return [o] { return run_frontier(*o); };
}

}  // namespace

ALOEPRI_COMMAND(eval, "eval", 60, "Accuracy of an obfuscated model vs its plaintext model on held-out text", setup);
ALOEPRI_COMMAND(eval_frontier, "eval-frontier", 61, "Join accuracy sweep points with attack figures (frontier)",
                setup_frontier);
