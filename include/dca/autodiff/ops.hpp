// dca/autodiff/ops.hpp — every differentiable op. Each header holds one op family.
#pragma once

#include "dca/autodiff/ops/activation.hpp"
#include "dca/autodiff/ops/attention.hpp"
#include "dca/autodiff/ops/cross_entropy.hpp"
#include "dca/autodiff/ops/elementwise.hpp"
#include "dca/autodiff/ops/embedding.hpp"
#include "dca/autodiff/ops/matmul.hpp"
#include "dca/autodiff/ops/norm.hpp"
#include "dca/autodiff/ops/reduce.hpp"
#include "dca/autodiff/ops/rope.hpp"
#include "dca/autodiff/ops/shape.hpp"
#include "dca/autodiff/ops/softmax.hpp"
