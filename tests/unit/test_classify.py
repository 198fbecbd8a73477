"""The built-in rule set classifies real API requests; rules compile and match as documented."""

from __future__ import annotations

import pytest

from extproc.config.builtin_rules import BUILTIN_RULES
from extproc.domain.classify import (
    NEEDS_BODY,
    UNCLASSIFIED,
    Classification,
    Classifier,
    ModelSource,
    RuleSpec,
    WorkloadClass,
)
from extproc.domain.reasons import InvalidRequest, Reason

W = WorkloadClass
CLASSIFIER = Classifier(BUILTIN_RULES)


def classify(method: str, path: str, body: dict | None = None, host: str = "api.example.com",
             headers: dict[str, str] | None = None) -> Classification:
    return CLASSIFIER.classify(method, path, host, headers or {}, body)


@pytest.mark.parametrize(
    ("method", "path", "body", "workload", "model"),
    [
        ("POST", "/v1/chat/completions", {"model": "gpt-4o"}, W.INFERENCE, "gpt-4o"),
        ("POST", "/v1/completions", {"model": "gpt-3.5-turbo-instruct"}, W.INFERENCE, "gpt-3.5-turbo-instruct"),
        ("POST", "/v1/responses", {"model": "o3"}, W.INFERENCE, "o3"),
        ("GET", "/v1/responses/resp_123", None, W.INFERENCE, None),
        ("POST", "/v1/embeddings", {"model": "text-embedding-3-small"}, W.RAG, "text-embedding-3-small"),
        ("POST", "/v1/images/generations", {"model": "gpt-image-1"}, W.INFERENCE, "gpt-image-1"),
        ("POST", "/v1/images/edits", None, W.INFERENCE, None),
        ("POST", "/v1/audio/speech", {"model": "tts-1"}, W.INFERENCE, "tts-1"),
        ("POST", "/v1/audio/transcriptions", None, W.INFERENCE, None),
        ("POST", "/v1/moderations", {"model": "omni-moderation-latest"}, W.INFERENCE, "omni-moderation-latest"),
        ("POST", "/v1/batches", None, W.INFERENCE, None),
        ("GET", "/v1/batches/batch_1", None, W.INFERENCE, None),
        ("POST", "/v1/files", None, W.TRAINING, None),
        ("POST", "/v1/fine_tuning/jobs", {"model": "gpt-4o-mini"}, W.TRAINING, "gpt-4o-mini"),
        ("GET", "/v1/fine_tuning/jobs/ft-1/events", None, W.TRAINING, None),
        ("POST", "/v1/vector_stores", None, W.RAG, None),
        ("POST", "/v1/vector_stores/vs_1/files", None, W.RAG, None),
        ("POST", "/v1/messages", {"model": "claude-sonnet-4"}, W.INFERENCE, "claude-sonnet-4"),
        ("POST", "/v1/messages/count_tokens", {"model": "claude-sonnet-4"}, W.INFERENCE, "claude-sonnet-4"),
        ("POST", "/v1/videos", {"model": "sora-2"}, W.VIDEO, "sora-2"),
        ("GET", "/v1/videos/video_1", None, W.VIDEO, None),
        ("POST", "/v1/video/generations", {"model": "veo-3"}, W.VIDEO, "veo-3"),
        ("POST", "/v1/jobs", {"model": "llama-70b"}, W.COMPUTE, "llama-70b"),
        ("POST", "/api/jobs/", None, W.COMPUTE, None),
        ("POST", "/v1beta/models/gemini-2.5-pro:generateContent", None, W.INFERENCE, "gemini-2.5-pro"),
        ("POST", "/v1beta/models/text-embedding-004:embedContent", None, W.RAG, "text-embedding-004"),
        ("POST", "/openai/deployments/my-gpt4/chat/completions", None, W.INFERENCE, "my-gpt4"),
        ("POST", "/openai/deployments/emb/embeddings", None, W.RAG, "emb"),
        ("GET", "/v1/models", None, W.INFERENCE, None),
    ],
)
def test_builtin_rules_classify_real_apis(method, path, body, workload, model) -> None:
    result = classify(method, path, body)
    assert (result.workload, result.model) == (workload, model)
    assert result.rule


def test_unknown_paths_are_unknown() -> None:
    assert classify("GET", "/") == UNCLASSIFIED
    assert classify("POST", "/v2/whatever", {"model": "x"}) == UNCLASSIFIED
    # Method matters: GET on a POST-only endpoint is not inference.
    assert classify("GET", "/v1/chat/completions").workload is W.UNKNOWN


