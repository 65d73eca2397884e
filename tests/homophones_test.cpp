// Homophonic vocabulary (issue 14, defence 2): copy allocation, the secret id map, the key
// record, the client's encoding, and the obfuscated model: --exact with copies decodes greedily
// to exactly the plaintext tokens on the reference forward and on llama.cpp, every copy's logit is
// its token's logit, and the copy-merged distribution equals the plaintext one after the -log c
// correction (and is tilted by c without it, by the amount the construction predicts).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "aloepri/core/error.h"
#include "aloepri/audit/eval.h"
#include "aloepri/engine/forward.h"
#include "aloepri/export/gguf_export.h"
#include "aloepri/core/homophones.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/obfuscate/executor.h"
#include "aloepri/core/output.h"
#include "aloepri/client/proxy.h"
#include "aloepri/engine/synth.h"
#include "aloepri/formats/token_file.h"
#include "support/paths.h"

using namespace aloepri;
namespace fs = std::filesystem;

namespace {

Seed key_seed() {
  Seed s{};
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t(0x51 + 3 * i);
  return s;
}

// A Zipf-like table over n ids in a scrambled order (rank r has weight 1 / (r + 1)).
std::vector<double> zipf(int64_t n, uint64_t seed) {
  Seed s{};
  s[0] = uint8_t(seed);
  const auto order = RngStream(s, "zipf").permutation(n);
  std::vector<double> f(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) f[size_t(order[size_t(r)])] = 1e6 / double(r + 1);
  return f;
}

// A small synthetic llama with the llama2 vocabulary (32,000 ids), plaintext and obfuscated.
struct Models {
  std::string dir;
  std::vector<int64_t> copies;
};

const Models& exact_models() {
  static Models m = [] {
    Models r;
    r.dir = aloepri::testing::scratch_dir("homophones_exact");
    SynthOptions so;
    so.family = Family::Llama;
    so.heads = 4;
    so.kv_heads = 2;
    so.vocab_dir = aloepri::testing::vocab_dir("llama2");
    so.seed = 11;
    synthesize(so, r.dir + "/plain");
    const ModelConfig c = ModelConfig::load(r.dir + "/plain");
    r.copies = allocate_copies(zipf(c.vocab_size, 1), 4000, CopyRule::Flat,
                               published_token_ids(c, r.dir + "/plain"));
    ObfuscateOptions opt;
    opt.params = ObfuscationParams::exact();
    opt.copies = r.copies;
    obfuscate_model(r.dir + "/plain", key_seed(), r.dir + "/obf", opt);
    return r;
  }();
  return m;
}

double logsumexp(const double* v, int64_t n) {
  double mx = v[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, v[i]);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(v[i] - mx);
  return mx + std::log(s);
}

// KL(p || q) of the plaintext logits `a` against the copy-merged distribution of the obfuscated
// logits `b` (n' values), optionally corrected by -log c.
double merged_kl(const double* a, const double* b, const VocabMap& map, bool corrected) {
  const int64_t n = map.plain_size();
  std::vector<double> m(static_cast<size_t>(n));
  for (int64_t y = 0; y < n; ++y) {
    std::vector<double> v;
    for (int64_t c = 0; c < map.copies(y); ++c) v.push_back(b[map.id(y, c)]);
    m[size_t(y)] = logsumexp(v.data(), int64_t(v.size())) - (corrected ? std::log(double(map.copies(y))) : 0.0);
  }
  const double la = logsumexp(a, n), lb = logsumexp(m.data(), n);
  double kl = 0;
  for (int64_t y = 0; y < n; ++y) kl += std::exp(a[y] - la) * ((a[y] - la) - (m[size_t(y)] - lb));
  return kl;
}

std::string eval_script() { return aloepri::testing::source_dir() + "/harness/llamacpp/eval.mjs"; }

bool engine_available() {
  return fs::exists(eval_script()) &&
         fs::exists(aloepri::testing::source_dir() + "/harness/llamacpp/node_modules/node-llama-cpp") &&
         aloepri::testing::run_command("node --version > /dev/null 2>&1") == 0;
}

std::string csv(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

// ------------------------------------------------------------------------------- allocation

TEST(Homophones, FlatAllocationMinimisesTheLargestPerCopyFrequency) {
  const auto f = zipf(5000, 2);
  const int64_t B = 1500;
  const std::vector<int64_t> single = {0, 1, 2};
  const auto c = allocate_copies(f, B, CopyRule::Flat, single);
  ASSERT_EQ(c.size(), f.size());
  int64_t total = 0;
  for (int64_t k : c) {
    ASSERT_GE(k, 1);
    total += k;
  }
  EXPECT_EQ(total, 5000 + B);
  for (int64_t t : single) EXPECT_EQ(c[size_t(t)], 1) << "published id " << t << " got copies";
  // Water-filling optimality: no copy can move to lower the largest per-copy frequency, i.e.
  // every id that got extra copies would exceed the maximum with one copy fewer.
  double mx = 0;
  for (size_t t = 0; t < c.size(); ++t)
    if (t > 2) mx = std::max(mx, f[t] / double(c[t]));
  for (size_t t = 3; t < c.size(); ++t)
    if (c[t] > 1) {
      EXPECT_GE(f[t] / double(c[t] - 1), mx - 1e-9) << "id " << t;
    }
  // And it flattens more than the simulation's sqrt rule.
  const auto cs = allocate_copies(f, B, CopyRule::Sqrt, single);
  double mxs = 0;
  int64_t ts = 0;
  for (size_t t = 3; t < cs.size(); ++t) mxs = std::max(mxs, f[t] / double(cs[t]));
  for (int64_t k : cs) ts += k;
  EXPECT_EQ(ts, 5000 + B);
  EXPECT_LT(mx, mxs);
  EXPECT_EQ(cs[0], 1);
}

TEST(Homophones, BadInputNamesTheFlagOrFile) {
  try {
    allocate_copies({1, 2, 3}, -1, CopyRule::Flat);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--homophones"), std::string::npos) << e.what();
  }
  try {
    parse_copy_rule("cubic");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--homophone-rule"), std::string::npos) << e.what();
  }
  const std::string dir = aloepri::testing::scratch_dir("homophones_counts");
  const std::string txt = dir + "/counts.txt", bin = dir + "/ids.bin";
  write_file_atomic(txt, "1 2 3\n4,x\n");
  try {
    read_unigram_counts(txt, 5);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(txt), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'x'"), std::string::npos) << e.what();
  }
  write_file_atomic(dir + "/short.txt", "1 2 3\n");
  EXPECT_THROW(read_unigram_counts(dir + "/short.txt", 5), Error);
  write_file_atomic(bin, std::string("\x01\x00\x09\x00", 4));  // ids 1 and 9
  try {
    read_unigram_counts(bin, 5);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 9"), std::string::npos) << e.what();
  }
  const auto ok = read_unigram_counts(bin, 10);
  EXPECT_EQ(ok[1], 1.0);
  EXPECT_EQ(ok[9], 1.0);
  EXPECT_EQ(ok[0], 0.0);
}

TEST(Homophones, CliNamesTheCountsFlagForAModelWithoutDefaultCounts) {
  const Models& m = exact_models();
  const std::string dir = aloepri::testing::scratch_dir("homophones_cli");
  std::string out;
  int rc = aloepri::testing::run_command(aloepri::testing::aloepri_exe() + " keygen --out " + dir + "/k.key", &out, true);
  ASSERT_EQ(rc, 0) << out;
  rc = aloepri::testing::run_command(aloepri::testing::aloepri_exe() + " obfuscate " + m.dir + "/plain --key " + dir +
                                         "/k.key --out " + dir + "/o --exact --homophones 100",
                                     &out, true);
  EXPECT_EQ(rc, 2) << out;  // kExitUsage
  EXPECT_NE(out.find("--homophone-counts"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir + "/o"));
  rc = aloepri::testing::run_command(aloepri::testing::aloepri_exe() + " obfuscate " + m.dir + "/plain --key " + dir +
                                         "/k.key --out " + dir + "/o --exact --homophones 100 --homophone-counts " +
                                         dir + "/missing.bin",
                                     &out, true);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find(dir + "/missing.bin"), std::string::npos) << out;
}

// ------------------------------------------------------------------------------- id map, key, client

TEST(Homophones, VocabMapWithoutCopiesIsTauAndEveryCopyDecodesBack) {
  const int64_t n = 3000;
  const VocabMap plain(key_seed(), n);
  EXPECT_EQ(plain.first_copies(), derive_tau(key_seed(), n));
  EXPECT_FALSE(plain.homophonic());
  const auto c = allocate_copies(zipf(n, 3), 700, CopyRule::Flat);
  const VocabMap m(key_seed(), n, c);
  ASSERT_EQ(m.size(), n + 700);
  std::vector<int> seen(size_t(m.size()), 0);
  for (int64_t t = 0; t < n; ++t) {
    ASSERT_EQ(m.copies(t), c[size_t(t)]);
    for (int64_t k = 0; k < m.copies(t); ++k) {
      const int64_t o = m.id(t, k);
      ASSERT_GE(o, 0);
      ASSERT_LT(o, m.size());
      EXPECT_EQ(m.plain(o), t);
      ++seen[size_t(o)];
    }
  }
  for (int s : seen) ASSERT_EQ(s, 1);  // injective and onto [0, n')
}

TEST(Homophones, KeyRecordCarriesTheCopiesAndTheClientUsesThemUniformly) {
  const std::string dir = aloepri::testing::scratch_dir("homophones_key");
  const int64_t n = 2000;
  KeyFile k;
  k.seed = key_seed();
  ObfuscationRecord r;
  r.plain_fingerprint = "p";
  r.obf_fingerprint = "o";
  r.vocab_size = n;
  r.copies = allocate_copies(zipf(n, 4), 300, CopyRule::Flat, {1, 2});
  k.record = r;
  k.save(dir + "/h.key");
  const std::string text = read_file(dir + "/h.key");
  EXPECT_EQ(nlohmann::json::parse(text)["version"], 2);
  const KeyFile back = KeyFile::load(dir + "/h.key");
  ASSERT_TRUE(back.record);
  EXPECT_EQ(back.record->copies, r.copies);
  EXPECT_EQ(back.record->obf_vocab_size(), n + 300);
  // A key without copies stays version 1 (older builds read it).
  k.record->copies.clear();
  k.save(dir + "/p.key");
  EXPECT_EQ(nlohmann::json::parse(read_file(dir + "/p.key"))["version"], 1);
  // A corrupt homophone record is refused, naming the file.
  auto j = nlohmann::json::parse(text);
  j["obfuscation"]["homophones"]["ids"][0][1] = 1;
  write_file_atomic(dir + "/bad.key", j.dump(), false, 0600);
  try {
    KeyFile::load(dir + "/bad.key");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir + "/bad.key"), std::string::npos) << e.what();
  }

  // The client: every copy maps back, and a token with c copies uses each about 1/c of the time.
  const TokenMap map(key_seed(), n, r.copies);
  ASSERT_EQ(map.size(), n + 300);
  int64_t most = 0;
  for (int64_t t = 0; t < n; ++t)
    if (r.copies[size_t(t)] > r.copies[size_t(most)]) most = t;
  const int64_t c = r.copies[size_t(most)];
  ASSERT_GE(c, 4);
  const int draws = 2000 * int(c);
  std::map<int64_t, int> count;
  for (int i = 0; i < draws; ++i) {
    const int64_t o = map.to_server(most);
    ASSERT_EQ(map.from_server(o), most);
    ++count[o];
  }
  EXPECT_EQ(int64_t(count.size()), c) << "every copy is used";
  for (auto [o, k2] : count) {
    // Binomial(draws, 1/c): mean 2000, sd < 45; 1700..2300 is beyond 6.5 sd.
    EXPECT_GT(k2, 1700) << "copy " << o;
    EXPECT_LT(k2, 2300) << "copy " << o;
  }
  for (int64_t o = 0; o < map.size(); ++o) {
    const int64_t t = map.from_server(o);
    const auto all = map.all_copies(t);
    EXPECT_NE(std::find(all.begin(), all.end(), o), all.end());
  }
  EXPECT_THROW(map.from_server(n + 300), BackendError);
  EXPECT_THROW(map.to_server(n), Error);
}

