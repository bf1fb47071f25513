// A pickle reader that builds no objects: a stack of small values (ints, strings, tuples,
// globals, storages) with everything else opaque, enough to see each storage's declaration and
// each tensor's offset, sizes and strides. Tensors are noted where they are built, so containers
// (lists, dicts, objects) need no contents.
#include <attnscope/pickled_tensors.h>

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <memory>
#include <unordered_map>

namespace attnscope {

namespace {

struct Value;
using V = std::shared_ptr<const Value>;
struct Value {
  enum Kind { kOther, kInt, kStr, kTuple, kGlobal, kStorage } kind = kOther;
  int64_t i = 0;         // kInt; kStorage: index into storages
  std::string s;         // kStr; kGlobal: "module name"
  std::vector<V> items;  // kTuple
  int depth = 0;
};

constexpr int kMaxDepth = 64;

V make(Value::Kind k, int64_t i = 0, std::string s = {}) {
  auto v = std::make_shared<Value>();
  v->kind = k;
  v->i = i;
  v->s = std::move(s);
  return v;
}

/// Bytes per element of torch.<type>Storage; 0 when the name is no scalar type.
int64_t itemsize_of(const std::string& type) {
  for (int k = 0; k < static_cast<int>(c10::ScalarType::NumOptions); ++k) {
    const auto t = static_cast<c10::ScalarType>(k);
    if (type == c10::toString(t)) return static_cast<int64_t>(c10::elementSize(t));
  }
  return 0;
}

class Reader {
 public:
  Reader(const uint8_t* p, size_t n, const std::string& what) : p_(p), n_(n), what_(what) {}

  PickledTensors run() {
    while (true) {
      TORCH_CHECK_VALUE(pos_ < n_, bad(), "it ends without STOP");
      at_ = pos_;
      const uint8_t op = p_[pos_++];
      if (op == '.') break;
      if (!small_op(op) && !container_op(op)) step(op);
    }
    return std::move(out_);
  }

 private:
  std::string bad() const { return what_ + ": malformed pickle at byte " + std::to_string(at_) + ": "; }

  const uint8_t* take(size_t k) {
    TORCH_CHECK_VALUE(k <= n_ - pos_, bad(), "an argument of ", k, " bytes runs past the end (", n_, " bytes)");
    const uint8_t* q = p_ + pos_;
    pos_ += k;
    return q;
  }
  template <class T>
  T le() {
    T v;
    std::memcpy(&v, take(sizeof(T)), sizeof(T));
    return v;
  }
  std::string line() {
    const void* nl = std::memchr(p_ + pos_, '\n', n_ - pos_);
    TORCH_CHECK_VALUE(nl != nullptr, bad(), "a GLOBAL name has no newline");
    const size_t k = static_cast<const uint8_t*>(nl) - (p_ + pos_);
    std::string s(reinterpret_cast<const char*>(take(k)), k);
    take(1);
    return s;
  }
  std::string str(uint64_t k) {
    TORCH_CHECK_VALUE(k <= n_ - pos_, bad(), "a string of ", k, " bytes runs past the end (", n_, " bytes)");
    return std::string(reinterpret_cast<const char*>(take(k)), k);
  }

