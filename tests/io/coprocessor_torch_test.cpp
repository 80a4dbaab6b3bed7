// Specification of python/dca_torch.py against dca: a coprocessor trained here for a few steps and
// saved with its decoder (save_hf_decoder, save_coprocessor) runs in plain PyTorch with the latents
// and the next-token logits dca computes, to 1e-5 (float32, relative to the largest value), for
// GPT-2, Llama, Qwen2 and Gemma-2 decoders, both latent position policies, every latent form, LoRA,
// the last-layer input and pause tokens — at the insertion after the prompt, through a teacher-
// forced continuation, and at insertions every few new tokens into a cache that holds latents.
//
// The PyTorch side runs as its command line does (`dca_torch.py DECODER COPROCESSOR --ids ...
// --force ... --every k --dump FILE`) with DCA_TORCH_PYTHON (Debian's /usr/bin/python3). When that
// interpreter cannot import torch, the suite prints why and exits with 77, which CTest reports as
// skipped (SKIP_RETURN_CODE); CI installs python3-torch (scripts/install-deps.sh --with-pytorch).
#define DOCTEST_CONFIG_IMPLEMENT
#include "dca/io/coprocessor_dir.hpp"
#include "dca/io/hf.hpp"
#include "dca/train/optimizer.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#ifndef DCA_TORCH_PYTHON
#error "DCA_TORCH_PYTHON must name the Python interpreter that has torch (tests/CMakeLists.txt defines it)"
#endif
#ifndef DCA_TORCH_SCRIPT
#error "DCA_TORCH_SCRIPT must point at python/dca_torch.py (tests/CMakeLists.txt defines it)"
#endif

using dca::CoprocessorConfig;
using dca::DecoderConfig;
using dca::index_t;

namespace {

using Cop = dca::Coprocessor<float, dca::dynamic_latents>;

constexpr double tolerance = 1e-5;  // max |PyTorch − dca| / max |dca|, float32 on both sides
constexpr index_t vocab = 40;

// Small decoders whose every feature is active: GQA, Gemma-2's head_dim ≠ d/H, soft-capping at these
// scales and a sliding window shorter than the prompt. Weights at a larger scale than the presets'
// initialisation so that attention is far from uniform.
DecoderConfig with_scale(DecoderConfig c) {
  c.init_std = 0.15;
  return c;
}
DecoderConfig gpt2() { return with_scale(DecoderConfig::gpt2({.vocab = vocab, .dim = 16, .layers = 2, .heads = 4, .mlp = 24, .max_positions = 64})); }
DecoderConfig llama() {
  return with_scale(DecoderConfig::llama({.vocab = vocab, .dim = 16, .layers = 2, .heads = 4, .kv_heads = 2, .mlp = 24}));
}
DecoderConfig qwen2() {
  return with_scale(DecoderConfig::qwen2({.vocab = vocab, .dim = 16, .layers = 2, .heads = 4, .kv_heads = 1, .mlp = 24}));
}
DecoderConfig gemma2() {
  auto c = DecoderConfig::gemma2(
      {.vocab = vocab, .dim = 16, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 6, .mlp = 24, .window = 4});
  c.attention_softcap = 2.0;
  c.final_softcap = 3.0;
  return with_scale(c);
}

const std::vector<index_t> prompt = dca::test::random_tokens(8, 21, vocab);
const std::vector<index_t> continuation = dca::test::random_tokens(7, 22, vocab);
constexpr index_t every = 3;  // insertions after the prompt and after 3 and 6 new tokens

// A few AdamW steps of the coprocessor's structured loss on random text, so that every trained part
// (soft tokens, projection, LoRA's B, which start at zero or near it) is far from its initial value.
// Checks that each part the model did not copy from the decoder moved.
void train(Cop& coprocessor, dca::Decoder<float>& decoder) {
  std::vector<dca::Tensor<float>> before;
  for (auto* p : coprocessor.parameters()) before.push_back(p->value());
  dca::AdamW<float> optimizer(coprocessor.parameters(), {.lr = 2e-2, .weight_decay = 0.0});
  dca::Rng rng(5);
  for (int step = 0; step < 4; ++step) {
    const auto ids = dca::test::random_tokens(2 * 16, 30 + static_cast<std::uint64_t>(step), vocab);
    const auto plan = dca::AugmentationPlan::random(2, 16, 3, coprocessor.config().n_ahead, rng);
    dca::Tape<float> tape;
    tape.backward(coprocessor.loss(tape, decoder, ids, plan).loss);
    optimizer.step();
    optimizer.zero_grad();
  }
  const auto parameters = coprocessor.parameters();
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    const auto* p = parameters[i];
    if (!p->name().starts_with("coprocessor.") && !dca::is_lora_b(p->name())) continue;
    CAPTURE(p->name());
    CHECK(dca::test::max_abs_difference(p->value(), before[i]) > 1e-3);
  }
}

// What dca computes for the session the command line runs: the latents of every insertion and the
// logits each new token is chosen from (the last row after the prompt, or after the latents).
struct Run {
  std::vector<dca::Tensor<float>> latents;
  std::vector<std::vector<float>> logits;
};