// ------------------------------------------------------------------------------- the model

TEST(Homophones, ExactCopiesGiveThePlaintextLogitsAndGreedyOutputOnTheReferenceForward) {
  const Models& m = exact_models();
  const VocabMap map(key_seed(), int64_t(m.copies.size()), m.copies);
  const ModelConfig oc = ModelConfig::load(m.dir + "/obf");
  ASSERT_EQ(oc.vocab_size, map.size()) << "config.json vocab_size is n'";
  ReferenceModel plain = ReferenceModel::load(m.dir + "/plain"), obf = ReferenceModel::load(m.dir + "/obf");
  ASSERT_EQ(obf.vocab_size(), map.size());
  // Published ids keep their single copy: config.json names it.
  if (auto eos = ModelConfig::load(m.dir + "/plain").eos_token_id) {
    EXPECT_EQ(map.copies(*eos), 1);
    ASSERT_TRUE(oc.eos_token_id);
    EXPECT_EQ(*oc.eos_token_id, map.id(*eos, 0));
  }
  RngStream r(key_seed(), "prompt");
  std::vector<int64_t> ids;
  int64_t most = 0;
  for (int64_t t = 0; t < map.plain_size(); ++t)
    if (map.copies(t) > map.copies(most)) most = t;
  for (int i = 0; i < 12; ++i) ids.push_back(i % 3 == 0 ? most : int64_t(r.below(uint64_t(map.plain_size()))));
  // Several encodings of the same prompt (different copies) all give the same answer.
  const int64_t n = map.plain_size(), np = map.size();
  const auto pl = plain.forward(ids);
  double worst = 0, kl_raw = 0, kl_corr = 0;
  for (int enc = 0; enc < 2; ++enc) {
    std::vector<int64_t> oids;
    for (auto t : ids) oids.push_back(map.id(t, (enc * 7 + t) % map.copies(t)));
    obf.reset();
    const auto ol = obf.forward(oids);
    for (size_t t = 0; t < ids.size(); ++t) {
      const double* a = pl.data() + t * size_t(n);
      const double* b = ol.data() + t * size_t(np);
      double mx = 0, diff = 0;
      for (int64_t y = 0; y < n; ++y) {
        mx = std::max(mx, std::abs(a[y]));
        for (int64_t c = 0; c < map.copies(y); ++c) diff = std::max(diff, std::abs(a[y] - b[map.id(y, c)]));
      }
      worst = std::max(worst, diff / mx);
      kl_raw += merged_kl(a, b, map, false);
      kl_corr = std::max(kl_corr, merged_kl(a, b, map, true));
    }
    obf.reset();
    plain.reset();
    const auto gp = plain.greedy(ids, 24), go = obf.greedy(oids, 24);
    ASSERT_EQ(gp.size(), go.size());
    for (size_t i = 0; i < gp.size(); ++i) EXPECT_EQ(map.plain(go[i]), gp[i]) << "greedy token " << i;
    plain.reset();
    obf.reset();
  }
  std::printf("reference: max |logit(copy of y) - logit(y)| / max|logit| = %.2e; KL merged %.3e, corrected %.2e\n",
              worst, kl_raw / double(2 * ids.size()), kl_corr);
  EXPECT_LT(worst, 1e-5);
  EXPECT_LT(kl_corr, 1e-8) << "the -log c correction restores the plaintext distribution";
  EXPECT_GT(kl_raw / double(2 * ids.size()), 1e-4) << "without it the copies tilt the distribution";
}

