// dca/dca.hpp — umbrella header: everything the library offers.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/tensor/shape.hpp"
#include "dca/tensor/tensor.hpp"
#include "dca/tensor/xtensor.hpp"
#include "dca/autodiff/arena.hpp"
#include "dca/autodiff/parameter.hpp"
#include "dca/autodiff/tape.hpp"
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops.hpp"
