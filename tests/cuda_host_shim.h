// CUDA-on-the-host shim: lets the system C++ compiler build a raw CUDA kernel
// source (caffecompress/engine/huffman_cuda.py's KERNEL_SOURCE) so its logic can
// be tested on a machine without a GPU (tests/cudahost.py builds and loads it).
//
// What it maps:
//   __global__/__device__/__forceinline__  -> plain (inline) host functions
//   blockIdx/threadIdx/blockDim/gridDim   -> globals the launcher sets before
//                                             every call
//   __ldg(p)                               -> *p
//
// How threads run: one after another, in a serial loop over every block and
// every thread of the grid (optionally in reverse order). That is one of the
// schedules a GPU may pick only for kernels whose threads never wait for or
// talk to each other, so __syncthreads, __shared__, atomics and warp
// intrinsics are deliberately NOT defined: a kernel that starts using them
// stops compiling here instead of being tested under the wrong semantics
// (it would then need one host function per barrier phase, or a std::thread
// per CUDA thread).
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

struct cc_dim3 {
    unsigned int x, y, z;
};

// static: every compiled kernel library gets its own coordinates
static cc_dim3 blockIdx, threadIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// __restrict__ is a GNU extension that g++ and clang++ accept as it is.

template <typename T>
inline T __ldg(const T* p) { return *p; }

// --- launching: CUDA driver convention, args[i] points at parameter i ------

template <typename... A, std::size_t... I>
inline void cc_invoke(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A>
inline void cc_launch(void (*k)(A...), const unsigned int* grid, const unsigned int* block,
                      int reverse, void** args) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    const unsigned long long nb = 1ull * grid[0] * grid[1] * grid[2];
    const unsigned long long nt = 1ull * block[0] * block[1] * block[2];
    for (unsigned long long t = 0; t < nb * nt; ++t) {
        const unsigned long long u = reverse ? nb * nt - 1 - t : t;
        const unsigned long long b = u / nt, r = u % nt;
        blockIdx = {(unsigned)(b % grid[0]), (unsigned)(b / grid[0] % grid[1]),
                    (unsigned)(b / grid[0] / grid[1])};
        threadIdx = {(unsigned)(r % block[0]), (unsigned)(r / block[0] % block[1]),
                     (unsigned)(r / block[0] / block[1])};
        cc_invoke(k, args, std::index_sequence_for<A...>{});
    }
}

// --- describing parameters, so the Python side can check what it passes ----
// Four numbers per parameter: is it a pointer; the byte size of the value (or
// of what the pointer points at); its kind as a NumPy dtype.kind letter; is
// the pointee const.

template <typename T>
constexpr long long cc_kind() {
    return std::is_same_v<T, bool> ? 'b'
           : std::is_floating_point_v<T> ? 'f'
           : std::is_integral_v<T> ? (std::is_signed_v<T> ? 'i' : 'u')
                                   : 'V';
}

template <typename T>
inline void cc_describe_one(long long* o) {
    if constexpr (std::is_pointer_v<T>) {
        using P = std::remove_pointer_t<T>;
        using V = std::remove_cv_t<P>;
        o[0] = 1;
        if constexpr (std::is_void_v<V>) {
            o[1] = 0;
        } else {
            o[1] = (long long)sizeof(V);
        }
        o[2] = cc_kind<V>();
        o[3] = std::is_const_v<P> ? 1 : 0;
    } else {
        o[0] = 0;
        o[1] = (long long)sizeof(T);
        o[2] = cc_kind<T>();
        o[3] = 0;
    }
}

template <typename... A, std::size_t... I>
inline int cc_describe(void (*)(A...), long long* out, int cap, std::index_sequence<I...>) {
    if ((int)sizeof...(A) <= cap) {
        (cc_describe_one<A>(out + 4 * I), ...);
    }
    return (int)sizeof...(A);
}

// One exported launcher and describer per extern "C" kernel (tests/cudahost.py
// appends a CC_EXPORT line for each kernel it finds in the source).
#define CC_EXPORT(name)                                                                \
    extern "C" void cc_launch_##name(const unsigned int* g, const unsigned int* b,    \
                                     int reverse, void** a) {                         \
        cc_launch(&name, g, b, reverse, a);                                            \
    }                                                                                  \
    extern "C" int cc_describe_##name(long long* out, int cap) {                       \
        return cc_describe_all(&name, out, cap);                                       \
    }

template <typename... A>
inline int cc_describe_all(void (*k)(A...), long long* out, int cap) {
    return cc_describe(k, out, cap, std::index_sequence_for<A...>{});
}
