#include "dca/train/optimizer.hpp"
#include "dca/train/schedule.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

namespace {

using dca::Parameter;
using dca::Shape;
using dca::Tensor;

// The gradients every optimizer test feeds for three steps, per element of a 2-element parameter.
constexpr std::array<std::array<double, 2>, 3> gradients = {{{0.5, -1.0}, {0.2, 0.4}, {-0.3, 0.1}}};
constexpr std::array<double, 2> initial = {1.0, -2.0};

template <class T>
void set_grad(Parameter<T>& p, std::span<const double> values) {
  T* g = p.grad_buffer();
  for (std::size_t i = 0; i < values.size(); ++i) g[i] = static_cast<T>(values[i]);
}

template <class T>
Parameter<T> make_parameter(const char* name, Shape shape, std::span<const double> values) {
  Tensor<T> value(shape);
  for (std::size_t i = 0; i < values.size(); ++i) value[static_cast<dca::index_t>(i)] = static_cast<T>(values[i]);
  return Parameter<T>(name, value);
}

// The values of a parameter's state tensor, looked up by name in an optimizer's exported state.
template <class T>
std::vector<double> state_values(const std::vector<dca::StateTensor<T>>& state, const std::string& name) {
  for (const auto& tensor : state)
    if (tensor.name == name) return std::vector<double>(tensor.value.span().begin(), tensor.value.span().end());
  FAIL("no state tensor named " << name);
  return {};
}

// PyTorch's AdamW written out by hand for one element over the three steps of `gradients`, with
// lr = 0.1, β1 = 0.9, β2 = 0.99, eps = 1e-8. Step t (1-based) uses the bias corrections
// c1 = 1 − 0.9ᵗ and c2 = 1 − 0.99ᵗ: t=1: 0.1, 0.01; t=2: 0.19, 0.0199; t=3: 0.271, 0.029701.
struct AdamReference {
  double p, m, v;
};
AdamReference adamw_reference(std::size_t element, double weight_decay) {
  const double c1[3] = {0.1, 0.19, 0.271};
  const double c2[3] = {0.01, 0.0199, 0.029701};
  double p = initial[element], m = 0, v = 0;
  for (std::size_t t = 0; t < 3; ++t) {
    const double g = gradients[t][element];
    p = p - 0.1 * weight_decay * p;  // decoupled decay, applied to the value before the Adam step
    m = 0.9 * m + 0.1 * g;
    v = 0.99 * v + 0.01 * g * g;
    const double m_hat = m / c1[t];
    const double v_hat = v / c2[t];
    p = p - 0.1 * m_hat / (std::sqrt(v_hat) + 1e-8);
  }
  return {p, m, v};
}

// Runs AdamW (the hyper-parameters of adamw_reference) for three steps on a decayed [1,2] matrix
// "layer.weight" and a non-decayed [2] vector "layer.bias", both starting at `initial`.
template <class T>
struct AdamRun {
  Parameter<T> weight = make_parameter<T>("layer.weight", Shape{1, 2}, initial);
  Parameter<T> bias = make_parameter<T>("layer.bias", Shape{2}, initial);
  dca::AdamW<T> optimizer;

  explicit AdamRun(double weight_decay)
      : optimizer({&weight, &bias},
                  {.lr = 0.1, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = weight_decay}) {}

  void step(std::size_t t) {
    set_grad(weight, gradients[t]);
    set_grad(bias, gradients[t]);
    optimizer.step();
  }
};

}  // namespace

