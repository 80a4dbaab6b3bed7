// dca/core/instances.hpp — compiling the float and double ops once instead of in every translation
// unit.
//
// dca is header-only: by default a translation unit instantiates every op it reaches, and an op's
// instance (its Eigen kernels and backward closure) is most of what a translation unit compiles.
// A project of many translation units can define DCA_EXTERN_TEMPLATES in all of them: each op
// header then declares its float and double instances `extern`, and one library compiles them
// (CMake: link `dca::instances`, which defines the macro for you; docs/architecture.md). Results
// are the same bits either way; only where the code is compiled changes.
//
// Each op header ends with a list macro naming its instances, called with the declaration keyword
// and the scalar type — DCA_MATMUL_INSTANCES(kind, T) expands to `kind Var<T> matmul(...); ...` —
// and hands it to DCA_EXTERN_INSTANCES. The library's translation units hand the same lists to
// DCA_DEFINE_INSTANCES.
#pragma once

#if defined(DCA_EXTERN_TEMPLATES)
/// Declares a list's float and double instances extern: compiled elsewhere, not here.
#define DCA_EXTERN_INSTANCES(list) list(extern template, float) list(extern template, double)
#else
#define DCA_EXTERN_INSTANCES(list)
#endif

/// Compiles a list's float and double instances (in the one translation unit that provides them).
#define DCA_DEFINE_INSTANCES(list) list(template, float) list(template, double)
