"""The outbound masquerade of crisp's default network: one iptables chain per pod subnet.

The bridge plugin's ``ipMasq`` builds a chain of its own for every pod: nine iptables runs
per ADD (one of them lists the whole nat table, which grows with every pod), about half of
the ADD's time measured here. crisp's default network turns ``ipMasq`` off and puts in place,
once per subnet and daemon, what those per-pod chains each do for one address, for the whole
subnet::

    -t nat -A POSTROUTING -s <subnet> -j CRISP-MASQ-<hash>
    -t nat -A CRISP-MASQ-<hash> -d <subnet> -j ACCEPT
    -t nat -A CRISP-MASQ-<hash> -d <multicast> -j ACCEPT
    -t nat -A CRISP-MASQ-<hash> -j MASQUERADE

The chain is (re)filled atomically by ``iptables-restore --noflush`` and the jump added only
when missing, so it is idempotent and several daemons with different subnets on one host
leave each other's rules alone. The rules are the node's, not a pod's: they stay when pods
go (as kubenet's did); a restarted daemon checks them again before its first pod.

Blocking (runs iptables): call it in a thread.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence

from crisp.digest import sha256
from crisp.errors import FailedPrecondition

CHAIN_PREFIX = "CRISP-MASQ-"
COMMENT = "crisp default network: masquerade pod traffic leaving the pod subnet"
TIMEOUT_S = 60.0


def chain_name(subnet: str) -> str:
    """The chain of one subnet (iptables chain names stay under 29 characters)."""
    return CHAIN_PREFIX + sha256(subnet.encode()).hexdigest()[:12].upper()


def rules(subnet: str) -> tuple[str, list[str]]:
    """The iptables-restore input that fills the subnet's chain, and the POSTROUTING jump."""
    network = ipaddress.ip_network(subnet, strict=False)
    multicast = "224.0.0.0/4" if network.version == 4 else "ff00::/8"
    chain = chain_name(str(network))
    restore = (f"*nat\n:{chain} - [0:0]\n"
               f"-A {chain} -d {network} -j ACCEPT\n"
               f"-A {chain} -d {multicast} -j ACCEPT\n"
               f"-A {chain} -j MASQUERADE\n"
               "COMMIT\n")
    jump = ["POSTROUTING", "-s", str(network), "-j", chain, "-m", "comment",
            "--comment", COMMENT]
    return restore, jump


def ensure(subnets: Sequence[str]) -> None:
    """Put the masquerade of every subnet in place; FailedPrecondition says what failed."""
    for subnet in subnets:
        version = ipaddress.ip_network(subnet, strict=False).version
        tool = "iptables" if version == 4 else "ip6tables"
        restore, jump = rules(subnet)
        _run([f"{tool}-restore", "-w", "--noflush"], restore.encode(), subnet)
        if _run([tool, "-w", "-t", "nat", "-C", *jump], None, subnet, check=False) != 0:
            _run([tool, "-w", "-t", "nat", "-A", *jump], None, subnet)


def _run(argv: list[str], stdin: bytes | None, subnet: str, check: bool = True) -> int:
    executable = shutil.which(argv[0])
    what = f"setting up the masquerade of pod subnet {subnet} ({' '.join(argv[:2])})"
    if executable is None:
        raise FailedPrecondition(f"{what}: {argv[0]} is not installed; crisp's default network "
                                 "needs iptables")
    try:
        result = subprocess.run([executable, *argv[1:]], input=stdin, capture_output=True,
                                timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise FailedPrecondition(f"{what}: {error}") from error
    if check and result.returncode != 0:
        raise FailedPrecondition(
            f"{what} failed (exit status {result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()}")
    return result.returncode
