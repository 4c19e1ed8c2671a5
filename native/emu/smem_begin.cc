// dsv2 CUDA emulator: the first byte of the kernels' static shared memory (cuda_runtime.h:
// __shared__ is `static __thread`). Linked just before the kernel objects, and smem_end.cc just
// after them, so that in each host thread's TLS block the static shared variables of every kernel
// lie between the two markers (ld places .tbss input sections in link order); fiber.cc fills that
// range with NaN before every block. Only the kernels' __shared__ variables may be thread-local
// in the objects between the markers (fiber.cc checks that its own are outside the range).
namespace dsv2emu {
__attribute__((visibility("hidden"))) __thread char smem_begin[1];
}  // namespace dsv2emu
