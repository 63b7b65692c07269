// The emulator's scheduler, fibers, shared-memory checks, streams and runtime (see cuda_emu.h for
// the model and SPEC section 8 for the contract).
#include "cuda_emu.h"

#include <cxxabi.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define LK_EMU_ASAN 1
#else
#define LK_EMU_ASAN 0
#endif

#if defined(__SANITIZE_THREAD__)
#error "compile the emulator itself without -fsanitize=thread: only kernel sources are instrumented, and LK_EMU_RACECHECK supplies the __tsan_* entry points (see cuda_emu.cc)"
#endif
#ifdef LK_EMU_RACECHECK
#define LK_EMU_RACE 1
#else
#define LK_EMU_RACE 0
#endif

// ---------------------------------------------------------------- context switch (x86-64 SysV)
// lk_emu_switch(&save_sp, load_sp): saves the callee-saved registers, MXCSR and the x87 control
// word on the current stack, stores the stack pointer, and resumes the context saved at load_sp.
// A new fiber's stack is laid out so that the first switch "returns" into lk_emu_fiber_entry.
#if !defined(__x86_64__)
#error "the CUDA emulator's context switch is written for x86-64"
#endif
extern "C" void lk_emu_switch(void** save_sp, void* load_sp);
extern "C" void lk_emu_fiber_entry();
extern "C" void lk_emu_fiber_main();
asm(R"(
  .text
  .globl lk_emu_switch
  .type lk_emu_switch, @function
lk_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size lk_emu_switch, .-lk_emu_switch

  .globl lk_emu_fiber_entry
  .type lk_emu_fiber_entry, @function
lk_emu_fiber_entry:
  call lk_emu_fiber_main
  ud2
  .size lk_emu_fiber_entry, .-lk_emu_fiber_entry
)");

namespace lk_emu {
namespace {

// One message on stderr, written at once (other host threads may print too).
void vsay(const char* format, va_list args) {
  char buf[4096];
  const int prefix = std::snprintf(buf, sizeof buf, "lifelong-kernels CUDA emulator: ");
  const int n = std::vsnprintf(buf + prefix, sizeof buf - (size_t)prefix - 1, format, args);
  size_t len = (size_t)prefix + (n < 0 ? 0 : std::min<size_t>((size_t)n, sizeof buf - (size_t)prefix - 2));
  buf[len++] = '\n';
  (void)!write(STDERR_FILENO, buf, len);
}

[[noreturn]] __attribute__((format(printf, 1, 2))) void fail(const char* format, ...) {
  va_list args;
  va_start(args, format);
  vsay(format, args);
  va_end(args);
  std::abort();
}

__attribute__((format(printf, 1, 2))) void warn(const char* format, ...) {
  va_list args;
  va_start(args, format);
  vsay(format, args);
  va_end(args);
}

// ---------------------------------------------------------------- seeded order (LK_EMU_SEED)
struct Rng {
  uint64_t state;
  uint64_t next() {  // splitmix64
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n <= 1 ? 0 : next() % n; }
  template <typename T>
  void shuffle(std::vector<T>& v, size_t n) {
    for (size_t i = n; i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }
};

struct Order {
  bool seeded = false;
  uint64_t seed = 0;
};

const Order& order_config() {
  static const Order config = [] {
    Order o;
    const char* env = std::getenv("LK_EMU_SEED");
    if (env && *env) {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(env, &end, 10);
      if (*end != '\0') fail("LK_EMU_SEED must be a non-negative integer, not \"%s\"", env);
      o.seeded = true;
      o.seed = v;
    }
    return o;
  }();
  return config;
}

// ---------------------------------------------------------------- fibers and blocks
enum class Wait { kNone, kBlock, kWarp };

struct Fiber {
  ThreadContext ctx;
  void* sp = nullptr;       // saved stack pointer while switched out
  char* stack = nullptr;    // lowest usable address
  size_t stack_size = 0;
  bool done = false;
  Wait waiting = Wait::kNone;
};

struct Warp {
  unsigned live_mask = 0;     // lanes that exist and have not exited
  unsigned arrived_mask = 0;  // lanes waiting at the current rendezvous
  uint64_t generation = 0;
  unsigned expected = 0;      // mask of the rendezvous in progress
  uint64_t payload[32];
  unsigned ballot = 0;
};

struct BlockRun {
  std::vector<Fiber>* fibers = nullptr;
  std::vector<Warp> warps;
  int live = 0;
  int barrier_arrived = 0;
  uint64_t barrier_generation = 0;
  int vote_pending = 0;  // predicates counted by __syncthreads_count / _or / _and at the open barrier
  int vote_result = 0;   // the count of the barrier released last