  void push(V v) { stack_.push_back(std::move(v)); }
  V pop() {
    TORCH_CHECK_VALUE(stack_.size() > floor(), bad(), "the stack is empty");
    V v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<V> pop_mark() {
    TORCH_CHECK_VALUE(!marks_.empty(), bad(), "no MARK to pop to");
    std::vector<V> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  void tuple(std::vector<V> items) {
    auto t = std::make_shared<Value>();
    t->kind = Value::kTuple;
    for (const auto& x : items) t->depth = std::max(t->depth, x->depth + 1);
    TORCH_CHECK_VALUE(t->depth <= kMaxDepth, bad(), "tuples nested deeper than ", kMaxDepth);
    t->items = std::move(items);
    push(std::move(t));
  }
  std::vector<V> popn(int k) {
    std::vector<V> items(static_cast<size_t>(k));
    for (int j = k - 1; j >= 0; --j) items[static_cast<size_t>(j)] = pop();
    return items;
  }
  void memo_put(uint64_t k) {
    TORCH_CHECK_VALUE(!stack_.empty(), bad(), "nothing to memoize");
    memo_[k] = stack_.back();
  }
  void memo_get(uint64_t k) {
    auto it = memo_.find(k);
    TORCH_CHECK_VALUE(it != memo_.end(), bad(), "memo entry ", k, " was never stored");
    push(it->second);
  }

  // Literals and the memo.
  bool small_op(uint8_t op) {
    switch (op) {
      case 0x80:
        take(1);
        return true;  // PROTO
      case 0x95:
        take(8);
        return true;  // FRAME
      case 'N':
      case 0x88:
      case 0x89:
        push(make(Value::kOther));
        return true;  // None, True, False
      case 'K':
        push(make(Value::kInt, le<uint8_t>()));
        return true;
      case 'M':
        push(make(Value::kInt, le<uint16_t>()));
        return true;
      case 'J':
        push(make(Value::kInt, le<int32_t>()));
        return true;
      case 0x8a:
        long1();
        return true;
      case 'G':
        take(8);
        push(make(Value::kOther));
        return true;  // BINFLOAT
      case 'X':
        push(make(Value::kStr, 0, str(le<uint32_t>())));
        return true;
      case 0x8c:
        push(make(Value::kStr, 0, str(le<uint8_t>())));
        return true;
      case 0x8d:
        push(make(Value::kStr, 0, str(le<uint64_t>())));
        return true;
      case 'T': {
        const int32_t k = le<int32_t>();
        TORCH_CHECK_VALUE(k >= 0, bad(), "negative length");
        push(make(Value::kStr, 0, str(static_cast<uint64_t>(k))));
        return true;
      }
      case 'U':
      case 'C':
        push(make(Value::kStr, 0, str(le<uint8_t>())));
        return true;
      case 'B':
        push(make(Value::kStr, 0, str(le<uint32_t>())));
        return true;
      case 0x8e:
        push(make(Value::kStr, 0, str(le<uint64_t>())));
        return true;
      case 'c': {
        std::string m = line();
        push(make(Value::kGlobal, 0, m + " " + line()));
        return true;
      }
      case 'q':
        memo_put(le<uint8_t>());
        return true;
      case 'r':
        memo_put(le<uint32_t>());
        return true;
      case 0x94:
        memo_put(memo_.size());
        return true;  // MEMOIZE
      case 'h':
        memo_get(le<uint8_t>());
        return true;
      case 'j':
        memo_get(le<uint32_t>());
        return true;
      default:
        return false;
    }
  }

  void long1() {
    const uint8_t k = le<uint8_t>();
    const uint8_t* b = take(k);
    if (k > 8) return push(make(Value::kOther));  // beyond int64: no size or offset
    uint64_t v = 0;
    for (int j = 0; j < k; ++j) v |= uint64_t(b[j]) << (8 * j);
    if (k > 0 && k < 8 && (b[k - 1] & 0x80)) v |= ~uint64_t(0) << (8 * k);  // sign-extend
    push(make(Value::kInt, static_cast<int64_t>(v)));
  }

  // Tuples, lists, dicts and sets: their contents are not needed, only the stack's shape.
  bool container_op(uint8_t op) {
    switch (op) {
      case '(':
        marks_.push_back(stack_.size());
        return true;
      case ')':
        tuple({});
        return true;
      case 0x85:
        tuple(popn(1));
        return true;
      case 0x86:
        tuple(popn(2));
        return true;
      case 0x87:
        tuple(popn(3));
        return true;
      case 't':
        tuple(pop_mark());
        return true;
      case ']':
      case '}':
      case 0x8f:
        push(make(Value::kOther));
        return true;  // empty list, dict, set
      case 'l':
      case 'd':
      case 0x91:
        pop_mark();
        push(make(Value::kOther));
        return true;
      case 'a':
        pop();
        return true;  // APPEND
      case 's':
        popn(2);
        return true;  // SETITEM
      case 'e':
      case 'u':
      case 0x90:
        pop_mark();
        return true;  // APPENDS, SETITEMS, ADDITEMS
      case '0':
        pop();
        return true;  // POP
      case '1':
        pop_mark();
        return true;  // POP_MARK
      case '2': {
        V v = pop();
        push(v);
        push(v);
        return true;
      }  // DUP
      default:
        return false;
    }
  }

  // Objects: persistent storages, REDUCE (tensors), NEWOBJ, BUILD, STACK_GLOBAL.
  void step(uint8_t op) {
    switch (op) {
      case 'Q':
        persistent(pop());
        return;
      case 'R': {
        V args = pop();
        V fn = pop();
        reduce(*fn, *args);
        return;
      }
      case 0x81:
        popn(2);
        push(make(Value::kOther));
        return;  // NEWOBJ
      case 'b':
        pop();
        return;  // BUILD: the object stays
      case 0x93: {
        auto ab = popn(2);  // STACK_GLOBAL
        push(make(Value::kGlobal, 0, ab[0]->s + " " + ab[1]->s));
        return;
      }
      default:
        TORCH_CHECK_VALUE(false, bad(), "opcode 0x", std::hex, int(op), std::dec,
                          " is not one torch's TorchScript pickler writes");
    }
  }

  void persistent(const V& id) {
    const auto& t = id->items;
    const bool storage =
        id->kind == Value::kTuple && t.size() == 5 && t[0]->kind == Value::kStr && t[0]->s == "storage";
    TORCH_CHECK_VALUE(storage, bad(), "a persistent id that is not ('storage', type, key, device, numel)");
    const std::string& g = t[1]->s;
    const auto dot = g.rfind(' ');
    const std::string type = t[1]->kind == Value::kGlobal && g.size() > 7 && g.compare(g.size() - 7, 7, "Storage") == 0
                                 ? g.substr(dot + 1, g.size() - 7 - dot - 1)
                                 : std::string();
    PickledStorage s{t[2]->s, type, t[4]->i, itemsize_of(type)};
    TORCH_CHECK_VALUE(s.itemsize > 0, bad(), "storage type '", g, "' is not a torch scalar type");
    TORCH_CHECK_VALUE(t[2]->kind == Value::kStr && t[4]->kind == Value::kInt && s.numel >= 0, bad(), "storage '", s.key,
                      "' has no key or a negative size");
    out_.storages.push_back(std::move(s));
    push(make(Value::kStorage, static_cast<int64_t>(out_.storages.size() - 1)));
  }

  std::vector<int64_t> ints(const V& v, const char* name) {
    TORCH_CHECK_VALUE(v->kind == Value::kTuple, bad(), "a tensor's ", name, " is not a tuple");
    std::vector<int64_t> r;
    for (const auto& x : v->items) {
      TORCH_CHECK_VALUE(x->kind == Value::kInt && x->i >= 0, bad(), "a tensor's ", name, " holds a non-count");
      r.push_back(x->i);
    }
    return r;
  }

  void reduce(const Value& fn, const Value& args) {
    const bool rebuild = fn.kind == Value::kGlobal && fn.s.rfind("torch._utils _rebuild_", 0) == 0;
    if (rebuild && args.kind == Value::kTuple && !args.items.empty() && args.items[0]->kind == Value::kStorage) {
      const auto& a = args.items;
      TORCH_CHECK_VALUE(a.size() >= 4 && a[1]->kind == Value::kInt && a[1]->i >= 0, bad(),
                        "a tensor without (storage, offset, sizes, strides)");
      PickledTensor t{out_.storages[static_cast<size_t>(a[0]->i)].key, a[1]->i, ints(a[2], "sizes"),
                      ints(a[3], "strides")};
      TORCH_CHECK_VALUE(t.sizes.size() == t.strides.size(), bad(), "a tensor has ", t.sizes.size(), " sizes and ",
                        t.strides.size(), " strides");
      out_.tensors.push_back(std::move(t));
    }
    push(make(Value::kOther));
  }

  const uint8_t* p_;
  size_t n_, pos_ = 0, at_ = 0;
  std::string what_;
  std::vector<V> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, V> memo_;
  PickledTensors out_;
};

}  // namespace

PickledTensors read_pickled_tensors(const uint8_t* data, size_t n, const std::string& what) {
  return Reader(data, n, what).run();
}

}  // namespace attnscope
