"""Pod annotations that ask for network features: traffic shaping.

Kubernetes spells bandwidth limits as ``kubernetes.io/ingress-bandwidth`` and
``kubernetes.io/egress-bandwidth`` with resource quantities ("10M", "1Gi") in bits per
second. The bandwidth plugin wants a burst with every rate; like other runtimes crisp sends
the largest 32-bit value, meaning "no burst limit".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from crisp.errors import InvalidArgument
from crisp.network.types import BandwidthLimits

INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
UNLIMITED_BURST = 2**31 - 1
_MIN_RATE = 1_000  # the kubelet's own bounds: 1 kbit/s ...
_MAX_RATE = 10**15  # ... to 1 Pbit/s

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity as a whole number ("1.5k" -> 1500); InvalidArgument if bad."""
    match = _QUANTITY.match(text.strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise InvalidArgument(f"{text!r} is not a quantity such as 10M or 1Gi")
    try:
        value = Decimal(match.group(1)) * _SUFFIXES[match.group(2)]
    except InvalidOperation:
        raise InvalidArgument(f"{text!r} is not a quantity such as 10M or 1Gi") from None
    return int(value)


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
