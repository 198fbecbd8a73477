"""The built-in classification rules for real AI APIs (README: "Classification").

Order matters: the first matching rule wins, so the edge rules (by header or host)
come before the path rules they would otherwise share.

``tokens`` says what an API consumes, so what its admission reserves: generation APIs their
prompt and completion, embeddings and moderations their prompt, and APIs that generate nothing
(model lists, token counting, batch, file and object reads) no tokens at all.
"""

from __future__ import annotations

from extproc.domain.classify import ModelSource, RuleSpec
from extproc.domain.classify import TokenUse as T
from extproc.domain.classify import WorkloadClass as W

BODY_MODEL = ModelSource("body", "model")
PATH_MODEL = ModelSource("path", "model")
POST = frozenset({"POST"})
#: The generation endpoints a client may mark for the edge. Not embeddings: edge inference is
#: inference for policy, and a marker must not move retrieval work out of the policies on rag.
EDGE_PATHS = r"/v1/(?:chat/completions|completions|responses|messages)"

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
             model=PATH_MODEL, tokens=T.PROMPT),
    RuleSpec("gemini-generate", W.INFERENCE,
             path_regex=r"/v1(?:beta)?/models/(?P<model>[^/:]+):(?:generateContent|streamGenerateContent)",
             model=PATH_MODEL),
    RuleSpec("azure-embeddings", W.RAG,
             path_regex=r"/openai/deployments/(?P<model>[^/]+)/embeddings", model=PATH_MODEL,
             tokens=T.PROMPT),
    RuleSpec("azure-inference", W.INFERENCE,
             path_regex=r"/openai/deployments/(?P<model>[^/]+)/(?:chat/completions|completions)",
             model=PATH_MODEL),
    # OpenAI-compatible inference.
    RuleSpec("openai-chat", W.INFERENCE, methods=POST, path="/v1/chat/completions", model=BODY_MODEL),
    RuleSpec("openai-completions", W.INFERENCE, methods=POST, path="/v1/completions", model=BODY_MODEL),
    RuleSpec("openai-responses", W.INFERENCE, methods=POST, path="/v1/responses", model=BODY_MODEL),
    RuleSpec("openai-responses-objects", W.INFERENCE, path_prefix="/v1/responses/", tokens=T.NONE),
    RuleSpec("openai-images-generate", W.INFERENCE, methods=POST, path="/v1/images/generations",
             model=BODY_MODEL),
    # Image edits and variations, transcriptions and translations are forms (multipart): their
    # model is the form's ``model`` field.
    RuleSpec("openai-images-edit", W.INFERENCE, methods=POST,
             path_regex=r"/v1/images/(?:edits|variations)", model=BODY_MODEL),
    RuleSpec("openai-images", W.INFERENCE, path_prefix="/v1/images/", tokens=T.NONE),
    RuleSpec("openai-audio-speech", W.INFERENCE, methods=POST, path="/v1/audio/speech",
             model=BODY_MODEL),
    RuleSpec("openai-audio-transcribe", W.INFERENCE, methods=POST,
             path_regex=r"/v1/audio/(?:transcriptions|translations)", model=BODY_MODEL),
    RuleSpec("openai-audio", W.INFERENCE, path_prefix="/v1/audio/", tokens=T.NONE),
    RuleSpec("openai-moderations", W.INFERENCE, methods=POST, path="/v1/moderations",
             model=BODY_MODEL, tokens=T.PROMPT),
    RuleSpec("openai-batches", W.INFERENCE, path="/v1/batches", tokens=T.NONE),
    RuleSpec("openai-batches-objects", W.INFERENCE, path_prefix="/v1/batches/", tokens=T.NONE),
    RuleSpec("openai-models", W.INFERENCE, path="/v1/models", tokens=T.NONE),
    RuleSpec("openai-models-objects", W.INFERENCE, path_prefix="/v1/models/", tokens=T.NONE),
    # Anthropic Messages.
    RuleSpec("anthropic-messages", W.INFERENCE, methods=POST, path="/v1/messages", model=BODY_MODEL),
    RuleSpec("anthropic-count-tokens", W.INFERENCE, methods=POST, path="/v1/messages/count_tokens",
             model=BODY_MODEL, tokens=T.NONE),
    RuleSpec("anthropic-batches", W.INFERENCE, path_prefix="/v1/messages/batches", tokens=T.NONE),
    # Retrieval: embeddings and vector stores.
    RuleSpec("openai-embeddings", W.RAG, methods=POST, path="/v1/embeddings", model=BODY_MODEL,
             tokens=T.PROMPT),
    RuleSpec("openai-vector-stores", W.RAG, path="/v1/vector_stores", tokens=T.NONE),
    RuleSpec("openai-vector-stores-objects", W.RAG, path_prefix="/v1/vector_stores/", tokens=T.NONE),
    # Training: fine-tuning jobs and the files they consume.
    RuleSpec("openai-fine-tuning-create", W.TRAINING, methods=POST, path="/v1/fine_tuning/jobs",
             model=BODY_MODEL),
    RuleSpec("openai-fine-tuning", W.TRAINING, path_prefix="/v1/fine_tuning/", tokens=T.NONE),
    RuleSpec("openai-files", W.TRAINING, path="/v1/files", tokens=T.NONE),
    RuleSpec("openai-files-objects", W.TRAINING, path_prefix="/v1/files/", tokens=T.NONE),
    # Video generation.
    RuleSpec("openai-videos-create", W.VIDEO, methods=POST, path="/v1/videos", model=BODY_MODEL),
    RuleSpec("openai-videos", W.VIDEO, path_prefix="/v1/videos", tokens=T.NONE),
    RuleSpec("video-generations", W.VIDEO, methods=POST, path="/v1/video/generations",
             model=BODY_MODEL),
    RuleSpec("video-objects", W.VIDEO, path_prefix="/v1/video/", tokens=T.NONE),
    # Compute / job submission (generic job APIs and the Ray Jobs API).
    RuleSpec("compute-jobs-create", W.COMPUTE, methods=POST, path="/v1/jobs", model=BODY_MODEL),
    RuleSpec("compute-jobs", W.COMPUTE, path_prefix="/v1/jobs", tokens=T.NONE),
    RuleSpec("compute-api", W.COMPUTE, path_prefix="/v1/compute/", tokens=T.NONE),
    RuleSpec("ray-jobs", W.COMPUTE, path_prefix="/api/jobs", tokens=T.NONE),
)
