// Entry point of the closurefs native addon: argument helpers, errno errors and
// module registration. See common.h for the contract every export follows.
#include "common.h"

#include <cstring>
#include <string.h>
#include <unistd.h>

namespace cfs {

void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  const char* name = strerrorname_np(err);
  std::string message = std::string(syscall) + ": " + strerror(err);
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  throw e;
}

static void ThrowType(Napi::Env env, const std::string& msg) {
  throw Napi::TypeError::New(env, msg);
}

int32_t ArgFd(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || !info[i].IsNumber()) ThrowType(info.Env(), "fd must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (v != static_cast<int32_t>(v) || v < -100) {
    throw Napi::RangeError::New(info.Env(), "fd must be an integer >= 0 (or AT_FDCWD)");
  }
  return static_cast<int32_t>(v);
}

int32_t ArgInt32(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsNumber()) ThrowType(info.Env(), std::string(what) + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (v != static_cast<int32_t>(v)) throw Napi::RangeError::New(info.Env(), std::string(what) + " must be an int32");
  return static_cast<int32_t>(v);
}

uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsNumber()) ThrowType(info.Env(), std::string(what) + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (v < 0 || v != static_cast<uint32_t>(v)) {
    throw Napi::RangeError::New(info.Env(), std::string(what) + " must be a uint32");
  }
  return static_cast<uint32_t>(v);
}

uint64_t ArgUint64(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i < info.Length() && info[i].IsBigInt()) {
    bool lossless = false;
    uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(info.Env(), std::string(what) + " must fit in a uint64");
    return v;
  }
  if (i >= info.Length() || !info[i].IsNumber()) ThrowType(info.Env(), std::string(what) + " must be a number or bigint");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v > 9007199254740991.0 || v != static_cast<double>(static_cast<uint64_t>(v))) {
    throw Napi::RangeError::New(info.Env(), std::string(what) + " must be a non-negative safe integer");
  }
  return static_cast<uint64_t>(v);
}

bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsBoolean()) ThrowType(info.Env(), std::string(what) + " must be a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

std::string ArgPath(const Napi::CallbackInfo& info, size_t i) {
  std::string path;
  if (i < info.Length() && info[i].IsString()) {
    path = info[i].As<Napi::String>().Utf8Value();
  } else if (i < info.Length() && info[i].IsBuffer()) {
    auto b = info[i].As<Napi::Buffer<char>>();
    path.assign(b.Data(), b.Length());
  } else {
    ThrowType(info.Env(), "path must be a string or a Buffer");
  }
  // An embedded NUL would silently truncate the path the kernel sees.
  if (path.find('\0') != std::string::npos) {
    throw Napi::TypeError::New(info.Env(), "path must not contain NUL bytes");
  }
  return path;
}

static Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  if (close(fd) < 0) ThrowErrno(info.Env(), errno, "close");
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  InitSocket(env, exports);
  InitMemory(env, exports);
  InitEvent(env, exports);
  InitFiles(env, exports);
  return exports;
}

}  // namespace cfs

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return cfs::Init(env, exports); }

NODE_API_MODULE(closurefs_native, InitAddon)
