// CUDA execution semantics on the host, for running the project's kernels (kernels/*.cu)
// without a GPU (src/device/cuda/host.rs compiles each kernel file with this header in front,
// as C++17, into a shared library).
//
// What it provides:
// - a grid of blocks, spread over a few worker threads (blocks run in parallel, so global
//   memory races between blocks are real and atomics must be real atomics);
// - in a block, each thread is a fiber (ucontext) with its own stack, threadIdx and locals;
//   fibers switch only at __syncthreads and warp operations, round robin in thread order;
// - __shared__ memory per block (a `static thread_local`: one copy per worker, and a worker
//   runs one block at a time), dynamic shared memory of the launch's size (DCL_DYNAMIC_SHARED);
// - __syncthreads as a barrier of the block's live threads (exited threads do not hold it, as
//   on the hardware); threads waiting at different __syncthreads are an error;
// - warp operations (__syncwarp, __shfl*_sync, __ballot/__any/__all_sync) as barriers of the
//   lanes in their mask, with the values exchanged there; a mask naming a lane that does not
//   exist, has exited or waits elsewhere is an error (undefined behaviour on a GPU);
// - a deadlock (no thread can run, some have not finished) is an error naming the kernel;
// - under ThreadSanitizer (DCL_SHIM_TSAN) every fiber is a TSan fiber switched without
//   synchronisation, and barriers release/acquire, so an access pair that no barrier orders is
//   reported as a race even though the fibers take turns on one thread.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

#define DCL_HOST_SHIM 1

#ifdef DCL_SHIM_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#define DCL_SHIM_INTERNAL __attribute__((no_sanitize_thread, noinline))
#else
#define DCL_SHIM_INTERNAL
#endif

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct int2 {
    int x, y;
};
struct int4 {
    int x, y, z, w;
};
struct uint2 {
    unsigned x, y;
};
struct uint4 {
    unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
static constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __constant__ static const

using std::max;
using std::min;

namespace dcl_shim {

enum State { READY, AT_BARRIER, AT_WARP, DONE };
enum WarpOp { OP_SYNC, OP_SHFL, OP_BALLOT };

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    State state;
    int line;          // source line of the barrier or warp op it waits at
    int op;            // WarpOp it waits in
    unsigned mask;     // its warp op's mask
    uint64_t value;    // deposited value (shuffle) or predicate (vote)
    int src;           // shuffle source lane, or -1
    uint64_t result;   // the op's result, written when the op completes
    void* tsan;
};

struct Warp {
    unsigned arrived = 0;
    int sync_token = 0; // address for TSan release/acquire
};

struct Launch {
    char* launch_sync; // see Config
    void (*body)(void* kernel, void** args);
    void* kernel;
    void** args;
    const char* name;
    dim3 grid, block;
    unsigned shmem;
};

struct Block {
    const Launch* launch;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    ucontext_t sched;
    void* sched_tsan;
    int n = 0;
    int live = 0;
    int cur = 0;
    int barrier_arrived = 0;
    int barrier_line = 0;
    int barrier_token = 0;
    bool fast = false;   // threads run one after another as plain calls (no barrier expected)
    bool synced = false; // a barrier or warp op ran in this block
    std::string error;
};

inline thread_local Block* g_block = nullptr;
// TSan only: orders a worker's finished blocks before its next ones (a new block's shared
// memory is fresh on a GPU; on a worker it is the same memory, reused).
inline thread_local int g_block_epoch = 0;

// Thrown by __trap() and caught where the thread's call started (its fiber, or the plain call
// of a block run without fibers).
struct Trap {};
// Fiber stacks of this worker, reused by its blocks and freed when the worker thread ends.
struct Stacks {
    std::vector<char*> v;
    ~Stacks() {
        for (char* p : v) free(p);
    }
};
inline thread_local Stacks g_stacks;
inline thread_local std::vector<char> g_dynamic_shared;
constexpr size_t STACK_BYTES = 128 * 1024;

DCL_SHIM_INTERNAL inline void fail(const std::string& why) {
    Block* b = g_block;
    if (b->error.empty()) {
        char where[160];
        snprintf(where, sizeof where, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u): ",
                 b->launch->name, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
                 threadIdx.z);
        b->error = std::string(where) + why;
    }
}

inline Fiber& me() { return g_block->fibers[g_block->cur]; }