TEST(Homophones, EvalReportsMergedAndCorrectedDistributionError) {
  const Models& m = exact_models();
  const VocabMap map(key_seed(), int64_t(m.copies.size()), m.copies);
  ReferenceModel plain = ReferenceModel::load(m.dir + "/plain"), obf = ReferenceModel::load(m.dir + "/obf");
  RngStream r(key_seed(), "windows");
  std::vector<std::vector<int64_t>> windows(2);
  for (auto& w : windows)
    for (int i = 0; i < 16; ++i) w.push_back(int64_t(r.below(uint64_t(map.plain_size()))));
  const auto s = eval::score_reference(plain, obf, map, windows, 1, 8, 8, {}, nullptr);
  ASSERT_TRUE(s.contains("homophone_corrected")) << s.dump();
  EXPECT_LT(s["homophone_corrected"]["kl_mean"].get<double>(), 1e-8);
  EXPECT_GT(s["kl_mean"].get<double>(), 1e-4);
  EXPECT_EQ(s["top1_agreement"].get<double>(), 1.0) << "argmax is unchanged by the tilt-free merge? " << s.dump();
  EXPECT_EQ(s["greedy_agreement"].get<double>(), 1.0);
}

TEST(Homophones, NoisyCopiesHaveTheirOwnDrawAndCopyZeroIsTheUsualRow) {
  const Models& m = exact_models();
  const std::string dir = aloepri::testing::scratch_dir("homophones_noise");
  ObfuscateOptions opt;
  opt.params = ObfuscationParams::exact();
  opt.params.alpha_e = 0.5;
  opt.params.alpha_h = 0.2;
  obfuscate_model(m.dir + "/plain", key_seed(), dir + "/plain_tau", opt);
  opt.copies = m.copies;
  obfuscate_model(m.dir + "/plain", key_seed(), dir + "/homo", opt);
  const ModelWeights a = ModelWeights::load(HFModel(dir + "/plain_tau")), b = ModelWeights::load(HFModel(dir + "/homo"));
  const int64_t n = int64_t(m.copies.size());
  const VocabMap tau(key_seed(), n), map(key_seed(), n, m.copies);
  const int64_t d = a.embed.cols();
  ASSERT_EQ(b.embed.rows(), map.size());
  int checked = 0;
  for (int64_t t = 0; t < n && checked < 50; ++t) {
    if (map.copies(t) < 2) continue;
    ++checked;
    const float* r0 = b.embed.ptr() + map.id(t, 0) * d;
    const float* rt = a.embed.ptr() + tau.id(t, 0) * d;
    // The same noise draw (a product of another batch size may round differently in the last bit).
    for (int64_t k = 0; k < d; ++k)
      ASSERT_NEAR(r0[k], rt[k], 1e-5 * (1 + std::abs(rt[k]))) << "copy 0 of " << t << " is the usual noisy row";
    const float* r1 = b.embed.ptr() + map.id(t, 1) * d;
    double diff = 0;
    for (int64_t k = 0; k < d; ++k) diff += std::abs(double(r0[k]) - r1[k]);
    EXPECT_GT(diff, 1e-3) << "copy 1 of " << t << " has its own noise draw";
  }
  EXPECT_EQ(checked, 50);
}

