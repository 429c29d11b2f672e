// Where a layer's dropout randomness comes from. Every dropout site (network, layer, position in the
// layer) has its own Philox lane, and element i of a site's [rows, ...] tensor belongs to global example
// first_example + i / elements_per_example, so masks do not depend on how a global batch is split.
#pragma once

#include <cstdint>

#include "lib/backend/backend.h"
#include "lib/model/parameter_layout.h"

namespace electra {

// The per-step part of every dropout key.
struct DropoutContext {
  bool training = false;  // false: every dropout is the identity
  uint64_t seed = 0;
  uint64_t step = 0;
  uint64_t first_example = 0;  // global index of row 0 of this batch slice (Batch::global_row_offset)
  int key_seq_length = 0;      // the batch's slots per row before trimming (Batch::slot_length()); 0: S

  float rate(float p) const { return training ? p : 0.0f; }
  DropoutKey key(uint32_t lane, uint64_t elements_per_example) const {
    return DropoutKey{seed, step, lane, first_example, elements_per_example};
  }
  // The key of an attention-probability site over S keys and `heads` heads, indexed as the untrimmed
  // [heads, Sk, Sk] block of each example (DropoutKey::key_seq_length), so trimming keeps every bit.
  DropoutKey attention_key(uint32_t lane, int heads, int S) const {
    const int Sk = key_seq_length > 0 ? key_seq_length : S;
    DropoutKey k = key(lane, static_cast<uint64_t>(heads) * Sk * Sk);
    k.key_seq_length = Sk;
    return k;
  }
};

// Dropout sites within a layer.
enum class DropoutSlot : uint32_t { kEmbeddings = 0, kAttentionProbs = 1, kAttentionOutput = 2, kFfnOutput = 3 };

// Lane of a site: network in bits 16.., layer + 1 in bits 4..15 (0 = embeddings), slot in bits 0..3.
inline uint32_t dropout_lane(Network network, int layer, DropoutSlot slot) {
  return (static_cast<uint32_t>(network) << 16) | (static_cast<uint32_t>(layer + 1) << 4) | static_cast<uint32_t>(slot);
}

}  // namespace electra