TEST_CASE("AdamW matches a hand-computed three-step reference, decaying only the parameters the rule selects") {
  for (const double weight_decay : {0.1, 0.0}) {
    CAPTURE(weight_decay);
    AdamRun<double> run(weight_decay);
    REQUIRE(run.optimizer.decays(0));
    REQUIRE_FALSE(run.optimizer.decays(1));

    // Step 1 by hand: m = 0.1·g and v = 0.01·g², so m̂ = g, v̂ = g² and the Adam step is
    // lr·g/(|g| + eps) = ±0.1 (to 2e-9). Decayed: 1·(1 − 0.1·wd) − 0.1 and −2·(1 − 0.1·wd) + 0.1.
    run.step(0);
    const double shrink = 1 - 0.1 * weight_decay;
    CHECK(run.weight.value()[0] == doctest::Approx(1 * shrink - 0.1).epsilon(1e-8));
    CHECK(run.weight.value()[1] == doctest::Approx(-2 * shrink + 0.1).epsilon(1e-8));
    CHECK(run.bias.value()[0] == doctest::Approx(0.9).epsilon(1e-8));
    CHECK(run.bias.value()[1] == doctest::Approx(-1.9).epsilon(1e-8));

    run.step(1);
    run.step(2);
    for (std::size_t e = 0; e < 2; ++e) {
      const auto i = static_cast<dca::index_t>(e);
      CHECK(run.weight.value()[i] == doctest::Approx(adamw_reference(e, weight_decay).p).epsilon(1e-12));
      CHECK(run.bias.value()[i] == doctest::Approx(adamw_reference(e, 0.0).p).epsilon(1e-12));
    }
    const auto state = run.optimizer.state();
    for (const char* name : {"layer.weight", "layer.bias"}) {
      CAPTURE(name);
      CHECK(state_values(state, std::string(name) + ".step") == std::vector<double>{3});
      const auto m = state_values(state, std::string(name) + ".exp_avg");
      const auto v = state_values(state, std::string(name) + ".exp_avg_sq");
      for (std::size_t e = 0; e < 2; ++e) {
        CHECK(m[e] == doctest::Approx(adamw_reference(e, weight_decay).m).epsilon(1e-14));
        CHECK(v[e] == doctest::Approx(adamw_reference(e, weight_decay).v).epsilon(1e-14));
      }
    }
    CHECK(run.optimizer.step_count() == 3);
  }
}

TEST_CASE("AdamW runs each parameter group at its multiple of the learning rate and with its own weight decay") {
  // Base rate 0.2 × 0.5 = 0.1 exactly, adamw_reference's rate; the groups' decays 0.1 (the
  // optimizer's, inherited) and 0 (the group's own), and a group at multiplier 0 that stays put.
  auto inherited = make_parameter<double>("inherited.weight", Shape{1, 2}, initial);
  auto own = make_parameter<double>("own.weight", Shape{1, 2}, initial);
  auto still = make_parameter<double>("still.weight", Shape{1, 2}, initial);
  dca::AdamW<double> optimizer(
      std::vector<dca::ParameterGroup<double>>{
          {.name = "inherited", .parameters = {&inherited}, .lr_multiplier = 0.5},
          {.name = "own", .parameters = {&own}, .lr_multiplier = 0.5, .weight_decay = 0.0},
          {.name = "still", .parameters = {&still}, .lr_multiplier = 0.0}},
      {.lr = 0.2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1});
  CHECK(optimizer.rate(0, 0.2) == 0.1);
  for (std::size_t t = 0; t < 3; ++t) {
    for (auto* p : {&inherited, &own, &still}) set_grad(*p, gradients[t]);
    optimizer.step();
  }
  for (std::size_t e = 0; e < 2; ++e) {
    const auto i = static_cast<dca::index_t>(e);
    CHECK(inherited.value()[i] == doctest::Approx(adamw_reference(e, 0.1).p).epsilon(1e-12));
    CHECK(own.value()[i] == doctest::Approx(adamw_reference(e, 0.0).p).epsilon(1e-12));
    CHECK(still.value()[i] == initial[e]);
  }
}

