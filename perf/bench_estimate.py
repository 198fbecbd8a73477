"""What reading a chat body costs per request, old rule beside new, in one process.

    .venv/bin/python perf/bench_estimate.py [--rounds 5] [--number 20000]

Compares, on the same bodies: the body read (``json.loads`` before; the strict reader, which
refuses repeated keys, now) and the token estimate (characters / 4 before; ASCII bytes / 4 plus
a token per non-ASCII byte, with the strict parameter read, now). Bodies: the bench's ASCII
chat request, a Japanese one of the same length in characters, and a 4 KiB English one.
Prints microseconds per request (median of the rounds) and the estimate each rule makes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from extproc.domain.params import read_params  # noqa: E402
from extproc.domain.request_body import read_body  # noqa: E402

_OLD_PROMPT_FIELDS = ("messages", "prompt", "input", "system", "contents")


def old_prompt_tokens(body: Mapping[str, Any]) -> int:
    """The rule before hardening #7 (``quota/plan.py``): characters / 4."""
    size = 0
    for name in _OLD_PROMPT_FIELDS:
        if name in body:
            value = body[name]
            size += len(value) if isinstance(value, str) else len(json.dumps(value, ensure_ascii=False))
    return max(1, size // 4)


def bodies() -> dict[str, bytes]:
    english = "Summarise the following paragraph in one sentence, please. " * 3
    japanese = "次の段落を一文で要約してください。東京は日本の首都です。" * 3
    long = "The quick brown fox jumps over the lazy dog. " * 90
    def chat(text: str) -> bytes:
        return json.dumps({"model": "gpt-4o-mini", "max_tokens": 64, "stream": False,
                           "messages": [{"role": "system", "content": "You are terse."},
                                        {"role": "user", "content": text}]}, ensure_ascii=False).encode()
    return {"ascii chat": chat(english), "japanese chat": chat(japanese), "4 KiB english": chat(long)}


def per_call_us(fn: Callable[[], object], number: int, rounds: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=rounds)
    return statistics.median(times) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    headers = {"content-type": "application/json"}
    print("| body | bytes | before: json.loads + chars/4 (µs) | now: strict read + params (µs) | "
          "estimate before | estimate now |")
    print("|---|---|---|---|---|---|")
    for name, raw in bodies().items():
        before = per_call_us(lambda raw=raw: old_prompt_tokens(json.loads(raw)), args.number, args.rounds)
        now = per_call_us(lambda raw=raw: read_params(read_body(raw, headers).fields),  # type: ignore[union-attr]
                          args.number, args.rounds)
        doc = json.loads(raw)
        body = read_body(raw, headers)
        assert body is not None
        print(f"| {name} | {len(raw)} | {before:.1f} | {now:.1f} | {old_prompt_tokens(doc)} | "
              f"{read_params(body.fields).prompt_tokens} |")


if __name__ == "__main__":
    main()