  uint64_t progress = 0;  // bumped whenever a wait completes or a thread exits
  const std::function<void()>* body = nullptr;
  unsigned char* dynamic_shared = nullptr;
  bool seeded = false;    // LK_EMU_SEED: every synchronization point yields, resumption order drawn
};

// Per OS thread: the block being run, the running fiber, the scheduler's context, and stacks.
struct Scheduler {
  BlockRun* block = nullptr;
  Fiber* fiber = nullptr;
  void* scheduler_sp = nullptr;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;  // each: guard page + stack
  size_t stack_size = 0;
  std::vector<int> order;     // the order fibers are resumed in, per round
#if LK_EMU_ASAN
  void* fake_stack = nullptr;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
#endif
};

thread_local Scheduler tls;
thread_local cudaError_t last_error = cudaSuccess;
thread_local bool in_host_function = false;  // running a cudaLaunchHostFunc callback

size_t page_size() { return (size_t)sysconf(_SC_PAGESIZE); }

size_t configured_stack_size() {
  const char* env = std::getenv("LK_EMU_STACK_KB");
  long kb = env ? std::atol(env) : 0;
  if (kb <= 0) kb = LK_EMU_ASAN ? 512 : 256;
  const size_t page = page_size();
  return ((size_t)kb * 1024 + page - 1) / page * page;
}

void ensure_stacks(size_t count) {
  if (tls.stack_size == 0) tls.stack_size = configured_stack_size();
  const size_t page = page_size();
  while (tls.stacks.size() < count) {
    // A guard page below each stack turns an overflow into a fault instead of silent corruption.
    void* mem = mmap(nullptr, tls.stack_size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) fail("cannot map a fiber stack");
    if (mprotect(mem, page, PROT_NONE) != 0) fail("cannot protect a fiber stack's guard page");
    tls.stacks.push_back(static_cast<char*>(mem) + page);
  }
}

// ---------------------------------------------------------------- kernels: names and __shared__ variables
// A kernel's `__shared__` variables are function-local `static thread_local`s, whose symbols are
// named `_ZZ<kernel's mangled encoding>E<name>` and hold their offset in the module's TLS block.
// The module's symbol table (read from its file once) gives, for a kernel's address, its name and
// those variables: the emulator refills them with 0xff before every block, sums them against the
// 48 KiB static limit, and race detection names them.

struct SharedVar {
  size_t offset = 0, size = 0;  // in the module's TLS block
  std::string name;
};

struct ModuleInfo {
  std::string path;
  uintptr_t bias = 0;
  size_t tls_modid = 0, tls_size = 0;
  bool symbols = false;  // a symbol table was read
  std::unordered_map<uintptr_t, std::string> functions;  // absolute address -> mangled name
  std::vector<std::pair<std::string, SharedVar>> statics;  // function-local thread_locals (`_ZZ...`)
};

struct KernelInfo {
  const void* address = nullptr;
  std::string name;       // demangled when the symbol is known, else the launch expression
  bool located = false;   // the symbol table named the kernel: `vars` is complete
  ModuleInfo* module = nullptr;
  std::vector<SharedVar> vars;  // by offset
  size_t static_bytes = 0;
  size_t lo = 0, hi = 0;        // offsets spanned by `vars` in the module's TLS block
  size_t max_dynamic = 48 * 1024;  // raised by cudaFuncSetAttribute
};

constexpr size_t kStaticSharedLimit = 48 * 1024;
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kOptinShared = 227 * 1024;  // an sm_90 part's opt-in shared memory per block

std::string demangle(const std::string& mangled) {
  int status = 0;
  char* d = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
  if (status != 0 || !d) return mangled;
  std::string out(d);
  std::free(d);
  return out;
}

struct ModuleQuery {
  uintptr_t addr;
  bool found = false;
  std::string path;
  uintptr_t bias = 0;
  size_t tls_modid = 0, tls_size = 0;
};

int find_module_cb(struct dl_phdr_info* info, size_t, void* data) {
  auto* q = static_cast<ModuleQuery*>(data);
  bool here = false;
  size_t tls_size = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_type == PT_LOAD && q->addr >= lo && q->addr < lo + ph.p_memsz) here = true;
    if (ph.p_type == PT_TLS) tls_size = ph.p_memsz;
  }
  if (!here) return 0;
  q->found = true;
  q->path = info->dlpi_name && *info->dlpi_name ? info->dlpi_name : "/proc/self/exe";
  q->bias = info->dlpi_addr;
  q->tls_modid = info->dlpi_tls_modid;
  q->tls_size = tls_size;
  return 1;
}

// Reads the module's .symtab (or, stripped, .dynsym): functions and function-local thread_locals.
void read_symbols(ModuleInfo& m) {
  const int fd = open(m.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  struct stat st;
  if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(ElfW(Ehdr))) { close(fd); return; }
  const size_t size = (size_t)st.st_size;
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return;
  const auto* base = static_cast<const unsigned char*>(map);
  const auto* eh = reinterpret_cast<const ElfW(Ehdr)*>(base);
  const bool elf64 = std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64;
  if (elf64 && eh->e_shoff && eh->e_shentsize == sizeof(ElfW(Shdr)) && eh->e_shoff + (size_t)eh->e_shnum * sizeof(ElfW(Shdr)) <= size) {
    const auto* sh = reinterpret_cast<const ElfW(Shdr)*>(base + eh->e_shoff);
    int pick = -1;
    for (int i = 0; i < eh->e_shnum && pick < 0; ++i)
      if (sh[i].sh_type == SHT_SYMTAB) pick = i;
    for (int i = 0; i < eh->e_shnum && pick < 0; ++i)
      if (sh[i].sh_type == SHT_DYNSYM) pick = i;
    if (pick >= 0 && sh[pick].sh_link < eh->e_shnum) {
      const ElfW(Shdr)& symtab = sh[pick];
      const ElfW(Shdr)& strtab = sh[symtab.sh_link];
      if (symtab.sh_offset + symtab.sh_size <= size && strtab.sh_offset + strtab.sh_size <= size) {
        const auto* syms = reinterpret_cast<const ElfW(Sym)*>(base + symtab.sh_offset);
        const size_t n = symtab.sh_size / sizeof(ElfW(Sym));
        const char* names = reinterpret_cast<const char*>(base + strtab.sh_offset);
        m.symbols = true;
        for (size_t i = 0; i < n; ++i) {
          const ElfW(Sym)& s = syms[i];
          if (s.st_name >= strtab.sh_size || s.st_shndx == SHN_UNDEF) continue;
          const char* name = names + s.st_name;
          if (std::memchr(name, 0, strtab.sh_size - s.st_name) == nullptr) continue;
          const int type = ELF64_ST_TYPE(s.st_info);
          if (type == STT_FUNC && s.st_value) {
            const uintptr_t addr = m.bias + s.st_value;
            auto it = m.functions.find(addr);
            // Prefer a plain name over aliases such as `f.localalias`.
            if (it == m.functions.end()) m.functions.emplace(addr, name);
            else if (it->second.find('.') != std::string::npos && !std::strchr(name, '.')) it->second = name;
          } else if (type == STT_TLS && std::strncmp(name, "_ZZ", 3) == 0) {
            SharedVar v;
            v.offset = s.st_value;
            v.size = s.st_size;
            m.statics.emplace_back(name, v);
          }
        }
      }
    }
  }
  munmap(map, size);
}

std::mutex kernels_mutex;

ModuleInfo* module_of(const void* addr) {
  static auto& modules = *new std::vector<std::unique_ptr<ModuleInfo>>();  // never destroyed
  ModuleQuery q;
  q.addr = reinterpret_cast<uintptr_t>(addr);
  dl_iterate_phdr(find_module_cb, &q);
  if (!q.found) return nullptr;
  for (auto& m : modules)
    if (m->path == q.path && m->bias == q.bias) return m.get();
  auto m = std::make_unique<ModuleInfo>();
  m->path = q.path;
  m->bias = q.bias;
  m->tls_modid = q.tls_modid;
  m->tls_size = q.tls_size;
  read_symbols(*m);
  modules.push_back(std::move(m));
  return modules.back().get();
}

// The name of a local static after its function's prefix: `<length><identifier>[discriminator]`.
std::string local_name(const std::string& symbol, size_t at) {
  size_t len = 0;
  while (at < symbol.size() && symbol[at] >= '0' && symbol[at] <= '9') len = len * 10 + (size_t)(symbol[at++] - '0');
  if (len == 0 || at + len > symbol.size()) return symbol;
  std::string out = symbol.substr(at, len);
  if (at + len < symbol.size()) out += " (" + symbol.substr(at + len) + ")";  // a discriminator: _0, _1, __12_
  return out;
}

KernelInfo& kernel_info(const void* kernel, const LaunchSite* site) {
  std::lock_guard<std::mutex> lock(kernels_mutex);
  static auto& kernels = *new std::map<const void*, std::unique_ptr<KernelInfo>>();  // never destroyed
  auto& slot = kernels[kernel];
  if (slot) return *slot;
  slot = std::make_unique<KernelInfo>();
  KernelInfo& k = *slot;
  k.address = kernel;
  k.module = module_of(kernel);
  std::string mangled;
  if (k.module) {
    const auto it = k.module->functions.find(reinterpret_cast<uintptr_t>(kernel));
    if (it != k.module->functions.end()) mangled = it->second;
  }
  if (!mangled.empty()) {
    k.name = demangle(mangled);
    k.located = true;
    const std::string prefix = mangled.compare(0, 2, "_Z") == 0 ? "_ZZ" + mangled.substr(2) + "E"
                                                                : "_ZZ" + std::to_string(mangled.size()) + mangled + "E";
    for (const auto& s : k.module->statics)
      if (s.first.compare(0, prefix.size(), prefix) == 0) {
        SharedVar v = s.second;
        v.name = local_name(s.first, prefix.size());
        k.vars.push_back(v);
      }
    std::sort(k.vars.begin(), k.vars.end(), [](const SharedVar& a, const SharedVar& b) { return a.offset < b.offset; });
    for (const auto& v : k.vars) k.static_bytes += v.size;
    if (!k.vars.empty()) {
      k.lo = k.vars.front().offset;
      for (const auto& v : k.vars) k.hi = std::max(k.hi, v.offset + v.size);
    }
  } else {
    k.name = site && site->expr ? std::string(site->expr) : std::string("(unknown kernel)");
    warn("cannot find the symbol of kernel %s%s%s in %s (stripped binary?): its static __shared__ variables are not "
         "refilled with 0xff per block nor checked against the 48 KiB limit",
         k.name.c_str(), site ? " launched at " : "", site ? (std::string(site->file) + ":" + std::to_string(site->line)).c_str() : "",
         k.module ? k.module->path.c_str() : "an unknown module");
  }
  return k;
}

// This OS thread's instance of the module's TLS block (allocated on first use, as for the kernel).
struct TlsIndex {
  unsigned long module, offset;
};
extern "C" void* __tls_get_addr(TlsIndex*);

unsigned char* tls_block(const ModuleInfo& m) {
  if (m.tls_modid == 0) return nullptr;
  TlsIndex index{m.tls_modid, 0};
  return static_cast<unsigned char*>(__tls_get_addr(&index));
}

std::string where(const LaunchSite& site) {
  return std::string(site.file ? site.file : "?") + ":" + std::to_string(site.line);
}

// ---------------------------------------------------------------- shared-memory race detection
// Built with LK_EMU_RACECHECK, with the kernel sources compiled by g++ -fsanitize=thread: GCC then
// calls __tsan_read4 / __tsan_write8 / __tsan_atomic32_fetch_add / ... around every memory access
// of the kernels, and the emulator -- not libtsan -- defines those entry points (at the end of this
// file). They ignore every address outside the running block's shared memory (the kernel's static
// __shared__ variables in this OS thread's TLS block, and the launch's dynamic shared memory), and
// keep, for each shared byte, its last write and up to two reads since, each stamped with
//   - the block-wide interval: a counter bumped at every __syncthreads and every block start, so
//     two accesses in different intervals are ordered by a barrier;
//   - the thread and that thread's warp epoch: lanes of one warp carry vector clocks over their
//     warp, joined at every warp rendezvous (__syncwarp, shuffles, votes), so an access in the same
//     interval is still ordered when both lanes met at a warp collective after it.
// Two accesses of the same byte by different threads, at least one a write and not both atomic,
// in the same interval and not ordered through the warp, are a race: reported on stderr (kernel,
// launch site, block, both threads, the variable and byte offset), and the launch fails with
// cudaErrorLaunchFailure at the next synchronization.

struct RaceLaunch {
  const KernelInfo* kernel = nullptr;
  const LaunchSite* site = nullptr;
  dim3 block_dim;
  unsigned char* tls_base = nullptr;  // this OS thread's TLS block of the kernel's module
  uintptr_t static_lo = 0, static_len = 0;
  uintptr_t dynamic_lo = 0, dynamic_len = 0;
};

#if LK_EMU_RACE
struct Stamp {
  uint64_t interval = 0;  // 0: none
  uint32_t epoch = 0;
  uint16_t tid = 0;
  uint8_t atomic = 0;
};
struct Cell {
  Stamp write, read1, read2;
};

struct RaceState {
  // Read by the access hooks on any OS thread; written by the thread that holds the device (one
  // launch runs at a time, see device_mutex).
  uintptr_t s_lo = 0, s_len = 0, d_lo = 0, d_len = 0;
  int tid = -1;  // the running emulated thread (linear index in its block), -1 outside a kernel
  std::vector<Cell> s_cells, d_cells;
  uint64_t interval = 0;
  uint64_t block_start = 0;     // the interval the running block started in
  bool check_uninitialised = false;  // LK_EMU_UNINIT=1
  int uninitialised_reports = 0;
  std::vector<uint32_t> epoch;  // [thread]: current warp epoch
  std::vector<uint32_t> clock;  // [thread * 32 + lane]: latest epoch of `lane` (same warp) ordered before
  RaceLaunch launch;
  uint3 block_idx{0, 0, 0};
  int reports = 0;
  bool failed = false;
};
RaceState race;

constexpr int kMaxRaceReports = 4;

void race_launch_begin(const RaceLaunch& l) {
  static const bool uninitialised = [] {
    const char* env = std::getenv("LK_EMU_UNINIT");
    return env && *env && std::strcmp(env, "0") != 0;
  }();
  race.check_uninitialised = uninitialised;
  race.uninitialised_reports = 0;
  race.launch = l;
  race.reports = 0;
  race.failed = false;
  if (race.s_cells.size() < l.static_len) race.s_cells.resize(l.static_len);
  if (race.d_cells.size() < l.dynamic_len) race.d_cells.resize(l.dynamic_len);
  __atomic_store_n(&race.s_lo, l.static_lo, __ATOMIC_RELAXED);
  __atomic_store_n(&race.s_len, l.static_len, __ATOMIC_RELAXED);
  __atomic_store_n(&race.d_lo, l.dynamic_lo, __ATOMIC_RELAXED);
  __atomic_store_n(&race.d_len, l.dynamic_len, __ATOMIC_RELAXED);
}

bool race_launch_end() {
  __atomic_store_n(&race.s_len, (uintptr_t)0, __ATOMIC_RELAXED);
  __atomic_store_n(&race.d_len, (uintptr_t)0, __ATOMIC_RELAXED);
  race.tid = -1;
  if (race.reports > kMaxRaceReports)
    warn("  ... and %d more shared-memory races in this launch", race.reports - kMaxRaceReports);
  if (race.uninitialised_reports > kMaxRaceReports)
    warn("  ... and %d more reads of uninitialised shared memory in this launch", race.uninitialised_reports - kMaxRaceReports);
  return race.failed;
}

void race_block_begin(uint3 block_idx, int threads) {
  race.block_idx = block_idx;
  ++race.interval;  // the previous block's accesses are all ordered before this block's
  race.block_start = race.interval;
  race.epoch.assign((size_t)threads, 1u);
  race.clock.assign((size_t)threads * 32, 0u);
}

void race_barrier() { ++race.interval; }

void race_warp_sync(int warp, unsigned mask) {
  uint32_t joined[32] = {};
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const size_t t = (size_t)warp * 32 + l;
    const uint32_t* c = &race.clock[t * 32];
    for (int m = 0; m < 32; ++m) joined[m] = std::max(joined[m], c[m]);
    joined[l] = std::max(joined[l], race.epoch[t]);
  }
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const size_t t = (size_t)warp * 32 + l;
    std::memcpy(&race.clock[t * 32], joined, sizeof joined);
    ++race.epoch[t];
  }
}

