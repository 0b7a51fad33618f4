// Shared helpers for the closurefs addon: argument checks and errno errors.
// The addon is a thin syscall layer: each export checks its arguments, makes one
// system call and either returns the result or throws. No policy lives here.
#pragma once

#include <napi.h>
#include <cerrno>
#include <cstdint>
#include <string>

namespace cfs {

// Throws a JS Error shaped like Node's own syscall errors: code is the errno
// name ("ELOOP"), errno the positive number, syscall the call that failed.
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall);

// Argument accessors: throw TypeError/RangeError on a wrong type or range,
// so a bad call from JS never reaches a syscall with garbage.
int32_t ArgFd(const Napi::CallbackInfo& info, size_t i);
int32_t ArgInt32(const Napi::CallbackInfo& info, size_t i, const char* what);
uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* what);
// A non-negative integer up to 2^53 given as a Number or a BigInt.
uint64_t ArgUint64(const Napi::CallbackInfo& info, size_t i, const char* what);
bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* what);
// A path given as a string or a Buffer (names in a store are bytes, not text).
std::string ArgPath(const Napi::CallbackInfo& info, size_t i);

void InitSocket(Napi::Env env, Napi::Object exports);
void InitMemory(Napi::Env env, Napi::Object exports);
void InitEvent(Napi::Env env, Napi::Object exports);
void InitFiles(Napi::Env env, Napi::Object exports);

}  // namespace cfs
