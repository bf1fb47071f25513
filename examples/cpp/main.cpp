// Loads a TorchScript LM, captures layer-averaged attention and per-token aggregates, and
// prints where the attention sinks are.
#include <attnscope/model.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: attnscope_example MODEL.pt\n";
    return 2;
  }
  auto model = attnscope::Model::load(argv[1], "auto");
  std::cout << model.describe();

  attnscope::CaptureSpec spec = attnscope::CaptureSpec::all_aggregates();
  spec.layer_maps = {0};
  auto trace = model.run(torch::tensor({1, 7, 3, 9, 4, 2}, torch::kLong), spec);

  auto recv = trace.get("received_mean");  // [L, B, H, T]
  for (int64_t l = 0; l < recv.size(0); ++l)
    std::cout << "layer " << l << ": mean attention received by the first token "
              << recv[l][0].select(1, 0).mean().item<float>() << "\n";
  std::cout << "layer 0 map " << trace.get("layer_map/L0").sizes() << "\n";
  std::cout << "example OK\n";
  return 0;
}