void race_set_thread(int tid) { race.tid = tid; }

bool concurrent(const Stamp& s, int me, bool atomic) {
  if (s.interval != race.interval) return false;  // none, or a barrier between
  if (s.tid == me) return false;
  if (s.atomic && atomic) return false;
  if ((s.tid >> 5) == (me >> 5) && race.clock[(size_t)me * 32 + (s.tid & 31)] >= s.epoch) return false;
  return true;
}

std::string thread_name(int tid) {
  const dim3 d = race.launch.block_dim;
  const unsigned x = (unsigned)tid % d.x, y = ((unsigned)tid / d.x) % d.y, z = (unsigned)tid / (d.x * d.y);
  char buf[96];
  std::snprintf(buf, sizeof buf, "thread (%u,%u,%u) [warp %d lane %d]", x, y, z, tid / 32, tid % 32);
  return buf;
}

std::string shared_location(uintptr_t a) {
  char buf[256];
  const RaceLaunch& l = race.launch;
  if (a - l.dynamic_lo < l.dynamic_len) {
    std::snprintf(buf, sizeof buf, "dynamic shared memory at byte offset %zu", (size_t)(a - l.dynamic_lo));
    return buf;
  }
  const size_t off = a - (uintptr_t)l.tls_base;  // in the module's TLS block
  if (l.kernel && l.kernel->located) {
    for (const SharedVar& v : l.kernel->vars)
      if (off >= v.offset && off < v.offset + v.size) {
        std::snprintf(buf, sizeof buf, "__shared__ %s at byte %zu (of %zu; static shared offset %zu)", v.name.c_str(),
                      off - v.offset, v.size, off - l.kernel->lo);
        return buf;
      }
  }
  std::snprintf(buf, sizeof buf, "static shared memory at byte %zu of the module's TLS block", off);
  return buf;
}

// `a`: the racing access's first byte in shared memory, `n` its size.
void race_report(uintptr_t a, size_t n, const Stamp& earlier, bool earlier_write, int me, bool write, bool atomic) {
  race.failed = true;
  if (++race.reports > kMaxRaceReports) return;
  const RaceLaunch& l = race.launch;
  const bool same_warp = (earlier.tid >> 5) == (me >> 5);
  warn("shared-memory race in kernel %s (launched at %s), block (%u,%u,%u):\n"
       "  %s %s %zu byte%s of %s\n"
       "  after %s %s it, with no %s between the two accesses",
       l.kernel ? l.kernel->name.c_str() : "?", l.site ? where(*l.site).c_str() : "?", race.block_idx.x, race.block_idx.y,
       race.block_idx.z, thread_name(me).c_str(), write ? (atomic ? "atomically writes" : "writes") : (atomic ? "atomically reads" : "reads"),
       n, n == 1 ? "" : "s", shared_location(a).c_str(), thread_name(earlier.tid).c_str(),
       earlier_write ? (earlier.atomic ? "atomically wrote" : "wrote") : (earlier.atomic ? "atomically read" : "read"),
       same_warp ? "__syncthreads, __syncwarp or warp collective of both lanes" : "__syncthreads");
}

// LK_EMU_UNINIT=1: a read of shared bytes no thread of the block wrote (still holding the 0xff
// fill) fails the launch too. Off by default: a kernel may load garbage it then discards.
void uninitialised_report(uintptr_t a, size_t n, int me) {
  race.failed = true;
  if (++race.uninitialised_reports > kMaxRaceReports) return;
  const RaceLaunch& l = race.launch;
  warn("read of uninitialised shared memory in kernel %s (launched at %s), block (%u,%u,%u):\n"
       "  %s reads %zu byte%s of %s, which no thread of the block has written",
       l.kernel ? l.kernel->name.c_str() : "?", l.site ? where(*l.site).c_str() : "?", race.block_idx.x, race.block_idx.y,
       race.block_idx.z, thread_name(me).c_str(), n, n == 1 ? "" : "s", shared_location(a).c_str());
}

// Access kinds: bits of kRead, kWrite, kAtomic (an atomic read-modify-write has all three).
enum : unsigned { kRead = 1, kWrite = 2, kAtomic = 4 };

void race_access(uintptr_t a, size_t n, unsigned kind) {
  const bool write = kind & kWrite, atomic = kind & kAtomic;
  const int me = race.tid;
  if (me < 0) return;
  const Stamp now{race.interval, race.epoch[(size_t)me], (uint16_t)me, (uint8_t)(atomic ? 1 : 0)};
  bool reported = false;
  // The access's part inside one shared region, for the report.
  const bool in_static = a - race.s_lo < race.s_len, in_dynamic = a - race.d_lo < race.d_len;
  const uintptr_t region_end = in_static ? race.s_lo + race.s_len : race.d_lo + race.d_len;
  const size_t shown = in_static || in_dynamic ? (size_t)std::min<uintptr_t>(n, region_end - a) : 1;
  // An uninitialised read: every byte of it still holds the block's 0xff fill and no instrumented
  // code wrote it in this block (emulator code -- a cp.async landing -- writes uninstrumented, but
  // its data is not all 0xff bytes).
  bool uninitialised_read = (kind & kRead) && race.check_uninitialised;
  for (size_t i = 0; i < n; ++i) {
    const uintptr_t b = a + i;
    Cell* c;
    if (b - race.s_lo < race.s_len) c = &race.s_cells[b - race.s_lo];
    else if (b - race.d_lo < race.d_len) c = &race.d_cells[b - race.d_lo];
    else { uninitialised_read = false; continue; }
    if (uninitialised_read && (c->write.interval >= race.block_start || *reinterpret_cast<const unsigned char*>(b) != 0xff))
      uninitialised_read = false;
    if (!reported && uninitialised_read && i + 1 == n) {
      uninitialised_report(in_static || in_dynamic ? a : b, shown, me);
      reported = true;
    }
    if (!reported) {
      if (concurrent(c->write, me, atomic)) { race_report(in_static || in_dynamic ? a : b, shown, c->write, true, me, write, atomic); reported = true; }
      else if (write && concurrent(c->read1, me, atomic)) { race_report(in_static || in_dynamic ? a : b, shown, c->read1, false, me, write, atomic); reported = true; }
      else if (write && concurrent(c->read2, me, atomic)) { race_report(in_static || in_dynamic ? a : b, shown, c->read2, false, me, write, atomic); reported = true; }
    }
    if (write) {
      c->write = now;
      c->read1 = Stamp();
      c->read2 = Stamp();
    } else if (c->read1.interval != race.interval || c->read1.tid == me) {
      if (c->read1.interval != race.interval) c->read2 = Stamp();
      c->read1 = now;
    } else if (c->read2.interval != race.interval || c->read2.tid == me) {
      c->read2 = now;
    }  // else two other threads' reads are kept: any later unordered write still races with one of them
  }
}

inline __attribute__((always_inline)) void race_check(const volatile void* p, size_t n, unsigned kind) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (__builtin_expect(a - __atomic_load_n(&race.s_lo, __ATOMIC_RELAXED) < __atomic_load_n(&race.s_len, __ATOMIC_RELAXED) ||
                           a - __atomic_load_n(&race.d_lo, __ATOMIC_RELAXED) < __atomic_load_n(&race.d_len, __ATOMIC_RELAXED),
                       0))
    race_access(a, n, kind);
}
#else
void race_launch_begin(const RaceLaunch&) {}
bool race_launch_end() { return false; }
void race_block_begin(uint3, int) {}
void race_barrier() {}
void race_warp_sync(int, unsigned) {}
void race_set_thread(int) {}
#endif

// ---------------------------------------------------------------- context switches
// Switches from the scheduler to fiber `f`, telling ASan about the stacks.
void switch_to_fiber(Fiber& f) {
#if LK_EMU_ASAN
  __sanitizer_start_switch_fiber(&tls.fake_stack, f.stack, f.stack_size);
#endif
  tls.fiber = &f;
  race_set_thread(f.ctx.linear);
  lk_emu_switch(&tls.scheduler_sp, f.sp);
  race_set_thread(-1);
#if LK_EMU_ASAN
  __sanitizer_finish_switch_fiber(tls.fake_stack, nullptr, nullptr);
#endif
  tls.fiber = nullptr;
}

