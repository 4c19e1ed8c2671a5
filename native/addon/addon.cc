// The dsv2 addon: registration only. N-API (node-addon-api), context-aware: no JS state
// lives in globals, so the addon loads in worker threads and several contexts at once.
#include <napi.h>

#include "bindings.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  dsv2::addon::register_ops(env, exports);
  dsv2::addon::register_info(env, exports);
  dsv2::addon::register_mla_moe(env, exports);
  dsv2::addon::register_kv_cache(env, exports);
  dsv2::addon::register_engine(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(dsv2, Init)