TEST(Homophones, AuditStreamGroupsTheCopiesFromTheServedWeightsAndFromTheTraffic) {
  // The server of an exact homophonic model groups the copies from its own weights (identical
  // rows) and is back at the plain tau stream; the traffic-only attacker gets a grouping row too.
  const Models& m = exact_models();
  const std::string dir = aloepri::testing::scratch_dir("homophones_stream_groups");
  const std::string exe = aloepri::testing::aloepri_exe();
  // Victim and prior: llama2 .bin documents (BOS 1 ... EOS 2) of skewed draws over ids 3..599,
  // where frequency matching through a plain tau recovers a good share.
  uint64_t lcg = 99;
  auto draw = [&lcg] {
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    const double u = double(lcg >> 11) / double(1ull << 53);
    return uint16_t(3 + int(597 * u * u * u));
  };
  auto write_docs = [&](const std::string& path, int docs) {
    std::ofstream f(path, std::ios::binary);
    for (int d = 0; d < docs; ++d) {
      std::vector<uint16_t> doc = {1};
      for (int i = 0; i < 100; ++i) doc.push_back(draw());
      doc.push_back(2);
      f.write(reinterpret_cast<const char*>(doc.data()), std::streamsize(doc.size() * 2));
    }
  };
  write_docs(dir + "/prior.bin", 400);
  write_docs(dir + "/victim.bin", 200);
  std::string out;
  ASSERT_EQ(aloepri::testing::run_command(exe + " keygen --out " + dir + "/k.key", &out, true), 0) << out;
  ASSERT_EQ(aloepri::testing::run_command(exe + " obfuscate " + m.dir + "/plain --key " + dir + "/k.key --out " + dir +
                                              "/obf --exact --homophones 600 --homophone-counts " + dir + "/prior.bin",
                                          &out, true),
            0)
      << out;
  const std::string base = exe + " audit-stream --tokenizer " + m.dir + "/plain --key " + dir + "/k.key --victim " +
                           dir + "/victim.bin --prior p=" + dir + "/prior.bin --no-sda";
  ASSERT_EQ(aloepri::testing::run_command(base + " --obf-model " + dir + "/obf --json-out " + dir + "/s.json", &out, true), 0)
      << out;
  EXPECT_NE(out.find("copy grouping from the weights"), std::string::npos) << out;
  const auto rows = nlohmann::json::parse(read_file(dir + "/s.json"));
  std::map<std::string, nlohmann::json> tfma;
  for (const auto& r : rows)
    if (r["attack"] == "TFMA") tfma[r["setting"].get<std::string>()] = r;
  ASSERT_TRUE(tfma.count("prior: p") && tfma.count("prior: p +homophones") &&
              tfma.count("prior: p +homophones, weight-grouped") && tfma.count("prior: p +homophones, context-grouped"))
      << rows.dump(1);
  const auto& w = tfma["prior: p +homophones, weight-grouped"];
  const auto& ws = w["details"]["copy_grouping"]["score"];
  EXPECT_EQ(ws["precision"].get<double>(), 1.0) << ws.dump();
  EXPECT_EQ(ws["recall"].get<double>(), 1.0) << ws.dump();
  EXPECT_EQ(w["details"]["copy_grouping"]["grouping"]["identical_groups"].get<int64_t>(), 32000);
  const double plain = tfma["prior: p"]["ttrsr"].get<double>(), split = tfma["prior: p +homophones"]["ttrsr"].get<double>();
  EXPECT_GT(plain, 0.15);
  EXPECT_NEAR(w["ttrsr"].get<double>(), plain, 0.02);
  EXPECT_GT(w["ttrsr"].get<double>(), split + 0.1) << "plain " << plain << ", copies alone " << split;
  // The traffic-only many-to-one solver runs beside them (attack M2O), its search recorded.
  const nlohmann::json* m2o = nullptr;
  for (const auto& r : rows)
    if (r["attack"] == "M2O") m2o = &r;
  ASSERT_NE(m2o, nullptr) << rows.dump(1);
  EXPECT_EQ((*m2o)["setting"].get<std::string>(), "prior: p +homophones, many-to-one");
  EXPECT_GT((*m2o)["details"]["solver"]["symbols_seen"].get<int64_t>(), 0) << m2o->dump();
  EXPECT_GE((*m2o)["details"]["solver"]["loglik_end"].get<double>(),
            (*m2o)["details"]["solver"]["loglik_start"].get<double>());
  EXPECT_TRUE((*m2o)["details"]["solver"].contains("loglik_truth"));
  EXPECT_GT((*m2o)["ttrsr"].get<double>(), 0.0);
  const auto& cs = tfma["prior: p +homophones, context-grouped"]["details"]["copy_grouping"];
  EXPECT_GT(cs["score"]["ids"].get<int64_t>(), 0) << cs.dump();
  EXPECT_GT(cs["grouping"]["merges_predicted"].get<int64_t>(), 0) << cs.dump();
  // A key without copies cannot be grouped against a model.
  ASSERT_EQ(aloepri::testing::run_command(exe + " keygen --out " + dir + "/plain.key", &out, true), 0) << out;
  const int rc = aloepri::testing::run_command(
      exe + " audit-stream --tokenizer " + m.dir + "/plain --key " + dir + "/plain.key --victim " + dir +
          "/victim.bin --prior p=" + dir + "/prior.bin --no-sda --obf-model " + dir + "/obf",
      &out, true);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("--obf-model"), std::string::npos) << out;
}

