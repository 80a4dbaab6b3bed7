// dca/cache/slots.hpp — what a cache slot holds and where inserted latents sit in position space:
// the vocabulary a KVCache and a coprocessor's layout share.
#pragma once

#include <cstdint>

namespace dca {

/// What a cache slot holds.
enum class SlotKind : std::uint8_t {
  token,   // a token the decoder read
  latent,  // a latent embedding written by a coprocessor
  pause,   // an input-independent embedding (pause tokens, other inserted rows)
};

/// Where inserted latents (and the tokens after them) sit in position space.
enum class LatentPositions {
  at_insertion_point,  // default: every latent takes the position of slot t; following tokens keep t+1, t+2, ...
  shifted,             // latents at t+1 .. t+N_L; following tokens shifted by N_L
};

}  // namespace dca
