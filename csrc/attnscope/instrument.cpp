#include <attnscope/instrument.h>

#include <attnscope/capture_ops.h>

#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>

#include <functional>
#include <unordered_map>
#include <set>

namespace attnscope {

using torch::jit::Node;
using torch::jit::Value;
using c10::Symbol;

namespace {

Symbol sym(const char* s) { return Symbol::fromQualString(s); }

// Ops that carry attention scores/probabilities unchanged in meaning: scaling, masking,
// casts, reshapes, dropout.
const std::set<Symbol>& passthrough() {
  static const std::set<Symbol> s = [] {
    std::set<Symbol> r;
    for (const char* n :
         {"aten::mul", "aten::mul_", "aten::div", "aten::div_", "aten::add", "aten::add_",
          "aten::sub", "aten::sub_", "aten::masked_fill", "aten::masked_fill_", "aten::where",
          "aten::to", "aten::type_as", "aten::_to_copy", "aten::view", "aten::reshape",
          "aten::view_as", "aten::reshape_as", "aten::contiguous", "aten::dropout",
          "aten::dropout_", "aten::feature_dropout", "aten::clamp", "aten::detach",
          "aten::expand", "aten::expand_as", "aten::unsqueeze", "aten::squeeze", "aten::float",
          "aten::half", "aten::bfloat16", "aten::tanh", "aten::neg", "prim::ListConstruct"})
      r.insert(sym(n));
    return r;
  }();
  return s;
}

// Elementwise bounds against a constant or another tensor (clamp_min, torch.max(scores,
// finfo.min) as XGLM writes it, maximum/minimum): a masked score clamped to the dtype's
// minimum is still a score. Only the two-tensor overloads of max/min qualify; the reductions
// (max(x), max(x, dim)) change the shape and are not looked through.
bool is_bound(Node* n) {
  static const std::set<Symbol> always = {sym("aten::clamp_min"), sym("aten::clamp_min_"),
                                          sym("aten::clamp_max"), sym("aten::clamp_max_"),
                                          sym("aten::maximum"), sym("aten::minimum"),
                                          sym("aten::fmax"), sym("aten::fmin")};
  static const std::set<Symbol> binary = {sym("aten::max"), sym("aten::min")};
  if (always.count(n->kind())) return true;
  if (!binary.count(n->kind()) || n->inputs().size() != 2 || n->outputs().size() != 1) return false;
  return n->input(1)->type()->kind() == c10::TypeKind::TensorType;
}

bool looked_through(Node* n) { return passthrough().count(n->kind()) > 0 || is_bound(n); }

bool is_product(Node* n) {
  static const std::set<Symbol> s = {sym("aten::matmul"), sym("aten::bmm"),
                                     sym("aten::baddbmm"), sym("aten::einsum")};
  return s.count(n->kind()) > 0;
}

bool is_tensorish(Value* v) {
  auto k = v->type()->kind();
  return k == c10::TypeKind::TensorType || k == c10::TypeKind::ListType;
}

// q·kᵀ upstream of the softmax input? A concatenation is looked through on this side only:
// learned sink logits (GPT-OSS) are appended to the scores as extra key columns.
bool fed_by_product(Value* v, int depth) {
  if (depth > 12) return false;
  Node* n = v->node();
  if (is_product(n)) return true;
  static const Symbol cat = sym("aten::cat");
  if (!looked_through(n) && n->kind() != cat) return false;
  for (Value* in : n->inputs())
    if (is_tensorish(in) && fed_by_product(in, depth + 1)) return true;
  return false;
}

// Probabilities flowing into a product with V downstream?
bool feeds_product(Value* v, int depth) {
  if (depth > 12) return false;
  for (const auto& use : v->uses()) {
    Node* u = use.user;
    if (is_product(u)) return true;
    if (looked_through(u))
      for (Value* out : u->outputs())
        if (feeds_product(out, depth + 1)) return true;
  }
  return false;
}

// Softmax dim: kLast (-1, or the last by the graph's rank), kMaybe (a non-negative index >= 2
// in a graph without ranks, e.g. an archive reloaded by torch.jit.load: decided at run time by
// capture_dim), kNo.
enum class DimMatch { kNo, kLast, kMaybe };

DimMatch softmax_on_last_dim(Node* n, int64_t* dim_out) {
  auto dim = torch::jit::toIValue(n->input(1));
  if (!dim || !dim->isInt()) return DimMatch::kNo;
  int64_t d = dim->toInt();
  *dim_out = d;
  if (d == -1) return DimMatch::kLast;
  if (auto tt = n->input(0)->type()->cast<c10::TensorType>())
    if (auto rank = tt->dim())
      return d == static_cast<int64_t>(*rank) - 1 ? DimMatch::kLast : DimMatch::kNo;
  // Scores are at least [B·H, Tq, Tk]: a key dim below 2 cannot be the last one.
  return d >= 2 ? DimMatch::kMaybe : DimMatch::kNo;
}

// Full dotted names of submodules by class type, for types that occur once (traced modules
// get one mangled type per instance, so this names e.g. "model.layers.3.self_attn").
using TypeNames = std::unordered_map<c10::ClassTypePtr, std::string>;

TypeNames unique_type_names(const torch::jit::Module& m) {
  TypeNames names;
  std::unordered_map<c10::ClassTypePtr, int> count;
  for (const auto& nm : m.named_modules()) {
    auto t = nm.value.type();
    if (++count[t] == 1) names[t] = nm.name;
  }
  for (const auto& c : count)
    if (c.second > 1) names.erase(c.first);
  return names;
}

std::string module_path(Node* n, const TypeNames& names) {
  std::string joined, full;
  if (auto cs = n->callstack()) {
    for (const auto& entry : (*cs)->vec()) {
      const auto& info = std::get<2>(entry);
      if (!info) continue;
      auto it = names.find(info->class_type());
      if (it != names.end()) full = it->second;
      const std::string& name = info->instance_name();
      if (name.empty() || name == "self") continue;
      // Module containers (ModuleList) are not calls, so instance names alone skip them.
      joined += (joined.empty() ? "" : ".") + name;
    }
  }
  if (!full.empty()) return full;
  if (joined.empty() && n->scope() && !n->scope()->isBlank()) joined = n->scope()->namesFromRoot();
  return joined;
}

struct Found {
  Node* node;
  bool sdpa;
  bool in_block;
  int64_t runtime_dim;  // >= 0: softmax dim to check at run time (capture_dim); -1: none
  bool sink = false;    // node is the slice that drops learned sink columns (capture_sink)
};

// A softmax whose rows carry extra trailing columns that are not keys (learned attention sinks,
// GPT-OSS: softmax(cat([scores, sink])) then [..., :-1]): its one use is a slice of the last dim
// from 0 to a negative constant end, and the slice is what meets V. Returns the slice; *dim_out
// is its dim (checked at run time by capture_sink when the graph has no ranks).
Node* sink_slice(Node* softmax, int64_t* dim_out) {
  static const Symbol slice = sym("aten::slice");
  if (softmax->output()->uses().size() != 1) return nullptr;
  Node* s = softmax->output()->uses()[0].user;
  if (s->kind() != slice || s->inputs().size() != 5 || s->input(0) != softmax->output()) return nullptr;
  // slice(self, dim, ...) has softmax's (self, dim) layout: the same last-dim test applies.
  if (softmax_on_last_dim(s, dim_out) == DimMatch::kNo) return nullptr;
  auto start = torch::jit::toIValue(s->input(2)), end = torch::jit::toIValue(s->input(3)),
       step = torch::jit::toIValue(s->input(4));
  if (!start || !(start->isNone() || (start->isInt() && start->toInt() == 0))) return nullptr;
  if (!end || !end->isInt() || end->toInt() >= 0) return nullptr;
  if (!step || !step->isInt() || step->toInt() != 1) return nullptr;
  return feeds_product(s->output(), 0) ? s : nullptr;
}

void collect(torch::jit::Block* b, bool in_block, std::vector<Found>& out) {
  static const Symbol softmax = sym("aten::softmax"), softmax_ = sym("aten::_softmax"),
                      sdpa = sym("aten::scaled_dot_product_attention");
  for (Node* n : b->nodes()) {
    int64_t d = -1;
    if (n->kind() == sdpa) {
      out.push_back({n, true, in_block, -1});
    } else if (n->kind() == softmax || n->kind() == softmax_) {
      DimMatch match = softmax_on_last_dim(n, &d);
      if (match != DimMatch::kNo && fed_by_product(n->input(0), 0)) {
        if (feeds_product(n->output(), 0))
          out.push_back({n, false, in_block, match == DimMatch::kMaybe ? d : -1});
        else if (int64_t sd = -1; Node* s = sink_slice(n, &sd))
          out.push_back({s, false, in_block, sd, true});
      }
    }
    for (torch::jit::Block* sub : n->blocks()) collect(sub, true, out);
  }
}

std::shared_ptr<torch::jit::Graph> forward_graph(const torch::jit::Module& m) {
  TORCH_CHECK(m.find_method("forward").has_value(),
              "the TorchScript module has no forward method");
  return m.get_method("forward").graph();
}

}  // namespace

int64_t count_capture_ops(const torch::jit::Module& module, const std::string& method) {
  if (method != "forward" && !module.find_method(method)) return 0;
  auto g = (method == "forward" ? forward_graph(module) : module.get_method(method).graph())->copy();
  torch::jit::Inline(*g);
  int64_t n = 0;
  static const std::set<Symbol> ops = {sym(kCaptureOp), sym(kCaptureSdpaOp), sym(kCaptureDimOp),
                                       sym(kSdpaOp), sym(kCaptureSinkOp)};
  std::function<void(torch::jit::Block*)> walk = [&](torch::jit::Block* blk) {
    for (Node* node : blk->nodes()) {
      if (ops.count(node->kind())) ++n;
      for (auto* sub : node->blocks()) walk(sub);
    }
  };
  walk(g->block());
  return n;
}

int64_t embedding_rows(const torch::jit::Module& module) {
  auto g = forward_graph(module)->copy();
  torch::jit::Inline(*g);
  if (g->inputs().size() < 2) return -1;
  Value* ids = g->inputs()[1];
  const Symbol emb = sym("aten::embedding"), getattr = sym("prim::GetAttr");
  for (Node* n : g->nodes()) {
    if (n->kind() != emb || n->input(1) != ids) continue;
    // Resolve the weight's GetAttr chain back to `self`.
    std::vector<std::string> path;
    Value* v = n->input(0);
    while (v->node()->kind() == getattr) {
      path.push_back(v->node()->s(c10::attr::name));
      v = v->node()->input(0);
    }
    if (v != g->inputs()[0]) return -1;
    c10::IValue cur = module._ivalue();
    for (auto it = path.rbegin(); it != path.rend(); ++it) cur = cur.toObject()->getAttr(*it);
    if (cur.isTensor() && cur.toTensor().dim() == 2) return cur.toTensor().size(0);
  }
  return -1;
}

namespace {
// Inserts the capture operators at the sites `found` of `graph` (site ids in order); appends
// what was found to `sites` when given.
void insert_ops(torch::jit::Graph& graph, const std::vector<Found>& found, const TypeNames& names,
                std::vector<AttentionSite>* sites) {
  const Symbol cap = sym(kCaptureOp), sdpa_op = sym(kSdpaOp), cap_dim = sym(kCaptureDimOp),
               cap_sink = sym(kCaptureSinkOp);
  for (size_t i = 0; i < found.size(); ++i) {
    Node* n = found[i].node;
    const int64_t id = static_cast<int64_t>(i);
    if (sites)
      sites->push_back({id,
                        found[i].sdpa   ? "sdpa"
                        : found[i].sink ? "softmax with sink"
                                        : "softmax",
                        module_path(n, names), found[i].in_block, found[i].runtime_dim >= 0 && !found[i].sink});
    torch::jit::WithCurrentScope scope(graph, n->scope());
    if (found[i].sdpa) {
      // SDPA(query, key, value, attn_mask, dropout_p, is_causal, scale?, enable_gqa?)
      TORCH_CHECK(n->inputs().size() >= 6, "unexpected scaled_dot_product_attention schema with ",
                  n->inputs().size(), " inputs");
      // Replaced by attnscope::sdpa, which is SDPA itself when nothing is captured and gives
      // the output from the recorder's own probabilities when it computes them all.
      torch::jit::WithInsertPoint guard(n);
      Value* scale = n->inputs().size() > 6 ? n->input(6) : graph.insertConstant(c10::IValue());
      Value* gqa = n->inputs().size() > 7 ? n->input(7) : graph.insertConstant(false);
      Value* out = graph.insert(
          sdpa_op, {n->input(0), n->input(1), n->input(2), n->input(3), n->input(4), n->input(5), scale, gqa, id});
      n->output()->replaceAllUsesWith(out);
      n->destroy();
    } else {
      torch::jit::WithInsertPoint guard(n->next());
      // A sink site captures the sliced probabilities (the real keys); its op checks the dim.
      Value* p = found[i].sink               ? graph.insert(cap_sink, {n->output(), found[i].runtime_dim, id})
                 : found[i].runtime_dim >= 0 ? graph.insert(cap_dim, {n->output(), found[i].runtime_dim, id})
                                             : graph.insert(cap, {n->output(), id});
      n->output()->replaceAllUsesAfterNodeWith(p->node(), p);
    }
  }
}

// The same kinds of site in the same order: what lets the recorder number decode's sites as
// forward's layers.
bool same_sites(const std::vector<Found>& a, const std::vector<Found>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].sdpa != b[i].sdpa || a[i].sink != b[i].sink || a[i].in_block != b[i].in_block) return false;
  return true;
}
}  // namespace

