// dca/nn/nn.hpp — transformer building blocks and the decoder.
#pragma once

#include "dca/nn/attention.hpp"
#include "dca/nn/block.hpp"
#include "dca/nn/config.hpp"
#include "dca/nn/decoder.hpp"
#include "dca/nn/linear.hpp"
#include "dca/nn/mlp.hpp"
#include "dca/nn/norm.hpp"
