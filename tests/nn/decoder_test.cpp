// Specification of the decoder templates: presets, names, inputs, batching, freezing, gradients.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/reduce.hpp"
#include "dca/nn/nn.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

using dca::DecoderConfig;
using dca::index_t;
using dca::Shape;
using dca::Tensor;

namespace {

// Tiny versions of every preset, small enough for finite differences in double.
std::vector<DecoderConfig> tiny_presets() {
  auto gemma = DecoderConfig::gemma2({.vocab = 11,
                                      .dim = 8,
                                      .layers = 2,
                                      .heads = 2,
                                      .kv_heads = 1,
                                      .head_dim = 6,
                                      .mlp = 12,
                                      .window = 3});  // head_dim 6 ≠ 8/2, MQA
  gemma.attention_softcap = 2.0;  // small caps so that soft-capping is active at these scales
  gemma.final_softcap = 3.0;
  return {DecoderConfig::gpt2({.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .max_positions = 16}),
          DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 12}),
          DecoderConfig::qwen2({.vocab = 11, .dim = 8, .layers = 2, .heads = 4, .kv_heads = 2, .mlp = 12}), gemma};
}

std::vector<std::string> names(dca::Decoder<double>& d) {
  std::vector<std::string> out;
  for (auto* p : d.parameters()) out.push_back(p->name());
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& s) { return std::ranges::find(v, s) != v.end(); }

}  // namespace

TEST_CASE("every preset names its parameters as its Hugging Face checkpoints do") {
  dca::Decoder<double> gpt2(DecoderConfig::gpt2({.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .max_positions = 16}));
  const auto g = names(gpt2);
  for (const char* n : {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.attn.c_attn.weight",
                        "transformer.h.0.mlp.c_proj.bias", "transformer.ln_f.bias"})
    CHECK(contains(g, n));
  CHECK_FALSE(contains(g, "lm_head.weight"));  // tied
  CHECK(gpt2.parameter("transformer.h.0.attn.c_attn.weight").shape() == Shape{8, 24});  // Conv1D: [in, out]

  dca::Decoder<double> llama(
      DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 12}));
  const auto l = names(llama);
  for (const char* n : {"model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight",
                        "model.layers.0.post_attention_layernorm.weight", "model.layers.0.mlp.gate_proj.weight",
                        "model.norm.weight", "lm_head.weight"})
    CHECK(contains(l, n));
  CHECK(llama.parameter("model.layers.0.self_attn.k_proj.weight").shape() == Shape{4, 8});  // 1 kv head of 4

  dca::Decoder<double> qwen(
      DecoderConfig::qwen2({.vocab = 11, .dim = 8, .layers = 2, .heads = 4, .kv_heads = 2, .mlp = 12}));
  CHECK(contains(names(qwen), "model.layers.0.self_attn.q_proj.bias"));
  CHECK_FALSE(contains(names(qwen), "model.layers.0.self_attn.o_proj.bias"));

  dca::Decoder<double> gemma(DecoderConfig::gemma2(
      {.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .head_dim = 6, .mlp = 12, .window = 3}));
  const auto m = names(gemma);
  for (const char* n : {"model.layers.0.pre_feedforward_layernorm.weight", "model.layers.0.post_feedforward_layernorm.weight",
                        "model.layers.0.post_attention_layernorm.weight"})
    CHECK(contains(m, n));
  CHECK(gemma.parameter("model.layers.0.self_attn.q_proj.weight").shape() == Shape{12, 8});  // 2 heads of 6
  CHECK_FALSE(contains(m, "lm_head.weight"));
}

TEST_CASE("the parameter count adds up every weight once, a tied head included once") {
  // GPT-2, d=8, L=2, V=11, 16 positions, MLP 32: embeddings 11·8 + 16·8; per block 2 LayerNorms (2·16),
  // c_attn 8·24+24, c_proj 8·8+8, c_fc 8·32+32, mlp c_proj 32·8+8; final LayerNorm 16.
  dca::Decoder<float> gpt2(DecoderConfig::gpt2({.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .max_positions = 16}));
  const index_t block = 2 * 16 + (8 * 24 + 24) + (8 * 8 + 8) + (8 * 32 + 32) + (32 * 8 + 8);
  CHECK(gpt2.parameter_count() == 11 * 8 + 16 * 8 + 2 * block + 16);
}