TEST(Homophones, ExactCopiesServedByLlamaCpp) {
  if (!engine_available()) GTEST_SKIP() << "llama.cpp engine (harness/llamacpp with node) not installed";
  const Models& m = exact_models();
  const VocabMap map(key_seed(), int64_t(m.copies.size()), m.copies);
  GGUFExportOptions go;
  go.progress = false;
  go.overwrite = true;
  export_gguf(HFModel(m.dir + "/plain"), m.dir + "/plain.gguf", DType::F32, go);
  go.opaque_vocab = true;
  const auto res = export_gguf(HFModel(m.dir + "/obf"), m.dir + "/obf.gguf", DType::F32, go);
  EXPECT_EQ(res.n_vocab, map.size()) << "n' tokenizer entries";
  int64_t most = 0;
  for (int64_t t = 0; t < map.plain_size(); ++t)
    if (map.copies(t) > map.copies(most)) most = t;
  RngStream r(key_seed(), "llama-ids");
  std::vector<int64_t> ids, oids;
  for (int i = 0; i < 8; ++i) ids.push_back(i % 3 == 1 ? most : int64_t(r.below(uint64_t(map.plain_size()))));
  for (size_t i = 0; i < ids.size(); ++i) oids.push_back(map.id(ids[i], int64_t(i) % map.copies(ids[i])));
  const int64_t top = map.copies(most) + 8;  // copies tie: read back more than the most copies
  auto run = [&](const std::string& g, const std::vector<int64_t>& v) {
    std::string out;
    // Logit-exact: flash attention off and an F32 KV cache are eval.mjs's defaults.
    const std::string cmd = "node " + eval_script() + " --model " + g + " --ids " + csv(v) +
                            " --greedy 32 --greedy-top " + std::to_string(top) + " --all-logits --threads 2";
    const int rc = aloepri::testing::run_command(cmd, &out);
    if (rc != 0) throw std::runtime_error("eval.mjs failed: " + cmd);
    return nlohmann::json::parse(out);
  };
  const auto jp = run(m.dir + "/plain.gguf", ids), jo = run(m.dir + "/obf.gguf", oids);
  const int64_t n = map.plain_size(), np = map.size();
  double worst = 0, kl_raw = 0, kl_corr = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    const auto a = jp["logits"][t].get<std::vector<double>>(), b = jo["logits"][t].get<std::vector<double>>();
    ASSERT_GE(int64_t(a.size()), n);
    ASSERT_EQ(int64_t(b.size()), np);
    double mx = 0, diff = 0;
    for (int64_t y = 0; y < n; ++y) {
      mx = std::max(mx, std::abs(a[size_t(y)]));
      for (int64_t c = 0; c < map.copies(y); ++c) diff = std::max(diff, std::abs(a[size_t(y)] - b[size_t(map.id(y, c))]));
    }
    worst = std::max(worst, diff / mx);
    kl_raw += merged_kl(a.data(), b.data(), map, false);
    kl_corr = std::max(kl_corr, merged_kl(a.data(), b.data(), map, true));
  }
  std::printf("llama.cpp: max |logit(copy of y) - logit(y)| / max|logit| = %.2e; KL merged %.3e, corrected %.2e\n",
              worst, kl_raw / double(ids.size()), kl_corr);
  EXPECT_LT(worst, 1e-4);
  EXPECT_LT(kl_corr, 1e-6);
  const auto gp = jp["greedy"].get<std::vector<int64_t>>(), gobf = jo["greedy"].get<std::vector<int64_t>>();
  ASSERT_EQ(gp.size(), 32u);
  ASSERT_EQ(gobf.size(), 32u);
  for (size_t i = 0; i < gp.size(); ++i) EXPECT_EQ(map.plain(gobf[i]), gp[i]) << "greedy token " << i;
}
