// fd-relative file access. The closure view opens everything relative to a
// directory fd with O_NOFOLLOW (or openat2 RESOLVE_NO_SYMLINKS|RESOLVE_BENEATH),
// so no host symlink is ever followed. File data itself moves with Node's fs.read.
#include "common.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <climits>

namespace cfs {

// openat(dirfd, path, flags) -> fd. The caller chooses the flags (constants
// below); nothing is added except what the kernel needs to honour them.
static Napi::Value OpenAt(const Napi::CallbackInfo& info) {
  int dirfd = ArgFd(info, 0);
  std::string path = ArgPath(info, 1);
  int flags = ArgInt32(info, 2, "flags");
  int fd;
  do {
    fd = openat(dirfd, path.c_str(), flags, 0);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) ThrowErrno(info.Env(), errno, "openat");
  return Napi::Number::New(info.Env(), fd);
}

// openat2(dirfd, path, flags, resolve) -> fd: one syscall resolves a whole
// relative path under the RESOLVE_* rules (Linux >= 5.6).
static Napi::Value OpenAt2(const Napi::CallbackInfo& info) {
  int dirfd = ArgFd(info, 0);
  std::string path = ArgPath(info, 1);
  open_how how{};
  how.flags = static_cast<uint64_t>(static_cast<uint32_t>(ArgInt32(info, 2, "flags")));
  how.resolve = ArgUint32(info, 3, "resolve");
  long fd;
  do {
    fd = syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof(how));
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) ThrowErrno(info.Env(), errno, "openat2");
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

// Layout of the Float64Array statx fills. 64-bit inode numbers do not fit a
// double, so they travel as two 32-bit halves.
enum StatxField {
  kMask, kMode, kNlink, kUid, kGid, kInoHi, kInoLo, kSize, kBlocks, kBlksize,
  kAtimeSec, kAtimeNsec, kMtimeSec, kMtimeNsec, kCtimeSec, kCtimeNsec,
  kRdevMajor, kRdevMinor, kDevMajor, kDevMinor, kStatxFields
};
static const char* kStatxNames[kStatxFields] = {
    "mask", "mode", "nlink", "uid", "gid", "inoHi", "inoLo", "size", "blocks", "blksize",
    "atimeSec", "atimeNsec", "mtimeSec", "mtimeNsec", "ctimeSec", "ctimeNsec",
    "rdevMajor", "rdevMinor", "devMajor", "devMinor"};

// statx(dirfd, path, flags, mask, out: Float64Array) fills out (layout above) and
// returns 0, or returns the errno when the call failed.
static Napi::Value Statx(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dirfd = ArgFd(info, 0);
  std::string path = ArgPath(info, 1);
  int flags = ArgInt32(info, 2, "flags");
  uint32_t mask = ArgUint32(info, 3, "mask");
  if (info.Length() < 5 || !info[4].IsTypedArray() ||
      info[4].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    throw Napi::TypeError::New(env, "out must be a Float64Array");
  }
  auto out = info[4].As<Napi::Float64Array>();
  if (out.ElementLength() < kStatxFields) throw Napi::RangeError::New(env, "out is too short");
  struct statx sx;
  // The errno is returned, not thrown: a missing name is an everyday answer
  // (a guest's LOOKUP), and a thrown error costs a captured stack trace.
  if (statx(dirfd, path.c_str(), flags, mask, &sx) < 0) return Napi::Number::New(env, errno);
  double* o = out.Data();
  o[kMask] = sx.stx_mask;
  o[kMode] = sx.stx_mode;
  o[kNlink] = sx.stx_nlink;
  o[kUid] = sx.stx_uid;
  o[kGid] = sx.stx_gid;
  o[kInoHi] = static_cast<double>(sx.stx_ino >> 32);
  o[kInoLo] = static_cast<double>(sx.stx_ino & 0xffffffffu);
  o[kSize] = static_cast<double>(sx.stx_size);
  o[kBlocks] = static_cast<double>(sx.stx_blocks);
  o[kBlksize] = sx.stx_blksize;
  o[kAtimeSec] = static_cast<double>(sx.stx_atime.tv_sec);
  o[kAtimeNsec] = sx.stx_atime.tv_nsec;
  o[kMtimeSec] = static_cast<double>(sx.stx_mtime.tv_sec);
  o[kMtimeNsec] = sx.stx_mtime.tv_nsec;
  o[kCtimeSec] = static_cast<double>(sx.stx_ctime.tv_sec);
  o[kCtimeNsec] = sx.stx_ctime.tv_nsec;
  o[kRdevMajor] = sx.stx_rdev_major;
  o[kRdevMinor] = sx.stx_rdev_minor;
  o[kDevMajor] = sx.stx_dev_major;
  o[kDevMinor] = sx.stx_dev_minor;
  return Napi::Number::New(env, 0);
}

// readlinkat(dirfd, path) -> Buffer with the target bytes, verbatim.
static Napi::Value ReadLinkAt(const Napi::CallbackInfo& info) {
  int dirfd = ArgFd(info, 0);
  std::string path = ArgPath(info, 1);
  char target[PATH_MAX + 1];
  ssize_t n = readlinkat(dirfd, path.c_str(), target, sizeof(target));
  if (n < 0) ThrowErrno(info.Env(), errno, "readlinkat");
  if (static_cast<size_t>(n) == sizeof(target)) ThrowErrno(info.Env(), ENAMETOOLONG, "readlinkat");
  return Napi::Buffer<char>::Copy(info.Env(), target, static_cast<size_t>(n));
}

struct LinuxDirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

// getdents64(fd, scratch: Buffer) -> [{ name: Buffer, ino: bigint, type, off: bigint }]
// One syscall; an empty array means the end of the directory. off is the
// cookie to lseek(fd, off, SEEK_SET) to resume after that entry.
static Napi::Value GetDents64(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "scratch must be a Buffer");
  auto scratch = info[1].As<Napi::Buffer<char>>();
  long n;
  do {
    n = syscall(SYS_getdents64, fd, scratch.Data(), scratch.Length());
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, errno, "getdents64");
  Napi::Array out = Napi::Array::New(env);
  uint32_t count = 0;
  for (long pos = 0; pos < n;) {
    auto* d = reinterpret_cast<LinuxDirent64*>(scratch.Data() + pos);
    Napi::Object e = Napi::Object::New(env);
    e.Set("name", Napi::Buffer<char>::Copy(env, d->d_name, strlen(d->d_name)));
    e.Set("ino", Napi::BigInt::New(env, d->d_ino));
    e.Set("type", Napi::Number::New(env, d->d_type));
    e.Set("off", Napi::BigInt::New(env, d->d_off));
    out.Set(count++, e);
    pos += d->d_reclen;
  }
  return out;
}

