// Per-component transforms of method.md section 5 on in-memory tensors in Hugging Face layout
// (nn.Linear weight = out x in). Each transform splits into
//   stage 1: secrets local to a block (RoPE-pair rotation/scale/permutation, value/output maps,
//            head permutations, FFN channel permutation/scale), still in the plaintext hidden
//            space, and exact (BlockPerm apart) by construction;
//   stage 2: the residual-stream key matrices: readers W Diag(w_norm) Q^T, writers P^T W.
// The executor (obfuscate.h) strings them together; the tests check each one on its own.
#pragma once
#include "aloepri/obfuscate/attention.h"
#include "aloepri/obfuscate/ffn.h"
#include "aloepri/obfuscate/residual.h"
#include "aloepri/obfuscate/vocab.h"
