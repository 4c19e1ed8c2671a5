// The KvCache native object: paged latent-cache memory plus its page allocator.
#pragma once
#include <napi.h>

#include <cstdint>
#include <memory>

#include "dsv2/mla.h"

namespace dsv2::addon {

// Cache memory, shared by the JS object and every in-flight job that reads or writes it, so
// dispose() while a job runs frees the memory only when that job is done.
struct KvStorage {
  KvLayout layout;
  int64_t layers = 0, pages = 0;
  uint8_t* data = nullptr;  // [layers, pages, page_size, bytes_per_token], host or device
  Device device = Device::kCpu;

  ~KvStorage();
  KvCacheView layer(int64_t l) const {
    return KvCacheView{layout, data + l * pages * layout.page_bytes(), pages, device};
  }
};

// The storage behind a JS KvCache argument and the view of one of its layers; throws
// dsv2::Error (E_ARG, E_DISPOSED, E_RANGE) naming `name`.
std::shared_ptr<KvStorage> kv_storage_of(Napi::Env env, Napi::Value v, const char* name);
KvCacheView kv_layer_of(const KvStorage& s, Napi::Value layer);

void register_kv_cache(Napi::Env env, Napi::Object exports);

}  // namespace dsv2::addon
