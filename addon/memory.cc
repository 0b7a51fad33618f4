// Shared memory: memfds, mappings exposed to JS as external ArrayBuffers, and
// the full fence the virtio split-ring protocol needs.
//
// Lifetime rule: munmap(buffer) detaches the ArrayBuffer *before* unmapping, so
// every view of it reads as length 0 afterwards instead of touching freed pages.
// The GC finalizer unmaps only mappings that were never unmapped explicitly.
#include "common.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <unordered_map>

namespace cfs {

struct Mapping {
  void* addr;
  size_t length;
  bool unmapped;
};

// Live mappings by base address: lets munmap/mmapFixed check that a buffer is
// one of ours and that a sub-range lies inside it.
static std::mutex gMappingsLock;
static std::unordered_map<void*, Mapping*> gMappings;

static void FinalizeMapping(Napi::Env, void*, Mapping* m) {
  std::lock_guard<std::mutex> guard(gMappingsLock);
  if (!m->unmapped) {
    munmap(m->addr, m->length);
    gMappings.erase(m->addr);
  }
  delete m;
}

static Napi::ArrayBuffer Wrap(Napi::Env env, void* addr, size_t length) {
  Mapping* m = new Mapping{addr, length, false};
  {
    std::lock_guard<std::mutex> guard(gMappingsLock);
    gMappings[addr] = m;
  }
  return Napi::ArrayBuffer::New(env, addr, length, FinalizeMapping, m);
}

static Mapping* Lookup(Napi::Env env, Napi::ArrayBuffer ab) {
  std::lock_guard<std::mutex> guard(gMappingsLock);
  auto it = gMappings.find(ab.Data());
  if (ab.ByteLength() == 0 || it == gMappings.end() || it->second->unmapped) {
    throw Napi::TypeError::New(env, "buffer is not a live mapping made by mmap");
  }
  return it->second;
}

static size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

// memfdCreate(name) -> fd (close-on-exec, sealable).
static Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  std::string name = ArgPath(info, 0);
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) ThrowErrno(info.Env(), errno, "memfd_create");
  return Napi::Number::New(info.Env(), fd);
}

// mmap(fd, length, offset, shared, writable) -> ArrayBuffer over the mapping.
// A regular file (memfds are regular files) must cover the whole range:
// touching a page past its end would raise SIGBUS and kill the process.
static Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint64_t length = ArgUint64(info, 1, "length");
  uint64_t offset = ArgUint64(info, 2, "offset");
  bool shared = ArgBool(info, 3, "shared");
  bool writable = ArgBool(info, 4, "writable");
  if (length == 0) ThrowErrno(env, EINVAL, "mmap");
  struct stat st;
  if (fstat(fd, &st) < 0) ThrowErrno(env, errno, "fstat");
  if (S_ISREG(st.st_mode) && offset + length > static_cast<uint64_t>(st.st_size)) ThrowErrno(env, ENXIO, "mmap");
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* addr = mmap(nullptr, length, prot, shared ? MAP_SHARED : MAP_PRIVATE, fd, static_cast<off_t>(offset));
  if (addr == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  return Wrap(env, addr, length);
}

// mmapReserve(length) -> ArrayBuffer over inaccessible (PROT_NONE) address
// space, to be filled piecewise with mmapFixed. Reading it from JS faults:
// only code that knows which parts are mapped may look inside.
static Napi::Value MmapReserve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t length = ArgUint64(info, 0, "length");
  if (length == 0) ThrowErrno(env, EINVAL, "mmap");
  void* addr = mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (addr == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  return Wrap(env, addr, length);
}

// mmapFixed(buffer, offset, length, fd, fdOffset) maps fd read-only over
// [offset, offset+length) of an existing mapping; fd -1 puts inaccessible
// memory back. Both ends must be page-aligned and inside the mapping.
static Napi::Value MmapFixed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "buffer must be an ArrayBuffer");
  Mapping* m = Lookup(env, info[0].As<Napi::ArrayBuffer>());
  uint64_t offset = ArgUint64(info, 1, "offset");
  uint64_t length = ArgUint64(info, 2, "length");
  int fd = ArgFd(info, 3);
  uint64_t fdOffset = ArgUint64(info, 4, "fdOffset");
  size_t page = PageSize();
  if (length == 0 || offset % page || length % page || offset + length > m->length) ThrowErrno(env, EINVAL, "mmap");
  void* at = static_cast<char*>(m->addr) + offset;
  void* addr = fd < 0 ? mmap(at, length, PROT_NONE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                      : mmap(at, length, PROT_READ, MAP_FIXED | MAP_SHARED, fd, static_cast<off_t>(fdOffset));
  if (addr == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  return env.Undefined();
}

// munmap(buffer): detach first, then unmap. Later access sees length 0.
static Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "buffer must be an ArrayBuffer");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  Mapping* m = Lookup(env, ab);
  ab.Detach();
  std::lock_guard<std::mutex> guard(gMappingsLock);
  m->unmapped = true;
  gMappings.erase(m->addr);
  if (munmap(m->addr, m->length) < 0) ThrowErrno(env, errno, "munmap");
  return env.Undefined();
}

// fence(): a full (store-load) memory barrier. The split ring needs one between
// publishing used->idx and reading the driver's notification suppression.
static Napi::Value Fence(const Napi::CallbackInfo& info) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return info.Env().Undefined();
}

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("mmapReserve", Napi::Function::New(env, MmapReserve, "mmapReserve"));
  exports.Set("mmapFixed", Napi::Function::New(env, MmapFixed, "mmapFixed"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("fence", Napi::Function::New(env, Fence, "fence"));
  exports.Set("PAGE_SIZE", Napi::Number::New(env, static_cast<double>(PageSize())));
}

}  // namespace cfs
