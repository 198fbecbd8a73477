"""The built-in classification rules for real AI APIs (README: "Classification").

Order matters: the first matching rule wins, so the edge rules (by header or host)
come before the path rules they would otherwise share.
"""

from __future__ import annotations

from extproc.domain.classify import ModelSource, RuleSpec
from extproc.domain.classify import WorkloadClass as W

BODY_MODEL = ModelSource("body", "model")
PATH_MODEL = ModelSource("path", "model")
POST = frozenset({"POST"})
EDGE_PATHS = r"/v1/(?:chat/completions|completions|responses|embeddings|messages)"

BUILTIN_RULES: tuple[RuleSpec, ...] = (
    # Edge inference: an inference call marked for the edge by header, or arriving on an edge
    # host. Only the inference endpoints: a marker must not turn any other path into inference.
    RuleSpec("edge-by-header", W.EDGE_INFERENCE, methods=POST, path_regex=EDGE_PATHS,
             headers=(("x-inference-target", "edge"),), model=BODY_MODEL),
    RuleSpec("edge-by-host", W.EDGE_INFERENCE, methods=POST, path_regex=EDGE_PATHS,
             hosts=("edge.*", "*.edge.*"), model=BODY_MODEL),
    # Gemini-style and Azure-style paths carry the model in the path.
    RuleSpec("gemini-embed", W.RAG,
             path_regex=r"/v1(?:beta)?/models/(?P<model>[^/:]+):(?:embedContent|batchEmbedContents)",
             model=PATH_MODEL),
    RuleSpec("gemini-generate", W.INFERENCE,
             path_regex=r"/v1(?:beta)?/models/(?P<model>[^/:]+):(?:generateContent|streamGenerateContent)",
             model=PATH_MODEL),
    RuleSpec("azure-embeddings", W.RAG,
             path_regex=r"/openai/deployments/(?P<model>[^/]+)/embeddings", model=PATH_MODEL),
    RuleSpec("azure-inference", W.INFERENCE,
             path_regex=r"/openai/deployments/(?P<model>[^/]+)/(?:chat/completions|completions)",
             model=PATH_MODEL),
    # OpenAI-compatible inference.
    RuleSpec("openai-chat", W.INFERENCE, methods=POST, path="/v1/chat/completions", model=BODY_MODEL),
    RuleSpec("openai-completions", W.INFERENCE, methods=POST, path="/v1/completions", model=BODY_MODEL),
    RuleSpec("openai-responses", W.INFERENCE, methods=POST, path="/v1/responses", model=BODY_MODEL),
    RuleSpec("openai-responses-objects", W.INFERENCE, path_prefix="/v1/responses/"),
    RuleSpec("openai-images-generate", W.INFERENCE, methods=POST, path="/v1/images/generations",
             model=BODY_MODEL),
    RuleSpec("openai-images", W.INFERENCE, path_prefix="/v1/images/"),
    RuleSpec("openai-audio-speech", W.INFERENCE, methods=POST, path="/v1/audio/speech",
             model=BODY_MODEL),
    RuleSpec("openai-audio", W.INFERENCE, path_prefix="/v1/audio/"),
    RuleSpec("openai-moderations", W.INFERENCE, methods=POST, path="/v1/moderations",
             model=BODY_MODEL),
    RuleSpec("openai-batches", W.INFERENCE, path="/v1/batches"),
    RuleSpec("openai-batches-objects", W.INFERENCE, path_prefix="/v1/batches/"),
    RuleSpec("openai-models", W.INFERENCE, path="/v1/models"),
    RuleSpec("openai-models-objects", W.INFERENCE, path_prefix="/v1/models/"),
    # Anthropic Messages.
    RuleSpec("anthropic-messages", W.INFERENCE, methods=POST, path="/v1/messages", model=BODY_MODEL),
    RuleSpec("anthropic-count-tokens", W.INFERENCE, methods=POST, path="/v1/messages/count_tokens",
             model=BODY_MODEL),
    RuleSpec("anthropic-batches", W.INFERENCE, path_prefix="/v1/messages/batches"),
    # Retrieval: embeddings and vector stores.
    RuleSpec("openai-embeddings", W.RAG, methods=POST, path="/v1/embeddings", model=BODY_MODEL),
    RuleSpec("openai-vector-stores", W.RAG, path="/v1/vector_stores"),
    RuleSpec("openai-vector-stores-objects", W.RAG, path_prefix="/v1/vector_stores/"),
    # Training: fine-tuning jobs and the files they consume.
    RuleSpec("openai-fine-tuning-create", W.TRAINING, methods=POST, path="/v1/fine_tuning/jobs",
             model=BODY_MODEL),
    RuleSpec("openai-fine-tuning", W.TRAINING, path_prefix="/v1/fine_tuning/"),
    RuleSpec("openai-files", W.TRAINING, path="/v1/files"),
    RuleSpec("openai-files-objects", W.TRAINING, path_prefix="/v1/files/"),
    # Video generation.
    RuleSpec("openai-videos-create", W.VIDEO, methods=POST, path="/v1/videos", model=BODY_MODEL),
    RuleSpec("openai-videos", W.VIDEO, path_prefix="/v1/videos"),
    RuleSpec("video-generations", W.VIDEO, methods=POST, path="/v1/video/generations",
             model=BODY_MODEL),
    RuleSpec("video-objects", W.VIDEO, path_prefix="/v1/video/"),
    # Compute / job submission (generic job APIs and the Ray Jobs API).
    RuleSpec("compute-jobs-create", W.COMPUTE, methods=POST, path="/v1/jobs", model=BODY_MODEL),
    RuleSpec("compute-jobs", W.COMPUTE, path_prefix="/v1/jobs"),
    RuleSpec("compute-api", W.COMPUTE, path_prefix="/v1/compute/"),
    RuleSpec("ray-jobs", W.COMPUTE, path_prefix="/api/jobs"),
)
