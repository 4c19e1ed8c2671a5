// dsv2 CUDA emulator: the handler of -fsanitize=alignment, with which the kernel sources are
// compiled in the emulator build (the UBSan runtime is not linked). A misaligned access through
// a typed pointer — a float4 / uint4 / uint2 vector access above all, which the device would
// fault on — becomes a fault of the running kernel (a failed launch naming kernel, block and
// thread), or an exception in host code.
#include <cstdint>
#include <cstdio>

#include "emu.h"

namespace {
struct SourceLocation {
  const char* file;
  uint32_t line, column;
};
struct TypeDescriptor {
  uint16_t kind, info;
  char name[1];
};
struct TypeMismatchData {
  SourceLocation loc;
  const TypeDescriptor* type;
  unsigned char log_alignment;
  unsigned char type_check_kind;
};

[[noreturn]] void report(TypeMismatchData* d, uintptr_t ptr) {
  const unsigned long align = 1ul << d->log_alignment;
  if (ptr == 0)
    dsv2emu::fault("null pointer access of type %s at %s:%u", d->type->name, d->loc.file, d->loc.line);
  dsv2emu::fault("misaligned access: address 0x%lx of type %s needs %lu-byte alignment, at %s:%u",
                 static_cast<unsigned long>(ptr), d->type->name, align, d->loc.file, d->loc.line);
}
}  // namespace

// (void*, void*): the signature GCC declares for them as built-ins.
extern "C" {
void __ubsan_handle_type_mismatch_v1(void* d, void* ptr) {
  report(static_cast<TypeMismatchData*>(d), reinterpret_cast<uintptr_t>(ptr));
}
void __ubsan_handle_type_mismatch_v1_abort(void* d, void* ptr) {
  report(static_cast<TypeMismatchData*>(d), reinterpret_cast<uintptr_t>(ptr));
}
}
