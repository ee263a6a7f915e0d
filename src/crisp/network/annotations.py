"""Pod annotations that ask for network features: traffic shaping.

Kubernetes spells bandwidth limits as ``kubernetes.io/ingress-bandwidth`` and
``kubernetes.io/egress-bandwidth`` with resource quantities ("10M", "1Gi") in bits per
second. The bandwidth plugin wants a burst with every rate; like other runtimes crisp sends
the largest 32-bit value, meaning "no burst limit".
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from crisp.errors import InvalidArgument
from crisp.network.types import BandwidthLimits

INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
UNLIMITED_BURST = 2**31 - 1
_MIN_RATE = 1_000  # the kubelet's own bounds: 1 kbit/s ...
_MAX_RATE = 10**15  # ... to 1 Pbit/s

# suffix -> (numerator, denominator) of its multiplier: whole-number arithmetic, so the
# daemon needs no decimal module (0.4 MiB) for a quantity
_SUFFIXES: dict[str, tuple[int, int]] = {
    "": (1, 1),
    "m": (1, 1000),
    "k": (10**3, 1), "M": (10**6, 1), "G": (10**9, 1),
    "T": (10**12, 1), "P": (10**15, 1), "E": (10**18, 1),
    "Ki": (2**10, 1), "Mi": (2**20, 1), "Gi": (2**30, 1),
    "Ti": (2**40, 1), "Pi": (2**50, 1), "Ei": (2**60, 1),
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity as a whole number ("1.5k" -> 1500); InvalidArgument if bad."""
    match = _QUANTITY.match(text.strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise InvalidArgument(f"{text!r} is not a quantity such as 10M or 1Gi")
    whole, _, fraction = match.group(1).partition(".")
    numerator, denominator = _SUFFIXES[match.group(2)]
    scale: int = 10 ** len(fraction)
    return int(whole + fraction) * numerator // (scale * denominator)


def bandwidth_from_annotations(annotations: Mapping[str, str]) -> BandwidthLimits | None:
    """The pod's bandwidth limits, or None when it asks for none."""
    ingress = _rate(annotations, INGRESS_ANNOTATION)
    egress = _rate(annotations, EGRESS_ANNOTATION)
    if not ingress and not egress:
        return None
    return BandwidthLimits(
        ingress_rate=ingress,
        ingress_burst=UNLIMITED_BURST if ingress else 0,
        egress_rate=egress,
        egress_burst=UNLIMITED_BURST if egress else 0,
    )


def _rate(annotations: Mapping[str, str], key: str) -> int:
    text = annotations.get(key)
    if text is None:
        return 0
    rate = parse_quantity(text)
    if not _MIN_RATE <= rate <= _MAX_RATE:
        raise InvalidArgument(f"annotation {key}={text!r} must be between 1k and 1P bits/s")
    return rate