// Back to the scheduler; returns when this fiber is resumed.
DCL_SHIM_INTERNAL inline void yield() {
    Block* b = g_block;
    Fiber& f = b->fibers[b->cur];
#ifdef DCL_SHIM_TSAN
    __tsan_switch_to_fiber(b->sched_tsan, 1);
#endif
    swapcontext(&f.ctx, &b->sched);
}

DCL_SHIM_INTERNAL inline void release_barrier(Block* b) {
    b->barrier_arrived = 0;
    for (auto& f : b->fibers)
        if (f.state == AT_BARRIER) f.state = READY;
}

// A barrier or warp op reached in a block run without fibers: block 0 of the launch, run on
// fibers, reached none, so the kernel's threads do not all reach this one (or the launch
// diverges between blocks).
DCL_SHIM_INTERNAL inline bool diverged_in_fast_block(int line) {
    if (!g_block->fast) return false;
    fail("reached a barrier or warp op (line " + std::to_string(line) +
         ") that block 0 never reached; rerun with DCL_CUDA_HOST_FIBERS=always if the kernel "
         "syncs only in some blocks");
    return true;
}

DCL_SHIM_INTERNAL inline void syncthreads(int line) {
    Block* b = g_block;
    if (diverged_in_fast_block(line)) return;
    b->synced = true;
    Fiber& f = me();
    if (b->barrier_arrived > 0 && b->barrier_line != line) {
        fail("threads wait at different __syncthreads (lines " + std::to_string(b->barrier_line) +
             " and " + std::to_string(line) + ")");
    }
    b->barrier_line = line;
    f.state = AT_BARRIER;
    f.line = line;
#ifdef DCL_SHIM_TSAN
    __tsan_release(&b->barrier_token);
#endif
    if (++b->barrier_arrived == b->live) release_barrier(b);
    yield();
#ifdef DCL_SHIM_TSAN
    __tsan_acquire(&b->barrier_token);
#endif
}

// Lanes of the warp of thread `t` that exist in the block.
DCL_SHIM_INTERNAL inline unsigned existing_lanes(Block* b, int warp) {
    int first = warp * 32, count = std::min(32, b->n - first);
    return count >= 32 ? 0xffffffffu : ((1u << count) - 1u);
}

// Completes the warp op of `warp` when every lane of the mask has arrived.
DCL_SHIM_INTERNAL inline void try_complete_warp(Block* b, int warp, unsigned mask) {
    Warp& w = b->warps[warp];
    if ((w.arrived & mask) != mask) return;
    Fiber* lanes = &b->fibers[warp * 32];
    uint64_t ballot = 0;
    for (int l = 0; l < 32; ++l)
        if (mask & (1u << l)) ballot |= (lanes[l].value != 0 ? 1ull : 0ull) << l;
    for (int l = 0; l < 32; ++l) {
        if (!(mask & (1u << l))) continue;
        Fiber& f = lanes[l];
        if (f.op == OP_SHFL) {
            int s = f.src;
            if (s < 0 || s >= 32 || !(mask & (1u << s))) {
                f.result = f.value; // source outside the mask: undefined on a GPU, own value here
            } else {
                f.result = lanes[s].value;
            }
        } else if (f.op == OP_BALLOT) {
            f.result = ballot;
        }
        f.state = READY;
    }
    w.arrived &= ~mask;
}

DCL_SHIM_INTERNAL inline uint64_t warp_op(int op, unsigned mask, uint64_t value, int src, int line) {
    Block* b = g_block;
    if (diverged_in_fast_block(line)) return value;
    b->synced = true;
    Fiber& f = me();
    int t = b->cur, warp = t / 32, lane = t % 32;
    unsigned exist = existing_lanes(b, warp);
    if (!(mask & (1u << lane))) fail("a warp op whose mask leaves out the calling lane");
    if (mask & ~exist) {
        char m[120];
        snprintf(m, sizeof m, "warp op at line %d with mask 0x%08x names lanes that do not exist "
                 "(a block of %d threads)", line, mask, b->n);
        fail(m);
    }
    Fiber* lanes = &b->fibers[warp * 32];
    for (int l = 0; l < 32; ++l) {
        if (!(mask & exist & (1u << l)) || l == lane) continue;
        if (lanes[l].state == DONE) fail("a warp op whose mask names a lane that has exited");
        if (lanes[l].state == AT_WARP && (lanes[l].op != op || lanes[l].line != line || lanes[l].mask != mask))
            fail("lanes of a warp wait at different warp ops (lines " + std::to_string(lanes[l].line) +
                 " and " + std::to_string(line) + ")");
    }
    f.state = AT_WARP;
    f.op = op;
    f.line = line;
    f.mask = mask & exist;
    f.value = value;
    f.src = src;
#ifdef DCL_SHIM_TSAN
    __tsan_release(&b->warps[warp].sync_token);
#endif
    b->warps[warp].arrived |= 1u << lane;
    try_complete_warp(b, warp, mask & exist);
    yield();
#ifdef DCL_SHIM_TSAN
    __tsan_acquire(&b->warps[warp].sync_token);
#endif
    return f.result;
}

