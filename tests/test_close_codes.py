"""Close codes that say what to do (issue #20): the table, the rule, the guide and the browser
client agree.  (That the library sends those codes in those situations is checked where each
situation is tested: slow consumer and send timeout 1013 in test_hardening/test_send_path,
restart 1012 in test_restart, history 1013 in test_recovery and test_history_redis*.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from trio_wshandler import CLOSE_CODES, should_reconnect
from trio_wshandler._close_codes import RECONNECT, TERMINAL

ROOT = Path(__file__).resolve().parent.parent
CODES = [None, *range(1000, 1016), 2999, 3000, 3499, 3500, 3999, 4000, 4499, 4500, 4999, 5000]


def test_the_rule() -> None:
    assert [c for c in CLOSE_CODES if should_reconnect(c)] == [1001, 1011, 1012, 1013]
    assert should_reconnect(None) and should_reconnect(1005) and should_reconnect(1006)
    assert not should_reconnect(1000) and not should_reconnect(1008)
    assert should_reconnect(3000) and should_reconnect(3499) and not should_reconnect(3500)
    assert should_reconnect(4000) and should_reconnect(4499) and not should_reconnect(4500)
    assert not should_reconnect(4999) and not should_reconnect(2999)
    assert {advice.action for advice in CLOSE_CODES.values()} == {RECONNECT, TERMINAL}


def test_the_guide_lists_every_code_with_its_action() -> None:
    guide = (ROOT / "docs" / "guide.md").read_text()
    section = guide.split("## Close codes we send")[1].split("\n## ")[0]
    rows = dict(re.findall(r"^\| (\d{4}) \| (reconnect|terminal) \|", section, re.M))
    assert {int(code): action for code, action in rows.items()} == {
        code: advice.action for code, advice in CLOSE_CODES.items()
    }


def test_the_browser_client_follows_the_same_rule() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node to run static/pubsub.js")
    script = ROOT / "trio_wshandler" / "static" / "pubsub.js"
    program = (
        f"require({json.dumps(str(script))});"
        f"const codes = {json.dumps(CODES)};"
        "console.log(JSON.stringify(codes.map((c) => globalThis.TrioPubSub.shouldReconnect(c))));"
    )
    done = subprocess.run([node, "-e", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [should_reconnect(code) for code in CODES]
