// Shared helpers for the Catch2 tests: fixture paths, reference loading, comparisons.
#pragma once
#define CATCH_CONFIG_PREFIX_ALL
#include <catch2/catch.hpp>

#include <attnscope/model.h>

#include <torch/serialize.h>

#include <fstream>
#include <iterator>
#include <limits>
#include <string>

namespace test {

inline std::string fixture(const std::string& name) {
  return std::string(ATTNSCOPE_FIXTURES) + "/" + name;
}

/// The dict written by make_fixtures.py with torch.save: ids, mask, probs (list), logits.
struct Ref {
  torch::Tensor ids, mask, logits;
  std::vector<torch::Tensor> probs;  // per layer [B, H, T, T]
};

inline Ref load_ref(const std::string& name) {
  std::ifstream f(fixture(name + ".ref.pt"), std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto d = torch::pickle_load(bytes).toGenericDict();
  Ref r;
  r.ids = d.at("ids").toTensor();
  r.mask = d.at("mask").toTensor();
  r.logits = d.at("logits").toTensor();
  if (d.contains("probs"))
    for (const auto& p : d.at("probs").toListRef()) r.probs.push_back(p.toTensor());
  return r;
}

inline double max_abs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

/// Max |got - want| over the rows of real queries; +inf unless the rows of padded queries are
/// all NaN in `got` (undefined there). `got`/`want [B, Tq, ...]`, `mask [B, Tq]` 1 = token.
inline double max_abs_rows(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& mask) {
  auto ok = mask.to(torch::kBool);
  while (ok.dim() < got.dim()) ok = ok.unsqueeze(-1);
  ok = ok.expand(got.sizes());
  if (!got.isnan().equal(ok.logical_not())) return std::numeric_limits<double>::infinity();
  return (got.to(torch::kDouble) - want.to(torch::kDouble)).masked_fill(ok.logical_not(), 0).abs().max().item<double>();
}

/// Message of the c10::Error thrown by `f` ("" if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace test