Instrumented instrument(const torch::jit::Module& module) {
  forward_graph(module);  // clear error before cloning
  Instrumented r{module.clone(/*inplace=*/true), {}};
  auto graph = r.module.get_method("forward").graph();
  torch::jit::Inline(*graph);

  std::vector<Found> found;
  collect(graph->block(), false, found);
  TORCH_CHECK_VALUE(!found.empty(),
                    "no attention site found in forward: searched for "
                    "aten::softmax/aten::_softmax over the last dim fed by a q·kᵀ product "
                    "(matmul/bmm/baddbmm/einsum, through scaling, masks, clamps, casts and views) and feeding "
                    "a product with V, and for aten::scaled_dot_product_attention");
  const TypeNames names = unique_type_names(r.module);
  // The KV-cache decode method gets the operators too (interventions over a cached prefix),
  // when its sites are forward's, one for one.
  if (r.module.find_method("decode")) {
    auto dgraph = r.module.get_method("decode").graph();
    torch::jit::Inline(*dgraph);
    std::vector<Found> dfound;
    collect(dgraph->block(), false, dfound);
    r.decode_instrumented = same_sites(found, dfound);
    if (r.decode_instrumented) insert_ops(*dgraph, dfound, names, nullptr);
  }
  insert_ops(*graph, found, names, &r.sites);
  return r;
}

