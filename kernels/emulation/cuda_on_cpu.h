// cuda_on_cpu.h -- run the CUDA C kernels of kernels/*.cu on a CPU, unchanged, for tests.
//
// Build one kernel file into a shared library (gru_engine/backends/device.py does this):
//   g++ -O1 -std=c++17 -fvisibility=hidden -x c++ -include kernels/emulation/cuda_on_cpu.h \
//       -shared -fPIC \
//       <wrapper.cpp that #includes the .cu and lists CUDA_EMU_EXPORT(kernel)> -o x.so
//
// Execution model (chosen so that bugs which only show on a GPU also show here):
// * Blocks of a grid run one after another. The threads of a block run as cooperative fibers
//   (ucontext) on the calling OS thread; a fiber runs until it waits at a barrier or returns.
// * Every scheduling round visits the live threads in a fresh pseudo-random order (seeded per
//   launch, reproducible via CUDA_EMU_SEED), so no thread order is implied between barriers.
// * All static __shared__ memory (collected in the linker section "cuda_emu_shared") and the
//   dynamic shared buffer are filled with 0xFF bytes (float NaN, int -1) at the start of every
//   block: reading shared memory that no thread of this block wrote yet gives NaN/-1.
// * __syncthreads() is a real barrier of the block's live threads; warp intrinsics
//   (__shfl_*_sync, __ballot_sync, __any_sync, __all_sync, __syncwarp) are barriers of the warp
//   lanes named in the mask, so a lane never sees a value its partner has not produced yet.
//   Reading a lane that does not exist (partial warp) yields poison bytes.
// * A barrier that can never complete (e.g. __syncthreads() in divergent code) is reported as
//   a deadlock error instead of hanging.
// * Atomics are plain read-modify-write: only one fiber runs at any time.
// Dynamic shared memory: kernels declare it with DYNAMIC_SHARED(T, name), which this header
// maps to the per-launch buffer and which a kernel file maps to `extern __shared__ T name[]`
// when compiled by nvcc/NVRTC (the only emulator-specific spelling a kernel needs).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <mutex>
#include <utility>
#include <vector>
#include <ucontext.h>

#define CUDA_EMULATION 1
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

struct Barrier {
    int arrived = 0;
    unsigned gen = 0;
    unsigned mask = 0xffffffffu;
    unsigned arrived_lanes = 0;      // warp barriers: lanes that arrived in this generation
    unsigned participants[2] = {0, 0};  // lanes that took part, by generation parity
};

struct Fiber {
    ucontext_t ctx;
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
    int cur = 0;
    uint3 tid_of[kMaxThreads];
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
};

static thread_local Ctx* g_ctx = nullptr;
static unsigned char* g_dyn_smem = nullptr;
static std::mutex g_launch_mutex;
static char g_error[512];
static unsigned long long g_launch_count = 0;

inline void yield_to_scheduler() {
    Ctx* c = g_ctx;
    swapcontext(&c->fibers[c->cur].ctx, &c->sched);
}

inline int linear_tid() {
    return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

inline void complete(Barrier& b) {
    b.participants[b.gen & 1] = b.arrived_lanes;
    b.arrived_lanes = 0;
    b.arrived = 0;
    b.gen++;
    g_ctx->progress++;
}

inline void sync_block() {
    Ctx* c = g_ctx;
    Barrier& b = c->block_bar;
    unsigned g = b.gen;
    if (++b.arrived >= c->live) complete(b);
    while (b.gen == g) yield_to_scheduler();
}

inline int warp_expected(int w) {
    Ctx* c = g_ctx;
    return __builtin_popcount(c->warp_bar[w].mask & c->warp_live[w]);
}

// Arrive at the warp barrier of the calling lane's warp; returns the generation it waited on.
inline unsigned sync_warp(unsigned mask) {
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
inline T exchange(unsigned mask, T v, F src_of) {
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

inline void fiber_entry() {
    Ctx* c = g_ctx;
    c->body(c->body_arg);
    c->fibers[c->cur].done = true;
    swapcontext(&c->fibers[c->cur].ctx, &c->sched);
}

inline unsigned long long splitmix(unsigned long long& s) {
    unsigned long long z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
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
    if ((int)c->fibers.size() < c->nthreads) c->fibers.resize(c->nthreads);
    for (int i = 0; i < c->nthreads; ++i)
        if (!c->fibers[i].stack) c->fibers[i].stack = (char*)std::malloc(kStackBytes);
    std::vector<unsigned char> dyn(dyn_bytes + 16);
    g_dyn_smem = dyn.data();
    unsigned long long seed = 0x5EEDull + (g_launch_count++) * 7919ull;
    if (const char* s = std::getenv("CUDA_EMU_SEED")) seed ^= std::strtoull(s, nullptr, 10) * 1000003ull;
    std::vector<int> order(c->nthreads);
    gridDim = grid;
    blockDim = block;
    for (int i = 0; i < c->nthreads; ++i)
        c->tid_of[i] = uint3{(unsigned)(i % block.x), (unsigned)((i / block.x) % block.y),
                             (unsigned)(i / (block.x * block.y))};
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = uint3{bx, by, bz};
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
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack;
            f.ctx.uc_stack.ss_size = kStackBytes;
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, (void (*)())fiber_entry, 0);
            order[i] = i;
        }
        while (c->live > 0) {
            for (int i = c->nthreads - 1; i > 0; --i) {
                int j = (int)(splitmix(seed) % (unsigned long long)(i + 1));
                std::swap(order[i], order[j]);
            }
            unsigned long long before = c->progress;
            for (int k = 0; k < c->nthreads; ++k) {
                int i = order[k];
                Fiber& f = c->fibers[i];
                if (f.done) continue;
                c->cur = i;
                threadIdx = c->tid_of[i];
                swapcontext(&c->sched, &f.ctx);
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
            if (c->progress == before) {
                std::snprintf(g_error, sizeof g_error,
                              "deadlock in block (%u,%u,%u): %d live threads wait at barriers that "
                              "cannot complete (barrier in divergent code?)", bx, by, bz, c->live);
                g_ctx = nullptr;
                return 3;
            }
        }
    }
    g_ctx = nullptr;
    g_dyn_smem = nullptr;
    return 0;
}

// Call kernel f with the arguments packed as in cuLaunchKernel (array of pointers to values).
template <class... A, size_t... I>
inline void call_packed(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*reinterpret_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <class... A>
struct Packed {
    void (*f)(A...);
    void** args;
    static void run(void* self) {
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

// ---- CUDA built-ins used by the kernels ------------------------------------------------------
__forceinline__ void __syncthreads() { cuda_emu::sync_block(); }
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

__forceinline__ float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
__forceinline__ int atomicAdd(int* p, int v) { int o = *p; *p = o + v; return o; }
__forceinline__ unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
__forceinline__ int atomicMin(int* p, int v) { int o = *p; *p = std::min(o, v); return o; }
__forceinline__ int atomicMax(int* p, int v) { int o = *p; *p = std::max(o, v); return o; }
__forceinline__ unsigned atomicMax(unsigned* p, unsigned v) { unsigned o = *p; *p = std::max(o, v); return o; }
__forceinline__ int atomicExch(int* p, int v) { int o = *p; *p = v; return o; }
__forceinline__ int atomicCAS(int* p, int cmp, int v) { int o = *p; if (o == cmp) *p = v; return o; }

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