std::vector<float> last_row(const dca::Var<float>& logits) {
  const auto values = logits.value().span();
  return {values.end() - logits.cols(), values.end()};
}

Run run_dca(dca::Decoder<float>& decoder, Cop* coprocessor) {
  Run out;
  dca::Tape<float> tape;
  dca::NoGradGuard<float> no_grad(tape);
  dca::KVCache<float> cache(decoder.config(), 64);
  std::vector<index_t> tokens = prompt;
  std::vector<float> logits = last_row(cache.append_tokens(tape, decoder, prompt));
  auto augment = [&] {
    if (!coprocessor) return;
    const bool from_tokens = coprocessor->config().input == dca::CoprocessorInput::last_layer;
    const auto z = from_tokens ? coprocessor->latents(tape, decoder, tokens)
                               : coprocessor->latents(tape, decoder, cache.prefix(cache.size() - 1), tokens.back());
    out.latents.emplace_back(z.value());
    logits = last_row(cache.insert_latents(tape, decoder, z, cache.size() - 1, coprocessor->config().positions).logits);
  };
  augment();
  for (std::size_t g = 1; g <= continuation.size(); ++g) {
    out.logits.push_back(logits);
    if (g == continuation.size()) break;
    tokens.push_back(continuation[g - 1]);
    logits = last_row(cache.append_tokens(tape, decoder, std::span<const index_t>(&tokens.back(), 1)));
    if (static_cast<index_t>(g) % every == 0) augment();
  }
  return out;
}

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

std::string joined(const std::vector<index_t>& ids) {
  std::string out;
  for (const index_t id : ids) out += " " + std::to_string(id);
  return out;
}

// Runs the command line; returns its exit status, its stderr in `errors`.
int run_cli(const std::string& arguments, std::string& errors, const std::filesystem::path& dir) {
  const auto err = dir / "stderr.txt";
  const std::string command = std::string(DCA_TORCH_PYTHON) + " " + DCA_TORCH_SCRIPT + " " + arguments +
                              " --threads 1 > /dev/null 2> " + quoted(err);
  const int status = std::system(command.c_str());
  std::ifstream in(err);
  std::stringstream text;
  text << in.rdbuf();
  errors = text.str();
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// PyTorch's run of the same session, read back from --dump.
Run run_torch(const std::filesystem::path& dir, bool with_coprocessor, bool augment) {
  const auto dump = dir / "torch.safetensors";
  std::string errors;
  const int status = run_cli(quoted(dir / "decoder") + (with_coprocessor ? " " + quoted(dir / "coprocessor") : "") +
                                 " --ids" + joined(prompt) + " --force" + joined(continuation) + " --every " +
                                 std::to_string(every) + (augment ? "" : " --no-augment") + " --dump " + quoted(dump),
                             errors, dir);
  INFO("dca_torch.py said: ", errors);
  REQUIRE(status == 0);
  const auto file = dca::SafeTensors::read(dump);
  Run out;
  const auto logits = file.tensor<float>("logits");
  for (index_t r = 0; r < logits.rows(); ++r)
    out.logits.emplace_back(logits.span().begin() + r * logits.cols(), logits.span().begin() + (r + 1) * logits.cols());
  for (std::size_t k = 0; file.contains("latents." + std::to_string(k)); ++k)
    out.latents.push_back(file.tensor<float>("latents." + std::to_string(k)));
  CHECK(file.integers("tokens") == std::vector<std::int64_t>(continuation.begin(), continuation.end()));
  return out;
}

void check_same(const Run& torch, const Run& expected) {
  REQUIRE(torch.latents.size() == expected.latents.size());
  for (std::size_t k = 0; k < expected.latents.size(); ++k) {
    CAPTURE(k);
    REQUIRE(torch.latents[k].shape() == expected.latents[k].shape());
    CHECK(dca::test::max_relative_difference(torch.latents[k].span(), expected.latents[k].span()) <= tolerance);
  }
  REQUIRE(torch.logits.size() == expected.logits.size());
  for (std::size_t r = 0; r < expected.logits.size(); ++r) {
    CAPTURE(r);
    REQUIRE(torch.logits[r].size() == expected.logits[r].size());
    CHECK(dca::test::max_relative_difference(torch.logits[r], expected.logits[r]) <= tolerance);
  }
}

// Trains a coprocessor of `config` for a decoder of `decoder_config`, saves both, and checks PyTorch's
// augmented session against dca's, and that augmentation changed the logits (so the comparison
// covers the coprocessor, not only the decoder).
void check_against_torch(const DecoderConfig& decoder_config, CoprocessorConfig config) {
  dca::test::TempDir dir;
  dca::Decoder<float> decoder(decoder_config, 3);
  decoder.freeze();
  config.n_ahead = 4;
  Cop coprocessor(decoder, config);
  train(coprocessor, decoder);
  dca::save_hf_decoder(decoder, dir.path / "decoder");
  dca::save_coprocessor(coprocessor, dir.path / "coprocessor");

  const Run expected = run_dca(decoder, &coprocessor);
  REQUIRE(expected.latents.size() == 3);
  check_same(run_torch(dir.path, true, true), expected);
  const Run plain = run_dca(decoder, nullptr);
  CHECK(dca::test::max_relative_difference(plain.logits[0], expected.logits[0]) > 1e-3);
}

}  // namespace

