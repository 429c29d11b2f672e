"""Philox4x32-10 and PhiloxStream in Python (numpy), written from lib/core/philox.h's documented layout.

Key: (seed low 32 bits, seed high 32 bits ^ purpose * 0x9E3779B9). Counter: (n / 4, lane, example, step);
the n-th number of a stream is word n % 4 of that block. uniform_open(n) joins words 2n (high) and
2n+1 (low) into 53 bits; gumbel(n) = -log(-log(uniform_open(n))).

Everything is vectorised over numpy arrays of counters. Logarithms go through math.log (the C library's
log, as the C++ code calls) so Gumbel noise is bit-identical to the CPU backend's.
"""

import math

import numpy as np

MASK32 = np.uint64(0xFFFFFFFF)
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85

# RandomPurpose values (lib/core/philox.h).
PURPOSE = {"init": 1, "dropout": 2, "masking": 3, "sampling": 4, "shuffle": 5, "preprocess": 6, "test": 100}

# Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors):
# (counter c0..c3, key k0 k1) -> output words.
RANDOM123_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """One Philox4x32-10 block for each element of the (broadcast) counter arrays; returns 4 uint32 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & MASK32 for c in (c0, c1, c2, c3))
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    k0 = int(k0) & 0xFFFFFFFF
    k1 = int(k1) & 0xFFFFFFFF
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
        k0 = (k0 + _W0) & 0xFFFFFFFF
        k1 = (k1 + _W1) & 0xFFFFFFFF
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def check_known_answers():
    """Raises AssertionError unless philox4x32_10 reproduces the Random123 known-answer vectors."""
    for counter, key, expected in RANDOM123_KAT:
        got = tuple(int(w) for w in philox4x32_10(*counter, *key))
        if got != expected:
            raise AssertionError(
                "Philox4x32-10 known-answer test failed: counter %s key %s gave %s, expected %s"
                % ([hex(c) for c in counter], [hex(k) for k in key], [hex(g) for g in got],
                   [hex(e) for e in expected]))


class PhiloxStream:
    """Python twin of electra::PhiloxStream; every method takes scalar or array offsets."""

    def __init__(self, seed, purpose, step, example, lane=0):
        if isinstance(purpose, str):
            purpose = PURPOSE[purpose]
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.key0 = seed & 0xFFFFFFFF
        self.key1 = ((seed >> 32) ^ ((int(purpose) * _W0) & 0xFFFFFFFF)) & 0xFFFFFFFF
        self.lane = int(lane) & 0xFFFFFFFF
        self.example = int(example) & 0xFFFFFFFF
        self.step = int(step) & 0xFFFFFFFF

    def at(self, n):
        """The n-th 32-bit number(s) of the stream, as uint64 arrays (or a scalar)."""
        n = np.asarray(n, dtype=np.uint64)
        words = philox4x32_10(n >> np.uint64(2), self.lane, self.example, self.step, self.key0, self.key1)
        block = np.stack([w.astype(np.uint64) for w in words], axis=-1)
        return np.take_along_axis(block, (n & np.uint64(3)).astype(np.int64)[..., None], axis=-1)[..., 0]

    def uniform(self, n):
        """Uniform in [0, 1) with 24 bits, as float32 (the C++ returns float)."""
        return (self.at(n) >> np.uint64(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)

    def uniform_open(self, n):
        """Uniform in (0, 1) with 52 bits, float64: ((hi << 32 | lo) >> 12 + 0.5) / 2^52."""
        n = np.asarray(n, dtype=np.uint64)
        hi = self.at(np.uint64(2) * n)
        lo = self.at(np.uint64(2) * n + np.uint64(1))
        bits = ((hi << np.uint64(32)) | lo) >> np.uint64(12)
        # float64 conversion of a 52-bit integer is exact, and so is the + 0.5.
        return (bits.astype(np.float64) + 0.5) * (1.0 / 4503599627370496.0)

    def gumbel(self, n):
        u = np.atleast_1d(self.uniform_open(n))
        out = np.array([-math.log(-math.log(float(x))) for x in u.ravel()], dtype=np.float64)
        return out.reshape(u.shape) if np.ndim(n) else out[0]

    def below(self, n, bound):
        return ((self.at(n) * np.uint64(bound)) >> np.uint64(32)).astype(np.uint32)


if __name__ == "__main__":
    check_known_answers()
    print("Philox4x32-10 matches the Random123 known-answer vectors")
