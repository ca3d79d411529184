// cuda_on_cpu.h -- run the CUDA C kernels of kernels/*.cu on a CPU, unchanged, for tests.
//
// Build one kernel file into a shared library (gru_engine/backends/device.py does this):
//   g++ -O1 -std=c++17 -fvisibility=hidden -I kernels -x c++ -include kernels/emulation/cuda_on_cpu.h \
//       -shared -fPIC \
//       <wrapper.cpp that #includes the .cu and lists CUDA_EMU_EXPORT(kernel)> -o x.so
// With the race detector compiled in, add -DCUDA_EMU_RACECHECK -fsanitize=thread
// --param tsan-instrument-func-entry-exit=0 and compile (-c) and link (-shared) in two steps:
// g++ then calls the __tsan_read4/__tsan_write4/... hooks defined below on every memory access
// of the kernel code, and no sanitizer runtime is linked.
//
// Execution model (chosen so that bugs which only show on a GPU also show here):
// * The blocks of a grid run one after another, in the order chosen by cuda_emu_configure:
//   forward, reversed, a seeded shuffle fixed per launch shape (and kernel, through the seed the
//   caller passes) or a fresh shuffle per launch (a block that reads what another block of the
//   same launch writes gets a different answer; float atomics add in another order).
// * The threads of a block run as cooperative fibers (a register switch on x86-64, ucontext
//   elsewhere) on the calling OS thread; a
//   fiber runs until it waits at a barrier or returns. Every scheduling round visits the live
//   threads in a fresh pseudo-random order (seeded per launch, reproducible via CUDA_EMU_SEED
//   and the configured seed), so no thread order is implied between barriers.
// * Race detector (kCheckRaces, instrumented builds only): every global and shared memory
//   access is recorded per 4-byte word with its thread, block, block-barrier generation and
//   warp-barrier generation. Two accesses to one byte conflict when they come from different
//   threads, at least one writes, they are not both atomics, and no barrier orders them: other
//   blocks (global memory), or the same block in the same __syncthreads() interval (different
//   warps, or the same warp with no warp barrier between). The launch fails on the first one,
//   naming both threads. Fiber stacks and the emulator's own state are not tracked. Arguments
//   declared const __restrict__ are read-only for the launch: their reads are not recorded
//   and any write to them fails (cuda_emu_set_read_only).
// * Barrier check (kCheckBarriers): every thread of a block must reach each __syncthreads() at
//   the same call site, and the same number of times; otherwise the launch fails naming the
//   sites / counts (undefined behaviour on a GPU, often a hang or silently wrong sums).
// * All static __shared__ memory (collected in the linker section "cuda_emu_shared") and the
//   dynamic shared buffer are filled with 0xFF bytes (float NaN, int -1) at the start of every
//   block: reading shared memory that no thread of this block wrote yet gives NaN/-1.
// * __syncthreads() is a real barrier of the block's live threads; warp intrinsics
//   (__shfl_*_sync, __ballot_sync, __any_sync, __all_sync, __syncwarp) are barriers of the warp
//   lanes named in the mask, so a lane never sees a value its partner has not produced yet.
//   Reading a lane that does not exist (partial warp) yields poison bytes.
// * A barrier that can never complete (e.g. __syncthreads() in divergent code) is reported as
//   a deadlock error instead of hanging.
// * Atomics are plain read-modify-write (only one fiber runs at any time), marked as atomic
//   for the race detector.
// Device memory poisoning and guard zones are the allocator's business (EmulatedDevice).
// Dynamic shared memory: kernels declare it with DYNAMIC_SHARED(T, name), which this header
// maps to the per-launch buffer and which a kernel file maps to `extern __shared__ T name[]`
// when compiled by nvcc/NVRTC (the only emulator-specific spelling a kernel needs).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <mutex>
#include <utility>
#include <vector>
#include <ucontext.h>

// Fiber switches: on x86-64 a few instructions saving the callee-saved registers and the
// floating-point control words (swapcontext also saves the signal mask: a system call per
// switch, most of the emulator's time); elsewhere ucontext.
#if defined(__x86_64__) && !defined(CUDA_EMU_UCONTEXT)
#define CUDA_EMU_ASM_SWITCH 1
// cuda_emu_switch(&save_sp, load_sp): push the callee-saved state on the current stack, store
// the stack pointer in *save_sp, continue on load_sp where another switch saved its state.
asm(R"(
    .text
    .p2align 4
    .local cuda_emu_switch
    .type cuda_emu_switch, @function
cuda_emu_switch:
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
    .size cuda_emu_switch, .-cuda_emu_switch
)");
extern "C" void cuda_emu_switch(void** save_sp, void* load_sp);
#endif

#define CUDA_EMULATION 1
#ifdef CUDA_EMU_RACECHECK
#define CUDA_EMU_NOSAN __attribute__((no_sanitize_thread))
#else
#define CUDA_EMU_NOSAN
#endif
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static __attribute__((section("cuda_emu_shared")))
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(cuda_emu::g_dyn_smem)

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
static const int warpSize = 32;

static thread_local uint3 threadIdx;
static thread_local uint3 blockIdx;
static thread_local dim3 blockDim;
static thread_local dim3 gridDim;