TEST_CASE("a decoder built to be loaded into draws no weights (embeddings and projections zero), and init gives it the seeded ones") {
  for (const auto& config : tiny_presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<float> to_load(config, dca::uninitialized_weights);
    dca::Decoder<float> seeded(config, 7);
    to_load.init(7);
    auto loaded_parameters = to_load.parameters();
    auto seeded_parameters = seeded.parameters();
    REQUIRE(loaded_parameters.size() == seeded_parameters.size());
    for (std::size_t i = 0; i < seeded_parameters.size(); ++i)
      CHECK(loaded_parameters[i]->value().matrix() == seeded_parameters[i]->value().matrix());
    dca::Decoder<float> zero(config, dca::uninitialized_weights);
    for (dca::Parameter<float>* p : zero.parameters()) {
      if (p->shape().rank() < 2) continue;  // norms start as the identity, biases at zero
      CAPTURE(p->name());
      CHECK(p->value().matrix().cwiseAbs().maxCoeff() == 0.0f);
    }
  }
}

TEST_CASE("a config names the field that is wrong") {
  auto c = DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 2, .heads = 3, .kv_heads = 2, .mlp = 12});
  c.head_dim = 4;
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("n_kv_heads 2 must divide n_heads 3"), dca::ShapeError);
  c = DecoderConfig::llama({.vocab = 11, .dim = 9, .layers = 2, .heads = 3, .mlp = 12});
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("rotary positions need an even head_dim, got 3"), dca::ShapeError);
  c = DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 2, .heads = 3, .mlp = 12});
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("hidden_size 8 is not divisible by n_heads 3"), dca::ShapeError);
  c = DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 0, .heads = 2, .mlp = 12});
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("n_layers must be ≥ 1, got 0"), dca::RangeError);
  c = DecoderConfig::gemma2(
      {.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .head_dim = 6, .mlp = 12, .window = 3});
  c.sliding_layers.push_back(true);
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("sliding_layers has 3 entries for 2 layers"), dca::ShapeError);
  c = DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .mlp = 12});
  c.architecture = static_cast<dca::Architecture>(7);  // not an architecture of the enum
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("architecture 7 is not one of gpt2, llama, qwen2, gemma2"),
                       dca::RangeError);
  CHECK_THROWS_AS(dca::Decoder<float>{c}, dca::RangeError);
}

TEST_CASE("input embeddings give the same logits as the token ids they embed") {
  const std::vector<index_t> ids = {3, 1, 4, 1, 5, 9};
  for (const auto& config : tiny_presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 7);
    dca::Tape<double> tape;
    const auto from_ids = decoder.logits(tape, ids);
    // Embeddings as Hugging Face's inputs_embeds: rows of the token table, before any scaling.
    Tensor<double> rows(Shape{static_cast<index_t>(ids.size()), config.hidden_size});
    const auto& table = decoder.parameters()[0]->value();
    for (std::size_t i = 0; i < ids.size(); ++i)
      for (index_t c = 0; c < config.hidden_size; ++c) rows(static_cast<index_t>(i), c) = table(ids[i], c);
    dca::DecoderInput<double> input;
    input.embeddings = tape.constant(rows);
    const auto from_embeddings = decoder.forward(tape, input).logits;
    CHECK(dca::test::max_relative_difference(from_embeddings.value().span(), from_ids.value().span()) < 1e-15);
  }
}

TEST_CASE("a forward without the output head gives the same hidden states and no logits") {
  for (const auto& config : tiny_presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 4);
    dca::Tape<double> tape;
    const std::vector<index_t> ids = {3, 1, 4, 1, 5};
    dca::DecoderInput<double> input;
    input.ids = ids;
    const auto with_head = decoder.forward(tape, input);
    input.compute_logits = false;
    const auto without_head = decoder.forward(tape, input);
    CHECK(std::ranges::equal(without_head.hidden.value().span(), with_head.hidden.value().span()));
    CHECK(without_head.logits.empty());
    CHECK_FALSE(with_head.logits.empty());
  }
}