TEST_CASE("AdamW in float follows the double reference to float precision") {
  AdamRun<float> run(0.1);
  for (std::size_t t = 0; t < 3; ++t) run.step(t);
  for (std::size_t e = 0; e < 2; ++e) {
    const auto i = static_cast<dca::index_t>(e);
    CHECK(run.weight.value()[i] == doctest::Approx(adamw_reference(e, 0.1).p).epsilon(1e-6));
    CHECK(run.bias.value()[i] == doctest::Approx(adamw_reference(e, 0.0).p).epsilon(1e-6));
  }
}

TEST_CASE("AdamW's bias correction makes every step under a constant gradient lr times its sign, at any scale") {
  // With a constant g, m = (1−β1ᵗ)·g and v = (1−β2ᵗ)·g², so m̂ = g and v̂ = g² exactly and each step
  // moves by lr·g/(|g| + eps). Without the correction the first step would be lr·0.1/√0.001 ≈ 3.16·lr.
  for (const double g : {1e-3, 10.0}) {
    CAPTURE(g);
    Parameter<double> p("w", Tensor<double>(Shape{2, 1}, 0.0));
    dca::AdamW<double> optimizer({&p}, {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-12, .weight_decay = 0});
    for (int t = 1; t <= 3; ++t) {
      const std::array<double, 2> grad = {g, -g};
      set_grad(p, grad);
      optimizer.step();
      CHECK(p.value()[0] == doctest::Approx(-0.01 * t).epsilon(1e-8));
      CHECK(p.value()[1] == doctest::Approx(0.01 * t).epsilon(1e-8));
    }
  }
}

TEST_CASE("AdamW counts steps per parameter, so a parameter joining late gets a bias-corrected first step") {
  Parameter<double> early("early", Tensor<double>(Shape{2}, 0.0));
  Parameter<double> late("late", Tensor<double>(Shape{2}, 0.0));
  dca::AdamW<double> optimizer({&early, &late}, {.lr = 0.1, .beta1 = 0.9, .beta2 = 0.999, .weight_decay = 0});
  const std::array<double, 2> grad = {2.0, -4.0};
  set_grad(early, grad);
  optimizer.step();  // `late` has no gradient yet: skipped, no state
  CHECK(late.value()[0] == 0.0);
  CHECK(optimizer.state().size() == 3);
  set_grad(late, grad);
  optimizer.step();
  // late's first update: t = 1, so m̂ = g, v̂ = g² and it moves by lr·sign(g) = ∓0.1.
  CHECK(late.value()[0] == doctest::Approx(-0.1).epsilon(1e-8));
  CHECK(late.value()[1] == doctest::Approx(0.1).epsilon(1e-8));
  CHECK(state_values(optimizer.state(), "late.step") == std::vector<double>{1});
  CHECK(state_values(optimizer.state(), "early.step") == std::vector<double>{2});
  CHECK(optimizer.step_count() == 2);
}

TEST_CASE("AdamW and SGD leave a frozen parameter, its gradient and its state untouched") {
  Parameter<float> frozen("frozen.weight", Tensor<float>(Shape{2, 2}, 1.5f));
  Parameter<float> active("active.weight", Tensor<float>(Shape{2, 2}, 1.5f));
  const std::array<double, 4> grad = {1, 2, 3, 4};
  set_grad(frozen, grad);
  set_grad(active, grad);
  frozen.freeze();
  dca::AdamW<float> adam({&frozen, &active});
  dca::Sgd<float> sgd({&frozen, &active});
  adam.step();
  sgd.step();
  for (dca::index_t i = 0; i < 4; ++i) {
    CHECK(frozen.value()[i] == 1.5f);
    CHECK(frozen.grad()[i] == static_cast<float>(grad[static_cast<std::size_t>(i)]));
    CHECK(active.value()[i] != 1.5f);
  }
  for (const auto& tensor : adam.state()) CHECK(tensor.name.rfind("active.weight.", 0) == 0);
  CHECK(adam.state().size() == 3);
  CHECK(sgd.state().size() == 1);
}