void switch_to_scheduler(bool exiting) {
  Fiber& f = *tls.fiber;
#if LK_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, tls.main_stack_bottom, tls.main_stack_size);
#else
  (void)exiting;
#endif
  lk_emu_switch(&f.sp, tls.scheduler_sp);
#if LK_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &tls.main_stack_bottom, &tls.main_stack_size);
#endif
}

void yield_fiber() { switch_to_scheduler(false); }

Warp& warp_of(const Fiber& f) { return tls.block->warps[f.ctx.linear / 32]; }

// Under LK_EMU_SEED the thread that completes a barrier or rendezvous does not run on: it yields,
// and the next round's drawn order decides which of the released threads runs first.
void yield_if_seeded(Wait kind) {
  if (!tls.block->seeded) return;
  Fiber& f = *tls.fiber;
  f.waiting = kind;
  yield_fiber();
  f.waiting = Wait::kNone;
}

void release_barrier(BlockRun& b) {
  b.barrier_arrived = 0;
  b.vote_result = b.vote_pending;
  b.vote_pending = 0;
  ++b.barrier_generation;
  ++b.progress;
  race_barrier();
}

void exit_current() {
  Fiber& f = *tls.fiber;
  BlockRun& b = *tls.block;
  f.done = true;
  --b.live;
  ++b.progress;
  Warp& w = warp_of(f);
  w.live_mask &= ~(1u << (f.ctx.linear % 32));
  if (w.expected & (1u << (f.ctx.linear % 32)))
    fail("a thread exited while lanes of its warp waited for it at a shuffle / vote / __syncwarp");
  // Threads that exit count as arrived at __syncthreads (as on current GPUs).
  if (b.barrier_arrived > 0 && b.barrier_arrived == b.live) release_barrier(b);
  switch_to_scheduler(true);
  fail("an exited fiber was resumed");
}

}  // namespace

// On a GPU __trap() ends the kernel with cudaErrorLaunchFailure, reported at the synchronization
// that covers it. Here the calling thread ends (as if it returned) and its launch fails the same way.
void trap() {
  const ThreadContext& t = current();
  warn("thread (%u, %u, %u) of block (%u, %u, %u) executed __trap(): the launch fails (cudaErrorLaunchFailure)", t.thread_idx.x,
       t.thread_idx.y, t.thread_idx.z, t.block_idx.x, t.block_idx.y, t.block_idx.z);
  last_error = cudaErrorLaunchFailure;  // read by execute_launch as the launch's device error
  note_thread_exit();
  exit_current();
  fail("a trapped thread was resumed");
}

ThreadContext& current() {
  if (!tls.fiber) fail("a CUDA builtin (threadIdx, __syncthreads, ...) was used outside a kernel");
  return tls.fiber->ctx;
}

int lane_id() { return current().linear % 32; }

void syncthreads() { syncthreads_count(false); }

// The barrier's count is published when the last thread arrives and read by each thread as it
// leaves; it cannot be overwritten before then, since the next release needs every live thread.
int syncthreads_count(bool predicate) {
  BlockRun& b = *tls.block;
  Fiber& f = *tls.fiber;
  const uint64_t gen = b.barrier_generation;
  b.vote_pending += predicate ? 1 : 0;
  if (++b.barrier_arrived == b.live) {
    release_barrier(b);
    const int result = b.vote_result;
    yield_if_seeded(Wait::kBlock);
    return result;
  }
  f.waiting = Wait::kBlock;
  while (b.barrier_generation == gen) yield_fiber();
  f.waiting = Wait::kNone;
  return b.vote_result;
}

// Every lane in `mask` arrives, then all leave together. Returns once the rendezvous completed.
static void warp_rendezvous(unsigned mask) {
  Fiber& f = *tls.fiber;
  Warp& w = warp_of(f);
  const unsigned me = 1u << (f.ctx.linear % 32);
  if (!(mask & me)) fail("a warp-synchronous call's mask does not include the calling lane");
  if ((mask & w.live_mask) != mask) fail("a warp-synchronous call names lanes that do not exist or have exited");
  if (w.arrived_mask == 0) w.expected = mask;
  else if (w.expected != mask) fail("lanes of one warp reached warp-synchronous calls with different masks");
  const uint64_t gen = w.generation;
  w.arrived_mask |= me;
  if (w.arrived_mask == w.expected) {
    race_warp_sync(f.ctx.linear / 32, w.expected);
    w.arrived_mask = 0;
    w.expected = 0;
    ++w.generation;
    ++tls.block->progress;
    yield_if_seeded(Wait::kWarp);
    return;
  }
  f.waiting = Wait::kWarp;
  while (w.generation == gen) yield_fiber();
  f.waiting = Wait::kNone;
}

void syncwarp(unsigned mask) { warp_rendezvous(mask); }

uint64_t warp_exchange(unsigned mask, uint64_t payload, int src_lane) {
  Fiber& f = *tls.fiber;
  Warp& w = warp_of(f);
  w.payload[f.ctx.linear % 32] = payload;
  warp_rendezvous(mask);  // all values written
  if (src_lane < 0 || src_lane >= 32) src_lane = f.ctx.linear % 32;
  // A source outside the mask gives an undefined value on a GPU; here: the caller's own.
  const uint64_t got = (mask >> src_lane) & 1u ? w.payload[src_lane] : payload;
  warp_rendezvous(mask);  // all values read before the slots are reused
  return got;
}

unsigned warp_ballot(unsigned mask, bool predicate) {
  Fiber& f = *tls.fiber;
  Warp& w = warp_of(f);
  if (mask == 0) return w.live_mask;  // __activemask
  w.payload[f.ctx.linear % 32] = predicate ? 1u : 0u;
  warp_rendezvous(mask);  // every predicate written
  unsigned bits = 0;
  for (int lane = 0; lane < 32; ++lane)
    if (((mask >> lane) & 1u) && w.payload[lane]) bits |= 1u << lane;
  warp_rendezvous(mask);  // every lane has read before the slots are reused
  return bits;
}

// ---- for emu_tensor_core.cc (mma / ldmatrix): see emu_tensor_core.h.
void warp_all_gather(unsigned mask, const void* mine, void (*read)(const void* const* lanes, void* self), void* self) {
  current();  // aborts outside a kernel
  Fiber& f = *tls.fiber;
  Warp& w = warp_of(f);
  w.payload[f.ctx.linear % 32] = reinterpret_cast<uintptr_t>(mine);
  warp_rendezvous(mask);  // every lane has published
  const void* lanes[32];
  for (int lane = 0; lane < 32; ++lane) lanes[lane] = (mask >> lane) & 1u ? reinterpret_cast<const void*>(w.payload[lane]) : nullptr;
  read(lanes, self);
  warp_rendezvous(mask);  // every lane has read before any publication goes away
}
// ---- end of the block for emu_tensor_core.cc

void set_last_error(cudaError_t e) { last_error = e; }

void* dynamic_shared() {
  if (!tls.block) fail("dynamic shared memory used outside a kernel");
  return tls.block->dynamic_shared;
}

void note_shared_access(const void* addr, size_t bytes, bool write) {
#if LK_EMU_RACE
  race_check(addr, bytes, write ? kWrite : kRead);
#else
  (void)addr, (void)bytes, (void)write;
#endif
}

cudaError_t set_function_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0) {
    last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
  }
  KernelInfo& k = kernel_info(kernel, nullptr);
  std::lock_guard<std::mutex> lock(kernels_mutex);
  if ((size_t)value + k.static_bytes > kOptinShared) {
    last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
  }
  k.max_dynamic = (size_t)value;
  return cudaSuccess;
}

namespace {

// ---------------------------------------------------------------- running a launch
struct LaunchRec {
  KernelInfo* kernel = nullptr;
  dim3 grid, block;
  size_t shared_bytes = 0;
  LaunchSite site{nullptr, nullptr, 0};
  std::function<void()> body;
  uint64_t serial = 0;  // launches since load: seeds the drawn orders
};

void prepare_block(const LaunchRec& L, BlockRun& run, uint3 block_idx, uint64_t threads, int n_warps) {
  run.warps.assign(n_warps, Warp());
  for (int w = 0; w < n_warps; ++w) {
    const uint64_t lanes = threads - (uint64_t)w * 32 >= 32 ? 32 : threads - (uint64_t)w * 32;
    run.warps[w].live_mask = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  }
  run.live = (int)threads;
  run.barrier_arrived = 0;
  run.vote_pending = 0;
  for (uint64_t t = 0; t < threads; ++t) {
    Fiber& f = tls.fibers[t];
    f = Fiber();
    f.ctx.linear = (int)t;
    f.ctx.thread_idx = uint3{(unsigned)(t % L.block.x), (unsigned)((t / L.block.x) % L.block.y), (unsigned)(t / ((uint64_t)L.block.x * L.block.y))};
    f.ctx.block_idx = block_idx;
    f.ctx.block_dim = L.block;
    f.ctx.grid_dim = L.grid;
    f.stack = tls.stacks[t];
    f.stack_size = tls.stack_size;
#if LK_EMU_ASAN
    ASAN_UNPOISON_MEMORY_REGION(f.stack, f.stack_size);  // frames left by the previous block
#endif
    // Initial frame: 8 bytes MXCSR/FPU control, six callee-saved registers, return address.
    uint64_t* top = reinterpret_cast<uint64_t*>(f.stack + f.stack_size);
    top -= 2;  // keep 16-byte alignment for the entry's call
    *--top = reinterpret_cast<uint64_t>(&lk_emu_fiber_entry);
    for (int r = 0; r < 6; ++r) *--top = 0;
    --top;
    uint32_t mxcsr = 0;
    uint16_t fpu_control = 0;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpu_control));
    std::memset(top, 0, 8);
    std::memcpy(top, &mxcsr, 4);
    std::memcpy(reinterpret_cast<char*>(top) + 4, &fpu_control, 2);
    f.sp = top;
  }
}