// Bounds of this library's static shared memory (the linker defines them for the section).
static char cuda_emu_shared_anchor __attribute__((section("cuda_emu_shared"), used));
extern "C" char __start_cuda_emu_shared[] __attribute__((visibility("hidden")));
extern "C" char __stop_cuda_emu_shared[] __attribute__((visibility("hidden")));

namespace cuda_emu {

constexpr size_t kStackBytes = 128 * 1024;
constexpr int kMaxThreads = 1024;

// cuda_emu_configure flags.
enum : unsigned {
    kCheckRaces = 1u,     // race detector (needs an instrumented build, see the top)
    kCheckBarriers = 2u,  // __syncthreads() call sites and counts must agree within a block
    kOrderReverse = 4u,   // blocks in reverse order
    kOrderRandom = 8u,    // blocks in a random order fixed by (seed, grid, block): the same
                          // on every launch of one shape, so two runs give the same bits
    kOrderPerLaunch = 16u,  // blocks in a random order drawn afresh for every launch
};

struct Barrier {
    int arrived = 0;
    unsigned gen = 0;
    unsigned mask = 0xffffffffu;
    unsigned arrived_lanes = 0;      // warp barriers: lanes that arrived in this generation
    unsigned participants[2] = {0, 0};  // lanes that took part, by generation parity
    const char* site_file = nullptr;  // block barrier: where the first thread of this
    int site_line = 0;                // generation arrived (barrier check)
    int site_tid = 0;
};

struct Fiber {
    ucontext_t ctx;
    void* sp = nullptr;  // saved stack pointer (CUDA_EMU_ASM_SWITCH)
    char* stack = nullptr;
    bool done = false;
};

struct Ctx {
    int nthreads = 0;
    int live = 0;
    std::vector<Fiber> fibers;
    Barrier block_bar;
    Barrier warp_bar[kMaxThreads / 32];
    unsigned warp_live[kMaxThreads / 32];
    // Double-buffered exchange slots per warp: [warp][generation parity][lane][8 bytes].
    unsigned char shfl[kMaxThreads / 32][2][32][8];
    unsigned long long progress = 0;
    ucontext_t sched;
    void* sched_sp = nullptr;
    int cur = 0;
    uint3 tid_of[kMaxThreads];
    int bar_count[kMaxThreads];  // __syncthreads() calls per thread in this block
    bool failed = false;         // a check failed: abandon the launch
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
};

static thread_local Ctx* g_ctx = nullptr;
static unsigned char* g_dyn_smem = nullptr;
static std::mutex g_launch_mutex;
static char g_error[1024];
static unsigned long long g_launch_count = 0;
static unsigned g_flags = 0;
static unsigned long long g_seed = 0;

// The first failed check of a launch writes g_error and marks the launch failed.
CUDA_EMU_NOSAN __attribute__((format(printf, 1, 2))) inline void fail(const char* fmt, ...) {
    Ctx* c = g_ctx;
    if (c && c->failed) return;
    if (c) c->failed = true;
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
}

inline uint3 coords(unsigned linear, dim3 shape) {
    return uint3{linear % shape.x, (linear / shape.x) % shape.y, linear / (shape.x * shape.y)};
}

// ---- race detector ----------------------------------------------------------------------------
// Plain (not thread_local) state: launches of one library are serialised by g_launch_mutex and
// a hook must be cheap.
struct Access {
    unsigned blk = 0;       // linear block index
    unsigned short tid = 0; // linear thread index in the block
    unsigned char bytes = 0;   // bytes of the word touched (0: no access recorded)
    unsigned char atomic = 0;
    unsigned G = 0;         // block barrier generation
    unsigned g = 0;         // warp barrier generation of the thread's warp
};

struct Cell {
    uintptr_t key = 0;  // word address >> 2
    unsigned gen = 0;   // launch generation; a cell of an older launch is empty
    unsigned blk = 0;   // shared memory: block of the recorded accesses
    Access w, r1, r2;   // last write, two last readers
};

struct RaceState {
    bool track = false;        // a kernel fiber is running
    int atomic_depth = 0;      // inside an emulated atomic
    uintptr_t stack_lo = 0, stack_hi = 0;  // the running fiber's stack
    uintptr_t ctx_lo = 0, ctx_hi = 0;      // the emulator's Ctx
    uintptr_t tls_lo = 0, tls_hi = 0;      // threadIdx, blockIdx, blockDim, gridDim
    // const __restrict__ arguments of the launch: reads are not recorded, a write fails.
    static constexpr int kMaxReadOnly = 32;
    int n_ro = 0;
    uintptr_t ro_lo[kMaxReadOnly], ro_hi[kMaxReadOnly];
    int ro_arg[kMaxReadOnly];
    uintptr_t smem_lo = 0, smem_hi = 0;    // static __shared__ section
    uintptr_t dyn_lo = 0, dyn_hi = 0;      // dynamic shared buffer
    unsigned blk = 0;
    unsigned gen = 0;
    std::vector<Cell> table;
    size_t used = 0;
    dim3 grid, block;
    Ctx* ctx = nullptr;  // the launch's Ctx (g_ctx without a thread_local lookup)
};
static RaceState g_race;

CUDA_EMU_NOSAN inline size_t slot_of(uintptr_t key, size_t mask) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & mask;
}

