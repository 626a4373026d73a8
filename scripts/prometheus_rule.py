"""Write deploy/kubernetes/base/prometheusrule.yaml from deploy/prometheus/alerts.yml.

The alert rules have one home, alerts.yml (which promtool checks and unit-tests); the
PrometheusRule that the Kubernetes kit applies is made from it, its groups copied as they are
written (comments included) under `spec:`. After changing an alert:

    python scripts/prometheus_rule.py           # rewrite the PrometheusRule
    python scripts/prometheus_rule.py --check   # exit 1 if it is not what alerts.yml makes

tests/deploy/test_kubernetes.py runs the check.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"

HEADER = """\
# Made by scripts/prometheus_rule.py from deploy/prometheus/alerts.yml: do not edit here; change
# the rules there and run the script (a test fails while the two differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: mediagen
spec:
"""


def render(alerts: str) -> str:
    """The PrometheusRule: alerts.yml from its `groups:` on, indented under `spec:`."""
    start = alerts.index("\ngroups:") + 1
    body = alerts[start:]
    return HEADER + "".join(
        f"  {line}" if line.strip() else line for line in body.splitlines(keepends=True)
    )


def main(argv: list[str]) -> int:
    made = render(ALERTS.read_text())
    if "--check" in argv:
        if RULE.read_text() != made:
            print(f"{RULE.relative_to(ROOT)} is not made from {ALERTS.relative_to(ROOT)}: "
                  "run python scripts/prometheus_rule.py", file=sys.stderr)
            return 1
        return 0
    RULE.write_text(made)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
