// `aloepri keygen`: draw a fresh 256-bit master seed and write the key file (0600).
#include <iostream>

#include "aloepri/core/keyfile.h"
#include "command.h"

namespace {
auto setup(CLI::App& sub) {
  struct Opts {
    std::string out;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  sub.add_option("--out", o->out, "Key file to create (mode 0600)")->required();
  sub.add_flag("--force", o->force, "Replace an existing key file (its secret is lost!)");
  sub.footer(
      "The key holds a 256-bit seed from the OS CSPRNG; every secret of an obfuscation\n"
      "(vocabulary permutation, key matrices, noise) is derived from it. Keep it private:\n"
      "it is never printed, and it is refused if group/other can read it.\n"
      "After `aloepri obfuscate`, the key also records parameters and model fingerprints.");
  return [o] {
    auto key = aloepri::KeyFile::generate();
    key.save(o->out, o->force);
    std::cerr << "wrote key " << o->out << " (mode 0600)\n";
    return 0;
  };
}
}  // namespace
ALOEPRI_COMMAND(keygen, "keygen", 20, "Create a client key (256-bit secret seed, mode 0600)", setup);