inline int lane_id() { return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32; }

template <class T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp shuffle of a value wider than 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T> inline T from_bits(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof(T));
    return v;
}

DCL_SHIM_INTERNAL inline void fiber_main(unsigned lo, unsigned hi) {
    Block* b = (Block*)(((uintptr_t)hi << 32) | (uintptr_t)lo);
    const Launch* L = b->launch;
#ifdef DCL_SHIM_TSAN
    __tsan_acquire(L->launch_sync);   // after every earlier launch
    __tsan_acquire(&g_block_epoch);   // after this worker's earlier blocks (shared memory)
#endif
    try {
        L->body(L->kernel, L->args);
    } catch (const Trap&) {
        // recorded by __trap
    }
    Fiber& f = b->fibers[b->cur];
#ifdef DCL_SHIM_TSAN
    __tsan_release(&g_block_epoch);
    __tsan_release(L->launch_sync + 1);
#endif
    f.state = DONE;
    b->live -= 1;
    // exited threads do not hold a barrier the others wait at
    if (b->barrier_arrived > 0 && b->barrier_arrived == b->live) release_barrier(b);
#ifdef DCL_SHIM_TSAN
    __tsan_switch_to_fiber(b->sched_tsan, 1);
#endif
    setcontext(&b->sched);
}

// Runs one block as plain calls, thread after thread (for kernels without barriers).
DCL_SHIM_INTERNAL inline void run_block_fast(Block& b, uint3 bid) {
    const Launch* L = b.launch;
    int n = (int)(L->block.x * L->block.y * L->block.z);
    b.n = n;
    b.fast = true;
    b.fibers.resize(n);
    if (g_dynamic_shared.size() < L->shmem) g_dynamic_shared.resize(L->shmem);
    g_block = &b;
    blockIdx = bid;
    blockDim = L->block;
    gridDim = L->grid;
    for (int t = 0; t < n && b.error.empty(); ++t) {
        b.cur = t;
        threadIdx = uint3{(unsigned)t % L->block.x, ((unsigned)t / L->block.x) % L->block.y,
                          (unsigned)t / (L->block.x * L->block.y)};
        try {
            L->body(L->kernel, L->args);
        } catch (const Trap&) {
            // recorded by __trap
        }
    }
    g_block = nullptr;
}

// Runs one block to completion on this worker thread, each thread a fiber.
DCL_SHIM_INTERNAL inline void run_block(Block& b, uint3 bid) {
    const Launch* L = b.launch;
    int n = (int)(L->block.x * L->block.y * L->block.z);
    b.n = n;
    b.live = n;
    b.fast = false;
    b.synced = false;
    b.barrier_arrived = 0;
    b.fibers.assign(n, Fiber{});
    b.warps.assign((n + 31) / 32, Warp{});
    while ((int)g_stacks.v.size() < n) g_stacks.v.push_back((char*)malloc(STACK_BYTES));
    if (g_dynamic_shared.size() < L->shmem) g_dynamic_shared.resize(L->shmem);
    g_block = &b;
    blockIdx = bid;
    blockDim = L->block;
    gridDim = L->grid;
#ifdef DCL_SHIM_TSAN
    b.sched_tsan = __tsan_get_current_fiber();
#endif
    for (int t = 0; t < n; ++t) {
        Fiber& f = b.fibers[t];
        f.tid = uint3{(unsigned)t % L->block.x, ((unsigned)t / L->block.x) % L->block.y,
                      (unsigned)t / (L->block.x * L->block.y)};
        f.state = READY;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = g_stacks.v[t];
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = nullptr;
        uintptr_t p = (uintptr_t)&b;
        makecontext(&f.ctx, (void (*)())fiber_main, 2, (unsigned)(p & 0xffffffffu), (unsigned)(p >> 32));
#ifdef DCL_SHIM_TSAN
        f.tsan = __tsan_create_fiber(0);
#endif
    }
    int done = 0;
    while (done < n && b.error.empty()) {
        bool ran = false;
        for (int t = 0; t < n && b.error.empty(); ++t) {
            Fiber& f = b.fibers[t];
            if (f.state != READY) continue;
            ran = true;
            b.cur = t;
            threadIdx = f.tid;
#ifdef DCL_SHIM_TSAN
            __tsan_switch_to_fiber(f.tsan, 1);
#endif
            swapcontext(&b.sched, &f.ctx);
            if (f.state == DONE) ++done;
        }
        if (!ran && done < n && b.error.empty()) {
            int waiting_barrier = 0, waiting_warp = 0, line = 0;
            for (auto& f : b.fibers) {
                if (f.state == AT_BARRIER) ++waiting_barrier, line = f.line;
                if (f.state == AT_WARP) ++waiting_warp, line = f.line;
            }
            char m[200];
            snprintf(m, sizeof m, "deadlock: %d threads at __syncthreads, %d at warp ops (line %d), "
                     "%d finished, of %d", waiting_barrier, waiting_warp, line, done, n);
            b.cur = 0;
            threadIdx = b.fibers[0].tid;
            fail(m);
        }
    }
#ifdef DCL_SHIM_TSAN
    for (auto& f : b.fibers) __tsan_destroy_fiber(f.tsan);
#endif
    g_block = nullptr;
}

