// The op's schema, declared once; device kernels register against it in csrc/cpu and csrc/cuda.
#include <torch/library.h>

// cudagraph_unsafe: the CUDA kernel refuses stream capture (its scalars would be frozen at their captured
// values), so torch.compile's CUDA graphs (mode="reduce-overhead") split the graph around the op instead
// of capturing it.
TORCH_LIBRARY(cure_ext, m) {
  m.def(
      "selective_step(Tensor(a!)[] params, Tensor[] grads, Tensor?[] nat_grads, Tensor?[] adv_grads, "
      "Tensor(b!)[] momentum_buffers, Tensor(c!)[] revision_params, float lr, float momentum, "
      "float dampening, float weight_decay, bool nesterov, float percentile, float alpha, str score, "
      "str conserve, bool[] selective, bool revise, float revision_decay) -> Tensor",
      {at::Tag::cudagraph_unsafe});
}
