// eventfds and a libuv poll watcher: how kicks and socket readiness reach JS
// without busy polling and without blocking the event loop.
#include "common.h"

#include <sys/eventfd.h>
#include <unistd.h>
#include <uv.h>

namespace cfs {

// eventfd(initval) -> non-blocking, close-on-exec eventfd.
static Napi::Value EventFd(const Napi::CallbackInfo& info) {
  uint32_t initval = info.Length() > 0 ? ArgUint32(info, 0, "initval") : 0;
  int fd = eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) ThrowErrno(info.Env(), errno, "eventfd");
  return Napi::Number::New(info.Env(), fd);
}

// eventfdRead(fd) -> counter as a BigInt (resets it); 0n when it was already zero
// (EAGAIN on the non-blocking fd), which a read that succeeds never returns. Not a
// throw: a kick handler resets its eventfd on every wake-up and often finds it zero,
// and building an exception for that cost microseconds per request.
static Napi::Value EventFdRead(const Napi::CallbackInfo& info) {
  eventfd_t value;
  int fd = ArgFd(info, 0);
  int r;
  do {
    r = eventfd_read(fd, &value);
  } while (r < 0 && errno == EINTR);
  if (r < 0 && errno == EAGAIN) value = 0;
  else if (r < 0) ThrowErrno(info.Env(), errno, "read");
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(value));
}

// eventfdWrite(fd, value): adds value (Number or BigInt) to the counter.
static Napi::Value EventFdWrite(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  uint64_t value = info.Length() > 1 ? ArgUint64(info, 1, "value") : 1;
  int r;
  do {
    r = eventfd_write(fd, value);
  } while (r < 0 && errno == EINTR);
  if (r < 0) ThrowErrno(info.Env(), errno, "write");
  return info.Env().Undefined();
}

// new Watcher(fd, callback): callback(status, events) runs on the JS thread
// whenever fd is readable, between start() and stop(). close() releases the
// libuv handle; a closed or stopped watcher does not keep the process alive.
class Watcher : public Napi::ObjectWrap<Watcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Watcher",
                       {InstanceMethod("start", &Watcher::Start), InstanceMethod("stop", &Watcher::Stop),
                        InstanceMethod("close", &Watcher::Close)});
  }

  explicit Watcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Watcher>(info) {
    Napi::Env env = info.Env();
    int fd = ArgFd(info, 0);
    if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) throw Napi::Error::New(env, "no event loop");
    handle_ = new uv_poll_t;
    int r = uv_poll_init(loop, handle_, fd);
    if (r < 0) {
      delete handle_;
      handle_ = nullptr;
      ThrowErrno(env, -r, "uv_poll_init");
    }
    handle_->data = this;
    context_ = new Napi::AsyncContext(env, "closurefs.Watcher");
  }

  ~Watcher() override {
    ReleaseHandle();
    delete context_;
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (handle_ == nullptr) throw Napi::Error::New(info.Env(), "watcher is closed");
    int r = uv_poll_start(handle_, UV_READABLE, OnPoll);
    if (r < 0) ThrowErrno(info.Env(), -r, "uv_poll_start");
    if (!active_) Ref();  // an active watcher must not be collected
    active_ = true;
    return info.Env().Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopPolling();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    StopPolling();
    ReleaseHandle();
    return info.Env().Undefined();
  }

  void StopPolling() {
    if (handle_ != nullptr) uv_poll_stop(handle_);
    if (active_) Unref();
    active_ = false;
  }

  void ReleaseHandle() {
    if (handle_ == nullptr) return;
    handle_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(handle_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    handle_ = nullptr;
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    Watcher* self = static_cast<Watcher*>(handle->data);
    if (self == nullptr) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    try {
      self->callback_.MakeCallback(env.Global(), {Napi::Number::New(env, status), Napi::Number::New(env, events)},
                                   *self->context_);
    } catch (const Napi::Error& e) {
      // A throwing callback is the JS side's bug: surface it as an uncaught
      // exception the way Node does for its own callbacks.
      napi_fatal_exception(env, e.Value());
    }
  }

  Napi::FunctionReference callback_;
  Napi::AsyncContext* context_ = nullptr;
  uv_poll_t* handle_ = nullptr;
  bool active_ = false;
};

void InitEvent(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfd", Napi::Function::New(env, EventFd, "eventfd"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventFdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventFdWrite, "eventfdWrite"));
  exports.Set("Watcher", Watcher::Define(env));
}

}  // namespace cfs
