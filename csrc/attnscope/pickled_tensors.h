// The storages and tensors a TorchScript archive's pickle (data.pkl, constants.pkl) declares,
// read without running it: torch::jit::load trusts each declaration and builds a tensor of the
// declared size over whatever bytes the record holds, so a short record is read past its end.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace attnscope {

/// One persistent storage: BINPERSID ('storage', torch.<T>Storage, key, device, numel).
struct PickledStorage {
  std::string key;       // record name under the pickle's folder ("0" → data/0)
  std::string type;      // "Float", "BFloat16", …
  int64_t numel = 0;     // elements of `type`
  int64_t itemsize = 0;  // bytes per element
};

/// One tensor on a storage: torch._utils._rebuild_tensor_v2(storage, offset, sizes, strides, …).
struct PickledTensor {
  std::string key;  // its storage
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;
};

struct PickledTensors {
  std::vector<PickledStorage> storages;
  std::vector<PickledTensor> tensors;
};

/// Reads the pickle's opcodes (the subset torch's pickler writes, protocol ≤ 4) and returns every
/// storage and tensor it declares. Throws ValueError naming `what` and the byte offset on an
/// opcode it does not know, a truncated argument, a malformed storage or tensor, or nesting
/// deeper than 64.
PickledTensors read_pickled_tensors(const uint8_t* data, size_t n, const std::string& what);

}  // namespace attnscope
