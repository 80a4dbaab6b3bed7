// Specification: a training loop that reuses one tape allocates nothing after its first step.
#include "dca/autodiff/ops/activation.hpp"
#include "dca/autodiff/ops/cross_entropy.hpp"
#include "dca/autodiff/ops/matmul.hpp"
#include "dca/autodiff/tape.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <malloc.h>

#include <vector>

using dca::index_t;
using dca::Parameter;
using dca::Shape;
using dca::Tensor;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool heap_statistics_available = false;  // ASan replaces malloc; mallinfo2 is meaningless
#else
constexpr bool heap_statistics_available = true;
#endif

std::size_t heap_bytes_in_use() { return mallinfo2().uordblks; }

}  // namespace

TEST_CASE("memory does not grow across 10,000 training steps on one tape") {
  // A two-layer classifier of 3-dimensional points by the sign of their first coordinate.
  const index_t batch = 16, in = 3, hidden = 8, classes = 2;
  Parameter<float> w1("w1", dca::test::random_tensor<float>(Shape{hidden, in}, 1, -0.5, 0.5));
  Parameter<float> b1("b1", Tensor<float>(Shape{1, hidden}));
  Parameter<float> w2("w2", dca::test::random_tensor<float>(Shape{classes, hidden}, 2, -0.5, 0.5));
  const auto inputs = dca::test::random_tensor<float>(Shape{batch, in}, 3);
  std::vector<index_t> labels(static_cast<std::size_t>(batch));
  for (index_t i = 0; i < batch; ++i) labels[static_cast<std::size_t>(i)] = inputs(i, 0) > 0 ? 1 : 0;

  dca::Tape<float> tape;
  auto step = [&] {
    tape.reset();
    const auto x = tape.constant(inputs);
    const auto h = dca::tanh(dca::linear(x, tape.param(w1), tape.param(b1)));
    const auto loss = dca::cross_entropy(dca::linear(h, tape.param(w2)), std::span<const index_t>(labels));
    tape.backward(loss);
    for (Parameter<float>* p : {&w1, &b1, &w2}) {
      p->value().matrix() -= 0.5f * p->grad().matrix();
      p->zero_grad();
    }
    return loss.item();
  };

  const float first_loss = step();
  const auto reserved = tape.arena().reserved_bytes();
  const auto capacity = tape.node_capacity();
  // The heap is read after 100 steps: OpenMP's and OpenBLAS's worker threads set up glibc's
  // per-thread malloc caches lazily in their first steps, which mallinfo2 counts although no
  // allocation call is made (heaptrack records none during the loop).
  for (int i = 1; i < 100; ++i) step();
  const auto heap = heap_bytes_in_use();
  float last_loss = first_loss;
  for (int i = 100; i < 10000; ++i) last_loss = step();

  CHECK(tape.arena().reserved_bytes() == reserved);
  CHECK(tape.node_capacity() == capacity);
  if (heap_statistics_available) CHECK(heap_bytes_in_use() == heap);
  CHECK(last_loss < 0.25f * first_loss);  // and it did learn
}
