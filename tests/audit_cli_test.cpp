// `aloepri audit` and `aloepri audit-sweep` end to end on a small random checkpoint obfuscated
// with --exact (every weight attack but Attn-IA must then recover nearly everything), the
// report files (JSON fields, self-contained HTML), refusals and the runner's time budget.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "aloepri/audit/report.h"
#include "aloepri/core/error.h"
#include "aloepri/model/model.h"
#include "aloepri/core/output.h"
#include "support/paths.h"

using namespace aloepri;
namespace at = aloepri::testing;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Fixture {
  std::string dir, plain, obf, key, victim;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture x;
    x.dir = at::scratch_dir("audit_cli");
    x.plain = x.dir + "/plain";
    x.obf = x.dir + "/obf";
    x.key = x.dir + "/key";
    x.victim = x.dir + "/victim.txt";
    write_synthetic_model(x.plain, ModelConfig::from_json({{"model_type", "llama"}, {"hidden_size", 32},
                                                           {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                                                           {"num_key_value_heads", 2}, {"intermediate_size", 96},
                                                           {"vocab_size", 600}}),
                          3, DType::F32);
    std::string out;
    EXPECT_EQ(at::run_command(at::aloepri_exe() + " keygen --out " + x.key + " 2>&1", &out), 0) << out;
    EXPECT_EQ(at::run_command(at::aloepri_exe() + " obfuscate " + x.plain + " --key " + x.key + " --out " + x.obf +
                                  " --exact --dtype f32 2>&1", &out), 0) << out;
    std::ofstream v(x.victim);
    for (int i = 0; i < 3000; ++i) v << (i * 37 + i / 7) % 600 << (i % 20 == 19 ? "\n" : " ");
    return x;
  }();
  return f;
}

int run_audit_cli(const std::string& args, std::string* out) {
  const Fixture& f = fixture();
  return at::run_command(at::aloepri_exe() + " audit --plain " + f.plain + " --obf " + f.obf + " " + args + " 2>&1", out);
}

}  // namespace

TEST(AuditCli, ScoresTheWeightAttacksAndWritesReports) {
  const Fixture& f = fixture();
  const std::string js = f.dir + "/r.json", html = f.dir + "/r.html";
  std::string out;
  ASSERT_EQ(run_audit_cli("--key " + f.key + " --victim " + f.victim + " --alpha-e 0 --alpha-h 0 --vocab-sample 600 --json " +
                      js + " --html " + html, &out), 0) << out;
  EXPECT_NE(out.find("TTRSR"), std::string::npos) << out;
  const json j = json::parse(read_file(js));
  ASSERT_EQ(j["results"].size(), 6u) << j.dump(1);  // VMA, Gate-IA, Attn-IA, NN, Oracle, Oracle+NN
  std::map<std::string, json> by;
  for (const auto& r : j["results"]) by[r["attack"]] = r;
  EXPECT_GT(by["VMA"]["ttrsr"].get<double>(), 0.95);
  EXPECT_GT(by["Gate-IA"]["vocab_recovery"].get<double>(), 0.95);
  EXPECT_GT(by["NN"]["ttrsr"].get<double>(), 0.95);
  EXPECT_EQ(by["NN"]["goal"].get<double>(), 0.01);
  EXPECT_FALSE(by["NN"]["goal_met"].get<bool>());  // permutation only: nothing is hidden
  EXPECT_GT(by["Oracle"]["ttrsr"].get<double>(), 0.95);  // an exact model is its own key
  EXPECT_FALSE(by["Oracle"]["goal_met"].get<bool>());
  // Seeded by NN's matches (all right on a permutation-only model), the oracle recovers as much.
  EXPECT_GT(by["Oracle+NN"]["ttrsr"].get<double>(), 0.95);
  EXPECT_GT(by["Oracle+NN"]["details"]["seeds_offered"].get<int64_t>(), 0);
  // The setting names the key record's parameters, value-map conditioning included (--exact: 4).
  EXPECT_NE(by["VMA"]["setting"].get<std::string>().find("value_cond 4"), std::string::npos) << by["VMA"].dump();
  EXPECT_EQ(by["VMA"]["victim_tokens"].get<int64_t>(), 3000);
  EXPECT_TRUE(by["VMA"]["details"].contains("parts"));
  EXPECT_EQ(j["meta"]["attacker_knows"]["alpha_e"].get<double>(), 0.0);
  EXPECT_EQ(j["meta"]["params"]["beta"].get<int64_t>(), 1);  // from the key's record
  const std::string h = read_file(html);
  EXPECT_NE(h.find("<svg"), std::string::npos);
  EXPECT_NE(h.find("Oracle: after each round"), std::string::npos);
  EXPECT_EQ(h.find("<script"), std::string::npos);  // self-contained, no JS
  EXPECT_EQ(h.find("src="), std::string::npos);
  // Refuses to overwrite without --force.
  EXPECT_NE(run_audit_cli("--key " + f.key + " --victim " + f.victim + " --attacks gate-ia --json " + js, &out), 0);
  EXPECT_NE(out.find("exists"), std::string::npos) << out;

  // The sweep join: params -> figures.
  const std::string md = f.dir + "/s.md", sj = f.dir + "/s.json", sh = f.dir + "/s.html";
  ASSERT_EQ(at::run_command(at::aloepri_exe() + " audit-sweep " + js + " --json " + sj + " --md " + md + " --html " + sh +
                                " 2>&1", &out), 0) << out;
  const json s = json::parse(read_file(sj));
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0]["ttrsr"]["VMA"], by["VMA"]["ttrsr"]);
  EXPECT_EQ(s[0]["params"]["alpha_e"].get<double>(), 0.0);
  EXPECT_NE(read_file(md).find("| r | 0 | 0 |"), std::string::npos) << read_file(md);
}