def test_edge_inference_by_header_and_host_wins_over_path() -> None:
    by_header = classify("POST", "/v1/chat/completions", {"model": "phi-3"},
                         headers={"x-inference-target": "edge"})
    assert (by_header.workload, by_header.model) == (W.EDGE_INFERENCE, "phi-3")
    by_host = classify("POST", "/v1/chat/completions", {"model": "phi-3"}, host="edge.eu-west.example.com")
    assert by_host.workload is W.EDGE_INFERENCE
    sub_host = classify("POST", "/v1/chat/completions", {"model": "phi-3"}, host="pop1.edge.example.com")
    assert sub_host.workload is W.EDGE_INFERENCE


def test_headers_phase_asks_for_body_only_when_the_rule_needs_it() -> None:
    headers: dict[str, str] = {}
    assert CLASSIFIER.classify_headers("POST", "/v1/chat/completions", "h", headers, True) is NEEDS_BODY
    # No body coming (end of stream on headers): decide now, model unknown.
    no_body = CLASSIFIER.classify_headers("POST", "/v1/chat/completions", "h", headers, False)
    assert isinstance(no_body, Classification) and no_body.workload is W.INFERENCE and no_body.model is None
    # Path-only rules never read the body.
    files = CLASSIFIER.classify_headers("POST", "/v1/files", "h", headers, True)
    assert isinstance(files, Classification) and files.workload is W.TRAINING
    gemini = CLASSIFIER.classify_headers("POST", "/v1/models/gemini-pro:generateContent", "h", headers, True)
    assert isinstance(gemini, Classification) and gemini.model == "gemini-pro"


def test_body_conditions_header_model_and_order() -> None:
    rules = [
        RuleSpec("ft-files", W.TRAINING, methods=frozenset({"POST"}), path="/v1/uploads",
                 body=(("purpose", "fine-tune"),)),
        RuleSpec("batch-files", W.INFERENCE, path="/v1/uploads", body=(("purpose", "*"),)),
        RuleSpec("by-header", W.COMPUTE, path_prefix="/jobs/", headers=(("x-model", "*"),),
                 model=ModelSource("header", "x-model")),
    ]
    c = Classifier(rules)
    assert c.classify("POST", "/v1/uploads", "h", {}, {"purpose": "fine-tune"}).rule == "ft-files"
    assert c.classify("POST", "/v1/uploads", "h", {}, {"purpose": "batch"}).rule == "batch-files"
    assert c.classify("POST", "/v1/uploads", "h", {}, {}).workload is W.UNKNOWN
    assert c.classify("POST", "/v1/uploads", "h", {}, None).workload is W.UNKNOWN
    job = c.classify("POST", "/jobs/1", "h", {"x-model": "m1"}, None)
    assert (job.workload, job.model) == (W.COMPUTE, "m1")
    assert c.classify("POST", "/jobs/1", "h", {}, None).workload is W.UNKNOWN


@pytest.mark.parametrize("bad", ["", "x" * 300, "evil\r\nx-extproc-tenant: root", 42, ["gpt-4o"], {"m": 1},
                                 True, "gpt 4o", "gpt-4o ", " gpt-4o", "gpt-4o\x00", "mod\u00e8le",
                                 "\uff47\uff50\uff54-4o", "gpt-4o\u200b"])
def test_model_names_that_are_not_names_are_refused(bad) -> None:
    """Regression (hardening #2): a trailing space, NUL, a list or full-width characters made the
    model "no model", escaping model-keyed rules while the upstream served the model anyway."""
    with pytest.raises(InvalidRequest) as refused:
        classify("POST", "/v1/chat/completions", {"model": bad})
    assert refused.value.reason is Reason.INVALID_MODEL and "model" in refused.value.message
    assert len(refused.value.message) < 400  # bounded, whatever was sent


def test_model_names_are_matched_in_lower_case() -> None:
    """Regression (hardening #2): ``GPT-4o`` matched no model rule and fell through to the class."""
    result = classify("POST", "/v1/chat/completions", {"model": "GPT-4o"})
    assert (result.model, result.model_spelling, result.model_field) == ("gpt-4o", "GPT-4o", "model")
    plain = classify("POST", "/v1/chat/completions", {"model": "gpt-4o"})
    assert (plain.model, plain.model_spelling) == ("gpt-4o", None)
    assert classify("POST", "/v1/chat/completions", {"model": None}).model is None  # null: no model
    gemini = classify("POST", "/v1beta/models/Gemini-2.0-Flash:generateContent", None)
    assert (gemini.model, gemini.model_spelling, gemini.model_field) == ("gemini-2.0-flash", "Gemini-2.0-Flash",
                                                                         None)
