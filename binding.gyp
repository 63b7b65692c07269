# node-gyp build of the same addon (prebuildify, node-gyp-build's source fallback). Sources come from
# sources.gypi, shared with CMakeLists.txt. CUDA kernels are compiled in when nvcc is on PATH; each
# .cu's ptxas report lands in build/Release/ptxas/ for scripts/check-spills.cjs --from-build.
{
  "includes": ["sources.gypi"],
  "variables": {
    "lk_nvcc": "<!(node scripts/cuda-path.cjs nvcc)",
    "lk_cuda_lib": "<!(node scripts/cuda-path.cjs lib)"
  },
  "targets": [
    {
      "target_name": "lifelong_kernels",
      "sources": ["<@(lk_cpu_sources)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-Wall", "-Wextra", "-Wno-psabi"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "conditions": [
        ["lk_nvcc!='' and lk_cuda_lib!=''", {
          "sources": ["<@(lk_cuda_sources)"],
          "defines": ["LK_WITH_CUDA"],
          "libraries": ["-L<(lk_cuda_lib)", "-lcudart_static", "-ldl", "-lrt", "-lpthread"],
          "rules": [{
            "rule_name": "nvcc",
            "extension": "cu",
            "inputs": ["<(RULE_INPUT_PATH)"],
            "outputs": ["<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o"],
            "action": ["node", "<(module_root_dir)/scripts/nvcc-report.cjs", "<(PRODUCT_DIR)/ptxas/<(RULE_INPUT_ROOT).txt",
                       "<(lk_nvcc)", "-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-Xptxas=--warn-on-spills",
                       "-gencode", "arch=compute_75,code=sm_75", "-gencode", "arch=compute_80,code=sm_80",
                       "-gencode", "arch=compute_86,code=sm_86", "-gencode", "arch=compute_89,code=sm_89",
                       "-gencode", "arch=compute_90,code=[sm_90,compute_90]",
                       "-c", "<(RULE_INPUT_PATH)", "-o", "<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o"],
            "message": "nvcc <(RULE_INPUT_PATH)",
            "process_outputs_as_sources": 1
          }]
        }]
      ]
    }
  ]
}