// fstatfs(fd) -> the statfs fields as numbers.
static Napi::Value FStatFs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct statfs s;
  if (fstatfs(ArgFd(info, 0), &s) < 0) ThrowErrno(env, errno, "fstatfs");
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", Napi::Number::New(env, static_cast<double>(s.f_type)));
  o.Set("bsize", Napi::Number::New(env, static_cast<double>(s.f_bsize)));
  o.Set("blocks", Napi::Number::New(env, static_cast<double>(s.f_blocks)));
  o.Set("bfree", Napi::Number::New(env, static_cast<double>(s.f_bfree)));
  o.Set("bavail", Napi::Number::New(env, static_cast<double>(s.f_bavail)));
  o.Set("files", Napi::Number::New(env, static_cast<double>(s.f_files)));
  o.Set("ffree", Napi::Number::New(env, static_cast<double>(s.f_ffree)));
  o.Set("namelen", Napi::Number::New(env, static_cast<double>(s.f_namelen)));
  o.Set("frsize", Napi::Number::New(env, static_cast<double>(s.f_frsize)));
  o.Set("flags", Napi::Number::New(env, static_cast<double>(s.f_flags)));
  return o;
}

// lseek(fd, offset, whence) -> the new offset (SEEK_DATA/SEEK_HOLE included).
static Napi::Value LSeek(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  uint64_t offset = ArgUint64(info, 1, "offset");
  int whence = ArgInt32(info, 2, "whence");
  off_t r = lseek(fd, static_cast<off_t>(offset), whence);
  if (r < 0) ThrowErrno(info.Env(), errno, "lseek");
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

#define CFS_CONST(obj, name) obj.Set(#name, Napi::Number::New(env, static_cast<double>(name)))

void InitFiles(Napi::Env env, Napi::Object exports) {
  exports.Set("openat", Napi::Function::New(env, OpenAt, "openat"));
  exports.Set("openat2", Napi::Function::New(env, OpenAt2, "openat2"));
  exports.Set("statx", Napi::Function::New(env, Statx, "statx"));
  exports.Set("readlinkat", Napi::Function::New(env, ReadLinkAt, "readlinkat"));
  exports.Set("getdents64", Napi::Function::New(env, GetDents64, "getdents64"));
  exports.Set("fstatfs", Napi::Function::New(env, FStatFs, "fstatfs"));
  exports.Set("lseek", Napi::Function::New(env, LSeek, "lseek"));

  Napi::Array names = Napi::Array::New(env, kStatxFields);
  for (uint32_t i = 0; i < kStatxFields; i++) names.Set(i, Napi::String::New(env, kStatxNames[i]));
  exports.Set("STATX_FIELDS", names);

  Napi::Object c = Napi::Object::New(env);
  CFS_CONST(c, O_RDONLY); CFS_CONST(c, O_WRONLY); CFS_CONST(c, O_RDWR); CFS_CONST(c, O_ACCMODE);
  CFS_CONST(c, O_PATH); CFS_CONST(c, O_NOFOLLOW); CFS_CONST(c, O_CLOEXEC); CFS_CONST(c, O_DIRECTORY);
  CFS_CONST(c, O_NONBLOCK); CFS_CONST(c, O_NOATIME); CFS_CONST(c, O_CREAT); CFS_CONST(c, O_EXCL);
  CFS_CONST(c, O_TRUNC); CFS_CONST(c, O_APPEND); CFS_CONST(c, O_NOCTTY); CFS_CONST(c, O_LARGEFILE);
  CFS_CONST(c, AT_FDCWD); CFS_CONST(c, AT_SYMLINK_NOFOLLOW); CFS_CONST(c, AT_EMPTY_PATH);
  CFS_CONST(c, AT_STATX_SYNC_AS_STAT); CFS_CONST(c, AT_NO_AUTOMOUNT);
  CFS_CONST(c, STATX_BASIC_STATS); CFS_CONST(c, STATX_ALL);
  CFS_CONST(c, RESOLVE_BENEATH); CFS_CONST(c, RESOLVE_NO_SYMLINKS); CFS_CONST(c, RESOLVE_NO_MAGICLINKS);
  CFS_CONST(c, RESOLVE_NO_XDEV); CFS_CONST(c, RESOLVE_IN_ROOT);
  CFS_CONST(c, SEEK_SET); CFS_CONST(c, SEEK_CUR); CFS_CONST(c, SEEK_END); CFS_CONST(c, SEEK_DATA); CFS_CONST(c, SEEK_HOLE);
  CFS_CONST(c, DT_UNKNOWN); CFS_CONST(c, DT_FIFO); CFS_CONST(c, DT_CHR); CFS_CONST(c, DT_DIR);
  CFS_CONST(c, DT_BLK); CFS_CONST(c, DT_REG); CFS_CONST(c, DT_LNK); CFS_CONST(c, DT_SOCK);
  CFS_CONST(c, S_IFMT); CFS_CONST(c, S_IFREG); CFS_CONST(c, S_IFDIR); CFS_CONST(c, S_IFLNK);
  CFS_CONST(c, S_IFCHR); CFS_CONST(c, S_IFBLK); CFS_CONST(c, S_IFIFO); CFS_CONST(c, S_IFSOCK);
  exports.Set("constants", c);
}

}  // namespace cfs
