# The emulator flavour of the addon (DSV2_CUDA_EMULATOR=ON; tests only, never shipped): the CUDA
# sources of native/src/cuda compile as plain C++ against native/emu, whose runtime is an emulated
# H100 (see native/emu/emu.h). Included by CMakeLists.txt; defines
#   DSV2_CUDA_SOURCES   the .cu files (compiled as C++)
#   DSV2_EMU_SOURCES    the emulator itself
#   dsv2_emu_target(t)  the include paths, definitions and flags of a target built against it
# Options: DSV2_EMU_ASAN (AddressSanitizer: run node with LD_PRELOAD of libasan),
#          DSV2_EMU_COVERAGE (gcov line counts of the .cu files: test/emu/coverage.sh).
option(DSV2_EMU_ASAN "Emulator build: AddressSanitizer" OFF)
option(DSV2_EMU_COVERAGE "Emulator build: gcov coverage of native/src/cuda" OFF)

file(GLOB DSV2_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/native/src/cuda/*.cu)
set(DSV2_EMU_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/native/emu/fiber.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/native/emu/ptx.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/native/emu/runtime.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/native/emu/ubsan.cc)
set_source_files_properties(${DSV2_CUDA_SOURCES} PROPERTIES LANGUAGE CXX)
# The emulator's hot loops (scheduler, warp operations, mma) are its whole cost: optimise them fully.
set_source_files_properties(${DSV2_EMU_SOURCES} PROPERTIES COMPILE_OPTIONS "-O3")
# Misaligned typed accesses (vector loads above all) in kernel code become emulator faults
# (native/emu/ubsan.cc handles them; the UBSan runtime is not linked).
set(DSV2_EMU_CU_FLAGS -x c++ -fsanitize=alignment -fno-sanitize-recover=alignment -Wno-unused-variable -Wno-unused-function -Wno-unknown-pragmas)
if(DSV2_EMU_COVERAGE)
  list(APPEND DSV2_EMU_CU_FLAGS --coverage -O0)
endif()
set_source_files_properties(${DSV2_CUDA_SOURCES} PROPERTIES COMPILE_OPTIONS "${DSV2_EMU_CU_FLAGS}")
# Static shared memory (__shared__: thread-locals, cuda_runtime.h) lies between two markers linked
# right before and after the kernel objects (smem_begin.cc); the emulator poisons that range.
set(DSV2_EMU_SMEM_BEGIN ${CMAKE_CURRENT_SOURCE_DIR}/native/emu/smem_begin.cc)
set(DSV2_EMU_SMEM_END ${CMAKE_CURRENT_SOURCE_DIR}/native/emu/smem_end.cc)
set(DSV2_CUDA_SOURCES ${DSV2_EMU_SMEM_BEGIN} ${DSV2_CUDA_SOURCES} ${DSV2_EMU_SMEM_END})
message(STATUS "dsv2: CUDA EMULATOR build (native/emu): ${CMAKE_CXX_COMPILER_ID}, no GPU code")

function(dsv2_emu_target t)
  target_include_directories(${t} BEFORE PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/native/emu/include)
  target_compile_definitions(${t} PRIVATE DSV2_CUDA_EMU DSV2_WITH_CUDA DSV2_CUDA_ARCHS="emulated-sm_90")
  if(DSV2_EMU_ASAN)
    target_compile_options(${t} PRIVATE -fsanitize=address -fno-omit-frame-pointer)
    target_link_options(${t} PRIVATE -fsanitize=address)
  endif()
  if(DSV2_EMU_COVERAGE)
    target_link_options(${t} PRIVATE --coverage)
  endif()
endfunction()

# The emulator's own unit tests (instruction semantics from the PTX ISA, barriers, warp
# operations, divergence detection, the runtime, graphs): build-emu/dsv2_emu_test.
add_executable(dsv2_emu_test ${DSV2_EMU_SMEM_BEGIN} ${CMAKE_CURRENT_SOURCE_DIR}/native/emu/test/emu_test.cc ${DSV2_EMU_SMEM_END}
  ${DSV2_EMU_SOURCES})
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/native/emu/test/emu_test.cc PROPERTIES
  COMPILE_OPTIONS "-fsanitize=alignment;-fno-sanitize-recover=alignment")
dsv2_emu_target(dsv2_emu_test)
target_include_directories(dsv2_emu_test PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/native/emu ${CMAKE_CURRENT_SOURCE_DIR}/native/src)
