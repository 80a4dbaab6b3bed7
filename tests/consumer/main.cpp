// Builds against an installed dca: one differentiable computation and its gradient check.
#include <dca/dca.hpp>

#include <iostream>

int main() {
  dca::Tensor<double> x(dca::Shape{2, 3}, {0.1, -0.2, 0.3, 0.4, -0.5, 0.6});
  dca::Tensor<double> w(dca::Shape{4, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  const auto check = dca::check_gradients([](auto x, auto w) { return dca::matmul_nt(x, w); }, x, w);
  std::cout << check << "\n";
  return check ? 0 : 1;
}
