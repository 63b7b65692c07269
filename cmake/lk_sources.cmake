# The source lists of sources.gypi (shared with binding.gyp) for CMake builds: the addon
# (CMakeLists.txt) and the standalone GPU check (tools/gpu-check). Include with LK_ROOT set to the
# repository root; defines LK_CPU_SOURCES, LK_CUDA_SOURCES and LK_EMU_SOURCES as absolute paths.
file(READ "${LK_ROOT}/sources.gypi" LK_SOURCES_JSON)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${LK_ROOT}/sources.gypi")
function(lk_source_list var key)
  string(JSON n LENGTH "${LK_SOURCES_JSON}" variables ${key})
  math(EXPR last "${n} - 1")
  set(out "")
  foreach(i RANGE ${last})
    string(JSON f GET "${LK_SOURCES_JSON}" variables ${key} ${i})
    list(APPEND out "${LK_ROOT}/${f}")
  endforeach()
  set(${var} "${out}" PARENT_SCOPE)
endfunction()
lk_source_list(LK_CPU_SOURCES lk_cpu_sources)
lk_source_list(LK_CUDA_SOURCES lk_cuda_sources)
lk_source_list(LK_EMU_SOURCES lk_emu_sources)