// A homophonic served model (n' > n): the weight attacks group the copies from the served weights
// first (identical rows at --exact) and answer each copy with its group's guess, so they recover
// the victim as through a plain tau (scored on the copies the client sent).
TEST(AuditCli, WeightAttacksGroupTheCopiesOfAHomophonicModel) {
  const Fixture& f = fixture();
  const std::string root = f.dir + "/homophones", obf = root + "/obf", key = root + "/key";
  fs::create_directories(root);
  {  // unigram counts falling linearly with the id, as uint16 tokens
    std::ofstream c(root + "/counts.bin", std::ios::binary);
    for (uint16_t t = 0; t < 600; ++t)
      for (int k = 0; k < (600 - t) / 10 + 1; ++k) c.write(reinterpret_cast<const char*>(&t), 2);
  }
  std::string out;
  ASSERT_EQ(at::run_command(at::aloepri_exe() + " keygen --out " + key + " 2>&1", &out), 0) << out;
  ASSERT_EQ(at::run_command(at::aloepri_exe() + " obfuscate " + f.plain + " --key " + key + " --out " + obf +
                                " --exact --dtype f32 --homophones 200 --homophone-counts " + root + "/counts.bin 2>&1",
                            &out), 0) << out;
  const std::string js = root + "/a.json";
  ASSERT_EQ(at::run_command(at::aloepri_exe() + " audit --plain " + f.plain + " --obf " + obf + " --key " + key +
                                " --victim " + f.victim + " --attacks vma,gate-ia,nn --json " + js + " 2>&1", &out), 0)
      << out;
  const json j = json::parse(read_file(js));
  std::map<std::string, json> by;
  for (const auto& r : j["results"]) by[r["attack"]] = r;
  ASSERT_TRUE(by.count("VMA") && by.count("Gate-IA") && by.count("NN")) << j.dump(1);
  std::printf("homophonic --exact (n' 800, n 600): VMA %.3f, Gate-IA vocabulary %.3f, NN %.3f\n",
              by["VMA"]["ttrsr"].get<double>(), by["Gate-IA"]["vocab_recovery"].get<double>(),
              by["NN"]["ttrsr"].get<double>());
  for (const char* a : {"VMA", "NN"}) EXPECT_GT(by[a]["ttrsr"].get<double>(), 0.95) << a;
  EXPECT_GT(by["Gate-IA"]["vocab_recovery"].get<double>(), 0.95);
  const json& h = by["NN"]["details"]["homophones"];
  EXPECT_EQ(h["obf_vocab"].get<int64_t>(), 800) << h.dump();
  EXPECT_EQ(h["groups"].get<int64_t>(), 600) << h.dump();
  EXPECT_EQ(h["identical_groups"].get<int64_t>(), 600) << h.dump();  // --exact: copies are the same rows
  EXPECT_GT(h["largest_group"].get<int64_t>(), 1) << h.dump();
  EXPECT_EQ(by["NN"]["victim_tokens"].get<int64_t>(), 3000);
}