// Runs every thread of the prepared block until all have exited; no progress in two whole rounds
// is a deadlock.
void run_block(BlockRun& run, uint3 block_idx, uint64_t threads, Rng& rng) {
  std::vector<int>& order = tls.order;
  order.resize(threads);
  std::iota(order.begin(), order.end(), 0);
  Fiber* const fibers = tls.fibers.data();
  int idle_rounds = 0;
  while (run.live > 0) {
    const uint64_t before = run.progress;
    if (run.seeded) rng.shuffle(order, threads);
    for (uint64_t i = 0; i < threads; ++i) {
      Fiber& f = fibers[order[i]];
      if (!f.done) switch_to_fiber(f);
    }
    if (run.progress == before && run.live > 0) {
      if (++idle_rounds >= 2)
        fail("deadlock in block (%u, %u, %u): %d threads wait forever (at __syncthreads or a warp-synchronous call that "
             "some threads never reach)", block_idx.x, block_idx.y, block_idx.z, run.live);
    } else {
      idle_rounds = 0;
    }
  }
}

// The n-th block to run: index order, or a permutation drawn from the seed.
struct BlockOrder {
  uint64_t count = 0;
  std::vector<uint32_t> table;  // drawn permutation (grids of up to 2^22 blocks)
  uint64_t mul = 1, add = 0;    // larger grids: an affine permutation mod count
  void draw(uint64_t n, bool seeded, Rng& rng) {
    count = n;
    table.clear();
    mul = 1;
    add = 0;
    if (!seeded || n <= 1) return;
    if (n <= (1u << 22)) {
      table.resize(n);
      std::iota(table.begin(), table.end(), 0u);
      rng.shuffle(table, n);
      return;
    }
    do mul = rng.below(n - 1) + 1; while (std::gcd(mul, n) != 1);
    add = rng.below(n);
  }
  uint64_t at(uint64_t i) const {
    if (!table.empty()) return table[i];
    return (uint64_t)(((unsigned __int128)mul * i + add) % count);
  }
};

cudaError_t execute_launch(const LaunchRec& L) {
  if (tls.block) fail("a kernel launched another kernel (dynamic parallelism is not emulated)");
  const KernelInfo& k = *L.kernel;
  const uint64_t threads = (uint64_t)L.block.x * L.block.y * L.block.z;
  const uint64_t blocks = (uint64_t)L.grid.x * L.grid.y * L.grid.z;
  const Order& cfg = order_config();
  Rng rng{cfg.seed * 0x2545f4914f6cdd1dull + L.serial};
  note_launch();  // emu_tensor_core.cc: launch counter
  // Exactly the bytes asked for, on the heap: AddressSanitizer sees any access past them.
  std::unique_ptr<unsigned char[]> dynamic(L.shared_bytes ? new unsigned char[L.shared_bytes] : nullptr);
  unsigned char* tls_base = k.module ? tls_block(*k.module) : nullptr;
  ensure_stacks(threads);
  tls.fibers.resize(threads);
  const int n_warps = (int)((threads + 31) / 32);
  BlockRun run;
  run.fibers = &tls.fibers;
  run.body = &L.body;
  run.dynamic_shared = dynamic.get();
  run.seeded = cfg.seeded;

  RaceLaunch rl;
  rl.kernel = &k;
  rl.site = &L.site;
  rl.block_dim = L.block;
  rl.tls_base = tls_base;
  if (tls_base && k.located) {
    rl.static_lo = (uintptr_t)(tls_base + k.lo);
    rl.static_len = k.hi - k.lo;
  } else if (tls_base) {  // variables unknown: watch the module's whole TLS block
    rl.static_lo = (uintptr_t)tls_base;
    rl.static_len = k.module->tls_size;
  }
  rl.dynamic_lo = (uintptr_t)dynamic.get();
  rl.dynamic_len = L.shared_bytes;
  race_launch_begin(rl);

  BlockOrder block_order;
  block_order.draw(blocks, cfg.seeded, rng);
  // Device-side emulator code (emu_tensor_core.cc) fails a launch through set_last_error: that
  // error becomes the launch's, reported at the synchronization that ran it.
  const cudaError_t host_error = last_error;
  last_error = cudaSuccess;
  tls.block = &run;
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t linear = block_order.at(i);
    const uint3 block_idx{(unsigned)(linear % L.grid.x), (unsigned)((linear / L.grid.x) % L.grid.y),
                          (unsigned)(linear / ((uint64_t)L.grid.x * L.grid.y))};
    // Fresh garbage in every block's shared memory, static and dynamic: NaN floats.
    if (tls_base)
      for (const SharedVar& v : k.vars) std::memset(tls_base + v.offset, 0xff, v.size);
    if (L.shared_bytes) std::memset(dynamic.get(), 0xff, L.shared_bytes);
    race_block_begin(block_idx, (int)threads);
    prepare_block(L, run, block_idx, threads, n_warps);
    run_block(run, block_idx, threads, rng);
  }
  tls.block = nullptr;
  const cudaError_t device_error = last_error;
  last_error = host_error;
  const bool raced = race_launch_end();
  if (device_error != cudaSuccess) return device_error;
  return raced ? cudaErrorLaunchFailure : cudaSuccess;
}

// ---------------------------------------------------------------- streams and events
// Work is queued per stream and runs only when the host synchronizes with it: cudaStreamSynchronize,
// cudaEventSynchronize, cudaDeviceSynchronize, a synchronous cudaMemcpy (the legacy default
// stream's work and every blocking stream's), cudaFree / cudaFreeHost (everything), a second
// cudaEventQuery / cudaStreamQuery of unfinished work (the first answers cudaErrorNotReady). It then
// runs on the synchronizing thread, stream by stream in issue order, each operation after those it
// depends on: the earlier operations of its stream, cudaStreamWaitEvent's event, and the legacy
// default stream's implicit ordering with blocking streams. So a host that reads a result before
// synchronizing sees what was there before, as a GPU still busy with it would show.

// Completion of one queued operation.
struct Done {
  CUstream_st* stream = nullptr;
  uint64_t seq = 0;  // issue order, across streams
  bool done = false;
  std::chrono::steady_clock::time_point when;
};

struct Op {
  std::shared_ptr<Done> done;
  std::vector<std::shared_ptr<Done>> deps;
  std::function<cudaError_t()> run;  // may be empty (markers)
};

}  // namespace
}  // namespace lk_emu

struct CUstream_st {
  std::deque<lk_emu::Op> queue;
  std::shared_ptr<lk_emu::Done> last;  // the operation issued last
  bool blocking = true;                // synchronizes with the legacy default stream
  bool destroyed = false;              // cudaStreamDestroy'ed: freed once its work has run
  bool query_pending = false;          // the last cudaStreamQuery answered cudaErrorNotReady
};

struct CUevent_st {
  std::shared_ptr<lk_emu::Done> record;  // the latest cudaEventRecord
  bool timing = true;
  bool query_pending = false;
};