CUDA_EMU_NOSAN inline Cell& find_cell(uintptr_t key) {
    RaceState& R = g_race;
    if (R.table.empty()) R.table.resize(1u << 16);
    if (2 * (R.used + 1) > R.table.size()) {
        std::vector<Cell> old(R.table.size() * 2);
        old.swap(R.table);
        size_t mask = R.table.size() - 1;
        for (const Cell& c : old) {
            if (c.gen != R.gen) continue;
            size_t i = slot_of(c.key, mask);
            while (R.table[i].gen == R.gen) i = (i + 1) & mask;
            R.table[i] = c;
        }
    }
    size_t mask = R.table.size() - 1;
    size_t i = slot_of(key, mask);
    while (R.table[i].gen == R.gen && R.table[i].key != key) i = (i + 1) & mask;
    Cell& c = R.table[i];
    if (c.gen != R.gen) {
        c = Cell();
        c.key = key;
        c.gen = R.gen;
        R.used++;
    }
    return c;
}

CUDA_EMU_NOSAN inline void report_race(uintptr_t addr, bool shared, const Access& prev, bool prev_write,
                        const Access& cur, bool cur_write) {
    RaceState& R = g_race;
    uint3 pb = coords(prev.blk, R.grid), pt = coords(prev.tid, R.block);
    uint3 cb = coords(cur.blk, R.grid), ct = coords(cur.tid, R.block);
    uintptr_t base = shared ? (addr >= R.smem_lo && addr < R.smem_hi ? R.smem_lo : R.dyn_lo) : 0;
    fail("data race on %s memory at %s0x%llx: %s%s by thread (%u,%u,%u) of block (%u,%u,%u) and "
         "%s%s by thread (%u,%u,%u) of block (%u,%u,%u), %s",
         shared ? "shared" : "global",
         shared ? (base == R.smem_lo ? "static __shared__ offset " : "dynamic shared offset ") : "",
         (unsigned long long)(addr - base), prev.atomic ? "atomic " : "",
         prev_write ? "write" : "read", pt.x, pt.y, pt.z, pb.x, pb.y, pb.z,
         cur.atomic ? "atomic " : "", cur_write ? "write" : "read", ct.x, ct.y, ct.z,
         cb.x, cb.y, cb.z,
         prev.blk != cur.blk ? "different blocks of one launch (only a new launch orders them)"
                             : "no barrier between them (missing __syncthreads/__syncwarp or atomic?)");
}

// True when nothing orders access p before the current access c (both of this launch).
CUDA_EMU_NOSAN inline bool unordered(const Access& p, const Access& c) {
    if (p.blk != c.blk) return true;
    if (p.G != c.G) return false;
    if (p.tid / 32 != c.tid / 32) return true;
    return p.g == c.g;
}

CUDA_EMU_NOSAN inline bool conflicts(const Access& p, const Access& c) {
    return (p.bytes & c.bytes) && !(p.blk == c.blk && p.tid == c.tid) && !(p.atomic && c.atomic) &&
           unordered(p, c);
}

CUDA_EMU_NOSAN inline void race_word(uintptr_t word, unsigned char bytes, bool write, bool shared) {
    RaceState& R = g_race;
    Ctx* c = R.ctx;
    Access a;
    a.blk = R.blk;
    a.tid = (unsigned short)c->cur;
    a.bytes = bytes;
    a.atomic = R.atomic_depth > 0;
    a.G = c->block_bar.gen;
    a.g = c->warp_bar[c->cur / 32].gen;
    Cell& cell = find_cell(word);
    if (shared && cell.blk != R.blk) {  // shared memory is per block: forget other blocks
        cell.w = cell.r1 = cell.r2 = Access();
        cell.blk = R.blk;
    }
    uintptr_t addr = word << 2;
    if (conflicts(cell.w, a)) return report_race(addr, shared, cell.w, true, a, write);
    if (write) {
        if (conflicts(cell.r1, a)) return report_race(addr, shared, cell.r1, false, a, true);
        if (conflicts(cell.r2, a)) return report_race(addr, shared, cell.r2, false, a, true);
        cell.w = a;
        cell.r1 = cell.r2 = Access();
    } else if (cell.r1.bytes == 0 || (cell.r1.blk == a.blk && cell.r1.tid == a.tid)) {
        cell.r1 = a;
    } else {
        cell.r2 = a;
    }
}

CUDA_EMU_NOSAN inline void race_access(const void* p, size_t size, bool write) {
    RaceState& R = g_race;
    uintptr_t addr = (uintptr_t)p;
    if ((addr >= R.stack_lo && addr < R.stack_hi) || (addr >= R.ctx_lo && addr < R.ctx_hi) ||
        (addr >= R.tls_lo && addr < R.tls_hi))
        return;
    if (R.ctx->failed) return;
    for (int k = 0; k < R.n_ro; ++k) {
        if (addr < R.ro_lo[k] || addr >= R.ro_hi[k]) continue;
        if (!write) return;
        uint3 b = coords(R.blk, R.grid), t = coords(R.ctx->cur, R.block);
        fail("write to argument %d, declared const __restrict__ (read-only for the whole "
             "launch), at byte offset %llu by thread (%u,%u,%u) of block (%u,%u,%u): the "
             "buffer is also passed as an output, or the kernel casts const away",
             R.ro_arg[k], (unsigned long long)(addr - R.ro_lo[k]), t.x, t.y, t.z, b.x, b.y, b.z);
        return;
    }
    bool shared = (addr >= R.smem_lo && addr < R.smem_hi) || (addr >= R.dyn_lo && addr < R.dyn_hi);
    while (size > 0) {
        unsigned off = (unsigned)(addr & 3u);
        size_t n = std::min<size_t>(4 - off, size);
        race_word(addr >> 2, (unsigned char)(((1u << n) - 1u) << off), write, shared);
        addr += n;
        size -= n;
    }
}