TEST_CASE("PyTorch runs a trained GPT-2 coprocessor as dca does, latents at the insertion point or shifted") {
  for (const auto policy : {dca::LatentPositions::at_insertion_point, dca::LatentPositions::shifted}) {
    CAPTURE(static_cast<int>(policy));
    check_against_torch(gpt2(), {.n_latents = 3, .positions = policy});
  }
}

TEST_CASE("PyTorch runs a trained Llama coprocessor as dca does, latents at the insertion point or shifted") {
  for (const auto policy : {dca::LatentPositions::at_insertion_point, dca::LatentPositions::shifted}) {
    CAPTURE(static_cast<int>(policy));
    check_against_torch(llama(), {.n_latents = 3, .positions = policy});
  }
}

TEST_CASE("PyTorch runs a trained Gemma-2 coprocessor as dca does, latents at the insertion point or shifted") {
  for (const auto policy : {dca::LatentPositions::at_insertion_point, dca::LatentPositions::shifted}) {
    CAPTURE(static_cast<int>(policy));
    check_against_torch(gemma2(), {.n_latents = 3, .positions = policy});
  }
}

TEST_CASE("PyTorch runs every latent form, LoRA, bidirectional soft tokens, the last-layer input and pause tokens as dca does") {
  SUBCASE("token-mixture latents, Gemma-2") {
    check_against_torch(gemma2(), {.n_latents = 2, .latent_form = dca::LatentForm::token_mixture});
  }
  SUBCASE("final hidden states, bidirectional soft tokens, GPT-2") {
    check_against_torch(gpt2(), {.n_latents = 2,
                                 .latent_form = dca::LatentForm::final_hidden,
                                 .soft_token_rule = dca::AttentionRule::bidirectional});
  }
  SUBCASE("normed latents read from the last layer, Gemma-2 (its √d input scale undone)") {
    check_against_torch(gemma2(), {.n_latents = 2,
                                   .latent_form = dca::LatentForm::normed,
                                   .positions = dca::LatentPositions::shifted,
                                   .input = dca::CoprocessorInput::last_layer});
  }
  SUBCASE("LoRA on GPT-2's fused projection, with its own alpha") {
    check_against_torch(gpt2(), {.n_latents = 3, .lora_rank = 2, .lora_alpha = 6});
  }
  SUBCASE("LoRA on Qwen2, whose projections have biases") { check_against_torch(qwen2(), {.n_latents = 2, .lora_rank = 3}); }
  SUBCASE("pause tokens, Llama") {
    check_against_torch(llama(), {.n_latents = 3, .positions = dca::LatentPositions::shifted,
                                  .source = dca::LatentSource::pause});
  }
}

TEST_CASE("without a coprocessor, or told not to augment, PyTorch runs the plain decoder as dca does") {
  dca::test::TempDir dir;
  dca::Decoder<float> decoder(gemma2(), 4);
  Cop coprocessor(decoder, {.n_latents = 2});
  dca::save_hf_decoder(decoder, dir.path / "decoder");
  dca::save_coprocessor(coprocessor, dir.path / "coprocessor");
  const Run plain = run_dca(decoder, nullptr);
  check_same(run_torch(dir.path, false, true), plain);
  check_same(run_torch(dir.path, true, false), plain);
}

TEST_CASE("PyTorch refuses a coprocessor for another decoder, naming config.json and the differing values") {
  dca::test::TempDir dir;
  dca::Decoder<float> decoder(llama(), 1), other(gemma2(), 1);
  Cop coprocessor(decoder, {.n_latents = 2});
  dca::save_hf_decoder(other, dir.path / "decoder");
  dca::save_coprocessor(coprocessor, dir.path / "coprocessor");
  std::string errors;
  const int status = run_cli(quoted(dir.path / "decoder") + " " + quoted(dir.path / "coprocessor") + " --ids 1 2", errors, dir.path);
  INFO("dca_torch.py said: ", errors);
  CHECK(status == 1);
  CHECK(errors.find((dir.path / "coprocessor" / "config.json").string() +
                    ": the coprocessor was trained with another decoder") != std::string::npos);
  CHECK(errors.find("architecture = 'llama' vs 'gemma2'") != std::string::npos);
}

int main(int argc, char** argv) {
  const std::string probe = std::string(DCA_TORCH_PYTHON) + " -c 'import torch' > /dev/null 2>&1";
  if (std::system(probe.c_str()) != 0) {
    std::printf("skipped: %s cannot import torch (install python3-torch and libopenblas0-openmp: "
                "scripts/install-deps.sh --with-pytorch)\n",
                DCA_TORCH_PYTHON);
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