TEST_CASE("sequences of a batch do not see each other, and explicit default positions change nothing") {
  for (const auto& config : tiny_presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 3);
    dca::Tape<double> tape;
    std::vector<index_t> batch = {1, 2, 3, 4, 5, 6, 7, 8};
    const auto a = decoder.logits(tape, batch, 2);
    batch[5] = 10;  // change the second sequence only
    const auto b = decoder.logits(tape, batch, 2);
    const auto first_a = a.value().span().subspan(0, 4 * 11), first_b = b.value().span().subspan(0, 4 * 11);
    CHECK(std::ranges::equal(first_a, first_b));
    CHECK_FALSE(std::ranges::equal(a.value().span(), b.value().span()));
    const std::vector<index_t> positions = {0, 1, 2, 3, 0, 1, 2, 3};
    dca::DecoderInput<double> input;
    input.ids = batch;
    input.batch = 2;
    input.positions = positions;
    CHECK(std::ranges::equal(decoder.forward(tape, input).logits.value().span(), b.value().span()));
  }
}

TEST_CASE("gradients through every preset match finite differences, for input embeddings") {
  for (const auto& config : tiny_presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 11);
    decoder.freeze();
    const auto embeddings = dca::test::random_tensor(Shape{5, config.hidden_size}, 5, -0.5, 0.5);
    const auto result = dca::check_gradients(
        [&](auto x) {
          dca::DecoderInput<double> input;
          input.embeddings = x;
          return decoder.forward(x.tape(), input).logits;
        },
        embeddings);
    CHECK(result);
  }
}

TEST_CASE("a frozen decoder passes gradients to its inputs without computing weight gradients") {
  auto config = DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 12});
  dca::Decoder<double> decoder(config, 1);
  const auto embeddings = dca::test::random_tensor(Shape{4, 8}, 2);
  auto backward_gemms = [&](bool frozen) {
    frozen ? decoder.freeze() : decoder.unfreeze();
    decoder.zero_grad();
    dca::Tape<double> tape;
    dca::DecoderInput<double> input;
    input.embeddings = tape.variable(embeddings);
    const auto out = decoder.forward(tape, input);
    tape.backward(dca::mean(out.logits));
    return std::pair{tape.stats().backward_gemms, Tensor<double>(input.embeddings.grad())};
  };
  const auto [frozen_gemms, frozen_grad] = backward_gemms(true);
  for (auto* p : decoder.parameters()) CHECK_FALSE(p->has_grad());
  const auto [active_gemms, active_grad] = backward_gemms(false);
  // Each layer has 7 projections (q, k, v, o, gate, up, down); the untied head is one more.
  CHECK(active_gemms - frozen_gemms == 2 * 7 + 1);
  CHECK(std::ranges::equal(frozen_grad.span(), active_grad.span()));
}

