"""CKKS parameters: a secure-by-construction planner and the client's TenSEAL context.

CKKS (Cheon, Kim, Kim & Song, "Homomorphic Encryption for Arithmetic of Approximate Numbers", ASIACRYPT
2017) computes on fixed-point numbers scaled by ``2**scale_bits``; every multiplication is followed by a
rescale that drops one prime of the coefficient modulus chain, so a model of multiplicative depth ``d``
needs the chain ``[first, scale_bits x d, last]``: ``first`` holds the result (its bits above the scale
are the integer headroom), ``last`` is the special prime used for key switching. Security comes from
the ring dimension ``N`` (``poly_modulus_degree``) against the total modulus size ``log2(q)``: the
limits are the 128-bit classical ones of the Homomorphic Encryption Standard (Albrecht et al., 2018,
Table 1, ternary secrets), which Microsoft SEAL and TenSEAL (Benaissa et al., ICLR 2021 workshop) enforce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ramparts.errors import ValidationError, check_int, invalid

if TYPE_CHECKING:
    import tenseal as ts

#: Largest log2(q) per ring dimension N at 128-bit classical security (HE standard, Table 1).
MAX_MODULUS_BITS: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
#: SEAL refuses primes above 60 bits.
MAX_PRIME_BITS = 60
#: Scales the planner tries when none is given, from precise to cheap. With the exact-scale SEAL kernels
#: (he_seal) the 5-deep MNIST CNN stays within 1e-3 of float64 at 2**28 (N = 8192); at 2**26 it missed the
#: 1e-2 bar (0.014). TenSEAL's own tensor operations needed 2**30 (0.14 at 2**28).
MAX_SCALE_BITS = 40
MIN_SCALE_BITS = 28
#: Integer headroom of the outer primes: decrypted values must stay below 2**(precision_bits - 1).
DEFAULT_PRECISION_BITS = 10


class InsecureParametersError(ValidationError):
    """CKKS parameters whose modulus is too large for their ring dimension at 128-bit security."""


@dataclass(frozen=True)
class HEParameters:
    """CKKS parameters: ring dimension ``N``, the bit sizes of the modulus chain, and the scale (bits)."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    def __post_init__(self) -> None:
        """Refuse shapes SEAL cannot build (security is checked separately by :func:`check_security`)."""
        n = self.poly_modulus_degree
        if isinstance(n, bool) or not isinstance(n, int) or n not in MAX_MODULUS_BITS:
            raise invalid(
                "poly_modulus_degree",
                n,
                f"one of {sorted(MAX_MODULUS_BITS)}",
                "use plan_parameters() to choose it from the depth",
            )
        sizes = tuple(self.coeff_mod_bit_sizes)
        if len(sizes) < 2 or any(
            isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= MAX_PRIME_BITS for b in sizes
        ):
            raise invalid(
                "coeff_mod_bit_sizes",
                self.coeff_mod_bit_sizes,
                f"at least two integers in [2, {MAX_PRIME_BITS}]",
                "give [first, scale_bits x depth, last], e.g. (40, 30, 30, 40)",
            )
        object.__setattr__(self, "coeff_mod_bit_sizes", sizes)
        scale = check_int("scale_bits", self.scale_bits, 1)
        if scale >= sizes[0]:
            raise invalid(
                "scale_bits",
                scale,
                f"fewer bits than the first prime ({sizes[0]})",
                "make the first prime scale_bits + precision_bits",
            )

    @property
    def slots(self) -> int:
        """Numbers one ciphertext holds: N / 2."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplications (rescales) available: the primes between the first and the special prime."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def modulus_bits(self) -> int:
        """log2(q): the sum of the chain's bit sizes."""
        return sum(self.coeff_mod_bit_sizes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (round-trips through :meth:`from_dict`)."""
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HEParameters:
        """Parameters from :meth:`to_dict`'s output; unknown or missing keys are refused."""
        keys = {"poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits"}
        if not isinstance(data, dict) or set(data) != keys:
            raise invalid(
                "parameters",
                data,
                f"a mapping with exactly the keys {sorted(keys)}",
                "use HEParameters.to_dict()",
            )
        sizes = data["coeff_mod_bit_sizes"]
        if not isinstance(sizes, (list, tuple)):
            raise invalid("coeff_mod_bit_sizes", sizes, "a list of integers")
        return cls(
            poly_modulus_degree=data["poly_modulus_degree"],
            coeff_mod_bit_sizes=tuple(sizes),
            scale_bits=data["scale_bits"],
        )


def check_security(params: HEParameters) -> None:
    """Raise :class:`InsecureParametersError` when log2(q) exceeds the HE standard's 128-bit limit for N."""
    limit = MAX_MODULUS_BITS[params.poly_modulus_degree]
    if params.modulus_bits > limit:
        raise invalid(
            "coeff_mod_bit_sizes",
            list(params.coeff_mod_bit_sizes),
            f"at most {limit} bits in total for poly_modulus_degree={params.poly_modulus_degree} "
            f"(128-bit security, HE standard), not {params.modulus_bits}",
            "use fewer or smaller primes, or a larger poly_modulus_degree (plan_parameters() does this)",
            cls=InsecureParametersError,
        )


def _chain(depth: int, scale_bits: int, precision_bits: int) -> tuple[int, ...]:
    outer = scale_bits + precision_bits
    return (outer,) + (scale_bits,) * depth + (outer,)


def plan_parameters(
    depth: int,
    *,
    min_slots: int = 1,
    scale_bits: int | None = None,
    precision_bits: int | None = None,
    min_scale_bits: int = MIN_SCALE_BITS,
) -> HEParameters:
    """The smallest secure CKKS parameters for ``depth`` multiplications and ``min_slots`` slots.

    The chain is ``[scale + precision, scale x depth, scale + precision]``. With ``scale_bits`` left out,
    the smallest ring dimension that holds the depth at a scale of at least ``2**min_scale_bits`` (default
    2**28) is taken, and then the
    largest scale (up to 2**40) that still fits it: the precision is free until the security limit, while a
    larger ring costs ~2-3x time and size. ``precision_bits`` (default 10) bounds the decrypted values'
    magnitude by 2**(precision_bits - 1).
    """
    depth = check_int("depth", depth, 0)
    min_slots = check_int("min_slots", min_slots, 1)
    min_scale_bits = check_int("min_scale_bits", min_scale_bits, 1)
    precision = (
        DEFAULT_PRECISION_BITS if precision_bits is None else check_int("precision_bits", precision_bits, 1)
    )
    if scale_bits is not None:
        check_int("scale_bits", scale_bits, 1)
        if scale_bits + precision > MAX_PRIME_BITS:
            raise invalid(
                "scale_bits",
                scale_bits,
                f"scale_bits + precision_bits <= {MAX_PRIME_BITS} (SEAL's largest prime)",
                "lower scale_bits or precision_bits",
            )
    for n, limit in sorted(MAX_MODULUS_BITS.items()):
        if n // 2 < min_slots:
            continue
        if scale_bits is not None:
            chain = _chain(depth, scale_bits, precision)
            if sum(chain) <= limit:
                return HEParameters(poly_modulus_degree=n, coeff_mod_bit_sizes=chain, scale_bits=scale_bits)
            continue
        best = min(MAX_SCALE_BITS, MAX_PRIME_BITS - precision, (limit - 2 * precision) // (depth + 2))
        if best >= min_scale_bits:
            return HEParameters(
                poly_modulus_degree=n, coeff_mod_bit_sizes=_chain(depth, best, precision), scale_bits=best
            )
    largest = max(MAX_MODULUS_BITS)
    raise invalid(
        "depth",
        depth,
        f"a depth and slot count that fit poly_modulus_degree={largest} "
        f"({MAX_MODULUS_BITS[largest]} bits, {largest // 2} slots)",
        "use a shallower model (fewer layers or activations), a smaller scale_bits, or fewer inputs per ciphertext",
    )


def make_context(params: HEParameters, *, galois_keys: bool, n_threads: int | None = None) -> ts.Context:
    """A private (client) TenSEAL context for ``params``: secret key, relinearisation keys, global scale.

    ``galois_keys`` adds the rotation keys the per-query packing needs (they are large: tens of MB);
    ``n_threads`` is TenSEAL's thread pool size (None: its default, the machine's cores); the SEAL kernels
    of :mod:`ramparts.protection.he_seal` that evaluate with these keys run on one thread (SEAL's Python
    bindings hold the GIL).
    """
    import tenseal as ts

    check_security(params)
    if n_threads is not None:
        check_int("n_threads", n_threads, 1)
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        n_threads=n_threads,
    )
    context.global_scale = 2.0**params.scale_bits
    if galois_keys:
        context.generate_galois_keys()
    return context