TEST(AuditCli, TrafficWithoutKeyIsNotScored) {
  const Fixture& f = fixture();
  const std::string js = f.dir + "/t.json";
  std::string out;
  ASSERT_EQ(run_audit_cli("--traffic " + f.victim + " --attacks gate-ia --json " + js + " --force", &out), 0) << out;
  const json j = json::parse(read_file(js));
  ASSERT_EQ(j["results"].size(), 1u);
  EXPECT_TRUE(j["results"][0]["ttrsr"].is_null());
  EXPECT_FALSE(j["meta"]["scored"].get<bool>());
  EXPECT_EQ(j["results"][0]["details"]["sample"]["recovered_ids"].size(), 48u);
}

// The token-stream attacks through `aloepri audit --prior`: a prior drawn from the same skewed
// distribution as the victim lets TFMA read the most frequent tokens by rank alone.
TEST(AuditCli, StreamAttacksWithAPrior) {
  const Fixture& f = fixture();
  uint64_t lcg = 12345;
  auto draw = [&lcg] {  // ids 3..599 with a Zipf-like skew (1 and 2 are BOS/EOS in a .bin prior)
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    const double u = double(lcg >> 11) / double(1ull << 53);
    return uint16_t(3 + int(597 * u * u * u));
  };
  const std::string prior = f.dir + "/prior.bin", victim = f.dir + "/skewed.txt", js = f.dir + "/stream.json";
  {
    std::ofstream p(prior, std::ios::binary);
    for (int d = 0; d < 300; ++d) {
      std::vector<uint16_t> doc = {1};
      for (int i = 0; i < 100; ++i) doc.push_back(draw());
      doc.push_back(2);
      p.write(reinterpret_cast<const char*>(doc.data()), std::streamsize(doc.size() * 2));
    }
    std::ofstream v(victim);
    for (int i = 0; i < 20000; ++i) v << draw() << " ";
  }
  std::string out;
  ASSERT_EQ(run_audit_cli("--key " + f.key + " --victim " + victim + " --attacks stream --prior " + prior +
                              " --sda-seconds 1 --json " + js + " --force", &out), 0) << out;
  const json j = json::parse(read_file(js));
  std::map<std::string, json> by;
  for (const auto& r : j["results"]) by[r["attack"].get<std::string>()] = r;
  ASSERT_TRUE(by.count("TFMA") && by.count("SDA")) << j.dump(1);
  EXPECT_GT(by["TFMA"]["ttrsr"].get<double>(), 0.15);
  EXPECT_GT(by["SDA"]["ttrsr"].get<double>(), 0.15);
  // Without --prior the stream attacks are not registered.
  EXPECT_NE(run_audit_cli("--key " + f.key + " --victim " + victim + " --attacks stream", &out), 0);
}

TEST(AuditCli, ClearErrors) {
  const Fixture& f = fixture();
  std::string out;
  EXPECT_NE(run_audit_cli("--victim " + f.victim, &out), 0);
  EXPECT_NE(out.find("--key"), std::string::npos) << out;
  EXPECT_NE(run_audit_cli("--key " + f.key + " --victim " + f.victim + " --attacks vma,bogus", &out), 0);
  EXPECT_NE(out.find("unknown attack 'bogus'"), std::string::npos) << out;
  EXPECT_NE(out.find("gate-ia"), std::string::npos) << out;  // lists what exists
  const std::string bad = f.dir + "/bad.txt";
  write_file_atomic(bad, "1 2 99999\n", true);
  EXPECT_NE(run_audit_cli("--key " + f.key + " --victim " + bad, &out), 0);
  EXPECT_NE(out.find("outside the vocabulary"), std::string::npos) << out;
  EXPECT_NE(run_audit_cli("", &out), 0);
}

