"""The request parameters the gateway acts on, read strictly, and the tokens a request may cost (pure).

``stream`` decides whether the response's usage is read from a stream; the completion caps and
``n`` decide how many tokens the admission reserves. A lenient upstream reads ``"stream": 1`` or
``"max_tokens": "100000"`` as a stream and a cap of 100,000 tokens, so a value of the wrong type
here would let a request be served differently from how it was admitted: it is refused (400)
with a message that names the field. README "Request parameters".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extproc.domain.classify import TokenUse
from extproc.domain.reasons import InvalidRequest, Reason, shown
from extproc.domain.token_estimate import value_tokens

#: The fields that cap a completion, in every API the gateway knows (Chat Completions names
#: two; Responses its own). When several are set, the largest is what may be generated.
COMPLETION_CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
#: The fields a prompt is in (OpenAI chat and completions, Responses, Anthropic, Gemini), and
#: tool definitions, which providers bill as prompt.
PROMPT_FIELDS = ("messages", "prompt", "input", "system", "contents", "instructions", "tools", "functions")
#: Larger counts are not a request but garbage (and would not fit a record's int64).
MAX_COUNT = 1 << 53
#: OpenAI's own ceiling for ``n``.
MAX_CHOICES = 128


@dataclass(frozen=True, slots=True)
class RequestParams:
    """What the body asks for, as far as admission and accounting are concerned."""

    stream: bool = False
    #: The largest completion cap named (None: none, the policy's default applies).
    completion_cap: int | None = None
    #: The cap fields the body names (a clamp lowers every one of them).
    cap_fields: tuple[str, ...] = ()
    #: How many completions it asks for (``n``, or ``best_of`` when larger).
    choices: int = 1
    prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TokenDemand:
    """What a request may cost in tokens: its prompt (estimated) and, per choice, the completion
    it may generate. The admission reserves ``total``; settlement trues it up to the usage."""

    prompt: int = 0
    completion: int = 0
    choices: int = 1

    @property
    def total(self) -> int:
        return self.prompt + self.completion * self.choices


NO_TOKENS = TokenDemand()
#: A request that names nothing (no body, or a body without prompt or caps).
NO_PARAMS = RequestParams()


def read_params(fields: Mapping[str, Any] | None, form: bool = False) -> RequestParams:
    """The parameters of a body's fields (a JSON object, or a form's text fields when ``form``).
    ``InvalidRequest`` (400 ``invalid_parameter``) for a value of the wrong type or range."""
    if not fields:
        return NO_PARAMS
    caps = [(name, _count(fields[name], name, form, 0)) for name in COMPLETION_CAP_FIELDS
            if fields.get(name) is not None]
    choices = max(_count(fields.get("n"), "n", form, 1, MAX_CHOICES) or 1,
                  _count(fields.get("best_of"), "best_of", form, 1, MAX_CHOICES) or 1)
    prompt = sum(value_tokens(fields[name]) for name in PROMPT_FIELDS if name in fields)
    return RequestParams(
        stream=_flag(fields.get("stream"), "stream", form),
        completion_cap=max((cap for _, cap in caps if cap is not None), default=None),
        cap_fields=tuple(name for name, _ in caps),
        choices=choices,
        prompt_tokens=max(1, prompt),
    )


def token_demand(params: RequestParams, use: TokenUse, default_max_tokens: int) -> TokenDemand:
    """What the admission reserves for a request of this kind."""
    if use is TokenUse.NONE:
        return NO_TOKENS
    if use is TokenUse.PROMPT:
        return TokenDemand(params.prompt_tokens)
    cap = default_max_tokens if params.completion_cap is None else params.completion_cap
    return TokenDemand(params.prompt_tokens, cap, params.choices)


def _flag(value: Any, name: str, form: bool) -> bool:
    if value is None:
        return False
    if value is True or value is False:
        return bool(value)
    if form and value in ("true", "false"):
        return bool(value == "true")
    raise InvalidRequest(Reason.INVALID_PARAMETER,
                         f"{name} must be true or false, not {shown(value)}")


def _count(value: Any, name: str, form: bool, low: int, high: int = MAX_COUNT) -> int | None:
    """A whole number in [low, high] (None when absent). JSON numbers with a zero fraction
    (``100.0``) count; strings only in forms, where every value is text."""
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif _whole(value, form):
        number = int(value)
    if number is None or not low <= number <= high:
        raise InvalidRequest(Reason.INVALID_PARAMETER,
                             f"{name} must be a whole number from {low} to {high}, not {shown(value)}")
    return number


def _whole(value: Any, form: bool) -> bool:
    """A float with no fraction, or (forms only) a string of digits."""
    if isinstance(value, float):
        return value.is_integer() and abs(value) <= MAX_COUNT
    return form and isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16
