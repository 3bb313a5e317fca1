#pragma once
// Shared between .cpp (host compiler) and .cu (nvcc) translation units. Keeps
// torch headers out so the .cu files compile fast.
#include <cstdint>

#if defined(__CUDACC__)
#define MTS_HD __host__ __device__ __forceinline__
#else
#define MTS_HD inline
#endif