std::shared_ptr<torch::jit::Graph> first_output_graph(const torch::jit::Module& module, const std::string& method) {
  if (!module.find_method(method)) return nullptr;
  auto g = module.get_method(method).graph()->copy();
  torch::jit::Inline(*g);
  if (g->outputs().size() != 1) return nullptr;
  Node* tuple = g->outputs()[0]->node();
  if (tuple->kind() != c10::prim::TupleConstruct || tuple->inputs().empty()) return nullptr;
  Value* first = tuple->input(0);
  g->eraseOutput(0);
  g->registerOutput(first);
  torch::jit::EliminateDeadCode(g);  // what only the other outputs needed (a stacked cache) goes
  return g;
}

namespace {
int64_t retarget_block(torch::jit::Block* block, const torch::Device& device, bool dry_run) {
  int64_t n = 0;
  for (auto it = block->nodes().begin(); it != block->nodes().end();) {
    torch::jit::Node* node = *it++;  // advance first: the node may be destroyed
    for (auto* b : node->blocks()) n += retarget_block(b, device, dry_run);
    if (node->kind() != c10::prim::Constant || node->outputs().size() != 1 ||
        node->output()->type()->kind() != c10::TypeKind::DeviceObjType)
      continue;
    auto value = torch::jit::toIValue(node->output());
    if (!value || !value->isDevice() || value->toDevice() == device) continue;
    if (dry_run) {
      ++n;
      continue;
    }
    torch::jit::WithInsertPoint guard(node);
    auto* replacement = node->owningGraph()->insertConstant(c10::IValue(device));
    node->output()->replaceAllUsesWith(replacement);
    node->destroy();
    ++n;
  }
  return n;
}
}  // namespace

int64_t retarget_device_constants(torch::jit::Module& module, const torch::Device& device,
                                  bool dry_run) {
  int64_t n = 0;
  for (const auto& m : module.modules())
    for (const auto& method : m.get_methods())
      n += retarget_block(method.graph()->block(), device, dry_run);
  return n;
}

}  // namespace attnscope