namespace lk_emu {
namespace {

// One device: queued work runs with this held, one operation (one kernel) at a time. The state
// below is never destroyed (static destructors may run while a host thread still frees memory).
std::mutex device_mutex;
CUstream_st& legacy_stream() {
  static CUstream_st* s = new CUstream_st();
  return *s;
}
std::vector<CUstream_st*>& streams() {  // created and not yet freed (destroyed ones until drained)
  static auto* v = new std::vector<CUstream_st*>();
  return *v;
}
std::set<CUevent_st*>& events() {
  static auto* v = new std::set<CUevent_st*>();
  return *v;
}
uint64_t issue_counter = 0;
uint64_t launch_counter = 0;
cudaError_t pending_error = cudaSuccess;  // from queued work, reported by the next synchronization

cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}

CUstream_st* stream_of(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return &legacy_stream();
  for (CUstream_st* t : streams())
    if (t == s && !t->destroyed) return t;
  return nullptr;
}

void run_stream_until(CUstream_st* s, uint64_t seq);

void run_until(const std::shared_ptr<Done>& d) {
  if (d && !d->done) run_stream_until(d->stream, d->seq);
}

void run_stream_until(CUstream_st* s, uint64_t seq) {
  while (!s->queue.empty() && s->queue.front().done->seq <= seq) {
    Op op = std::move(s->queue.front());
    s->queue.pop_front();
    for (const auto& d : op.deps) run_until(d);
    const cudaError_t e = op.run ? op.run() : cudaSuccess;
    op.done->done = true;
    op.done->when = std::chrono::steady_clock::now();
    if (e != cudaSuccess && pending_error == cudaSuccess) pending_error = e;
  }
}

// Frees destroyed streams whose work has run.
void sweep() {
  for (size_t i = 0; i < streams().size();) {
    CUstream_st* s = streams()[i];
    if (s->destroyed && s->queue.empty()) {
      streams().erase(streams().begin() + (long)i);
      delete s;
    } else {
      ++i;
    }
  }
}

void run_all() {
  for (;;) {
    CUstream_st* next = legacy_stream().queue.empty() ? nullptr : &legacy_stream();
    for (CUstream_st* s : streams())
      if (!s->queue.empty() && (!next || s->queue.front().done->seq < next->queue.front().done->seq)) next = s;
    if (!next) break;
    run_stream_until(next, next->queue.front().done->seq);
  }
  sweep();
}

// What a synchronous operation on the legacy default stream waits for: its earlier work and every
// blocking stream's.
void run_legacy() {
  std::vector<std::shared_ptr<Done>> lasts{legacy_stream().last};
  for (CUstream_st* s : streams())
    if (s->blocking) lasts.push_back(s->last);
  for (const auto& d : lasts) run_until(d);
  sweep();
}

// Runs what an operation issued now on `s` would wait for.
void run_before_new_op(CUstream_st* s) {
  if (s == &legacy_stream()) return run_legacy();
  run_until(s->last);
  if (s->blocking) run_until(legacy_stream().last);
  sweep();
}

cudaError_t take_pending() {
  const cudaError_t e = pending_error;
  pending_error = cudaSuccess;
  return record(e);
}

// CUDA_LAUNCH_BLOCKING=1, as CUDA's: every operation runs when it is issued (a launch returns its
// execution error), for debugging a host path step by step.
bool launch_blocking() {
  static const bool on = [] {
    const char* env = std::getenv("CUDA_LAUNCH_BLOCKING");
    return env && std::strcmp(env, "1") == 0;
  }();
  return on;
}

std::shared_ptr<Done> enqueue(CUstream_st* s, std::function<cudaError_t()> run, std::shared_ptr<Done> extra_dep = nullptr) {
  Op op;
  op.done = std::make_shared<Done>();
  op.done->stream = s;
  op.done->seq = ++issue_counter;
  op.run = std::move(run);
  auto add = [&op](const std::shared_ptr<Done>& d) {
    if (d && !d->done) op.deps.push_back(d);
  };
  if (s == &legacy_stream()) {
    for (CUstream_st* t : streams())
      if (t->blocking) add(t->last);
  } else if (s->blocking) {
    add(legacy_stream().last);
  }
  add(extra_dep);
  s->last = op.done;
  s->queue.push_back(std::move(op));
  s->query_pending = false;
  if (launch_blocking()) run_until(s->last);
  return s->last;
}

// CUDA calls are not allowed in a cudaLaunchHostFunc callback (it would deadlock a GPU's stream).
bool refused_in_host_function(const char* what) {
  if (!in_host_function) return false;
  warn("%s called from a cudaLaunchHostFunc callback, which may not call CUDA (cudaErrorNotPermitted)", what);
  last_error = cudaErrorNotPermitted;
  return true;
}
#define LK_EMU_NOT_IN_HOST_FN(what) \
  if (::lk_emu::refused_in_host_function(what)) return cudaErrorNotPermitted

// ---------------------------------------------------------------- device and pinned allocations
std::mutex alloc_mutex;
std::map<uintptr_t, size_t>& device_allocs() {  // start -> bytes (cudaMalloc)
  static auto* m = new std::map<uintptr_t, size_t>();
  return *m;
}
std::map<uintptr_t, size_t>& pinned_allocs() {  // start -> bytes (cudaMallocHost)
  static auto* m = new std::map<uintptr_t, size_t>();
  return *m;
}

// The allocation of `allocs` holding [p, p + bytes): 1 inside one, 0 outside all, -1 starts inside
// one but runs past its end.
int containment(const std::map<uintptr_t, size_t>& allocs, const void* p, size_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = allocs.upper_bound(a);
  if (it == allocs.begin()) return 0;
  --it;
  if (a >= it->first + it->second && !(a == it->first && it->second == 0)) return 0;
  return a + bytes <= it->first + it->second ? 1 : -1;
}

const char* kind_name(cudaMemcpyKind kind) {
  switch (kind) {
    case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault: return "cudaMemcpyDefault";
  }
  return "an unknown cudaMemcpyKind";
}

// Checks a copy's pointers against `kind` and returns whether each side is device memory.
cudaError_t check_copy(const char* api, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, bool* dst_dev, bool* src_dev) {
  if ((int)kind < 0 || (int)kind > 4) {
    warn("%s: %d is not a cudaMemcpyKind (cudaErrorInvalidValue)", api, (int)kind);
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lock(alloc_mutex);
  const int d = containment(device_allocs(), dst, bytes), s = containment(device_allocs(), src, bytes);
  if (d < 0 || s < 0) {
    warn("%s(%s): the %s %p + %zu bytes runs past the end of its device allocation (cudaErrorInvalidValue)", api,
         kind_name(kind), d < 0 ? "destination" : "source", d < 0 ? dst : src, bytes);
    return cudaErrorInvalidValue;
  }
  *dst_dev = d > 0;
  *src_dev = s > 0;
  if (kind == cudaMemcpyDefault) return cudaSuccess;
  const bool want_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool want_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (want_dst != *dst_dev || want_src != *src_dev) {
    const bool dst_wrong = want_dst != *dst_dev;
    const bool want = dst_wrong ? want_dst : want_src;
    warn("%s(%s): the %s %p is %s (cudaErrorInvalidValue)", api, kind_name(kind), dst_wrong ? "destination" : "source",
         dst_wrong ? dst : src, want ? "not inside a device allocation" : "device memory, not host memory");
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

bool is_pinned(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(alloc_mutex);
  return containment(pinned_allocs(), p, bytes) > 0;
}

}  // namespace

cudaError_t launch(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, const LaunchSite& site,
                   std::function<void()> body) {
  LK_EMU_NOT_IN_HOST_FN("a kernel launch");
  if (tls.block) fail("a kernel launched another kernel (dynamic parallelism is not emulated)");
  KernelInfo& k = kernel_info(kernel, &site);
  const uint64_t threads = (uint64_t)block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    warn("launch of %s at %s refused: grid (%u,%u,%u) x block (%u,%u,%u) is outside the device's limits (grid.x < 2^31, "
         "grid.y and grid.z <= 65535, block <= (1024,1024,64) and <= 1024 threads) (cudaErrorInvalidConfiguration)",
         k.name.c_str(), where(site).c_str(), grid.x, grid.y, grid.z, block.x, block.y, block.z);
    return cudaErrorInvalidConfiguration;
  }
  size_t max_dynamic;
  {
    std::lock_guard<std::mutex> lock(kernels_mutex);
    max_dynamic = k.max_dynamic;
  }
  if (k.static_bytes > kStaticSharedLimit) {
    warn("launch of %s at %s refused: %zu bytes of static __shared__ variables, above the device's 48 KiB (cudaErrorInvalidValue)",
         k.name.c_str(), where(site).c_str(), k.static_bytes);
    return cudaErrorInvalidValue;
  }
  if (shared_bytes > max_dynamic || shared_bytes + k.static_bytes > kOptinShared) {
    warn("launch of %s at %s refused: %zu bytes of dynamic shared memory, above the kernel's limit of %zu (above 48 KiB "
         "needs cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes); static + dynamic at most "
         "227 KiB) (cudaErrorInvalidValue)",
         k.name.c_str(), where(site).c_str(), shared_bytes, std::min(max_dynamic, kOptinShared - std::min(kOptinShared, k.static_bytes)));
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lock(device_mutex);
  CUstream_st* s = stream_of(stream);
  if (!s) return cudaErrorInvalidResourceHandle;
  auto L = std::make_shared<LaunchRec>();
  L->kernel = &k;
  L->grid = grid;
  L->block = block;
  L->shared_bytes = shared_bytes;
  L->site = site;
  L->body = std::move(body);
  L->serial = ++launch_counter;
  enqueue(s, [L] { return execute_launch(*L); });
  if (launch_blocking()) {  // the launch ran: its error is the launch's
    const cudaError_t e = pending_error;
    pending_error = cudaSuccess;
    return e;
  }
  return cudaSuccess;
}

}  // namespace lk_emu

extern "C" void lk_emu_fiber_main() {
#if LK_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &lk_emu::tls.main_stack_bottom, &lk_emu::tls.main_stack_size);
#endif
  (*lk_emu::tls.block->body)();
  lk_emu::note_thread_exit();  // emu_tensor_core.cc: cp.async copies never waited for fail the launch
  lk_emu::exit_current();
}

// ---------------------------------------------------------------- runtime API
namespace lk_emu {
namespace {
// LK_EMU_DEVICE_MEMORY: the device's memory in bytes (0 when unset: the host's memory).
size_t device_memory_cap() {
  static const size_t cap = [] {
    const char* env = std::getenv("LK_EMU_DEVICE_MEMORY");
    return env && *env ? (size_t)std::strtoull(env, nullptr, 10) : (size_t)0;
  }();
  return cap;
}
size_t device_allocated = 0;  // bytes of live cudaMalloc blocks (under alloc_mutex)
}  // namespace
}  // namespace lk_emu

using lk_emu::record;

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotPermitted: return "cudaErrorNotPermitted";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotPermitted: return "operation not permitted";
  }
  return "unknown error";
}

// Errors of queued work that ran (at some synchronization) are reported here too, as on a GPU.
cudaError_t cudaGetLastError() {
  cudaError_t e = lk_emu::last_error;
  lk_emu::last_error = cudaSuccess;
  if (!lk_emu::in_host_function) {
    std::lock_guard<std::mutex> lock(lk_emu::device_mutex);
    if (lk_emu::pending_error != cudaSuccess) {
      if (e == cudaSuccess) e = lk_emu::pending_error;
      lk_emu::pending_error = cudaSuccess;
    }
  }
  return e;
}
cudaError_t cudaPeekAtLastError() {
  if (lk_emu::last_error != cudaSuccess || lk_emu::in_host_function) return lk_emu::last_error;
  std::lock_guard<std::mutex> lock(lk_emu::device_mutex);
  return lk_emu::pending_error;
}
cudaError_t cudaGetDeviceCount(int* count) { *count = 1; return cudaSuccess; }
cudaError_t cudaGetDevice(int* device) { *device = 0; return cudaSuccess; }
cudaError_t cudaSetDevice(int device) { return record(device == 0 ? cudaSuccess : cudaErrorInvalidValue); }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return record(cudaErrorInvalidValue);
  std::memset(prop, 0, sizeof *prop);
  std::snprintf(prop->name, sizeof prop->name, "CUDA emulator (CPU)");
  prop->totalGlobalMem = lk_emu::device_memory_cap() ? lk_emu::device_memory_cap() : (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
  prop->sharedMemPerBlock = lk_emu::kStaticSharedLimit;
  prop->sharedMemPerBlockOptin = lk_emu::kOptinShared;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = (int)sysconf(_SC_NPROCESSORS_ONLN);
  return cudaSuccess;
}