template <class... A, size_t... I>
inline void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*reinterpret_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A> inline void call_kernel(void* kernel, void** args) {
    call_with(reinterpret_cast<void (*)(A...)>(kernel), args, std::index_sequence_for<A...>{});
}

template <class... A> DCL_SHIM_INTERNAL inline int signature(void (*)(A...), size_t* sizes, int max) {
    const size_t s[] = {sizeof(A)..., 0};
    int n = (int)sizeof...(A);
    for (int i = 0; i < n && i < max; ++i) sizes[i] = s[i];
    return n;
}

struct Config {
    unsigned grid[3], block[3], shmem, workers;
    unsigned always_fibers; // every block on fibers (ThreadSanitizer runs, divergent kernels)
    // TSan only: two process-wide addresses (every kernel file's library gets the same ones)
    // that order one launch's threads after all earlier launches' threads, as the stream does.
    char* launch_sync;
};

// Runs the whole grid; returns 0, or 1 with the first error in `err`.
template <class... A>
inline int launch(void (*k)(A...), const char* name, const Config* c, void** args, char* err,
                  size_t errlen) {
    Launch L;
    L.launch_sync = c->launch_sync;
#ifdef DCL_SHIM_TSAN
    // This launch's threads come after every thread of the launches before it.
    __tsan_acquire(c->launch_sync + 1);
    __tsan_release(c->launch_sync);
#endif
    L.body = &call_kernel<A...>;
    L.kernel = reinterpret_cast<void*>(k);
    L.args = args;
    L.name = name;
    L.grid = dim3{c->grid[0], c->grid[1], c->grid[2]};
    L.block = dim3{c->block[0], c->block[1], c->block[2]};
    L.shmem = c->shmem;
    uint64_t blocks = (uint64_t)c->grid[0] * c->grid[1] * c->grid[2];
    unsigned threads = c->block[0] * c->block[1] * c->block[2];
    if (blocks == 0 || threads == 0 || threads > 1024) {
        snprintf(err, errlen, "kernel %s: invalid launch (grid %u x %u x %u, block %u x %u x %u)",
                 name, c->grid[0], c->grid[1], c->grid[2], c->block[0], c->block[1], c->block[2]);
        return 1;
    }
    auto bid_of = [&](uint64_t i) {
        return uint3{(unsigned)(i % c->grid[0]), (unsigned)((i / c->grid[0]) % c->grid[1]),
                     (unsigned)(i / ((uint64_t)c->grid[0] * c->grid[1]))};
    };
    // Block 0 runs on fibers first; if it reached no barrier or warp op, the kernel has none
    // (CUDA requires a block's threads to reach the same barriers) and the other blocks run as
    // plain calls, which is much faster; one that does reach one is an error then.
    bool fast;
    {
        Block b;
        b.launch = &L;
        run_block(b, bid_of(0));
        if (!b.error.empty()) {
            snprintf(err, errlen, "%s", b.error.c_str());
            return 1;
        }
        fast = !b.synced && !c->always_fibers;
    }
    std::atomic<uint64_t> next{1};
    std::vector<std::string> errors(std::max(1u, c->workers));
    auto work = [&](unsigned w) {
        Block b;
        b.launch = &L;
        for (;;) {
            uint64_t i = next.fetch_add(1);
            if (i >= blocks) break;
            if (fast) {
                run_block_fast(b, bid_of(i));
            } else {
                run_block(b, bid_of(i));
            }
            if (!b.error.empty()) {
                errors[w] = b.error;
                next.store(blocks); // stop the others
                break;
            }
        }
    };
    unsigned workers = (unsigned)std::min<uint64_t>(std::max(1u, c->workers), blocks);
    std::vector<std::thread> pool;
    for (unsigned w = 1; w < workers; ++w) pool.emplace_back(work, w);
    work(0);
    for (auto& t : pool) t.join();
    for (auto& e : errors) {
        if (!e.empty()) {
            snprintf(err, errlen, "%s", e.c_str());
            return 1;
        }
    }
    return 0;
}

