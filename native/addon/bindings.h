// Registration of each binding family; addon.cc calls them all.
#pragma once
#include <napi.h>

namespace dsv2::addon {
void register_ops(Napi::Env env, Napi::Object exports);
void register_info(Napi::Env env, Napi::Object exports);
void register_mla_moe(Napi::Env env, Napi::Object exports);
void register_kv_cache(Napi::Env env, Napi::Object exports);
void register_engine(Napi::Env env, Napi::Object exports);
}  // namespace dsv2::addon