// Switched by the scheduler around each fiber run, outside the instrumentation (the switch
// back happens while tracking is still on).
CUDA_EMU_NOSAN __attribute__((noinline)) inline void set_tracking(bool on) { g_race.track = on; }

// Emulated atomics bracket their read-modify-write with this guard (the counter is changed by
// non-instrumented helpers, so the guard itself is no tracked access).
CUDA_EMU_NOSAN __attribute__((noinline)) inline void atomic_enter() { g_race.atomic_depth++; }
CUDA_EMU_NOSAN __attribute__((noinline)) inline void atomic_leave() { g_race.atomic_depth--; }
struct AtomicScope {
    AtomicScope() { atomic_enter(); }
    ~AtomicScope() { atomic_leave(); }
};

// ---- scheduler ---------------------------------------------------------------------------------
// The emulator's own functions that run inside kernel fibers are not instrumented (CUDA_EMU_NOSAN):
// their accesses (fiber flags, barrier state) are no kernel memory.
CUDA_EMU_NOSAN inline void yield_to_scheduler() {
    Ctx* c = g_ctx;
#ifdef CUDA_EMU_ASM_SWITCH
    cuda_emu_switch(&c->fibers[c->cur].sp, c->sched_sp);
#else
    swapcontext(&c->fibers[c->cur].ctx, &c->sched);
#endif
}

inline int linear_tid() {
    return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

CUDA_EMU_NOSAN inline void complete(Barrier& b) {
    b.participants[b.gen & 1] = b.arrived_lanes;
    b.arrived_lanes = 0;
    b.arrived = 0;
    b.site_file = nullptr;
    b.gen++;
    g_ctx->progress++;
}

CUDA_EMU_NOSAN inline void sync_block(const char* file, int line) {
    Ctx* c = g_ctx;
    Barrier& b = c->block_bar;
    unsigned g = b.gen;
    if (g_flags & kCheckBarriers) {
        c->bar_count[c->cur]++;
        if (b.arrived == 0) {
            b.site_file = file;
            b.site_line = line;
            b.site_tid = c->cur;
        } else if (b.site_line != line || std::strcmp(b.site_file, file) != 0) {
            uint3 t0 = coords(b.site_tid, blockDim), t1 = coords(c->cur, blockDim);
            fail("barrier divergence in block (%u,%u,%u): thread (%u,%u,%u) waits at "
                 "__syncthreads() %s:%d while thread (%u,%u,%u) waits at %s:%d (one barrier "
                 "reached from two call sites: undefined behaviour on a GPU)",
                 blockIdx.x, blockIdx.y, blockIdx.z, t0.x, t0.y, t0.z, b.site_file, b.site_line,
                 t1.x, t1.y, t1.z, file, line);
        }
    }
    if (++b.arrived >= c->live) complete(b);
    while (b.gen == g) yield_to_scheduler();
}

CUDA_EMU_NOSAN inline int warp_expected(int w) {
    Ctx* c = g_ctx;
    return __builtin_popcount(c->warp_bar[w].mask & c->warp_live[w]);
}

// Arrive at the warp barrier of the calling lane's warp; returns the generation it waited on.
CUDA_EMU_NOSAN inline unsigned sync_warp(unsigned mask) {
    Ctx* c = g_ctx;
    int w = linear_tid() / 32;
    Barrier& b = c->warp_bar[w];
    unsigned g = b.gen;
    if (b.arrived == 0) b.mask = mask;
    b.arrived_lanes |= 1u << (linear_tid() % 32);
    if (++b.arrived >= warp_expected(w)) complete(b);
    while (b.gen == g) yield_to_scheduler();
    return g;
}

// Warp exchange: every lane publishes v, waits for the warp, reads lane src_of(lane)
// (a negative source means "keep own value").
template <class T, class F>
CUDA_EMU_NOSAN inline T exchange(unsigned mask, T v, F src_of) {
    static_assert(sizeof(T) <= 8, "warp exchange of types up to 8 bytes");
    Ctx* c = g_ctx;
    int t = linear_tid();
    int w = t / 32, lane = t % 32;
    unsigned g = c->warp_bar[w].gen;
    std::memcpy(c->shfl[w][g & 1][lane], &v, sizeof(T));
    sync_warp(mask);
    int src = src_of(lane);
    if (src < 0) return v;
    T out;
    if (!((c->warp_bar[w].participants[g & 1] >> src) & 1u) || !((mask >> src) & 1u)) {
        // Lane absent (partial warp), exited before the exchange or outside the mask:
        // undefined on a GPU.
        std::memset(&out, 0xFF, sizeof(T));
        return out;
    }
    std::memcpy(&out, c->shfl[w][g & 1][src], sizeof(T));
    return out;
}

CUDA_EMU_NOSAN inline void fiber_entry() {
    Ctx* c = g_ctx;
    c->body(c->body_arg);
    c->fibers[c->cur].done = true;
    yield_to_scheduler();  // never resumed
    std::abort();
}

// A fresh fiber's stack as cuda_emu_switch leaves it: control words, six callee-saved
// registers, then fiber_entry as the return address (entered with rsp % 16 == 8, as after a
// call).
inline void start_fiber(Fiber& f) {
#ifdef CUDA_EMU_ASM_SWITCH
    uintptr_t top = ((uintptr_t)f.stack + kStackBytes) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)top;
    *--sp = 0;                          // fiber_entry's (never used) return address
    *--sp = (uint64_t)(uintptr_t)&fiber_entry;
    for (int r = 0; r < 6; ++r) *--sp = 0;  // rbp rbx r12 r13 r14 r15
    unsigned mxcsr = 0;
    unsigned short fpucw = 0;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    *--sp = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, (void (*)())fiber_entry, 0);
