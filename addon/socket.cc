// UNIX stream sockets with file-descriptor passing (SCM_RIGHTS), the transport
// of vhost-user. Every socket is created close-on-exec; received fds too.
#include "common.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <vector>

namespace cfs {

// The kernel refuses more than this many fds in one message (SCM_MAX_FD).
static constexpr size_t kMaxFds = 253;

static sockaddr_un UnixAddress(Napi::Env env, const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    ThrowErrno(env, ENAMETOOLONG, "bind");
  }
  memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// socketListen(path, backlog) -> fd: a non-blocking listening socket.
static Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgPath(info, 0);
  int backlog = ArgInt32(info, 1, "backlog");
  sockaddr_un addr = UnixAddress(env, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, errno, "socket");
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "bind");
  }
  if (listen(fd, backlog) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "listen");
  }
  return Napi::Number::New(env, fd);
}

// socketAccept(fd) -> fd of the new connection, non-blocking and close-on-exec.
static Napi::Value Accept(const Napi::CallbackInfo& info) {
  int fd = accept4(ArgFd(info, 0), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), errno, "accept4");
  return Napi::Number::New(info.Env(), fd);
}

// socketConnect(path) -> fd: a blocking connected socket.
static Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  sockaddr_un addr = UnixAddress(env, ArgPath(info, 0));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, errno, "socket");
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "connect");
  }
  return Napi::Number::New(env, fd);
}

// socketpair() -> [fd, fd]: a connected pair of blocking stream sockets.
static Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) ThrowErrno(info.Env(), errno, "socketpair");
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  out.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return out;
}

// Arguments i, i+1, i+2: a Buffer and the [offset, offset+length) part of it to use.
static iovec ArgBufferRange(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsBuffer()) throw Napi::TypeError::New(info.Env(), "buffer must be a Buffer");
  auto buf = info[i].As<Napi::Buffer<uint8_t>>();
  uint32_t offset = ArgUint32(info, i + 1, "offset");
  uint32_t length = ArgUint32(info, i + 2, "length");
  if (static_cast<uint64_t>(offset) + length > buf.Length()) throw Napi::RangeError::New(info.Env(), "offset + length exceeds the buffer");
  return iovec{buf.Data() + offset, length};
}

// recvmsg(fd, buffer, offset, length) -> { bytes, fds, truncated }
// bytes is 0 at end of stream. truncated reports MSG_CTRUNC: the sender sent
// more fds than fit; the kernel closed the excess ones.
static Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  iovec iov = ArgBufferRange(info, 1);

  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, errno, "recvmsg");

  Napi::Array fds = Napi::Array::New(env);
  uint32_t count = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(c);
    for (size_t k = 0; k < nfds; k++) {
      int rfd;
      memcpy(&rfd, data + k * sizeof(int), sizeof(int));
      fds.Set(count++, Napi::Number::New(env, rfd));
    }
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  out.Set("fds", fds);
  out.Set("truncated", Napi::Boolean::New(env, (msg.msg_flags & MSG_CTRUNC) != 0));
  return out;
}

// sendmsg(fd, buffer, offset, length, fds[]) -> bytes sent. MSG_NOSIGNAL: a
// closed peer is an EPIPE error, not a process-killing SIGPIPE.
static Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  iovec iov = ArgBufferRange(info, 1);
  std::vector<int> fds;
  if (info.Length() > 4 && !info[4].IsUndefined()) {
    if (!info[4].IsArray()) throw Napi::TypeError::New(env, "fds must be an array");
    auto arr = info[4].As<Napi::Array>();
    if (arr.Length() > kMaxFds) throw Napi::RangeError::New(env, "too many fds for one message");
    for (uint32_t k = 0; k < arr.Length(); k++) {
      Napi::Value v = arr.Get(k);
      if (!v.IsNumber()) throw Napi::TypeError::New(env, "fds must hold numbers");
      fds.push_back(v.As<Napi::Number>().Int32Value());
    }
  }
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, errno, "sendmsg");
  return Napi::Number::New(env, static_cast<double>(n));
}

// setNonBlocking(fd, on)
static Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  bool on = ArgBool(info, 1, "on");
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) ThrowErrno(info.Env(), errno, "fcntl");
  flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (fcntl(fd, F_SETFL, flags) < 0) ThrowErrno(info.Env(), errno, "fcntl");
  return info.Env().Undefined();
}

// pollIn(fd, timeoutMs) -> true when fd is readable (or hung up) within the timeout.
static Napi::Value PollIn(const Napi::CallbackInfo& info) {
  pollfd p{ArgFd(info, 0), POLLIN, 0};
  int timeout = ArgInt32(info, 1, "timeoutMs");
  int n;
  do {
    n = poll(&p, 1, timeout);
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(info.Env(), errno, "poll");
  return Napi::Boolean::New(info.Env(), n > 0);
}

// dup(fd) -> a new close-on-exec fd for the same open file.
static Napi::Value Dup(const Napi::CallbackInfo& info) {
  int fd = fcntl(ArgFd(info, 0), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(info.Env(), errno, "fcntl");
  return Napi::Number::New(info.Env(), fd);
}

// getgrnam(name) -> gid, or -1 when no such group exists.
static Napi::Value GetGrNam(const Napi::CallbackInfo& info) {
  std::string name = ArgPath(info, 0);
  errno = 0;
  group* g = getgrnam(name.c_str());
  if (g == nullptr) {
    if (errno != 0 && errno != ENOENT && errno != ESRCH) ThrowErrno(info.Env(), errno, "getgrnam");
    return Napi::Number::New(info.Env(), -1);
  }
  return Napi::Number::New(info.Env(), g->gr_gid);
}

void InitSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("socketListen", Napi::Function::New(env, Listen, "socketListen"));
  exports.Set("socketAccept", Napi::Function::New(env, Accept, "socketAccept"));
  exports.Set("socketConnect", Napi::Function::New(env, Connect, "socketConnect"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("recvmsg", Napi::Function::New(env, RecvMsg, "recvmsg"));
  exports.Set("sendmsg", Napi::Function::New(env, SendMsg, "sendmsg"));
  exports.Set("setNonBlocking", Napi::Function::New(env, SetNonBlocking, "setNonBlocking"));
  exports.Set("pollIn", Napi::Function::New(env, PollIn, "pollIn"));
  exports.Set("dup", Napi::Function::New(env, Dup, "dup"));
  exports.Set("getgrnam", Napi::Function::New(env, GetGrNam, "getgrnam"));
  exports.Set("MAX_FDS_PER_MESSAGE", Napi::Number::New(env, kMaxFds));
}

}  // namespace cfs
