from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UsageSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_SOURCE_UNSPECIFIED: _ClassVar[UsageSource]
    USAGE_SOURCE_REPORTED: _ClassVar[UsageSource]
    USAGE_SOURCE_ESTIMATED: _ClassVar[UsageSource]
    USAGE_SOURCE_UPSTREAM_ERROR: _ClassVar[UsageSource]
    USAGE_SOURCE_CONFIGURED: _ClassVar[UsageSource]

class ResponseEnd(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESPONSE_END_UNSPECIFIED: _ClassVar[ResponseEnd]
    RESPONSE_END_COMPLETE: _ClassVar[ResponseEnd]
    RESPONSE_END_INTERRUPTED: _ClassVar[ResponseEnd]
    RESPONSE_END_NO_RESPONSE: _ClassVar[ResponseEnd]
    RESPONSE_END_NOT_OBSERVED: _ClassVar[ResponseEnd]
    RESPONSE_END_UNREPORTED: _ClassVar[ResponseEnd]
USAGE_SOURCE_UNSPECIFIED: UsageSource
USAGE_SOURCE_REPORTED: UsageSource
USAGE_SOURCE_ESTIMATED: UsageSource
USAGE_SOURCE_UPSTREAM_ERROR: UsageSource
USAGE_SOURCE_CONFIGURED: UsageSource
RESPONSE_END_UNSPECIFIED: ResponseEnd
RESPONSE_END_COMPLETE: ResponseEnd
RESPONSE_END_INTERRUPTED: ResponseEnd
RESPONSE_END_NO_RESPONSE: ResponseEnd
RESPONSE_END_NOT_OBSERVED: ResponseEnd
RESPONSE_END_UNREPORTED: ResponseEnd

class Tokens(_message.Message):
    __slots__ = ("prompt", "completion", "total", "cached", "reasoning")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    prompt: int
    completion: int
    total: int
    cached: int
    reasoning: int
    def __init__(self, prompt: _Optional[int] = ..., completion: _Optional[int] = ..., total: _Optional[int] = ..., cached: _Optional[int] = ..., reasoning: _Optional[int] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("decision_id", "time_unix_ms", "tenant", "subject", "workload_class", "model_requested", "model_served", "upstream", "route", "route_version", "tokens", "source", "charged_tokens", "cost_unit", "cost_units", "status", "streamed", "ttfb_ms", "ttft_ms", "total_ms", "ended", "adapter", "degraded", "plan", "end")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_CLASS_FIELD_NUMBER: _ClassVar[int]
    MODEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_SERVED_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHARGED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_UNIT_FIELD_NUMBER: _ClassVar[int]
    COST_UNITS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STREAMED_FIELD_NUMBER: _ClassVar[int]
    TTFB_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    time_unix_ms: int
    tenant: str
    subject: str
    workload_class: str
    model_requested: str
    model_served: str
    upstream: str
    route: str
    route_version: int
    tokens: Tokens
    source: UsageSource
    charged_tokens: int
    cost_unit: str
    cost_units: int
    status: int
    streamed: bool
    ttfb_ms: int
    ttft_ms: int
    total_ms: int
    ended: str
    adapter: str
    degraded: str
    plan: str
    end: ResponseEnd
    def __init__(self, decision_id: _Optional[str] = ..., time_unix_ms: _Optional[int] = ..., tenant: _Optional[str] = ..., subject: _Optional[str] = ..., workload_class: _Optional[str] = ..., model_requested: _Optional[str] = ..., model_served: _Optional[str] = ..., upstream: _Optional[str] = ..., route: _Optional[str] = ..., route_version: _Optional[int] = ..., tokens: _Optional[_Union[Tokens, _Mapping]] = ..., source: _Optional[_Union[UsageSource, str]] = ..., charged_tokens: _Optional[int] = ..., cost_unit: _Optional[str] = ..., cost_units: _Optional[int] = ..., status: _Optional[int] = ..., streamed: _Optional[bool] = ..., ttfb_ms: _Optional[int] = ..., ttft_ms: _Optional[int] = ..., total_ms: _Optional[int] = ..., ended: _Optional[str] = ..., adapter: _Optional[str] = ..., degraded: _Optional[str] = ..., plan: _Optional[str] = ..., end: _Optional[_Union[ResponseEnd, str]] = ...) -> None: ...

class PolicyEvaluation(_message.Message):
    __slots__ = ("policy", "dimension", "limit", "window", "cost", "used", "remaining", "reset_ms", "retry_ms", "allowed", "enforced")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RESET_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_MS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    policy: str
    dimension: str
    limit: int
    window: str
    cost: int
    used: int
    remaining: int
    reset_ms: int
    retry_ms: int
    allowed: bool
    enforced: bool
    def __init__(self, policy: _Optional[str] = ..., dimension: _Optional[str] = ..., limit: _Optional[int] = ..., window: _Optional[str] = ..., cost: _Optional[int] = ..., used: _Optional[int] = ..., remaining: _Optional[int] = ..., reset_ms: _Optional[int] = ..., retry_ms: _Optional[int] = ..., allowed: _Optional[bool] = ..., enforced: _Optional[bool] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("decision_id", "time_unix_ms", "adapter", "listener", "allowed", "reason", "status", "message", "tenant", "subject", "plan", "issuer", "scopes", "verified", "method", "path", "host", "workload_class", "classification_rule", "model_requested", "model_served", "route", "route_version", "upstream", "policies", "deciding_policy", "degraded", "estimate_tokens", "trace_id", "max_tokens_clamped")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    LISTENER_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_CLASS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_RULE_FIELD_NUMBER: _ClassVar[int]
    MODEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_SERVED_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    DECIDING_POLICY_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_CLAMPED_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    time_unix_ms: int
    adapter: str
    listener: str
    allowed: bool
    reason: str
    status: int
    message: str
    tenant: str
    subject: str
    plan: str
    issuer: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    verified: bool
    method: str
    path: str
    host: str
    workload_class: str
    classification_rule: str
    model_requested: str
    model_served: str
    route: str
    route_version: int
    upstream: str
    policies: _containers.RepeatedCompositeFieldContainer[PolicyEvaluation]
    deciding_policy: str
    degraded: str
    estimate_tokens: int
    trace_id: str
    max_tokens_clamped: bool
    def __init__(self, decision_id: _Optional[str] = ..., time_unix_ms: _Optional[int] = ..., adapter: _Optional[str] = ..., listener: _Optional[str] = ..., allowed: _Optional[bool] = ..., reason: _Optional[str] = ..., status: _Optional[int] = ..., message: _Optional[str] = ..., tenant: _Optional[str] = ..., subject: _Optional[str] = ..., plan: _Optional[str] = ..., issuer: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., verified: _Optional[bool] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., host: _Optional[str] = ..., workload_class: _Optional[str] = ..., classification_rule: _Optional[str] = ..., model_requested: _Optional[str] = ..., model_served: _Optional[str] = ..., route: _Optional[str] = ..., route_version: _Optional[int] = ..., upstream: _Optional[str] = ..., policies: _Optional[_Iterable[_Union[PolicyEvaluation, _Mapping]]] = ..., deciding_policy: _Optional[str] = ..., degraded: _Optional[str] = ..., estimate_tokens: _Optional[int] = ..., trace_id: _Optional[str] = ..., max_tokens_clamped: _Optional[bool] = ...) -> None: ...