TEST(AuditRunner, ExternalAttackProgramIsRunAndParsed) {
  const std::string dir = at::scratch_dir("audit_external");
  const std::string exe = dir + "/fake attack.sh";  // a space: the command line must quote
  write_file_atomic(exe,
                    "#!/bin/sh\n"
                    "[ \"$1\" = isa ] && [ \"$2\" = --json ] && [ \"$3\" = --plain ] && [ \"$4\" = \"/p l\" ] || exit 3\n"
                    "echo '{\"attack\": \"ISA\", \"setting\": \"s\", \"ttrsr\": 0.004, \"topk\": {\"top10\": 0.02}}'\n",
                    true);
  fs::permissions(exe, fs::perms::owner_all);
  audit::AuditContext ctx;
  ctx.plain_dir = "/p l";
  ctx.obf_dir = "/o";
  auto run = audit::run_audit({audit::external_attack("isa", exe, {"isa", "--json"})}, {}, ctx);
  ASSERT_EQ(run.results.size(), 1u) << run.skipped.dump();
  EXPECT_EQ(run.results[0].attack, "ISA");
  EXPECT_DOUBLE_EQ(run.results[0].ttrsr, 0.004);
  ASSERT_EQ(run.results[0].topk.size(), 1u);
  EXPECT_EQ(run.results[0].topk[0].first, 10);
  EXPECT_EQ(run.results[0].details["family"], "learned");
  const json j = audit::audit_json(run);
  EXPECT_TRUE(j["results"][0]["goal_met"].get<bool>());  // 0.4% <= 1%
  // A failing program is recorded, not fatal.
  ctx.plain_dir = "/elsewhere";
  run = audit::run_audit({audit::external_attack("isa", exe, {"isa", "--json"})}, {}, ctx);
  ASSERT_EQ(run.skipped.size(), 1u);
  EXPECT_NE(run.skipped[0]["reason"].get<std::string>().find("status"), std::string::npos);
}

TEST(AuditRunner, BudgetSpentSkipsAndThrowingAttackIsRecorded) {
  audit::AuditContext ctx;
  ctx.deadline = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  std::vector<audit::AttackEntry> es = {
      {"a", "weights", "", [](const audit::AuditContext&) { return std::vector<audit::AttackResult>{}; }}};
  auto run = audit::run_audit(es, {}, ctx);
  ASSERT_EQ(run.skipped.size(), 1u);
  EXPECT_EQ(run.skipped[0]["reason"], "time budget spent");
  ctx.deadline = std::chrono::steady_clock::time_point::max();
  es.push_back({"b", "stream", "", [](const audit::AuditContext&) -> std::vector<audit::AttackResult> {
                  throw std::runtime_error("boom");
                }});
  es.push_back({"c", "stream", "", [](const audit::AuditContext&) {
                  audit::AttackResult r;
                  r.attack = "TFMA";
                  r.topk = {{100, 0.2}};
                  return std::vector<audit::AttackResult>{r};
                }});
  run = audit::run_audit(es, {"b", "c"}, ctx);
  ASSERT_EQ(run.results.size(), 1u);
  ASSERT_EQ(run.skipped.size(), 1u);
  EXPECT_EQ(run.skipped[0]["reason"], "boom");
  const json j = audit::audit_json(run);
  EXPECT_FALSE(j["results"][0]["goal_met"].get<bool>());  // TFMA top-100 20% > 16.5%
  EXPECT_NE(audit::audit_table(run).find("NO"), std::string::npos);
  EXPECT_THROW(audit::run_audit(es, {"zzz"}, ctx), Error);
}