// Exactly `bytes`, 256-byte aligned (as cudaMalloc's): AddressSanitizer sees a one-byte overrun.
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  LK_EMU_NOT_IN_HOST_FN("cudaMalloc");
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  const size_t cap = lk_emu::device_memory_cap();
  {
    std::lock_guard<std::mutex> lock(lk_emu::alloc_mutex);
    if (cap && (bytes > cap || lk_emu::device_allocated > cap - bytes)) return record(cudaErrorMemoryAllocation);
  }
  if (posix_memalign(ptr, 256, bytes) != 0) {
    *ptr = nullptr;
    return record(cudaErrorMemoryAllocation);
  }
  std::lock_guard<std::mutex> lock(lk_emu::alloc_mutex);
  if (cap && lk_emu::device_allocated > cap - bytes) {  // another thread took the room meanwhile
    std::free(*ptr);
    *ptr = nullptr;
    return record(cudaErrorMemoryAllocation);
  }
  lk_emu::device_allocs()[reinterpret_cast<uintptr_t>(*ptr)] = bytes;
  lk_emu::device_allocated += bytes;
  return cudaSuccess;
}

// cudaFree waits for the device, as on a GPU: queued work that uses the memory runs first.
cudaError_t cudaFree(void* ptr) {
  LK_EMU_NOT_IN_HOST_FN("cudaFree");
  if (!ptr) return cudaSuccess;
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  lk_emu::run_all();
  {
    std::lock_guard<std::mutex> lock(lk_emu::alloc_mutex);
    const auto it = lk_emu::device_allocs().find(reinterpret_cast<uintptr_t>(ptr));
    if (it == lk_emu::device_allocs().end()) {
      lk_emu::warn("cudaFree(%p): not a pointer cudaMalloc returned, or freed already (cudaErrorInvalidValue)", ptr);
      return record(cudaErrorInvalidValue);
    }
    lk_emu::device_allocated -= it->second;
    lk_emu::device_allocs().erase(it);
  }
  std::free(ptr);
  return lk_emu::take_pending();
}

// Pinned host memory: host-side for cudaMemcpy's checks; cudaMemcpyAsync defers copies to and from it.
cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
  LK_EMU_NOT_IN_HOST_FN("cudaMallocHost");
  *ptr = nullptr;
  if (posix_memalign(ptr, 256, bytes ? bytes : 1) != 0) {
    *ptr = nullptr;
    return record(cudaErrorMemoryAllocation);
  }
  std::lock_guard<std::mutex> lock(lk_emu::alloc_mutex);
  lk_emu::pinned_allocs()[reinterpret_cast<uintptr_t>(*ptr)] = bytes;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  LK_EMU_NOT_IN_HOST_FN("cudaFreeHost");
  if (!ptr) return cudaSuccess;
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  lk_emu::run_all();
  {
    std::lock_guard<std::mutex> lock(lk_emu::alloc_mutex);
    const auto it = lk_emu::pinned_allocs().find(reinterpret_cast<uintptr_t>(ptr));
    if (it == lk_emu::pinned_allocs().end()) {
      lk_emu::warn("cudaFreeHost(%p): not a pointer cudaMallocHost returned, or freed already (cudaErrorInvalidValue)", ptr);
      return record(cudaErrorInvalidValue);
    }
    lk_emu::pinned_allocs().erase(it);
  }
  std::free(ptr);
  return lk_emu::take_pending();
}

// Synchronous: waits for the legacy default stream's work (and every blocking stream's), copies.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  LK_EMU_NOT_IN_HOST_FN("cudaMemcpy");
  if (bytes == 0) return cudaSuccess;
  bool dst_dev = false, src_dev = false;
  const cudaError_t bad = lk_emu::check_copy("cudaMemcpy", dst, src, bytes, kind, &dst_dev, &src_dev);
  if (bad != cudaSuccess) return record(bad);
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  lk_emu::run_legacy();
  std::memmove(dst, src, bytes);
  return lk_emu::take_pending();
}

// As on a GPU: copies between device memory and pinned (cudaMallocHost) memory, and device to
// device, run in stream order; a pageable source is read at the call (staged, as CUDA does); a copy
// into pageable memory waits for the stream and completes before returning.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  LK_EMU_NOT_IN_HOST_FN("cudaMemcpyAsync");
  if (bytes == 0) return cudaSuccess;
  bool dst_dev = false, src_dev = false;
  const cudaError_t bad = lk_emu::check_copy("cudaMemcpyAsync", dst, src, bytes, kind, &dst_dev, &src_dev);
  if (bad != cudaSuccess) return record(bad);
  const bool dst_pinned = !dst_dev && lk_emu::is_pinned(dst, bytes), src_pinned = !src_dev && lk_emu::is_pinned(src, bytes);
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  CUstream_st* s = lk_emu::stream_of(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  if ((!dst_dev && !src_dev) || (!dst_dev && !dst_pinned)) {  // host to host, or into pageable memory
    lk_emu::run_before_new_op(s);
    std::memmove(dst, src, bytes);
    return cudaSuccess;
  }
  if (!src_dev && !src_pinned) {
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src), static_cast<const unsigned char*>(src) + bytes);
    lk_emu::enqueue(s, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); return cudaSuccess; });
    return cudaSuccess;
  }
  lk_emu::enqueue(s, [dst, src, bytes] { std::memmove(dst, src, bytes); return cudaSuccess; });
  return cudaSuccess;
}

static cudaError_t memset_on(const char* api, void* dst, int value, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(lk_emu::alloc_mutex);
    const int c = lk_emu::containment(lk_emu::device_allocs(), dst, bytes);
    if (c <= 0) {
      lk_emu::warn("%s(%p, %zu bytes): %s (cudaErrorInvalidValue)", api, dst, bytes,
                   c < 0 ? "runs past the end of its device allocation" : "not inside a device allocation");
      return record(cudaErrorInvalidValue);
    }
  }
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  CUstream_st* s = lk_emu::stream_of(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  lk_emu::enqueue(s, [dst, value, bytes] { std::memset(dst, value, bytes); return cudaSuccess; });
  return cudaSuccess;
}

// cudaMemset of device memory is asynchronous on a GPU too: queued on the legacy default stream.
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  LK_EMU_NOT_IN_HOST_FN("cudaMemset");
  return memset_on("cudaMemset", dst, value, bytes, nullptr);
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  LK_EMU_NOT_IN_HOST_FN("cudaMemsetAsync");
  return memset_on("cudaMemsetAsync", dst, value, bytes, stream);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  LK_EMU_NOT_IN_HOST_FN("cudaStreamCreate");
  auto* s = new CUstream_st();
  s->blocking = !(flags & cudaStreamNonBlocking);
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  lk_emu::streams().push_back(s);
  *stream = s;
  return cudaSuccess;
}

// As on a GPU, the stream's queued work still runs (at a later synchronization); the handle is gone.
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  LK_EMU_NOT_IN_HOST_FN("cudaStreamDestroy");
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  CUstream_st* s = lk_emu::stream_of(stream);
  if (!s || s == &lk_emu::legacy_stream()) return record(cudaErrorInvalidResourceHandle);
  s->destroyed = true;
  lk_emu::sweep();
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  LK_EMU_NOT_IN_HOST_FN("cudaStreamSynchronize");
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  CUstream_st* s = lk_emu::stream_of(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  lk_emu::run_until(s->last);
  lk_emu::sweep();
  return lk_emu::take_pending();
}

// Unfinished work answers cudaErrorNotReady once; asked again, it runs (a polling host progresses).
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  LK_EMU_NOT_IN_HOST_FN("cudaStreamQuery");
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  CUstream_st* s = lk_emu::stream_of(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  if (!s->last || s->last->done) return cudaSuccess;
  if (!s->query_pending) {
    s->query_pending = true;
    return cudaErrorNotReady;
  }
  s->query_pending = false;
  lk_emu::run_until(s->last);
  lk_emu::sweep();
  return lk_emu::take_pending();
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
  LK_EMU_NOT_IN_HOST_FN("cudaStreamWaitEvent");
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  CUstream_st* s = lk_emu::stream_of(stream);
  if (!s || !event || !lk_emu::events().count(event)) return record(cudaErrorInvalidResourceHandle);
  if (event->record && !event->record->done) lk_emu::enqueue(s, nullptr, event->record);
  return cudaSuccess;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data) {
  LK_EMU_NOT_IN_HOST_FN("cudaLaunchHostFunc");
  if (!fn) return record(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  CUstream_st* s = lk_emu::stream_of(stream);
  if (!s) return record(cudaErrorInvalidResourceHandle);
  lk_emu::enqueue(s, [fn, user_data] {
    lk_emu::in_host_function = true;
    fn(user_data);
    lk_emu::in_host_function = false;
    return cudaSuccess;
  });
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  LK_EMU_NOT_IN_HOST_FN("cudaEventCreate");
  auto* e = new CUevent_st();
  e->timing = !(flags & cudaEventDisableTiming);
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  lk_emu::events().insert(e);
  *event = e;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  LK_EMU_NOT_IN_HOST_FN("cudaEventRecord");
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  CUstream_st* s = lk_emu::stream_of(stream);
  if (!s || !event || !lk_emu::events().count(event)) return record(cudaErrorInvalidResourceHandle);
  event->record = lk_emu::enqueue(s, nullptr);
  event->query_pending = false;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  LK_EMU_NOT_IN_HOST_FN("cudaEventSynchronize");
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  if (!event || !lk_emu::events().count(event)) return record(cudaErrorInvalidResourceHandle);
  lk_emu::run_until(event->record);
  lk_emu::sweep();
  return lk_emu::take_pending();
}

// Unfinished work answers cudaErrorNotReady once; asked again, it runs (a polling host progresses).
cudaError_t cudaEventQuery(cudaEvent_t event) {
  LK_EMU_NOT_IN_HOST_FN("cudaEventQuery");
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  if (!event || !lk_emu::events().count(event)) return record(cudaErrorInvalidResourceHandle);
  if (!event->record || event->record->done) return cudaSuccess;
  if (!event->query_pending) {
    event->query_pending = true;
    return cudaErrorNotReady;
  }
  event->query_pending = false;
  lk_emu::run_until(event->record);
  lk_emu::sweep();
  return lk_emu::take_pending();
}

// The host time between the two records' execution (the emulator runs work at synchronizations).
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  LK_EMU_NOT_IN_HOST_FN("cudaEventElapsedTime");
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  if (!start || !end || !lk_emu::events().count(start) || !lk_emu::events().count(end) || !start->timing || !end->timing)
    return record(cudaErrorInvalidResourceHandle);
  if (!start->record || !end->record) return record(cudaErrorInvalidResourceHandle);
  if (!start->record->done || !end->record->done) return record(cudaErrorNotReady);
  *ms = std::chrono::duration<float, std::milli>(end->record->when - start->record->when).count();
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  LK_EMU_NOT_IN_HOST_FN("cudaEventDestroy");
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  if (!event || !lk_emu::events().erase(event)) return record(cudaErrorInvalidResourceHandle);
  delete event;  // a queued record keeps its own completion state
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  LK_EMU_NOT_IN_HOST_FN("cudaDeviceSynchronize");
  std::lock_guard<std::mutex> device(lk_emu::device_mutex);
  lk_emu::run_all();
  return lk_emu::take_pending();
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  *total_bytes = (size_t)sysconf(_SC_PHYS_PAGES) * page;
  *free_bytes = (size_t)sysconf(_SC_AVPHYS_PAGES) * page;
  if (const size_t cap = lk_emu::device_memory_cap()) {
    std::lock_guard<std::mutex> lock(lk_emu::alloc_mutex);
    *total_bytes = cap;
    *free_bytes = cap - std::min(cap, lk_emu::device_allocated);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return record(cudaErrorInvalidValue);
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)lk_emu::kDefaultDynamicShared; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)lk_emu::kOptinShared; return cudaSuccess;
  }
  return record(cudaErrorInvalidValue);
}