TEST_CASE("with a pad token, Llama, Qwen2 and Gemma-2 lookups pass no gradient to its row and GPT-2's do, as in "
          "transformers; the first three also initialise that row to zero") {
  // Untied heads, so that the pad row's gradient is the lookups' alone.
  const std::vector<index_t> ids = {3, 1, 4, 3, 5, 3};  // the pad token 3 at the start, middle and end
  const std::vector<index_t> targets = {1, 4, 3, 5, 3, -100};
  for (auto config : tiny_presets()) {
    CAPTURE(config.architecture);
    config.tie_embeddings = false;
    config.pad_token_id = 3;
    const bool pads = config.architecture != dca::Architecture::gpt2;
    CHECK(config.padding_row() == (pads ? std::optional<index_t>(3) : std::nullopt));
    dca::Decoder<double> decoder(config, 7);
    const auto row_norm = [](const Tensor<double>& t, index_t row) { return t.matrix().row(row).norm(); };
    CHECK((row_norm(decoder.token_embedding().value(), 3) == 0) == pads);
    CHECK(row_norm(decoder.token_embedding().value(), 2) > 0);
    {
      dca::Tape<double> tape;
      tape.backward(decoder.loss(tape, ids, targets));
    }
    const Tensor<double>& grad = decoder.token_embedding().grad();
    CHECK((row_norm(grad, 3) == 0) == pads);
    CHECK(row_norm(grad, 1) > 0);  // other tokens' rows learn as before
    CHECK(row_norm(grad, 4) > 0);
    CHECK(row_norm(grad, 2) == 0);  // never looked up, untied head
    // Decoder::embed — the coprocessor's ahead tokens and residual bases — and a copied decoder
    // (what a coprocessor starts from) follow the same rule.
    dca::Decoder<double> copy = decoder;
    copy.zero_grad();
    {
      dca::Tape<double> tape;
      tape.backward(dca::sum(copy.embed(tape, ids)));
    }
    CHECK((row_norm(copy.token_embedding().grad(), 3) == 0) == pads);
    CHECK(row_norm(copy.token_embedding().grad(), 1) > 0);
  }
}

TEST_CASE("a negative pad_token_id counts from the end of the vocabulary, as nn.Embedding's padding_idx does, and one "
          "outside it is rejected where the embedding pads it") {
  auto config = DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .mlp = 12});
  config.pad_token_id = -1;
  CHECK(config.padding_row() == index_t{10});
  config.pad_token_id = 11;
  CHECK_THROWS_WITH_AS(config.validate(),
                       doctest::Contains("pad_token_id 11 is outside the vocabulary [-11,11) of this llama model"),
                       dca::RangeError);
  config.pad_token_id = -12;
  CHECK_THROWS_AS(dca::Decoder<float>{config}, dca::RangeError);
  // GPT-2's embedding ignores pad_token_id, so any value a config.json carries is accepted.
  auto gpt2 = DecoderConfig::gpt2({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .max_positions = 8});
  gpt2.pad_token_id = 50256;
  CHECK_NOTHROW(gpt2.validate());
  CHECK_FALSE(gpt2.padding_row());
}

TEST_CASE("a copied decoder is independent of its original") {
  dca::Decoder<float> original(DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .mlp = 12}), 1);
  dca::Decoder<float> copy = original;
  copy.parameter("model.norm.weight").value().fill(2.0f);
  CHECK(original.parameter("model.norm.weight").value()[0] == 1.0f);
}

TEST_CASE("bad decoder inputs are rejected with the offending value") {
  dca::Decoder<float> gpt2(DecoderConfig::gpt2({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .max_positions = 4}));
  dca::Tape<float> tape;
  const std::vector<index_t> bad_id = {1, 11};
  CHECK_THROWS_WITH_AS(gpt2.logits(tape, bad_id), doctest::Contains("token id 11 at position 1 is outside the vocabulary [0,11)"),
                       dca::RangeError);
  const std::vector<index_t> too_long = {1, 2, 3, 4, 5};
  CHECK_THROWS_WITH_AS(gpt2.logits(tape, too_long), doctest::Contains("position id 4 at row 4 exceeds the 4 learned positions"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(gpt2.logits(tape, std::span<const index_t>(too_long).first(3), 2),
                       doctest::Contains("3 rows do not split into 2 sequences"), dca::ShapeError);
  dca::DecoderInput<float> input;
  CHECK_THROWS_WITH_AS(gpt2.forward(tape, input), doctest::Contains("not neither"), dca::UsageError);
  input.embeddings = tape.constant(Tensor<float>(Shape{2, 5}));
  CHECK_THROWS_WITH_AS(gpt2.forward(tape, input), doctest::Contains("input embeddings are [2,5], expected [N,8]"),
                       dca::ShapeError);
  CHECK_THROWS_WITH_AS(gpt2.parameter("lm_head.weight"), doctest::Contains("no parameter named 'lm_head.weight'"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(gpt2.loss(tape, too_long, std::span<const index_t>(too_long).first(2)),
                       doctest::Contains("5 ids but 2 targets"), dca::ShapeError);
}
