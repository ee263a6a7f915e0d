"""``crisp doctor [--json]``: print the node's checks; exit 1 when any FAILs."""

from __future__ import annotations

import json
import sys

from crisp.doctor import Status, run_checks


def main_doctor(explicit_config: str | None, as_json: bool, network: bool = True) -> int:
    checks = run_checks(explicit_config, network=network)
    failed = any(c.status is Status.FAIL for c in checks)
    if as_json:
        json.dump({"ok": not failed, "checks": [c.as_json() for c in checks]}, sys.stdout,
                  indent=2)
        sys.stdout.write("\n")
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            print(f"{check.status.value:<4}  {check.name:<{width}}  {check.detail}")
            if check.fix:
                print(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
        counts = {s: sum(c.status is s for c in checks) for s in Status}
        print(f"\n{counts[Status.OK]} ok, {counts[Status.WARN]} warnings, "
              f"{counts[Status.FAIL]} failed")
    return 1 if failed else 0
