{
  "variables": {
    "lk_cpu_sources": [
      "native/binding.cc",
      "native/storage.cc",
      "native/thread_pool.cc",
      "native/op_queue.cc",
      "native/cpu/attention_cpu.cc",
      "native/cpu/attention_heads_cpu.cc",
      "native/cpu/attention_lanes_cpu.cc",
      "native/cpu/mask_plan_cpu.cc",
      "native/cpu/gather_rows_cpu.cc",
      "native/cpu/sparse_cpu.cc",
      "native/cpu/attention_backward_cpu.cc",
      "native/cpu/isa.cc",
      "native/cpu/convert.cc",
      "native/cpu/stream_merge_cpu.cc"
    ],
    "lk_cuda_sources": [
      "cuda/runtime.cu",
      "cuda/attention/masked_attention.cu",
      "cuda/attention/mask_plan.cu",
      "cuda/memory/gather_rows.cu",
      "cuda/sparse/sparse.cu",
      "cuda/attention/masked_attention_backward.cu",
      "cuda/sparse/sparse_backward.cu",
      "cuda/multistream/multi_stream.cu"
    ],
    "lk_emu_sources": [
      "cuda/emu/cuda_emu.cc",
      "cuda/emu/emu_tensor_core.cc"
    ]
  }
}
