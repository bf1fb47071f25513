// Graph instrumentation: LibTorch offers no forward hooks on a loaded TorchScript module, so
// attnscope rewrites the forward graph of a weight-sharing clone and inserts the capture
// operators at every attention site it recognises.
#pragma once
#include <torch/script.h>

#include <cstdint>
#include <string>
#include <vector>

namespace attnscope {

/// One attention site found in the inlined forward graph.
struct AttentionSite {
  /// Site id in graph order; the op carries it and the recorder maps execution order to layers.
  int64_t id = 0;
  /// "softmax" (materialised probabilities), "softmax with sink" (a softmax whose trailing
  /// learned sink columns are sliced off: the probabilities over the real keys are captured)
  /// or "sdpa" (scaled_dot_product_attention).
  std::string kind;
  /// Module path from the inlined call stack, e.g. "model.layers.3.self_attn"; "" if unknown.
  std::string path;
  /// True when the site sits inside an if/loop block (it may run 0 or several times).
  bool in_block = false;
  /// True when whether it is attention is decided at run time (a softmax over a dim given as
  /// a non-negative index in a graph without ranks: captured only when it is the last dim).
  bool runtime_check = false;
};

/// A weight-sharing clone of a module with capture operators inserted.
struct Instrumented {
  torch::jit::Module module;
  std::vector<AttentionSite> sites;
  /// True when the module's KV-cache `decode` method got the operators too (its sites are
  /// forward's, kind for kind and in order).
  bool decode_instrumented = false;
};

/// Clones `module` with clone(true) (parameters shared, types and methods copied), inlines
/// forward, inserts attnscope::capture after each attention softmax (last dim, fed by a q·kᵀ
/// product, feeding a product with V) and replaces each aten::scaled_dot_product_attention with
/// attnscope::sdpa; the same in `decode` when its sites match forward's. Throws when no site is
/// found. `module` is unchanged.
Instrumented instrument(const torch::jit::Module& module);

/// Rows of the embedding table indexed directly by forward's first input (the vocabulary
/// size), or -1 when no such aten::embedding is found.
int64_t embedding_rows(const torch::jit::Module& module);

/// Replaces the device constants that tracing bakes into graphs (`torch.arange(T,
/// device=x.device)` is recorded as the tracing device, e.g. "cpu") by `device`, in every
/// method of `module` and its submodules, so that an archive traced on one device runs on
/// another. Returns the number of constants replaced (counted only, with `dry_run`).
int64_t retarget_device_constants(torch::jit::Module& module, const torch::Device& device,
                                  bool dry_run = false);

/// `method`'s graph (inlined copy) returning only the first element of its tuple output, with
/// the code only the other elements needed removed (decode's stacked caches, when only its
/// logits are wanted); nullptr when there is no such method or its output is not a tuple.
std::shared_ptr<torch::jit::Graph> first_output_graph(const torch::jit::Module& module, const std::string& method);

/// Capture operators already in `module.<method>` (counted on an inlined copy of the graph; 0
/// when there is no such method other than forward).
int64_t count_capture_ops(const torch::jit::Module& module, const std::string& method = "forward");

}  // namespace attnscope