TEST_CASE("zero_grad zeroes every existing gradient and allocates none") {
  Parameter<float> a("a", Tensor<float>(Shape{3}, 1.0f));
  Parameter<float> b("b", Tensor<float>(Shape{3}, 1.0f));
  const std::array<double, 3> grad = {1, -2, 3};
  set_grad(a, grad);
  a.freeze();
  dca::AdamW<float> optimizer({&a, &b});
  optimizer.zero_grad();
  CHECK_FALSE(b.has_grad());
  for (dca::index_t i = 0; i < 3; ++i) CHECK(a.grad()[i] == 0.0f);
}

TEST_CASE("the default decay rule exempts biases, norm weights and embeddings, and a custom rule replaces it") {
  const auto decays = [](const char* name, Shape shape) {
    return dca::default_decays(Parameter<float>(name, Tensor<float>(shape)));
  };
  CHECK(decays("transformer.h.0.attn.c_attn.weight", Shape{4, 12}));
  CHECK(decays("model.layers.0.mlp.down_proj.weight", Shape{8, 4}));
  CHECK_FALSE(decays("transformer.h.0.attn.c_attn.bias", Shape{12}));
  CHECK_FALSE(decays("model.norm.weight", Shape{4}));
  CHECK_FALSE(decays("transformer.wte.weight", Shape{256, 4}));
  CHECK_FALSE(decays("transformer.wpe.weight", Shape{64, 4}));
  CHECK_FALSE(decays("model.embed_tokens.weight", Shape{256, 4}));

  Parameter<double> bias = make_parameter<double>("bias", Shape{2}, initial);
  dca::AdamW<double> optimizer({&bias}, {.lr = 0.1, .weight_decay = 0.5},
                               [](const Parameter<double>&) { return true; });
  CHECK(optimizer.decays(0));
  const std::array<double, 2> zero = {0, 0};
  set_grad(bias, zero);
  optimizer.step();
  // A zero gradient makes the Adam step 0/(0 + eps) = 0, leaving only the decay: p·(1 − 0.1·0.5).
  CHECK(bias.value()[0] == doctest::Approx(0.95));
  CHECK(bias.value()[1] == doctest::Approx(-1.9));
}

TEST_CASE("AdamW state round-trips through state() and load_state, continuing exactly") {
  AdamRun<double> original(0.1);
  original.step(0);
  original.step(1);
  AdamRun<double> resumed(0.1);
  resumed.weight.value() = original.weight.value();
  resumed.bias.value() = original.bias.value();
  const auto state = original.optimizer.state();
  CHECK(state.size() == 6);
  resumed.optimizer.load_state(state, original.optimizer.step_count());
  CHECK(resumed.optimizer.step_count() == 2);
  original.step(2);
  resumed.step(2);
  for (dca::index_t i = 0; i < 2; ++i) {
    CHECK(resumed.weight.value()[i] == original.weight.value()[i]);
    CHECK(resumed.bias.value()[i] == original.bias.value()[i]);
  }
  // Loading an optimizer's own state (views into the storage being replaced) is safe.
  resumed.optimizer.load_state(resumed.optimizer.state(), 3);
  CHECK(state_values(resumed.optimizer.state(), "layer.bias.exp_avg") ==
        state_values(original.optimizer.state(), "layer.bias.exp_avg"));
  // An empty state restarts every parameter.
  resumed.optimizer.load_state({}, 0);
  CHECK(resumed.optimizer.state().empty());
}

