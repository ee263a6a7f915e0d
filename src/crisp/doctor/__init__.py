"""``crisp doctor``: the node preflight, each check OK, WARN or FAIL with the fix.

The checks read the host (kernel, sysctls, cgroups, binaries, disk) and crisp's own config,
CNI network and socket. Nothing here changes the node: a fix is a sentence for the operator.
"""

from crisp.doctor.checks import Check, Status, run_checks

__all__ = ["Check", "Status", "run_checks"]