#endif
}

CUDA_EMU_NOSAN inline void resume_fiber(Ctx* c, Fiber& f) {
#ifdef CUDA_EMU_ASM_SWITCH
    cuda_emu_switch(&c->sched_sp, f.sp);
#else
    swapcontext(&c->sched, &f.ctx);
#endif
}

inline unsigned long long splitmix(unsigned long long& s) {
    unsigned long long z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// After a block: every thread must have called __syncthreads() equally often.
inline void check_barrier_counts(Ctx* c) {
    for (int i = 1; i < c->nthreads; ++i) {
        if (c->bar_count[i] == c->bar_count[0]) continue;
        uint3 t = coords(i, blockDim);
        fail("barrier divergence in block (%u,%u,%u): thread (0,0,0) called __syncthreads() %d "
             "times, thread (%u,%u,%u) %d times (a barrier skipped by some threads, e.g. after "
             "an early return: undefined behaviour on a GPU)",
             blockIdx.x, blockIdx.y, blockIdx.z, c->bar_count[0], t.x, t.y, t.z, c->bar_count[i]);
        return;
    }
}

// Run body(arg) as a grid. Returns 0 on success, nonzero with g_error set otherwise.
inline int run_grid(dim3 grid, dim3 block, size_t dyn_bytes, void (*body)(void*), void* arg) {
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    long long nthreads = (long long)block.x * block.y * block.z;
    if (nthreads < 1 || nthreads > kMaxThreads || block.z > 64) {
        std::snprintf(g_error, sizeof g_error, "invalid block (%u,%u,%u)", block.x, block.y, block.z);
        return 2;
    }
    if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535) {
        std::snprintf(g_error, sizeof g_error, "invalid grid (%u,%u,%u)", grid.x, grid.y, grid.z);
        return 2;
    }
    if (dyn_bytes > 227 * 1024) {
        std::snprintf(g_error, sizeof g_error, "dynamic shared memory %zu bytes > 227 KB", dyn_bytes);
        return 2;
    }
    static Ctx ctx;  // large (exchange slots); one launch at a time under the mutex
    Ctx* c = &ctx;
    g_ctx = c;
    c->nthreads = (int)nthreads;
    c->body = body;
    c->body_arg = arg;
    c->failed = false;
    if ((int)c->fibers.size() < c->nthreads) c->fibers.resize(c->nthreads);
    for (int i = 0; i < c->nthreads; ++i)
        if (!c->fibers[i].stack) c->fibers[i].stack = (char*)std::malloc(kStackBytes);
    std::vector<unsigned char> dyn(dyn_bytes + 16);
    g_dyn_smem = dyn.data();
    unsigned long long seed = 0x5EEDull + (g_launch_count++) * 7919ull;
    if (const char* s = std::getenv("CUDA_EMU_SEED")) seed ^= std::strtoull(s, nullptr, 10) * 1000003ull;
    seed ^= g_seed * 0x2545F4914F6CDD1Dull;
    std::vector<int> order(c->nthreads);
    gridDim = grid;
    blockDim = block;
    for (int i = 0; i < c->nthreads; ++i) c->tid_of[i] = coords((unsigned)i, block);
    // Block order of this launch.
    unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    std::vector<unsigned> blocks(nblocks);
    for (unsigned long long i = 0; i < nblocks; ++i) blocks[i] = (unsigned)i;
    if (g_flags & kOrderReverse) std::reverse(blocks.begin(), blocks.end());
    if (g_flags & (kOrderRandom | kOrderPerLaunch)) {
        unsigned long long bseed = g_seed ^ 0xB10C0DE5ull;
        if (g_flags & kOrderPerLaunch) bseed ^= seed;
        bseed ^= ((unsigned long long)grid.x << 40) ^ ((unsigned long long)grid.y << 20) ^ grid.z;
        bseed ^= ((unsigned long long)block.x << 42) ^ ((unsigned long long)block.y << 21) ^ block.z;
        splitmix(bseed);
        for (unsigned long long i = nblocks; i > 1; --i)
            std::swap(blocks[i - 1], blocks[splitmix(bseed) % i]);
    }
    RaceState& R = g_race;
    bool races = (g_flags & kCheckRaces) != 0;
    if (races) {
        R.gen++;
        R.used = 0;
        R.grid = grid;
        R.block = block;
        R.ctx = c;
        R.ctx_lo = (uintptr_t)c;
        R.ctx_hi = (uintptr_t)(c + 1);
        uintptr_t tls[4][2] = {{(uintptr_t)&threadIdx, sizeof threadIdx},
                               {(uintptr_t)&blockIdx, sizeof blockIdx},
                               {(uintptr_t)&blockDim, sizeof blockDim},
                               {(uintptr_t)&gridDim, sizeof gridDim}};
        R.tls_lo = tls[0][0];
        R.tls_hi = tls[0][0] + tls[0][1];
        for (auto& t : tls) {
            R.tls_lo = std::min(R.tls_lo, t[0]);
            R.tls_hi = std::max(R.tls_hi, t[0] + t[1]);
        }
        if (R.tls_hi - R.tls_lo > 256) R.tls_lo = R.tls_hi = 0;  // not adjacent: track them
        R.smem_lo = (uintptr_t)__start_cuda_emu_shared;
        R.smem_hi = (uintptr_t)__stop_cuda_emu_shared;
        R.dyn_lo = (uintptr_t)dyn.data();
        R.dyn_hi = (uintptr_t)(dyn.data() + dyn.size());
    }
    int rc = 0;
    for (unsigned long long bi = 0; bi < nblocks && rc == 0; ++bi) {
        uint3 bc = coords(blocks[bi], grid);
        unsigned bx = bc.x, by = bc.y, bz = bc.z;
        blockIdx = bc;
        R.blk = blocks[bi];
        std::memset(__start_cuda_emu_shared, 0xFF, (size_t)(__stop_cuda_emu_shared - __start_cuda_emu_shared));
        std::memset(dyn.data(), 0xFF, dyn.size());
        c->live = c->nthreads;
        c->block_bar = Barrier();
        int nw = (c->nthreads + 31) / 32;
        for (int w = 0; w < nw; ++w) {
            c->warp_bar[w] = Barrier();
            int lanes = std::min(32, c->nthreads - 32 * w);
            c->warp_live[w] = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
        }
        for (int i = 0; i < c->nthreads; ++i) {
            Fiber& f = c->fibers[i];
            f.done = false;
            c->bar_count[i] = 0;
            start_fiber(f);
            order[i] = i;
        }
        while (c->live > 0 && !c->failed) {
            for (int i = c->nthreads - 1; i > 0; --i) {
                int j = (int)(splitmix(seed) % (unsigned long long)(i + 1));
                std::swap(order[i], order[j]);
            }
            unsigned long long before = c->progress;
            for (int k = 0; k < c->nthreads && !c->failed; ++k) {
                int i = order[k];
                Fiber& f = c->fibers[i];
                if (f.done) continue;
                c->cur = i;
                threadIdx = c->tid_of[i];
                R.stack_lo = (uintptr_t)f.stack;
                R.stack_hi = (uintptr_t)(f.stack + kStackBytes);
                set_tracking(races);
                resume_fiber(c, f);
                set_tracking(false);
                if (f.done) {
                    c->live--;
                    c->progress++;
                    int w = i / 32;
                    c->warp_live[w] &= ~(1u << (i % 32));
                    // An exited thread no longer holds back the barriers it would have joined.
                    if (c->block_bar.arrived > 0 && c->block_bar.arrived >= c->live) complete(c->block_bar);
                    if (c->warp_bar[w].arrived > 0 && c->warp_bar[w].arrived >= warp_expected(w))
                        complete(c->warp_bar[w]);
                }
            }
            if (!c->failed && c->progress == before) {
                std::snprintf(g_error, sizeof g_error,
                              "deadlock in block (%u,%u,%u): %d live threads wait at barriers that "
                              "cannot complete (barrier in divergent code?)", bx, by, bz, c->live);
                rc = 3;
                break;
            }
        }
        if (rc == 0 && !c->failed && (g_flags & kCheckBarriers)) check_barrier_counts(c);
        if (rc == 0 && c->failed) rc = 4;
    }
    g_ctx = nullptr;
    g_dyn_smem = nullptr;
    return rc;
}