TEST_CASE("load_state rejects unknown, repeated, incomplete, misshapen and bad-step state, naming the tensor") {
  AdamRun<double> run(0.1);
  run.step(0);
  const auto good = run.optimizer.state();  // weight: step, exp_avg, exp_avg_sq; then bias
  const Tensor<double> wrong_shape(Shape{2, 1});
  const Tensor<double> half_step(Shape{}, 1.5);

  auto with = [&](std::size_t index, dca::StateTensor<double> replacement) {
    auto tensors = good;
    tensors[index] = std::move(replacement);
    return tensors;
  };
  CHECK_THROWS_WITH_AS(run.optimizer.load_state(with(1, {"layer.weight.exp_avgg", good[1].value}), 1),
                       doctest::Contains("'layer.weight.exp_avgg' is not a state tensor"), dca::FormatError);
  CHECK_THROWS_WITH_AS(run.optimizer.load_state(with(1, {"layer.weight", good[1].value}), 1),
                       doctest::Contains("'layer.weight' is not a state tensor"), dca::FormatError);
  CHECK_THROWS_WITH_AS(run.optimizer.load_state(with(1, {"layer.weight.exp_avg", wrong_shape.view()}), 1),
                       doctest::Contains("'layer.weight.exp_avg' has shape [2,1] but must have shape [1,2]"),
                       dca::ShapeError);
  CHECK_THROWS_WITH_AS(run.optimizer.load_state(with(0, {"layer.weight.step", half_step.view()}), 1),
                       doctest::Contains("'layer.weight.step' holds 1.5"), dca::FormatError);
  CHECK_THROWS_WITH_AS(run.optimizer.load_state(with(2, good[1]), 1),
                       doctest::Contains("'layer.weight.exp_avg' is given twice"), dca::FormatError);
  const std::vector<dca::StateTensor<double>> incomplete(good.begin(), good.begin() + 2);
  CHECK_THROWS_WITH_AS(run.optimizer.load_state(incomplete, 1),
                       doctest::Contains("'layer.weight.exp_avg_sq' is missing"), dca::FormatError);
  CHECK_THROWS_WITH_AS(run.optimizer.load_state(good, -1), doctest::Contains("step_count -1"), dca::RangeError);
  // Nothing changed by the failed loads.
  CHECK(run.optimizer.state().size() == 6);
  CHECK(state_values(run.optimizer.state(), "layer.weight.step") == std::vector<double>{1});
}

