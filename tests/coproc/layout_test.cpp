// Specification of the augmented batch's layout, on its own: for two sequences of 8 tokens with one
// point each (t = 2 and t = 4), N_L = 2 latents and N_A = 3 ahead tokens, every group, position and
// target is written out by hand below.
#include "dca/coproc/layout.hpp"

#include <doctest/doctest.h>

#include <numeric>
#include <vector>

using dca::AttentionGroup;
using dca::index_t;

namespace {

// Sequence 0 holds tokens 10..17, sequence 1 tokens 18..25.
std::vector<index_t> two_sequences() {
  std::vector<index_t> ids(16);
  std::iota(ids.begin(), ids.end(), 10);
  return ids;
}

dca::AugmentationLayout layout(dca::LatentPositions positions) {
  const auto ids = two_sequences();
  return dca::AugmentationLayout::of(dca::AugmentationPlan::given(2, 8, 3, {2, 4}), ids, 2, positions);
}

bool same(const AttentionGroup& a, const AttentionGroup& b) {
  return a.q_begin == b.q_begin && a.q_count == b.q_count && a.k_begin == b.k_begin && a.k_count == b.k_count &&
         a.cache_begin == b.cache_begin && a.cache_count == b.cache_count;
}

}  // namespace

TEST_CASE("each group of soft tokens reads its own sequence's cache up to and including its point") {
  const auto l = layout(dca::LatentPositions::at_insertion_point);
  REQUIRE(l.groups() == 2);
  CHECK(same(l.latents.groups[0], {0, 2, 0, 2, 0, 3}));  // cache rows 0..2 of sequence 0
  CHECK(same(l.latents.groups[1], {2, 2, 2, 2, 8, 5}));  // cache rows 8..12: sequence 1's tokens 0..4
  CHECK(l.latents.points == std::vector<index_t>{2, 4});
  CHECK(l.latents.tokens == std::vector<index_t>{12, 22});
  CHECK(l.latents.soft_positions == std::vector<index_t>{3, 4, 5, 6});  // the soft tokens continue the prefix
}

TEST_CASE("a group's decoder rows are its latents then its ahead tokens, and the last latent predicts the next token") {
  const auto l = layout(dca::LatentPositions::at_insertion_point);
  REQUIRE(l.rows_per_group() == 4);
  CHECK(same(l.ahead_groups[0], {0, 4, 0, 4, 0, 3}));
  CHECK(same(l.ahead_groups[1], {4, 4, 4, 4, 8, 5}));
  CHECK(l.ahead_ids == std::vector<index_t>{13, 14, 23, 24});  // x[t+1], x[t+2] of each group
  CHECK(l.targets == std::vector<index_t>{-100, 13, 14, 15, -100, 23, 24, 25});
  CHECK(l.target_row(0, 0) == 1);
  CHECK(l.target_row(1, 2) == 7);
}

TEST_CASE("latents sit at their insertion point, or shifted past it with the tokens after them") {
  CHECK(layout(dca::LatentPositions::at_insertion_point).ahead_positions ==
        std::vector<index_t>{2, 2, 3, 4, 4, 4, 5, 6});
  CHECK(layout(dca::LatentPositions::shifted).ahead_positions == std::vector<index_t>{3, 4, 5, 6, 5, 6, 7, 8});
}

TEST_CASE("an inference query reads the whole prefix it is given") {
  const auto q = dca::LatentQueries::after(3, 7, 9, 42);  // 7 cache rows, the last at position 9
  REQUIRE(q.size() == 1);
  CHECK(same(q.groups[0], {0, 3, 0, 3, 0, 7}));
  CHECK(q.points == std::vector<index_t>{9});
  CHECK(q.tokens == std::vector<index_t>{42});
  CHECK(q.soft_positions == std::vector<index_t>{10, 11, 12});
}
