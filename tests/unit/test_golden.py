"""Golden flow dumps, keyed by table name: what each layer compiles for one tenant that
uses every layer, on the gateway host, on the host of the ACL-guarded port, and on a
plain host. Lines sorted, cookies masked, jump targets printed by table name (a wrong
goto cannot pass), so adding a table or reordering layers does not rewrite every
expectation.

After an intended change: UPDATE_GOLDEN=1 pytest tests/unit/test_golden.py, and review
the diff of tests/unit/golden/ like code.
"""
import os
import re

import pytest

from controller.compile.compiler import compile_world
from controller.compile.pipeline import PIPELINE
from dataplane.match_action import groups_of, meters_of
from tests.unit.fixtures import GW_HOSTS as HOSTS, SHOP as DOC, world  # DOC, HOSTS: other tests take them from here

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def mask(text: str) -> str:
    """Table numbers -> names: goto_table:<lb_out>, resubmit(,<deliver>), ct(table=<acl_in>)."""
    return re.sub(r"(goto_table:|resubmit\(,|table=)(\d+)",
                  lambda m: m.group(1) + f"<{PIPELINE.by_number[int(m.group(2))].name}>", text)


def dump(flows) -> str:
    """'# table' sections, each a sorted list of flows without table number and cookie."""
    by_table = {}
    for f in flows.values():
        body = re.sub(r"^table=\d+,", "", f.body)
        body = mask(body)
        by_table.setdefault(f.table.name, []).append(f"{body}  # {f.rule}")
    text = "".join(f"# {t}\n" + "".join(f"{line}\n" for line in sorted(lines))
                   for t, lines in sorted(by_table.items()))
    groups = groups_of(flows.values())
    text += "".join(f"## group {gid}: {mask(g.buckets_text())}\n" for gid, g in sorted(groups.items()))
    text += "".join(f"## meter {mid}: {rate} {'kbit/s' if unit == 'kbps' else 'pkt/s'}, burst {burst} "
                    f"{'kbit' if unit == 'kbps' else 'packets'}\n"
                    for mid, (rate, burst, unit) in sorted(meters_of(flows.values()).items()))
    return text


@pytest.mark.parametrize("host", ["hv1", "hv2", "hv3"])
def test_golden_flows(host):
    flows = compile_world(HOSTS, world(DOC, hosts=HOSTS))[host]
    text = dump(flows)
    path = os.path.join(GOLDEN, f"shop_{host}.txt")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        expected = f.read()
    assert text == expected, f"flows for {host} differ from {path} (UPDATE_GOLDEN=1 to accept)"