TEST_CASE("optimizer configurations, learning rates and parameter lists are validated with the field named") {
  Parameter<float> p("p", Tensor<float>(Shape{2}));
  const std::vector<Parameter<float>*> ps = {&p};
  CHECK_THROWS_WITH_AS(dca::AdamW<float>(ps, {.beta1 = 1.0}), doctest::Contains("AdamWConfig: beta1 = 1"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::AdamW<float>(ps, {.beta2 = -0.1}), doctest::Contains("beta2"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::AdamW<float>(ps, {.eps = 0}), doctest::Contains("eps = 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::AdamW<float>(ps, {.lr = std::numeric_limits<double>::quiet_NaN()}),
                       doctest::Contains("lr = nan"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::AdamW<float>(ps, {.weight_decay = -1}), doctest::Contains("weight_decay"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::Sgd<float>(ps, {.momentum = 1.0}), doctest::Contains("SgdConfig: momentum = 1"),
                       dca::RangeError);
  dca::AdamW<float> adam(ps);
  CHECK_THROWS_WITH_AS(adam.step(-1e-3), doctest::Contains("AdamW::step: lr = -0.001"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::AdamW<float>({&p, &p}), doctest::Contains("two parameters are named 'p'"), dca::UsageError);
  CHECK_THROWS_WITH_AS(dca::Sgd<float>({&p, nullptr}), doctest::Contains("parameter 1 is a null pointer"),
                       dca::UsageError);
}

TEST_CASE("SGD with momentum and coupled weight decay matches a hand-computed three-step reference") {
  Parameter<double> weight = make_parameter<double>("layer.weight", Shape{1, 2}, initial);
  Parameter<double> bias = make_parameter<double>("layer.bias", Shape{2}, initial);
  dca::Sgd<double> optimizer({&weight, &bias}, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01});
  for (std::size_t t = 0; t < 3; ++t) {
    set_grad(weight, gradients[t]);
    set_grad(bias, gradients[t]);
    optimizer.step();
  }
  // By hand, per element: d = g + wd·p (wd = 0.01 for the weight, 0 for the bias); buf = 0.9·buf + d
  // (so buf = d at step 1); p = p − 0.1·buf.
  for (std::size_t e = 0; e < 2; ++e) {
    for (const double wd : {0.01, 0.0}) {
      double p = initial[e], buf = 0;
      for (std::size_t t = 0; t < 3; ++t) {
        const double d = gradients[t][e] + wd * p;
        buf = 0.9 * buf + d;
        p = p - 0.1 * buf;
      }
      const Parameter<double>& actual = wd > 0 ? weight : bias;
      CHECK(actual.value()[static_cast<dca::index_t>(e)] == doctest::Approx(p).epsilon(1e-14));
      if (wd == 0) CHECK(state_values(optimizer.state(), "layer.bias.momentum_buffer")[e] == doctest::Approx(buf));
    }
  }
  // Element 0 of the bias, written out: buf = 0.5, 0.65, 0.285; p = 1 − 0.05 − 0.065 − 0.0285.
  CHECK(bias.value()[0] == doctest::Approx(0.8565).epsilon(1e-14));
}

TEST_CASE("SGD without momentum is plain gradient descent and keeps no state") {
  Parameter<float> p = make_parameter<float>("p", Shape{2}, initial);
  dca::Sgd<float> optimizer({&p}, {.lr = 0.5, .momentum = 0});
  set_grad(p, gradients[0]);
  optimizer.step();
  CHECK(p.value()[0] == doctest::Approx(1.0 - 0.5 * 0.5));
  CHECK(p.value()[1] == doctest::Approx(-2.0 + 0.5 * 1.0));
  CHECK(optimizer.state().empty());
  const Tensor<float> buffer(Shape{2});
  const std::vector<dca::StateTensor<float>> tensors = {{"p.momentum_buffer", buffer.view()}};
  CHECK_THROWS_WITH_AS(optimizer.load_state(tensors, 1), doctest::Contains("(it has no state)"), dca::FormatError);
}

TEST_CASE("clip_grad_norm returns the global norm and rescales the gradients to max_norm only above it") {
  Parameter<double> a("a", Tensor<double>(Shape{2}));
  Parameter<double> b("b", Tensor<double>(Shape{1, 1}));
  Parameter<double> frozen("frozen", Tensor<double>(Shape{1}));
  Parameter<double> no_grad("no_grad", Tensor<double>(Shape{1}));
  const std::array<double, 2> ga = {3, 4};
  const std::array<double, 1> gb = {12}, gf = {100};
  set_grad(a, ga);
  set_grad(b, gb);
  set_grad(frozen, gf);
  frozen.freeze();
  const std::vector<Parameter<double>*> ps = {&a, &b, &frozen, &no_grad};

  // Below the threshold: norm √(9 + 16 + 144) = 13 (the frozen gradient does not count), nothing changes.
  CHECK(dca::clip_grad_norm(ps, 20.0) == 13.0);
  CHECK(a.grad()[0] == 3.0);
  CHECK(b.grad()[0] == 12.0);

  // Above it: every unfrozen gradient is scaled by 6.5 / (13 + 1e-6).
  CHECK(dca::clip_grad_norm(ps, 6.5) == 13.0);
  const double scale = 6.5 / (13 + 1e-6);
  CHECK(a.grad()[0] == doctest::Approx(3 * scale).epsilon(1e-15));
  CHECK(a.grad()[1] == doctest::Approx(4 * scale).epsilon(1e-15));
  CHECK(b.grad()[0] == doctest::Approx(12 * scale).epsilon(1e-15));
  CHECK(frozen.grad()[0] == 100.0);
  CHECK_FALSE(no_grad.has_grad());
}

TEST_CASE("clip_grad_norm accumulates float gradients in double and names the parameter holding a non-finite value") {
  Parameter<float> big("big", Tensor<float>(Shape{2}));
  const std::array<double, 2> huge = {3e20, 4e20};  // squares overflow float, not double
  set_grad(big, huge);
  const std::vector<Parameter<float>*> ps = {&big};
  CHECK(dca::clip_grad_norm(ps, 1.0) == doctest::Approx(5e20).epsilon(1e-6));
  CHECK(big.grad()[0] == doctest::Approx(0.6).epsilon(1e-6));

  Parameter<float> fine("fine", Tensor<float>(Shape{2}));
  Parameter<float> broken("h.1.mlp.weight", Tensor<float>(Shape{1, 3}));
  const std::array<double, 2> ok = {1, 1};
  const std::array<double, 3> bad = {0, std::numeric_limits<double>::quiet_NaN(), 1};
  set_grad(fine, ok);
  set_grad(broken, bad);
  const std::vector<Parameter<float>*> with_nan = {&fine, &broken};
  CHECK_THROWS_WITH_AS(dca::clip_grad_norm(with_nan, 1.0),
                       doctest::Contains("the gradient of 'h.1.mlp.weight' holds nan at element 1"),
                       dca::NonFiniteError);
  CHECK_THROWS_WITH_AS(dca::clip_grad_norm(ps, 0.0), doctest::Contains("max_norm = 0"), dca::RangeError);
}

TEST_CASE("WarmupCosine warms up linearly to max_lr at step W-1, decays by cosine to min_lr at N, then stays") {
  const dca::WarmupCosine schedule{.max_lr = 1.0, .min_lr = 0.1, .warmup_steps = 10, .total_steps = 110};
  CHECK(schedule(0) == doctest::Approx(0.1));   // max_lr / W
  CHECK(schedule(4) == doctest::Approx(0.5));   // max_lr · 5 / 10
  CHECK(schedule(9) == doctest::Approx(1.0));   // end of warmup
  CHECK(schedule(10) == doctest::Approx(1.0));  // cosine at progress 0
  // progress (35 − 10)/100 = 1/4: 0.1 + 0.9·(1 + cos(π/4))/2
  CHECK(schedule(35) == doctest::Approx(0.1 + 0.9 * (1 + std::sqrt(0.5)) / 2));
  CHECK(schedule(60) == doctest::Approx(0.55));  // middle: 0.1 + 0.9/2
  CHECK(schedule(110) == doctest::Approx(0.1));
  CHECK(schedule(5000) == 0.1);
  for (dca::index_t s = 10; s < 120; ++s) CHECK(schedule(s + 1) <= schedule(s));

  const dca::WarmupCosine no_warmup{.max_lr = 2.0, .min_lr = 0.0, .warmup_steps = 0, .total_steps = 4};
  CHECK(no_warmup(0) == 2.0);
  CHECK(no_warmup(2) == doctest::Approx(1.0));
  CHECK(no_warmup(4) == 0.0);
}

TEST_CASE("WarmupCosine rejects inconsistent settings and negative steps with the field named") {
  using S = dca::WarmupCosine;
  CHECK_THROWS_WITH_AS((S{.max_lr = 0, .min_lr = 0, .warmup_steps = 0, .total_steps = 1})(0),
                       doctest::Contains("max_lr = 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS((S{.max_lr = 1, .min_lr = 2, .warmup_steps = 0, .total_steps = 1})(0),
                       doctest::Contains("min_lr = 2 must lie in [0, max_lr = 1]"), dca::RangeError);
  CHECK_THROWS_WITH_AS((S{.max_lr = 1, .min_lr = 0, .warmup_steps = 5, .total_steps = 4})(0),
                       doctest::Contains("total_steps = 4 is less than warmup_steps = 5"), dca::RangeError);
  CHECK_THROWS_WITH_AS((S{.max_lr = 1, .min_lr = 0, .warmup_steps = 1, .total_steps = 4})(-1),
                       doctest::Contains("step -1 is negative"), dca::RangeError);
}