// Call kernel f with the arguments packed as in cuLaunchKernel (array of pointers to values).
template <class... A, size_t... I>
CUDA_EMU_NOSAN inline void call_packed(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*reinterpret_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <class... A>
struct Packed {
    void (*f)(A...);
    void** args;
    CUDA_EMU_NOSAN static void run(void* self) {
        auto* p = static_cast<Packed*>(self);
        call_packed(p->f, p->args, std::index_sequence_for<A...>{});
    }
};

template <class... A>
inline int launch(void (*f)(A...), const unsigned* grid, const unsigned* block, size_t dyn_bytes,
                  void** args) {
    Packed<A...> p{f, args};
    return run_grid(dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), dyn_bytes,
                    &Packed<A...>::run, &p);
}

}  // namespace cuda_emu

// One exported launcher per kernel: cuda_emu_launch_<name>(grid[3], block[3], dyn_bytes, args).
#define CUDA_EMU_EXPORT(name)                                                                   \
    extern "C" __attribute__((visibility("default"))) int cuda_emu_launch_##name(const unsigned* grid, const unsigned* block,          \
                                          size_t dyn_bytes, void** args) {                      \
        return cuda_emu::launch(&name, grid, block, dyn_bytes, args);                           \
    }

extern "C" __attribute__((visibility("default"))) const char* cuda_emu_last_error() {
    return cuda_emu::g_error;
}