// ---------------------------------------------------------------- ThreadSanitizer entry points
// GCC's -fsanitize=thread instrumentation of the kernel sources calls these (LK_EMU_RACECHECK
// builds only; libtsan is not linked). Each checks shared memory (race_check) and, for atomics,
// performs the operation itself. func_entry / func_exit are disabled at compile time
// (--param=tsan-instrument-func-entry-exit=0) but defined in case a file was built without it.
#if LK_EMU_RACE
#define LK_TSAN extern "C" __attribute__((visibility("hidden"), used))
using lk_emu::race_check;
using lk_emu::kAtomic;
using lk_emu::kRead;
using lk_emu::kWrite;

LK_TSAN void __tsan_init() {}
LK_TSAN void __tsan_func_entry(void*) {}
LK_TSAN void __tsan_func_exit() {}
LK_TSAN void __tsan_vptr_update(void** vptr, void*) { race_check(vptr, sizeof(void*), kWrite); }
LK_TSAN void __tsan_vptr_read(void** vptr) { race_check(vptr, sizeof(void*), kRead); }
LK_TSAN void __tsan_read_range(void* p, unsigned long n) { race_check(p, n, kRead); }
LK_TSAN void __tsan_write_range(void* p, unsigned long n) { race_check(p, n, kWrite); }

#define LK_TSAN_ACCESS(n)                                                                      \
  LK_TSAN void __tsan_read##n(void* p) { race_check(p, n, kRead); }                     \
  LK_TSAN void __tsan_write##n(void* p) { race_check(p, n, kWrite); }                     \
  LK_TSAN void __tsan_unaligned_read##n(void* p) { race_check(p, n, kRead); }           \
  LK_TSAN void __tsan_unaligned_write##n(void* p) { race_check(p, n, kWrite); }           \
  LK_TSAN void __tsan_volatile_read##n(void* p) { race_check(p, n, kRead); }            \
  LK_TSAN void __tsan_volatile_write##n(void* p) { race_check(p, n, kWrite); }            \
  LK_TSAN void __tsan_unaligned_volatile_read##n(void* p) { race_check(p, n, kRead); }  \
  LK_TSAN void __tsan_unaligned_volatile_write##n(void* p) { race_check(p, n, kWrite); }  \
  LK_TSAN void __tsan_read##n##_pc(void* p, void*) { race_check(p, n, kRead); }         \
  LK_TSAN void __tsan_write##n##_pc(void* p, void*) { race_check(p, n, kWrite); }
LK_TSAN_ACCESS(1)
LK_TSAN_ACCESS(2)
LK_TSAN_ACCESS(4)
LK_TSAN_ACCESS(8)
LK_TSAN_ACCESS(16)
#undef LK_TSAN_ACCESS

// Atomics: performed sequentially consistent (whatever order was asked); one OS thread runs a
// block, so only other host threads could observe them, and they must see real atomics.
// One read-modify-write entry point: __tsan_atomicN_NAME(a, v) returns BUILTIN(a, v).
#define LK_TSAN_RMW(bits, T, name, builtin)                                   \
  LK_TSAN T __tsan_atomic##bits##_##name(volatile T* a, T v, int) {           \
    race_check(a, sizeof(T), kRead | kWrite | kAtomic);                       \
    return builtin(a, v, __ATOMIC_SEQ_CST);                                   \
  }
#define LK_TSAN_ATOMIC(bits, T)                                                                   \
  LK_TSAN T __tsan_atomic##bits##_load(const volatile T* a, int) {                                \
    race_check(a, sizeof(T), kRead | kAtomic);                                                    \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                  \
  }                                                                                               \
  LK_TSAN void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                             \
    race_check(a, sizeof(T), kWrite | kAtomic);                                                   \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                     \
  }                                                                                               \
  LK_TSAN_RMW(bits, T, exchange, __atomic_exchange_n)                                             \
  LK_TSAN_RMW(bits, T, fetch_add, __atomic_fetch_add)                                             \
  LK_TSAN_RMW(bits, T, fetch_sub, __atomic_fetch_sub)                                             \
  LK_TSAN_RMW(bits, T, fetch_and, __atomic_fetch_and)                                             \
  LK_TSAN_RMW(bits, T, fetch_or, __atomic_fetch_or)                                               \
  LK_TSAN_RMW(bits, T, fetch_xor, __atomic_fetch_xor)                                             \
  LK_TSAN_RMW(bits, T, fetch_nand, __atomic_fetch_nand)                                           \
  LK_TSAN int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) { \
    race_check(a, sizeof(T), kRead | kWrite | kAtomic);                                           \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);       \
  }                                                                                               \
  LK_TSAN int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {   \
    race_check(a, sizeof(T), kRead | kWrite | kAtomic);                                           \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);       \
  }                                                                                               \
  LK_TSAN T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {       \
    race_check(a, sizeof(T), kRead | kWrite | kAtomic);                                           \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);             \
    return c;                                                                                     \
  }
LK_TSAN_ATOMIC(8, unsigned char)
LK_TSAN_ATOMIC(16, unsigned short)
LK_TSAN_ATOMIC(32, unsigned int)
LK_TSAN_ATOMIC(64, unsigned long long)
#undef LK_TSAN_ATOMIC
#undef LK_TSAN_RMW

// 128-bit atomics under a lock (no libatomic dependency); kernels do not use them.
namespace {
std::mutex atomic128_mutex;
typedef unsigned __int128 a128;
}  // namespace
#define LK_TSAN_ATOMIC128(name, expr)                                   \
  LK_TSAN a128 __tsan_atomic128_##name(volatile a128* a, a128 v, int) { \
    race_check(a, 16, kRead | kWrite | kAtomic);                                      \
    std::lock_guard<std::mutex> lock(atomic128_mutex);                  \
    const a128 old = *a;                                                \
    *a = (expr);                                                        \
    return old;                                                         \
  }
LK_TSAN_ATOMIC128(exchange, v)
LK_TSAN_ATOMIC128(fetch_add, old + v)
LK_TSAN_ATOMIC128(fetch_sub, old - v)
LK_TSAN_ATOMIC128(fetch_and, old & v)
LK_TSAN_ATOMIC128(fetch_or, old | v)
LK_TSAN_ATOMIC128(fetch_xor, old ^ v)
LK_TSAN_ATOMIC128(fetch_nand, ~(old & v))
#undef LK_TSAN_ATOMIC128
LK_TSAN a128 __tsan_atomic128_load(const volatile a128* a, int) {
  race_check(a, 16, kRead | kAtomic);
  std::lock_guard<std::mutex> lock(atomic128_mutex);
  return *a;
}
LK_TSAN void __tsan_atomic128_store(volatile a128* a, a128 v, int) {
  race_check(a, 16, kWrite | kAtomic);
  std::lock_guard<std::mutex> lock(atomic128_mutex);
  *a = v;
}
LK_TSAN a128 __tsan_atomic128_compare_exchange_val(volatile a128* a, a128 c, a128 v, int, int) {
  race_check(a, 16, kRead | kWrite | kAtomic);
  std::lock_guard<std::mutex> lock(atomic128_mutex);
  const a128 old = *a;
  if (old == c) *a = v;
  return old;
}
LK_TSAN int __tsan_atomic128_compare_exchange_strong(volatile a128* a, a128* c, a128 v, int mo, int fmo) {
  const a128 old = __tsan_atomic128_compare_exchange_val(a, *c, v, mo, fmo);
  if (old == *c) return 1;
  *c = old;
  return 0;
}
LK_TSAN int __tsan_atomic128_compare_exchange_weak(volatile a128* a, a128* c, a128 v, int mo, int fmo) {
  return __tsan_atomic128_compare_exchange_strong(a, c, v, mo, fmo);
}
LK_TSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
LK_TSAN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
#endif  // LK_EMU_RACE
