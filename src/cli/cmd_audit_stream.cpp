// `aloepri audit-stream`: the token-stream half of the privacy audit (TFMA and SDA, issue 5) on
// its own: what an honest-but-curious server recovers from the obfuscated ids it sees, given
// public text priors. The key is used only to make the victim traffic and to score.
#include <algorithm>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>

#include "aloepri/audit/copy_groups.h"
#include "aloepri/audit/homophone_solver.h"
#include "aloepri/audit/pii.h"
#include "aloepri/audit/stream_attacks.h"
#include "aloepri/core/error.h"
#include "aloepri/core/keyfile.h"
#include "aloepri/model/model.h"
#include "aloepri/core/output.h"
#include "aloepri/client/proxy.h"
#include "aloepri/client/tokenizer.h"
#include "command.h"

namespace {

using namespace aloepri;
using namespace aloepri::audit;

struct Opts {
  std::string tokenizer, key, victim, traffic, pii_names, write_traffic, victim_name, json_out;
  std::string obf_model;  // served checkpoint of a homophonic key: the weight-grouping attacker
  bool no_context_grouping = false;
  bool no_solver = false;
  aloepri::audit::ManyToOneOptions solver;
  aloepri::audit::ContextGroupingOptions context;
  aloepri::audit::WeightGroupingOptions weights;
  std::vector<std::string> priors, balanced_priors;
  std::string sizes;
  std::string prior_rest;  // NAME: a prior from the victim documents the traffic does not use
  int64_t homophones = 0;  // extra obfuscated ids of the homophonic simulation (0 = off)
  uint64_t homophone_seed = 1;
  double sda_seconds = 20;
  uint64_t shuffle_seed = 0;
  aloepri::audit::SdaOptions sda;
  int64_t max_prior_tokens = 0;
  bool no_sda = false, json = false, force = false;
};

std::pair<std::string, std::string> name_file(const std::string& spec, const std::string& opt) {
  auto eq = spec.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
    throw Error(opt, "expected NAME=FILE, got '" + spec + "'", kExitUsage);
  return {spec.substr(0, eq), spec.substr(eq + 1)};
}

std::string pct(double v) {
  if (v < 0) return "-";
  std::ostringstream o;
  o << std::fixed << std::setprecision(v < 0.001 && v > 0 ? 3 : 1) << 100.0 * v;
  return o.str();
}

// One line of a copy grouping's score for the human table.
std::string grouping_line(const nlohmann::json& j) {
  const auto& s = j["score"];
  std::ostringstream o;
  o << "pair precision " << pct(s["precision"].get<double>()) << "%, recall " << pct(s["recall"].get<double>())
    << "%, tokens whose copies are one group " << pct(s["tokens_exact"].get<double>()) << "% ("
    << s["ids"].get<int64_t>() << " ids in " << s["groups"].get<int64_t>() << " groups, " << s["tokens"].get<int64_t>()
    << " tokens; " << std::fixed << std::setprecision(1) << j["grouping"]["seconds"].get<double>() << " s)";
  return o.str();
}

int run(const Opts& o) {
  if (o.victim.empty() == o.traffic.empty())
    throw Error("audit-stream", "give exactly one of --victim (plaintext) or --traffic (obfuscated ids)", kExitUsage);
  if (o.priors.empty() && o.balanced_priors.empty() && o.prior_rest.empty())
    throw Error("audit-stream", "give at least one --prior (or --prior-rest)", kExitUsage);
  auto tok = Tokenizer::load(o.tokenizer);
  KeyFile key = KeyFile::load(o.key);
  const int64_t n = key.record ? key.record->vocab_size : int64_t(tok.vocab_size());
  if (n != int64_t(tok.vocab_size()))
    throw Error(o.key, "the key's vocabulary (" + std::to_string(n) + ") differs from the tokenizer's (" +
                           std::to_string(tok.vocab_size()) + ")", kExitKeyMismatch);
  // A key that obfuscated with --homophones: the rows marked "+homophones" attack the traffic of
  // the real client encoding (TokenMap: a copy per occurrence from the OS CSPRNG), next to the
  // rows of a plain tau over the same plaintext.
  const bool real_hom = key.record && !key.record->copies.empty();
  if (!o.obf_model.empty() && !real_hom)
    throw Error("--obf-model", "groups the copies of a homophonic model, but " + o.key +
                                   " has no copy table (obfuscate with --homophones)", kExitUsage);
  if (real_hom && o.homophones > 0)
    throw Error("--homophones", "simulates a homophonic vocabulary, but " + o.key +
                                    " already has a real one (its traffic is attacked without the flag)",
                kExitUsage);
  const auto tau = derive_tau(key.seed, n);
  const auto tau_inv = invert_permutation(tau);
  const int32_t V = int32_t(n);
  std::unique_ptr<TokenMap> client;
  if (real_hom) client = std::make_unique<TokenMap>(key.seed, n, key.record->copies);

  std::vector<TokenSeq> plain, traffic, htraffic;
  if (!o.victim.empty()) {
    plain = load_token_docs(o.victim, &tok, document_ids(tok));
    traffic = plain;
    for (auto& d : traffic)
      for (auto& t : d) t = int32_t(tau[size_t(t)]);
    if (real_hom) {
      htraffic = plain;
      for (auto& d : htraffic)
        for (auto& t : d) t = int32_t(client->to_server(t));
    }
  } else if (real_hom) {
    htraffic = read_traffic(o.traffic, int32_t(client->size()));
    plain = htraffic;
    for (auto& d : plain)
      for (auto& t : d) t = int32_t(client->from_server(t));
    traffic = plain;
    for (auto& d : traffic)
      for (auto& t : d) t = int32_t(tau[size_t(t)]);
  } else {
    traffic = read_traffic(o.traffic, V);
    plain = traffic;
    for (auto& d : plain)
      for (auto& t : d) t = int32_t(tau_inv[size_t(t)]);
  }
  if (o.shuffle_seed) {  // Fisher-Yates on the requests, so that every prefix mixes the sources
    std::mt19937_64 rng(o.shuffle_seed);
    for (size_t i = plain.size(); i > 1; --i) {
      size_t j = size_t(rng() % i);
      std::swap(plain[i - 1], plain[j]);
      std::swap(traffic[i - 1], traffic[j]);
      if (real_hom) std::swap(htraffic[i - 1], htraffic[j]);
    }
  }
  if (!o.write_traffic.empty()) write_traffic(o.write_traffic, real_hom ? htraffic : traffic, o.force);
  std::vector<std::vector<uint8_t>> pii;
  std::vector<std::vector<int32_t>> pii_item;
  int64_t pii_tokens = 0, pii_items = 0;
  if (!o.pii_names.empty()) {
    auto rules = PiiRules::load(o.pii_names);
    for (const auto& d : plain) {
      auto pt = mark_pii_tokens(tok, d, rules);
      pii.push_back(std::move(pt.kind));  // PiiKind + 1: non-zero = PII
      pii_item.push_back(std::move(pt.item));
      pii_items += int64_t(pt.spans.size());
      for (auto m : pii.back()) pii_tokens += (m != 0);
    }
  }
  int64_t total = 0;
  for (const auto& d : traffic) total += int64_t(d.size());
  std::vector<int64_t> sizes;
  if (o.sizes.empty()) {
    sizes.push_back(total);
  } else {
    for (int64_t s : cli::parse_ids_csv(o.sizes)) sizes.push_back(std::min(s, total));
  }
  nlohmann::json prior_info = nlohmann::json::object();
  std::vector<StreamPrior> priors;
  std::vector<std::pair<std::vector<TokenSeq>, std::vector<double>>> prior_docs;  // kept for --homophones
  if (!o.prior_rest.empty()) {
    // Disjoint by document: the traffic prefixes use the first documents (after the shuffle) up
    // to the largest size, the last one possibly cut; the prior takes every document after it.
    const int64_t largest = *std::max_element(sizes.begin(), sizes.end());
    size_t first_unused = 0;
    int64_t used = 0;
    while (first_unused < plain.size() && used < largest) used += int64_t(plain[first_unused++].size());
    require(first_unused < plain.size(), "--prior-rest",
            "no victim documents left for the prior: the largest --sizes uses all " + std::to_string(total) +
                " tokens", kExitUsage);
    std::vector<TokenSeq> rest(plain.begin() + ptrdiff_t(first_unused), plain.end());
    int64_t rest_tokens = 0;
    for (const auto& d : rest) rest_tokens += int64_t(d.size());
    if (o.max_prior_tokens > 0) rest = take_tokens(rest, o.max_prior_tokens);
    prior_info[o.prior_rest] = {{"source", o.victim.empty() ? o.traffic : o.victim},
                                {"split", "victim documents after those of the largest traffic prefix"},
                                {"shuffle_seed", o.shuffle_seed},
                                {"first_document", first_unused},
                                {"documents", rest.size()},
                                {"tokens_available", rest_tokens},
                                {"victim_documents_reserved", first_unused},
                                {"victim_tokens_reserved", used}};
    priors.push_back({o.prior_rest, BigramModel::build(rest, V)});
    prior_info[o.prior_rest]["tokens"] = priors.back().model.tokens();
    if (o.homophones > 0 || real_hom) prior_docs.push_back({std::move(rest), {}});
  }
  for (const auto& spec : o.priors) {
    auto [name, file] = name_file(spec, "--prior");
    auto docs = load_token_docs(file, &tok, document_ids(tok), o.max_prior_tokens);
    priors.push_back({name, BigramModel::build(docs, V)});
    if (o.homophones > 0 || real_hom) prior_docs.push_back({std::move(docs), {}});
  }
  for (const auto& spec : o.balanced_priors) {
    auto [name, file] = name_file(spec, "--balanced-prior");
    std::vector<std::string> src;
    auto docs = load_token_docs(file, &tok, document_ids(tok), o.max_prior_tokens, &src);
    auto weight = balance_sources(docs, src);
    priors.push_back({name, BigramModel::build_weighted(docs, weight, V)});
    if (o.homophones > 0 || real_hom) prior_docs.push_back({std::move(docs), std::move(weight)});
  }
  // Homophonic simulation: copies ~ sqrt(frequency in the first prior, the public table the client
  // would use); the attacker knows the scheme and the table and simulates it on each prior.
  Homophones hom;
  std::vector<StreamPrior> hpriors;
  std::vector<int32_t> sym_truth;         // served/simulated symbol -> plaintext id (scoring only)
  std::vector<int64_t> public_copies;     // c_t as the public table gives it (the attacker's)
  nlohmann::json hom_info;
  if (real_hom) {
    // The copy table is public knowledge (the allocation rule and the counts are), so the attacker
    // labels copies exactly as the key does up to a relabelling, and simulates them on its priors.
    const auto& cp = key.record->copies;
    hom.first.assign(1, 0);
    for (int32_t t = 0; t < V; ++t) {
      for (int64_t c = 0; c < cp[size_t(t)]; ++c) hom.base.push_back(t);
      hom.first.push_back(int32_t(hom.base.size()));
    }
    const int32_t S = hom.symbols();
    for (size_t i = 0; i < priors.size(); ++i) {
      auto enc = homophonic_encode(prior_docs[i].first, hom, o.homophone_seed + 1 + i);  // the attacker's draws
      hpriors.push_back({priors[i].name + " +homophones",
                         prior_docs[i].second.empty() ? BigramModel::build(enc, S)
                                                      : BigramModel::build_weighted(enc, prior_docs[i].second, S)});
    }
    prior_docs.clear();
    int64_t maxc = 0;
    for (int64_t k : cp) maxc = std::max(maxc, k);
    public_copies = cp;
    sym_truth.resize(size_t(client->size()));
    for (int64_t s = 0; s < client->size(); ++s) sym_truth[size_t(s)] = int32_t(client->from_server(s));
    nlohmann::json rec_h = key.record->params.value("homophones", nlohmann::json::object());
    hom_info = {{"extra_ids", S - V}, {"symbols", S}, {"max_copies", maxc}, {"real", true},
                {"table", "the key's copy table (" + rec_h.value("rule", std::string("?")) + " rule, counts from " +
                              rec_h.value("counts", std::string("?")) + ")"},
                {"traffic", "real client encoding (TokenMap::to_server, a copy per occurrence from the OS CSPRNG)"},
                {"attacker", "knows the scheme and the table, simulates it on its prior, no clustering of copies"}};
  }
  if (o.homophones > 0) {
    std::vector<double> freq(size_t(V), 0.0);
    for (const auto& d : prior_docs[0].first)
      for (int32_t t : d) freq[size_t(t)] += 1;
    hom = make_homophones(freq, o.homophones);
    const int32_t S = hom.symbols();
    for (size_t i = 0; i < priors.size(); ++i) {
      auto enc = homophonic_encode(prior_docs[i].first, hom, o.homophone_seed + 1 + i);  // the attacker's draws
      hpriors.push_back({priors[i].name + " +homophones",
                         prior_docs[i].second.empty() ? BigramModel::build(enc, S)
                                                      : BigramModel::build_weighted(enc, prior_docs[i].second, S)});
    }
    prior_docs.clear();
    // The client's draws, then a secret relabelling of all V + B ids.
    htraffic = homophonic_encode(plain, hom, o.homophone_seed);
    std::vector<int32_t> sigma(static_cast<size_t>(S));
    std::iota(sigma.begin(), sigma.end(), 0);
    std::mt19937_64 rng(o.homophone_seed ^ 0x9e3779b97f4a7c15ull);
    for (size_t i = sigma.size(); i > 1; --i) std::swap(sigma[i - 1], sigma[size_t(rng() % i)]);
    for (auto& d : htraffic)
      for (auto& t : d) t = sigma[size_t(t)];
    sym_truth.resize(size_t(S));
    for (int32_t x = 0; x < S; ++x) sym_truth[size_t(sigma[size_t(x)])] = hom.base[size_t(x)];
    for (int32_t t = 0; t < V; ++t) public_copies.push_back(hom.copies(t));
    int32_t maxc = 0;
    for (int32_t t = 0; t < V; ++t) maxc = std::max(maxc, hom.copies(t));
    hom_info = {{"extra_ids", o.homophones}, {"symbols", S}, {"max_copies", maxc},
                {"table", "token frequencies of the first prior"}, {"copies", "1 + extra ~ sqrt(frequency)"},
                {"attacker", "knows the scheme and the table, simulates it on its prior, no clustering of copies"},
                {"seed", o.homophone_seed}};
  }
  // The attackers who group the copies first (audit/copy_groups.h) and attack the merged stream with
  // the plaintext priors: from the served weights (--obf-model), once; from the traffic, per size.
  const bool homophonic = o.homophones > 0 || real_hom;
  std::optional<CopyGrouping> wgroups;
  nlohmann::json wgroup_info;
  if (!o.obf_model.empty()) {
    HFModel obf(o.obf_model);
    const Tensor emb = obf.tensor_f32(tensor_names::embed()), head = obf.lm_head_f32();
    if (emb.rows() != client->size())
      throw Error(o.obf_model, "serves " + std::to_string(emb.rows()) + " ids, but the copy table of " + o.key +
                                   " gives " + std::to_string(client->size()), kExitKeyMismatch);
    wgroups = group_copies_by_weights(emb, head, n, o.weights);
    wgroup_info = {{"grouping", wgroups->info}, {"score", score_copy_grouping(*wgroups, sym_truth).to_json()},
                   {"model", o.obf_model}};
    if (!o.json)
      std::cout << "copy grouping from the weights of " << o.obf_model << ": " << grouping_line(wgroup_info) << "\n";
  }
  std::vector<double> public_unigram;
  if (homophonic && !priors.empty())
    for (int32_t t = 0; t < V; ++t) public_unigram.push_back(priors[0].model.unigram_count(t));
  auto renamed = [&](const std::string& suffix) {
    std::vector<StreamPrior> r = priors;
    for (auto& p : r) p.name += suffix;
    return r;
  };
  const std::vector<StreamPrior> cpriors =
      homophonic && !o.no_context_grouping ? renamed(" +homophones, context-grouped") : std::vector<StreamPrior>();
  const std::vector<StreamPrior> wpriors = wgroups ? renamed(" +homophones, weight-grouped") : std::vector<StreamPrior>();

  std::vector<int32_t> unscored;
  for (int32_t id = 0; id < V; ++id)
    if (tok.is_special(id)) unscored.push_back(id);

  nlohmann::json all = nlohmann::json::array();
  if (!o.json) {
    std::cout << "victim: " << (o.victim.empty() ? o.traffic : o.victim) << " (" << total << " tokens, "
              << traffic.size() << " requests"
              << (pii.empty() ? "" : ", " + std::to_string(pii_items) + " PII items in " + std::to_string(pii_tokens) + " tokens")
              << ")\n";
    std::cout << std::left << std::setw(9) << "tokens" << std::setw(44) << "prior" << std::setw(6) << "attack"
              << std::right << std::setw(8) << "TTRSR%" << std::setw(8) << "top10%" << std::setw(9) << "top100%"
              << std::setw(10) << "top100v%" << std::setw(7) << "PII%" << std::setw(8) << "PIIit%" << std::setw(7) << "BLEU" << std::setw(6)
              << "cos" << std::setw(8) << "s" << "\n";
  }
  for (int64_t size : sizes) {
    StreamAttackInputs in;
    in.vocab_size = V;
    in.victim_name = o.victim_name.empty() ? (o.victim.empty() ? o.traffic : o.victim) : o.victim_name;
    in.traffic = take_tokens(traffic, size);
    in.truth = take_tokens(plain, size);
    if (!pii.empty()) {
      for (size_t i = 0; i < in.traffic.size(); ++i) {
        in.pii_mask.emplace_back(pii[i].begin(), pii[i].begin() + ptrdiff_t(in.traffic[i].size()));
        in.pii_item.emplace_back(pii_item[i].begin(), pii_item[i].begin() + ptrdiff_t(in.traffic[i].size()));
      }
    }
    in.priors = priors;
    in.unscored_plain_ids = unscored;
    in.run_sda = !o.no_sda;
    in.sda = o.sda;
    in.sda.seconds = o.sda_seconds;
    std::vector<AttackResult> results = run_stream_attacks(in);
    if (o.homophones > 0 || real_hom) {
      in.vocab_size = hom.symbols();
      in.traffic = take_tokens(htraffic, size);
      in.priors = hpriors;
      in.symbol_to_plain = hom.base;
      for (auto& r : run_stream_attacks(in)) {
        r.details["homophones"] = hom_info;
        results.push_back(std::move(r));
      }
      in.symbol_to_plain.clear();
      if (!cpriors.empty()) {
        const CopyGrouping cg =
            group_copies_by_context(in.traffic, hom.symbols(), public_copies, public_unigram, o.context);
        const nlohmann::json info = {{"grouping", cg.info}, {"score", score_copy_grouping(cg, sym_truth).to_json()}};
        if (!o.json) std::cout << "copy grouping from " << size << " tokens of traffic: " << grouping_line(info) << "\n";
        in.priors = cpriors;
        in.symbol_group = cg.group;
        for (auto& r : run_stream_attacks(in)) {
          r.details["homophones"] = hom_info;
          r.details["homophones"]["attacker"] =
              "groups the copies by their traffic contexts, then attacks the merged stream with the plaintext prior";
          r.details["copy_grouping"] = info;
          results.push_back(std::move(r));
        }
      }
      if (!o.no_solver) {  // the traffic-only observer deciphers many-to-one (audit/homophone_solver.h)
        in.symbol_group.clear();
        for (const StreamPrior& p : priors) {
          ManyToOneStats st;
          const Guesses g = solve_many_to_one(in.traffic, hom.symbols(), p.model, public_copies, o.solver, &st);
          AttackResult r;
          r.attack = "M2O";
          r.setting = "prior: " + p.name + " +homophones, many-to-one";
          r.victim_tokens = size;
          r.details = {{"victim", in.victim_name}, {"traffic_tokens", size}, {"prior_tokens", p.model.tokens()},
                       {"solver", st.to_json()},
                       {"search", {{"seconds", o.solver.seconds}, {"window", o.solver.window},
                                   {"max_sweeps", o.solver.max_sweeps}, {"em_iters", o.solver.em_iters},
                                   {"em_keep", o.solver.em_keep}, {"anneal_steps", o.solver.anneal_steps},
                                   {"count_weight", o.solver.count_weight}}}};
          if (!sym_truth.empty())  // the objective at the key's map: search failure vs model failure
            r.details["solver"]["loglik_truth"] = many_to_one_objective(in.traffic, hom.symbols(), p.model,
                                                                        public_copies, sym_truth, o.solver.count_weight);
          score_stream_guesses(in, g, r);
          r.seconds = st.seconds;
          r.details["homophones"] = hom_info;
          r.details["homophones"]["attacker"] =
              "deciphers the copies many-to-one under the plaintext prior's bigram model and the public copy table";
          results.push_back(std::move(r));
        }
      }
      if (wgroups) {
        in.priors = wpriors;
        in.symbol_group = wgroups->group;
        for (auto& r : run_stream_attacks(in)) {
          r.details["homophones"] = hom_info;
          r.details["homophones"]["attacker"] =
              "groups the copies by the served embedding and head rows, then attacks the merged stream with the "
              "plaintext prior";
          r.details["copy_grouping"] = wgroup_info;
          results.push_back(std::move(r));
        }
      }
    }
    for (auto& r : results) {
      auto j = r.to_json();
      j["traffic_tokens"] = size;
      std::string pname = r.setting.rfind("prior: ", 0) == 0 ? r.setting.substr(7) : r.setting;
      if (const auto h = pname.find(" +homophones"); h != std::string::npos) pname = pname.substr(0, h);
      if (prior_info.contains(pname)) j["prior_split"] = prior_info[pname];
      all.push_back(j);
      if (!o.json) {
        auto tk = [&](int k) {
          for (auto& [kk, v] : r.topk)
            if (kk == k) return pct(v);
          return std::string("-");
        };
        std::ostringstream b;
        b << std::fixed << std::setprecision(2) << 100 * r.bleu4;
        std::ostringstream c, s;
        c << std::fixed << std::setprecision(2) << r.cosine;
        s << std::fixed << std::setprecision(1) << r.seconds;
        std::string prior = r.setting.rfind("prior: ", 0) == 0 ? r.setting.substr(7) : r.setting;
        std::cout << std::left << std::setw(9) << size << std::setw(44) << prior.substr(0, 43) << std::setw(6)
                  << r.attack << std::right << std::setw(8) << pct(r.ttrsr) << std::setw(8) << tk(10) << std::setw(9)
                  << tk(100) << std::setw(10) << pct(r.details.value("top100_vocab", -1.0)) << std::setw(7)
                  << pct(r.pii_recovery) << std::setw(8) << pct(r.details.value("pii_items_recovered", -1.0)) << std::setw(7) << b.str() << std::setw(6) << c.str() << std::setw(8)
                  << s.str() << "\n"
                  << std::flush;
      }
    }
  }
  if (o.json) std::cout << all.dump(1) << "\n";
  if (!o.json_out.empty()) write_file_atomic(o.json_out, all.dump(1) + "\n", o.force);
  return 0;
}

auto setup(CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  sub.add_option("--tokenizer", o->tokenizer, "Model directory or tokenizer.json of the plaintext model")->required();
  sub.add_option("--key", o->key, "Key file: makes the victim traffic (tau) and scores; never given to the attacks")
      ->required();
  sub.add_option("--victim", o->victim, "Plaintext victim corpus (.jsonl {\"text\"}, .bin uint16 ids, or text lines)");
  sub.add_option("--traffic", o->traffic, "Observed traffic: JSON lines, one array of obfuscated ids per request");
  sub.add_option("--victim-name", o->victim_name, "Name of the victim set in the results");
  sub.add_option("--prior", o->priors, "Attacker prior NAME=FILE (.jsonl / .bin / text lines); repeatable");
  sub.add_option("--balanced-prior", o->balanced_priors,
                 "Prior NAME=FILE.jsonl with every \"source\" re-weighted to the same token count; repeatable");
  sub.add_option("--prior-rest", o->prior_rest,
                 "Add a prior named NAME made of the victim documents that no traffic prefix uses (after "
                 "--shuffle-seed, disjoint by document from the largest --sizes prefix): a same-distribution prior");
  sub.add_option("--homophones", o->homophones,
                 "Also attack a simulated homophonic vocabulary with this many extra ids: each plaintext id gets "
                 "1 + (share ~ sqrt(its frequency in the first prior)) copies, one drawn at random per occurrence");
  sub.add_option("--homophone-seed", o->homophone_seed, "Seed of the homophonic draws (default 1)");
  sub.add_option("--obf-model", o->obf_model,
                 "Served checkpoint of the --key's homophonic model: adds the attacker who groups the copies by\n"
                 "their embedding and head rows (identical, then closest) and attacks the merged stream");
  sub.add_option("--group-gate", o->weights.gate,
                 "Weight grouping: stop merging at this x the median distance between rows (default 0.8; 0 = merge\n"
                 "down to the public vocabulary)");
  sub.add_option("--group-max", o->weights.max_group,
                 "Weight grouping: no group larger than this, e.g. the most copies of the public table (default 0:\n"
                 "no limit; on aloe-mini at per-row noise 1 the limit helps SDA at 10k tokens and hurts it at 100k)");
  sub.add_flag("--no-context-grouping", o->no_context_grouping,
               "Skip the attacker who groups copies by their traffic contexts (rows 'context-grouped', on by\n"
               "default with homophones)");
  sub.add_flag("--no-solver", o->no_solver,
               "Skip the many-to-one deciphering of the copies (rows 'many-to-one', attack M2O, on by default\n"
               "with homophones)");
  sub.add_option("--solver-seconds", o->solver.seconds, "Many-to-one solver: time budget per run (default 60)");
  sub.add_option("--solver-window", o->solver.window,
                 "Many-to-one solver: candidate tokens per symbol around its count rank (default 100)");
  sub.add_option("--solver-sweeps", o->solver.max_sweeps,
                 "Many-to-one solver: most greedy sweeps per phase (default 30)");
  sub.add_option("--solver-em", o->solver.em_iters,
                 "Many-to-one solver: EM steps of the soft start over the traffic's bigram types (default 8; 0: start\n"
                 "from the count ranks)");
  sub.add_option("--solver-count-weight", o->solver.count_weight,
                 "Many-to-one solver: weight of the copy-count (Poisson) term against the bigram term (default 1)");
  sub.add_option("--context-min-count", o->context.min_count,
                 "Context grouping: symbols seen fewer times stay alone (default 2)");
  sub.add_option("--context-linkage", o->context.linkage_cosine,
                 "Context grouping: two groups join only when their summed contexts have at least this cosine\n"
                 "(default 0.3; 0 = single linkage)");
  sub.add_option("--max-prior-tokens", o->max_prior_tokens, "Read at most this many prior tokens per prior (0 = all)");
  sub.add_option("--sizes", o->sizes, "Comma-separated traffic sizes in tokens (prefixes of the traffic); default all");
  sub.add_option("--shuffle-seed", o->shuffle_seed,
                 "Shuffle the requests with this seed before taking the --sizes prefixes (0 = file order)");
  sub.add_option("--sda-seconds", o->sda_seconds, "Time budget of each SDA run (default 20)");
  sub.add_option("--sda-temperature", o->sda.t_start, "SDA start temperature per traffic bigram (default 5e-5)");
  sub.add_option("--sda-final-temperature", o->sda.t_end, "SDA final temperature per traffic bigram (default 1e-7)");
  sub.add_option("--sda-rounds", o->sda.rounds, "SDA annealing rounds, each from the best mapping (default 2)");
  sub.add_option("--sda-window", o->sda.sweep_window, "SDA sweeps: prior ranks tried per symbol (default 50)");
  sub.add_flag("--no-sda", o->no_sda, "Run TFMA only");
  sub.add_option("--pii-names", o->pii_names, "First-name list (tools/corpus/pii.mjs names.txt): score PII recovery");
  sub.add_option("--write-traffic", o->write_traffic, "Also write the victim traffic (obfuscated ids) to this file");
  sub.add_flag("--force", o->force, "Overwrite --write-traffic / --json-out");
  sub.add_flag("--json", o->json, "Print the results as a JSON array");
  sub.add_option("--json-out", o->json_out, "Also write the JSON array to this file (refuses to overwrite without --force)");
  sub.footer(
      "TFMA matches obfuscated ids to plaintext ids by frequency rank; SDA improves that mapping by\n"
      "simulated annealing under the prior's bigram model. TTRSR = share of victim tokens recovered;\n"
      "top100v = share of the 100 most frequent obfuscated ids recovered (the report's 'top-100').\n"
      "Traffic file: one JSON array of obfuscated ids per line, e.g. [1,8432,77].\n"
      "With --homophones (or a homophonic --key) the rows marked '+homophones' attack the homophonic\n"
      "traffic over copies; 'context-grouped' rows first group the copies by their traffic contexts,\n"
      "'weight-grouped' rows (--obf-model) by the served rows, and attack the merged stream; 'many-to-one'\n"
      "rows (M2O) decipher the copies directly, several symbols to one token, under the prior's bigram\n"
      "model and the public copy table. An attacker who groups the copies perfectly is back to the plain rows.\n"
      "SDA's search budget (seconds, sweeps, rounds, temperatures) is in each JSON row's details.search.");
  return [o] { return run(*o); };
}

}  // namespace

ALOEPRI_COMMAND(audit_stream, "audit-stream", 72, "Token-stream attacks (TFMA, SDA) on obfuscated traffic", setup);
