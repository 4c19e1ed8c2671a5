// dsv2 CUDA emulator: just past the kernels' static shared memory (see smem_begin.cc).
namespace dsv2emu {
__attribute__((visibility("hidden"))) __thread char smem_end[1];
}  // namespace dsv2emu