// Checks and block order of the following launches: flags from the kCheck*/kOrder* enum, seed
// mixed into the per-launch thread and block shuffles (0 keeps the historical schedules).
extern "C" __attribute__((visibility("default"))) void cuda_emu_configure(unsigned flags,
                                                                          unsigned long long seed) {
    cuda_emu::g_flags = flags;
    cuda_emu::g_seed = seed;
}

// The read-only (const __restrict__) arguments of the next launch: n byte ranges [lo, hi) with
// their argument positions (race detector only).
extern "C" __attribute__((visibility("default"))) void cuda_emu_set_read_only(
        int n, const unsigned long long* lo, const unsigned long long* hi, const int* arg) {
    cuda_emu::RaceState& R = cuda_emu::g_race;
    R.n_ro = std::min(n, (int)cuda_emu::RaceState::kMaxReadOnly);
    for (int k = 0; k < R.n_ro; ++k) {
        R.ro_lo[k] = (uintptr_t)lo[k];
        R.ro_hi[k] = (uintptr_t)hi[k];
        R.ro_arg[k] = arg[k];
    }
}

// 1 when this library was built with the race detector's instrumentation.
extern "C" __attribute__((visibility("default"))) int cuda_emu_instrumented() {
#ifdef CUDA_EMU_RACECHECK
    return 1;
#else
    return 0;
#endif
}

#ifdef CUDA_EMU_RACECHECK
// The hooks g++ -fsanitize=thread calls (no sanitizer runtime is linked). A hook records only
// while a kernel fiber runs, and switches tracking off while it works (no recursion through
// instrumented helpers).
#define CUDA_EMU_HOOK(name, size, write)                                                        \
    extern "C" CUDA_EMU_NOSAN __attribute__((visibility("default"))) void name(void* p) {       \
        cuda_emu::RaceState& R = cuda_emu::g_race;                                              \
        if (!R.track) return;                                                                   \
        R.track = false;                                                                        \
        cuda_emu::race_access(p, size, write);                                                  \
        R.track = true;                                                                         \
    }
CUDA_EMU_HOOK(__tsan_read1, 1, false)
CUDA_EMU_HOOK(__tsan_read2, 2, false)
CUDA_EMU_HOOK(__tsan_read4, 4, false)
CUDA_EMU_HOOK(__tsan_read8, 8, false)
CUDA_EMU_HOOK(__tsan_read16, 16, false)
CUDA_EMU_HOOK(__tsan_write1, 1, true)
CUDA_EMU_HOOK(__tsan_write2, 2, true)
CUDA_EMU_HOOK(__tsan_write4, 4, true)
CUDA_EMU_HOOK(__tsan_write8, 8, true)
CUDA_EMU_HOOK(__tsan_write16, 16, true)
CUDA_EMU_HOOK(__tsan_unaligned_read2, 2, false)
CUDA_EMU_HOOK(__tsan_unaligned_read4, 4, false)
CUDA_EMU_HOOK(__tsan_unaligned_read8, 8, false)
CUDA_EMU_HOOK(__tsan_unaligned_read16, 16, false)
CUDA_EMU_HOOK(__tsan_unaligned_write2, 2, true)
CUDA_EMU_HOOK(__tsan_unaligned_write4, 4, true)
CUDA_EMU_HOOK(__tsan_unaligned_write8, 8, true)
CUDA_EMU_HOOK(__tsan_unaligned_write16, 16, true)
#undef CUDA_EMU_HOOK
#define CUDA_EMU_RANGE_HOOK(name, write)                                                        \
    extern "C" CUDA_EMU_NOSAN __attribute__((visibility("default"))) void name(void* p,         \
                                                                                unsigned long n) { \
        cuda_emu::RaceState& R = cuda_emu::g_race;                                              \
        if (!R.track) return;                                                                   \
        R.track = false;                                                                        \
        cuda_emu::race_access(p, n, write);                                                     \
        R.track = true;                                                                         \
    }
CUDA_EMU_RANGE_HOOK(__tsan_read_range, false)
CUDA_EMU_RANGE_HOOK(__tsan_write_range, true)
#undef CUDA_EMU_RANGE_HOOK
extern "C" __attribute__((visibility("default"))) CUDA_EMU_NOSAN void __tsan_init() {}
extern "C" __attribute__((visibility("default"))) CUDA_EMU_NOSAN void __tsan_func_entry(void*) {}
extern "C" __attribute__((visibility("default"))) CUDA_EMU_NOSAN void __tsan_func_exit() {}
extern "C" __attribute__((visibility("default"))) CUDA_EMU_NOSAN void __tsan_vptr_update(void**, void*) {}
extern "C" __attribute__((visibility("default"))) CUDA_EMU_NOSAN void __tsan_vptr_read(void**) {}
// C++11 atomics of the emulator's own code (static-local guards): plain, single OS thread per
// library at a time (g_launch_mutex).
#define CUDA_EMU_ATOMIC(bits, T)                                                                \
    extern "C" __attribute__((visibility("default"))) CUDA_EMU_NOSAN T                          \
    __tsan_atomic##bits##_load(const volatile T* a, int) { return *a; }                         \
    extern "C" __attribute__((visibility("default"))) CUDA_EMU_NOSAN void                       \
    __tsan_atomic##bits##_store(volatile T* a, T v, int) { *a = v; }