// The architecture-specific attacks through the CLI: DeepSeek gets the latent attack (scored with
// the key), Qwen3 the q/k gain attack; both appear in the JSON and the console.
TEST(AuditCli, ArchitectureAttacksRunThroughTheCli) {
  const Fixture& f = fixture();
  struct Arch {
    const char* name;
    json config;
    const char* attacks;
  };
  const json ds = {{"model_type", "deepseek_v3"}, {"hidden_size", 32},   {"num_hidden_layers", 2},
                   {"num_attention_heads", 4},    {"num_key_value_heads", 4}, {"intermediate_size", 64},
                   {"vocab_size", 600},           {"q_lora_rank", 24},   {"kv_lora_rank", 16},
                   {"qk_nope_head_dim", 4},       {"qk_rope_head_dim", 4}, {"v_head_dim", 4},
                   {"n_routed_experts", 4},       {"num_experts_per_tok", 2}, {"moe_intermediate_size", 16},
                   {"n_shared_experts", 1},       {"first_k_dense_replace", 1}, {"n_group", 2},
                   {"topk_group", 1}};
  const json q3 = {{"model_type", "qwen3"},        {"hidden_size", 32}, {"num_hidden_layers", 2},
                   {"num_attention_heads", 4},     {"num_key_value_heads", 2}, {"head_dim", 16},
                   {"intermediate_size", 96},      {"vocab_size", 600}};
  for (const Arch& a : {Arch{"deepseek", ds, "mla-latent,nn"}, Arch{"qwen3", q3, "qk-gains"}}) {
    const std::string root = f.dir + "/" + a.name, plain = root + "/plain", obf = root + "/obf", key = root + "/key";
    fs::create_directories(root);
    write_synthetic_model(plain, ModelConfig::from_json(a.config), 5, DType::F32);
    std::string out;
    ASSERT_EQ(at::run_command(at::aloepri_exe() + " keygen --out " + key + " 2>&1", &out), 0) << out;
    ASSERT_EQ(at::run_command(at::aloepri_exe() + " obfuscate " + plain + " --key " + key + " --out " + obf +
                                  " --exact --dtype f32 2>&1", &out), 0) << out;
    const std::string js = root + "/a.json";
    ASSERT_EQ(at::run_command(at::aloepri_exe() + " audit --plain " + plain + " --obf " + obf + " --key " + key +
                                  " --victim " + f.victim + " --attacks " + a.attacks + " --json " + js + " 2>&1", &out), 0)
        << out;
    const json j = json::parse(read_file(js));
    std::map<std::string, json> by;
    for (const auto& r : j["results"]) by[r["attack"]] = r;
    if (std::string(a.name) == "deepseek") {
      ASSERT_TRUE(by.count("MLA-latent")) << j.dump(1);
      EXPECT_EQ(by["MLA-latent"]["details"]["heads_right"].get<double>(), 1.0);
      EXPECT_LT(by["MLA-latent"]["details"]["max_R_rel_error"].get<double>(), 1e-4);
      EXPECT_EQ(by["MLA-latent"]["details"]["latents"].size(), 4u);  // q and kv of 2 layers
      EXPECT_NE(out.find("MLA-latent: head order right 100.0%"), std::string::npos) << out;
      EXPECT_GT(by["NN"]["ttrsr"].get<double>(), 0.95);  // through the dense layer and the shared expert
    } else {
      ASSERT_TRUE(by.count("QK-gains")) << j.dump(1);
      const json& layers = by["QK-gains"]["details"]["layers"];
      ASSERT_EQ(layers.size(), 2u);
      for (const auto& l : layers) {  // --exact draws pair scales log-uniform in [1/2, 2]
        EXPECT_GE(l["scale_min"].get<double>(), 0.5 - 1e-6);
        EXPECT_LE(l["scale_max"].get<double>(), 2.0 + 1e-6);
        EXPECT_GT(l["scale_max"].get<double>() / l["scale_min"].get<double>(), 1.01);  // not all ones
      }
    }
  }
}
