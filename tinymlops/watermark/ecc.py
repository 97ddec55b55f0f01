"""The binary BCH(127, 64) code: 64 payload bits in 127 code bits, any 10 bit errors corrected.

No maintained BCH or Reed-Solomon package is in the project's dependencies, and this is the textbook code
(Lin & Costello, ch. 6): GF(2^7) from the primitive polynomial x^7 + x^3 + 1, the generator polynomial the
product of the minimal polynomials of alpha^1..alpha^20 (degree 63), systematic encoding, and decoding by
syndromes, Berlekamp-Massey and a Chien search.  Polynomials over GF(2) are Python ints (bit i: coefficient of
x^i); a codeword as bits is index i = coefficient of x^i, the payload in the top 64 positions.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numpy.typing import NDArray

M = 7
N = (1 << M) - 1  # 127
T = 10  # errors corrected
PRIMITIVE = 0b10001001  # x^7 + x^3 + 1
K = 64


@cache
def _tables() -> tuple[list[int], list[int]]:
    """exp and log tables of GF(2^7); exp is doubled so products need no modulo."""
    exp, log = [0] * (2 * N), [0] * (N + 1)
    value = 1
    for power in range(N):
        exp[power] = exp[power + N] = value
        log[value] = power
        value <<= 1
        if value & (1 << M):
            value ^= PRIMITIVE
    if value != 1 or len(set(exp[:N])) != N:
        raise AssertionError("x^7 + x^3 + 1 is not primitive")  # cannot happen: a fixed, known polynomial
    return exp, log


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    exp, log = _tables()
    return exp[log[a] + log[b]]


def _inverse(a: int) -> int:
    exp, log = _tables()
    return exp[(N - log[a]) % N]


def _poly_mul_gf2(a: int, b: int) -> int:
    product = 0
    while b:
        if b & 1:
            product ^= a
        a, b = a << 1, b >> 1
    return product


def _poly_mod_gf2(a: int, m: int) -> int:
    degree = m.bit_length() - 1
    while a.bit_length() - 1 >= degree:
        a ^= m << (a.bit_length() - 1 - degree)
    return a


def _minimal_polynomial(power: int) -> int:
    """The minimal polynomial over GF(2) of alpha^power: the product of (x - beta) over its conjugates."""
    exp, _ = _tables()
    conjugates = sorted({(power << j) % N for j in range(M)})
    coefficients = [1]  # over GF(2^7), lowest degree first
    for conjugate in conjugates:
        root = exp[conjugate]
        shifted = [0, *coefficients]
        for index, coefficient in enumerate(coefficients):
            shifted[index] ^= _mul(coefficient, root)
        coefficients = shifted
    if any(c not in (0, 1) for c in coefficients):
        raise AssertionError("minimal polynomial has coefficients outside GF(2)")  # a bug in the field tables
    return sum(c << i for i, c in enumerate(coefficients))


@cache
def generator() -> int:
    """The generator polynomial: the least common multiple of the minimal polynomials of alpha^1..alpha^2T."""
    factors = {_minimal_polynomial(power) for power in range(1, 2 * T + 1)}
    product = 1
    for factor in sorted(factors):
        product = _poly_mul_gf2(product, factor)
    if product.bit_length() - 1 != N - K:
        raise AssertionError(f"generator degree {product.bit_length() - 1}, expected {N - K}")
    return product


def _bits_to_int(bits: NDArray[np.uint8]) -> int:
    return int(sum(int(bit) << index for index, bit in enumerate(bits)))


def _int_to_bits(value: int, length: int) -> NDArray[np.uint8]:
    return np.array([(value >> index) & 1 for index in range(length)], dtype=np.uint8)


def encode(payload: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The 127 code bits of a 64-bit payload (systematic: the payload is bits 63..126)."""
    if payload.shape != (K,) or not np.isin(payload, (0, 1)).all():
        raise ValueError(f"a BCH({N},{K}) payload is {K} bits of 0/1, got shape {payload.shape}")
    shifted = _bits_to_int(payload) << (N - K)
    return _int_to_bits(shifted ^ _poly_mod_gf2(shifted, generator()), N)


def _syndromes(received: int) -> list[int]:
    exp, _ = _tables()
    syndromes = []
    for power in range(1, 2 * T + 1):
        value = 0
        for position in range(N):
            if (received >> position) & 1:
                value ^= exp[(power * position) % N]
        syndromes.append(value)
    return syndromes


def _berlekamp_massey(syndromes: list[int]) -> list[int]:
    """The error locator polynomial (lowest degree first) of the syndromes S_1..S_2T."""
    locator, previous = [1] + [0] * (2 * T), [1] + [0] * (2 * T)
    length, shift, last_discrepancy = 0, 1, 1
    for step in range(2 * T):
        discrepancy = syndromes[step]
        for index in range(1, length + 1):
            discrepancy ^= _mul(locator[index], syndromes[step - index])
        if discrepancy == 0:
            shift += 1
            continue
        factor = _mul(discrepancy, _inverse(last_discrepancy))
        updated = locator.copy()
        for index in range(2 * T + 1 - shift):
            updated[index + shift] ^= _mul(factor, previous[index])
        if 2 * length <= step:
            previous, length, last_discrepancy, shift = locator, step + 1 - length, discrepancy, 1
        else:
            shift += 1
        locator = updated
    return locator[: length + 1]


def decode(bits: NDArray[np.uint8]) -> NDArray[np.uint8] | None:
    """The 64-bit payload of 127 received bits with at most 10 errors; None when the errors cannot be corrected
    (more than 10 may also decode to another payload: the caller compares payloads, never trusts one alone)."""
    if bits.shape != (N,):
        raise ValueError(f"a BCH({N},{K}) word is {N} bits, got shape {bits.shape}")
    received = _bits_to_int(bits)
    syndromes = _syndromes(received)
    if any(syndromes):
        exp, _ = _tables()
        locator = _berlekamp_massey(syndromes)
        errors = []
        for position in range(N):  # Chien search: alpha^-position is a root when bit `position` is wrong
            value = 0
            for degree, coefficient in enumerate(locator):
                if coefficient:
                    value ^= _mul(coefficient, exp[(-position * degree) % N])
            if value == 0:
                errors.append(position)
        if len(errors) != len(locator) - 1:
            return None
        for position in errors:
            received ^= 1 << position
    return _int_to_bits(received >> (N - K), K)