CUDA_EMU_ATOMIC(8, unsigned char)
CUDA_EMU_ATOMIC(16, unsigned short)
CUDA_EMU_ATOMIC(32, unsigned int)
CUDA_EMU_ATOMIC(64, unsigned long long)
#undef CUDA_EMU_ATOMIC
#endif  // CUDA_EMU_RACECHECK

// ---- CUDA built-ins used by the kernels ------------------------------------------------------
// The call site rides along (default arguments evaluated at the caller) for the barrier check.
__forceinline__ void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    cuda_emu::sync_block(file, line);
}
__forceinline__ void __syncwarp(unsigned mask = 0xffffffffu) { cuda_emu::sync_warp(mask); }
__forceinline__ void __threadfence() {}
__forceinline__ void __threadfence_block() {}

template <class T>
__forceinline__ T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return cuda_emu::exchange(mask, v, [&](int lane) { return (lane & ~(width - 1)) + (src & (width - 1)); });
}
template <class T>
__forceinline__ T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return cuda_emu::exchange(mask, v, [&](int lane) {
        int s = (lane & (width - 1)) + (int)delta;
        return s >= width ? -1 : (lane & ~(width - 1)) + s;
    });
}
template <class T>
__forceinline__ T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return cuda_emu::exchange(mask, v, [&](int lane) {
        int s = (lane & (width - 1)) - (int)delta;
        return s < 0 ? -1 : (lane & ~(width - 1)) + s;
    });
}
template <class T>
__forceinline__ T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return cuda_emu::exchange(mask, v, [&](int lane) {
        int s = lane ^ lane_mask;
        return (s & ~(width - 1)) != (lane & ~(width - 1)) ? -1 : s;
    });
}
__forceinline__ unsigned __ballot_sync(unsigned mask, int pred) {
    cuda_emu::Ctx* c = cuda_emu::g_ctx;
    int t = cuda_emu::linear_tid();
    int w = t / 32;
    unsigned g = c->warp_bar[w].gen;
    c->shfl[w][g & 1][t % 32][0] = pred ? 1 : 0;
    cuda_emu::sync_warp(mask);
    unsigned out = 0, present = mask & c->warp_bar[w].participants[g & 1];
    for (int k = 0; k < 32; ++k)
        if (((present >> k) & 1u) && c->shfl[w][g & 1][k][0] == 1) out |= 1u << k;
    return out;
}
__forceinline__ int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
__forceinline__ int __all_sync(unsigned mask, int pred) {
    cuda_emu::Ctx* c = cuda_emu::g_ctx;
    int w = cuda_emu::linear_tid() / 32;
    unsigned g = c->warp_bar[w].gen;
    unsigned votes = __ballot_sync(mask, pred);
    unsigned active = mask & c->warp_bar[w].participants[g & 1];
    return (votes & active) == active;
}

#define CUDA_EMU_RMW(T, name, expr)                                                             \
    __forceinline__ T name(T* p, T v) {                                                          \
        cuda_emu::AtomicScope atomic_scope;                                                      \
        T o = *p;                                                                                \
        *p = (expr);                                                                             \
        return o;                                                                                \
    }
CUDA_EMU_RMW(float, atomicAdd, o + v)
CUDA_EMU_RMW(int, atomicAdd, o + v)
CUDA_EMU_RMW(unsigned, atomicAdd, o + v)
CUDA_EMU_RMW(int, atomicMin, std::min(o, v))
CUDA_EMU_RMW(int, atomicMax, std::max(o, v))
CUDA_EMU_RMW(unsigned, atomicMax, std::max(o, v))
CUDA_EMU_RMW(int, atomicExch, v)
CUDA_EMU_RMW(int, atomicOr, o | v)
#undef CUDA_EMU_RMW
__forceinline__ int atomicCAS(int* p, int cmp, int v) {
    cuda_emu::AtomicScope atomic_scope;
    int o = *p;
    if (o == cmp) *p = v;
    return o;
}

__forceinline__ float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
__forceinline__ int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
__forceinline__ float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
__forceinline__ unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
__forceinline__ int __popc(unsigned x) { return __builtin_popcount(x); }
__forceinline__ int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
__forceinline__ int __ffs(int x) { return __builtin_ffs(x); }
__forceinline__ float __expf(float x) { return std::exp(x); }
__forceinline__ float __logf(float x) { return std::log(x); }
__forceinline__ float __fdividef(float a, float b) { return a / b; }
__forceinline__ float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
__forceinline__ float __saturatef(float x) { return std::fmin(1.0f, std::fmax(0.0f, x)); }
template <class T> __forceinline__ T __ldg(const T* p) { return *p; }
using std::isnan; using std::isinf; using std::isfinite;
