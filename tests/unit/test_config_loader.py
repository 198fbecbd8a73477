"""Config files: every bad file is rejected with the file name and the field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.cli import main as cli_main
from extproc.config.builtin_rules import BUILTIN_RULES
from extproc.config.loader import load_file, parse
from extproc.config.model import Snapshot, UnknownAction
from extproc.config.reader import ConfigError
from extproc.devstack.demo import DEMO_CONFIG

BAD = sorted((Path(__file__).parent / "fixtures" / "bad_config").glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first[len("# expect: "):]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_is_rejected_naming_file_and_field(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(path)
    message = str(info.value)
    assert str(path) in message
    assert expected(path) in message, message


@pytest.mark.parametrize("path", BAD[:3], ids=[p.stem for p in BAD[:3]])
def test_check_config_command_exits_nonzero(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check-config", str(path)]) == 1
    assert expected(path) in capsys.readouterr().err


def test_all_errors_are_reported_not_just_the_first() -> None:
    text = b"""
request_body: {max_bytes: -1}
routing:
  pools: [a]
  routes: [{pool: b, model: x}, {pool: c, model: y}]
"""
    with pytest.raises(ConfigError) as info:
        parse(text, "multi.yaml")
    assert len(info.value.errors) == 3


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_file("/nonexistent/policy.yaml")


def test_demo_config_loads_and_check_config_says_ok(capsys: pytest.CaptureFixture[str]) -> None:
    config = load_file(DEMO_CONFIG)
    assert config.pools == ("pool-a", "pool-b")
    assert config.rules[-len(BUILTIN_RULES):] == BUILTIN_RULES
    assert cli_main(["check-config", str(DEMO_CONFIG)]) == 0
    assert "ok" in capsys.readouterr().out


def test_custom_rules_come_first_and_builtins_can_be_dropped() -> None:
    config = parse(b"""
classification:
  builtin_rules: false
  rules:
    - name: internal-llm
      class: inference
      when: {methods: [post], path_regex: '/llm/(?P<model>[a-z0-9-]+)/generate', hosts: ['*.corp']}
      model: path.model
routing: {pools: [a], routes: [{pool: a}]}
listeners:
  internal: {unknown_requests: allow}
""", "custom.yaml")
    assert [r.name for r in config.rules] == ["internal-llm"]
    snap = Snapshot(config)
    cls = snap.classifier.classify("POST", "/llm/llama-3/generate", "gw.corp", {}, None)
    assert (cls.rule, cls.model) == ("internal-llm", "llama-3")
    assert snap.listener("internal").unknown_requests is UnknownAction.ALLOW
    assert snap.listener("nope").unknown_requests is UnknownAction.DENY  # falls back to default


def test_empty_file_means_no_pools_error() -> None:
    with pytest.raises(ConfigError, match=r"routing\.pools"):
        parse(b"", "empty.yaml")


def test_absurd_nesting_is_a_config_error_not_a_crash() -> None:
    with pytest.raises(ConfigError, match=r"nested too deeply|not valid YAML"):
        parse(b"routing: " + b"[" * 20000 + b"]" * 20000, "deep.yaml")