// ---- atomics on global or shared memory (real atomics: blocks run in parallel) ----
template <class T> inline T atomic_add_int(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

inline float atomic_add_float(float* p, float v) {
    uint32_t* u = reinterpret_cast<uint32_t*>(p);
    uint32_t old = __atomic_load_n(u, __ATOMIC_RELAXED), want;
    do {
        float f;
        memcpy(&f, &old, 4);
        f += v;
        memcpy(&want, &f, 4);
    } while (!__atomic_compare_exchange_n(u, &old, want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    float r;
    memcpy(&r, &old, 4);
    return r;
}

} // namespace dcl_shim

// ---- the CUDA device API the kernels use ----
#define __syncthreads() dcl_shim::syncthreads(__LINE__)
#define __syncwarp(...) dcl_shim_syncwarp(__LINE__, ##__VA_ARGS__)
#define __shfl_sync(mask, v, src, ...) dcl_shim_shfl(__LINE__, 0, mask, v, src, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) dcl_shim_shfl(__LINE__, 1, mask, v, d, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) dcl_shim_shfl(__LINE__, 2, mask, v, d, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) dcl_shim_shfl(__LINE__, 3, mask, v, m, ##__VA_ARGS__)
#define __ballot_sync(mask, p) dcl_shim_ballot(__LINE__, mask, p)
#define __any_sync(mask, p) (dcl_shim_ballot(__LINE__, mask, p) != 0u)
#define __all_sync(mask, p) (dcl_shim_ballot(__LINE__, mask, p) == ((unsigned)(mask)))
#define DCL_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(dcl_shim::g_dynamic_shared.data())

inline void dcl_shim_syncwarp(int line, unsigned mask = 0xffffffffu) {
    dcl_shim::warp_op(dcl_shim::OP_SYNC, mask, 0, -1, line);
}

// kind: 0 indexed, 1 down, 2 up, 3 xor (CUDA's source-lane rules within segments of `width`).
template <class T>
inline T dcl_shim_shfl(int line, int kind, unsigned mask, T v, int arg, int width = 32) {
    int lane = dcl_shim::lane_id(), base = lane & ~(width - 1), off = lane - base, src = lane;
    switch (kind) {
    case 0: src = base + (arg % width + width) % width; break;
    case 1: src = off + arg < width ? lane + arg : lane; break;
    case 2: src = off >= arg ? lane - arg : lane; break;
    default: src = ((off ^ arg) < width) ? base + (off ^ arg) : lane; break;
    }
    return dcl_shim::from_bits<T>(dcl_shim::warp_op(dcl_shim::OP_SHFL, mask, dcl_shim::to_bits(v), src, line));
}

inline unsigned dcl_shim_ballot(int line, unsigned mask, int pred) {
    return (unsigned)dcl_shim::warp_op(dcl_shim::OP_BALLOT, mask, pred ? 1 : 0, -1, line);
}

inline float atomicAdd(float* p, float v) { return dcl_shim::atomic_add_float(p, v); }
inline int atomicAdd(int* p, int v) { return dcl_shim::atomic_add_int(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return dcl_shim::atomic_add_int(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return dcl_shim::atomic_add_int(p, v);
}
template <class T> inline T atomicMax(T* p, T v) { return __atomic_fetch_max(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicMin(T* p, T v) { return __atomic_fetch_min(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicCAS(T* p, T cmp, T v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <class T> inline T __ldg(const T* p) { return *p; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(unsigned v) { return __builtin_ffs((int)v); }
inline int __clz(unsigned v) { return v ? __builtin_clz(v) : 32; }
[[noreturn]] inline void __trap() {
    dcl_shim::fail("__trap()");
    throw dcl_shim::Trap{};
}
