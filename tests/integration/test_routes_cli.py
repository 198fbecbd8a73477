"""``extproc routes …`` against a real redis-server, as an operator runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.cli import main
from tests.redis_server import RedisServer

POLICY = """
routing:
  pools: [pool-a, pool-b, pool-c]
  routes:
    - {id: inference, class: inference, pool: pool-a}
"""
CANARY = """
aliases: {gpt-4o: gpt-4o-2024-08-06}
routes:
  - {id: inference, class: inference, pool: pool-a, fallbacks: [pool-b]}
  - id: gpt-4o-canary
    model: gpt-4o-2024-08-06
    pools: [{pool: pool-a, weight: 90}, {pool: pool-c, weight: 10}]
"""


@pytest.fixture
def env(tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    monkeypatch.setenv("EXTPROC_CONFIG", str(tmp_path / "policy.yaml"))
    monkeypatch.setenv("EXTPROC_REDIS_URL", redis_server.url)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["routes", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_apply_diff_history_rollback_explain(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (env / "canary.yaml").write_text(CANARY)
    code, out = run(capsys, "get")
    assert code == 1 and "no routing table yet" in out
    code, out = run(capsys, "apply", str(env / "canary.yaml"), "--reason", "canary 10%", "--dry-run")
    assert code == 0 and "+ route gpt-4o-canary: model=gpt-4o-2024-08-06 → pool-a 90%, pool-c 10%" in out
    assert "dry run: nothing published" in out
    assert run(capsys, "history")[0] == 1  # the dry run published nothing
    code, out = run(capsys, "apply", str(env / "canary.yaml"), "--reason", "canary 10%", "--author", "alice")
    assert code == 0 and "published version 1" in out
    assert "no changes against version 1" in run(capsys, "apply", str(env / "canary.yaml"), "--reason", "x")[1]

    (env / "full.yaml").write_text(CANARY.replace("90}", "0}").replace("10}", "100}") + "draining: [pool-b]\n")
    code, out = run(capsys, "apply", str(env / "full.yaml"), "--reason", "all on c", "--author", "bob")
    assert code == 0 and "published version 2" in out
    assert "⇒  model=gpt-4o-2024-08-06 → pool-a 0%, pool-c 100%" in out and "+ draining pool-b" in out

    code, out = run(capsys, "get")
    assert code == 0 and out.startswith("# routing table version 2") and "by bob" in out and "# reason: all on c" in out
    code, out = run(capsys, "explain", "--tenant", "globex", "--class", "inference", "--model", "gpt-4o")
    assert code == 0
    assert "alias: gpt-4o → gpt-4o-2024-08-06" in out and "winner: gpt-4o-canary" in out
    assert "100.0% → pool-c" in out and "upstream receives model: gpt-4o-2024-08-06" in out
    code, out = run(capsys, "explain", "--tenant", "globex", "--class", "training")
    assert code == 1 and "no entry matches" in out and "404 no_route" in out

    code, out = run(capsys, "rollback", "1", "--reason", "c is slow", "--author", "carol")
    assert code == 0 and "published version 3" in out and "- draining pool-b (takes traffic again)" in out
    code, out = run(capsys, "history")
    lines = out.splitlines()
    assert lines[1].split()[0] == "3" and "carol" in lines[1] and "c is slow (rollback to 1)" in lines[1]
    assert [line.split()[0] for line in lines[1:]] == ["3", "2", "1"]
    assert run(capsys, "get", "--version", "3")[1].split("\n", 2)[2] == run(capsys, "get", "--version", "1")[1].split("\n", 2)[2]


def test_invalid_table_is_refused_and_nothing_published(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (env / "bad.yaml").write_text("routes:\n  - {id: x, pool: pool-z, fallbacks: [pool-a, pool-b]}\n")
    code, out = run(capsys, "apply", str(env / "bad.yaml"), "--reason", "oops")
    assert code == 1 and "2 error(s); nothing was published" in out
    assert "routes[0].pool: unknown pool 'pool-z'" in out and "at most 1" in out
    assert run(capsys, "history")[0] == 1
    assert run(capsys, "rollback", "5", "--reason", "x")[1].startswith("version 5 is not in the history")


def test_unreachable_redis_is_a_clear_error(env: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import free_port

    monkeypatch.setenv("EXTPROC_REDIS_URL", f"redis://:secret@127.0.0.1:{free_port()}/0")
    code, out = run(capsys, "history")
    assert code == 1 and "cannot reach Redis at redis://***@127.0.0.1" in out and "secret" not in out
