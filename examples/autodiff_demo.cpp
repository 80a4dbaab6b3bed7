// autodiff_demo — the paper's mechanism in miniature, on the autodiff core alone.
//
// A frozen one-layer attention model reads a context of tokens and predicts a token at its last
// position. We learn one *latent* row z, appended to the context's keys and values, by gradient
// descent *through the frozen model*: the frozen weights get no gradient (their weight-gradient
// GEMMs are not even run), while the gradient reaches z through the frozen activations. That is
// how a coprocessor is trained through a frozen decoder.
//
//   ./build/examples/autodiff_demo
//   ./build/examples/autodiff_demo --help
#include <dca/dca.hpp>

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

using dca::index_t;
using dca::Parameter;
using dca::Shape;
using dca::Tensor;
using dca::Var;

template <class T>
Tensor<T> random_tensor(Shape shape, unsigned seed, double scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  Tensor<T> t(shape);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = static_cast<T>(normal(rng));
  return t;
}

// The frozen model: embeddings, one attention layer whose last query reads the context plus the
// latent row, and an output head.
template <class T>
struct FrozenModel {
  index_t vocab = 16, dim = 32, heads = 4;
  Parameter<T> embed{"embed", random_tensor<T>(Shape{vocab, dim}, 1, 1.0)};
  Parameter<T> wq{"wq", random_tensor<T>(Shape{dim, dim}, 2, 0.3)};
  Parameter<T> wk{"wk", random_tensor<T>(Shape{dim, dim}, 3, 0.3)};
  Parameter<T> wv{"wv", random_tensor<T>(Shape{dim, dim}, 4, 0.3)};
  Parameter<T> head{"head", random_tensor<T>(Shape{vocab, dim}, 5, 0.3)};

  FrozenModel() {
    for (Parameter<T>* p : {&embed, &wq, &wk, &wv, &head}) p->freeze();
  }

  // context ids [N] and latent z [1, dim] -> logits [1, vocab] at the last context token.
  Var<T> logits(dca::Tape<T>& tape, std::span<const index_t> context, const Var<T>& z) {
    const auto x = dca::embedding(tape.param(embed), context);                        // [N, dim]
    const auto keys_in = dca::concat_rows({x, z});                                    // [N+1, dim]
    const auto q = dca::linear(dca::slice_rows(x, x.rows() - 1, 1), tape.param(wq));  // [1, dim]
    const auto k = dca::linear(keys_in, tape.param(wk));                              // [N+1, dim]
    const auto v = dca::linear(keys_in, tape.param(wv));                              // [N+1, dim]
    dca::AttentionArgs<T> args;
    args.n_heads = heads;
    args.n_kv_heads = heads;
    args.rule = dca::AttentionRule::bidirectional;  // the last token sees the context and z
    const auto attended = dca::attention(q, k, v, args);                              // [1, dim]
    return dca::linear(dca::add(attended, dca::slice_rows(x, x.rows() - 1, 1)), tape.param(head));
  }
};

}  // namespace

int main(int argc, char** argv) {
  // No options: parsing only answers --help and refuses a mistyped flag instead of ignoring it.
  CLI::App app{"Learn a latent row by gradient descent through a frozen one-layer attention model"};
  CLI11_PARSE(app, argc, argv);
  std::printf("gemm: %s\n\n", dca::gemm_backend_summary().c_str());
  const std::vector<index_t> context = {3, 1, 4, 1, 5, 9, 2, 6};
  const std::vector<index_t> target = {7};  // a token the frozen model does not predict

  // 1. One line checks d loss / d z against finite differences (double precision).
  FrozenModel<double> checked;
  const auto check = dca::check_gradients(
      [&](auto z) {
        return dca::cross_entropy(checked.logits(z.tape(), context, z), std::span<const index_t>(target));
      },
      random_tensor<double>(Shape{1, checked.dim}, 6, 0.1));
  std::printf("gradient check of d loss / d z through the frozen model:\n  %s\n\n", check.message().c_str());

  // 2. Train z in float by gradient descent through the frozen model.
  FrozenModel<float> model;
  Parameter<float> z("z", Tensor<float>(Shape{1, model.dim}));
  dca::Tape<float> tape;
  std::printf("%6s  %10s  %12s\n", "step", "loss", "p(target)");
  float first_loss = 0, loss_value = 0;
  for (int step = 0; step <= 200; ++step) {
    tape.reset();
    const auto logits = model.logits(tape, context, tape.param(z));
    const auto loss = dca::cross_entropy(logits, std::span<const index_t>(target));
    tape.backward(loss);
    loss_value = loss.item();
    if (step == 0) first_loss = loss_value;
    if (step % 40 == 0) std::printf("%6d  %10.4f  %12.4f\n", step, loss_value, std::exp(-loss_value));
    z.value().matrix() -= 0.5f * z.grad().matrix();
    z.zero_grad();
  }

  // 3. The frozen weights received nothing, and their weight-gradient GEMMs were skipped: count
  //    one step's backward GEMMs frozen, then unfrozen.
  bool frozen_untouched = true;
  for (auto* p : {&model.embed, &model.wq, &model.wk, &model.wv, &model.head}) frozen_untouched &= !p->has_grad();
  auto gemms_in_one_step = [&] {
    tape.reset();
    const auto before = tape.stats().backward_gemms;
    tape.backward(dca::cross_entropy(model.logits(tape, context, tape.param(z)), std::span<const index_t>(target)));
    return tape.stats().backward_gemms - before;
  };
  const auto frozen_gemms = gemms_in_one_step();
  for (auto* p : {&model.embed, &model.wq, &model.wk, &model.wv, &model.head}) p->unfreeze();
  const auto unfrozen_gemms = gemms_in_one_step();
  std::printf("\nloss %.4f -> %.4f; frozen weights untouched: %s\n", first_loss, loss_value,
              frozen_untouched ? "yes" : "no");
  std::printf("backward GEMMs per step: %llu with the model frozen, %llu if it were trainable\n",
              static_cast<unsigned long long>(frozen_gemms), static_cast<unsigned long long>(unfrozen_gemms));
  return check && frozen_untouched && loss_value < first_loss ? 0 : 1;
}
