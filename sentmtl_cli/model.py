"""MultiTaskModel: one backbone, named heads, one backbone forward per batch for every task.

This is the Python API the CLI stands on:

    import sentmtl_cli
    m = sentmtl_cli.load()                   # the shipped config
    m.embed(["a text"])                      # float32 [N, dim]
    m.similarity(["a"], ["b", "c"])          # float32 [len(a), len(b)]
    m.predict(["a text"], tasks=["cls"])     # list of dicts, the CLI's JSONL objects
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import BATCH_SIZE
from .backbone import normalize_numpy, read_model_config, resolve_folder
from .config import ModelConfig, load_config
from .decode import bio_paths, decode_entities, decode_sentences
from .errors import SentmtlError
from .heads import Head, head_class
from .text import align_first_subtokens, split_words
from .tokenize import Tokenizer, warn_truncated

METRICS = ("cosine", "dot", "euclidean")


def check_texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise SentmtlError("no input text given (an empty list of texts)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise SentmtlError(f"input {i + 1} is not a string")
        if not t.strip():
            raise SentmtlError(f"input {i + 1} is empty or whitespace only")
        if not t.isascii():
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: undecodable bytes in argv, or a bad decoder
                raise SentmtlError(f"input {i + 1} is not valid Unicode text (it holds a lone surrogate, "
                                   "as undecodable bytes become)") from None
    return texts


class MultiTaskModel:
    def __init__(self, cfg: ModelConfig, threads: int | None = None, backend: str | None = None):
        self.cfg = cfg
        self.folder = resolve_folder(cfg.backbone)
        mcfg = read_model_config(self.folder)
        self.dim = int(mcfg.get("hidden_size", 0))
        self.num_layers = int(mcfg.get("num_hidden_layers", 0))
        limit = int(mcfg.get("max_position_embeddings") or 0)
        if limit and cfg.backbone.max_seq_length > limit:
            # the transformer has no position vectors past its limit: longer inputs would crash it
            print(f"warning: backbone.max_seq_length={cfg.backbone.max_seq_length} is past the model's "
                  f"{limit} positions; using {limit}", file=sys.stderr)
            cfg.backbone.max_seq_length = limit
        self.tokenizer = Tokenizer(self.folder, cfg.backbone.max_seq_length)
        self.heads: dict[str, Head] = {}
        for task, hcfg in cfg.heads.items():
            head = head_class(hcfg.type)(task, hcfg, self.dim, self.num_layers)
            if head.level == "token":
                head.layer_indices()  # validate layer numbers up front
            if hcfg.weights is not None:
                head.load(hcfg.weights)
            else:
                head.init_params(cfg.seed)
            self.heads[task] = head
        self.threads = threads
        self._backbone = None
        self.backend, self.onnx_path = self._choose_backend(backend or cfg.backbone.backend)

    def _choose_backend(self, wanted: str) -> tuple[str, Path | None]:
        """auto: the ONNX export when a fresh one exists, else torch. onnx/onnx-int8: required."""
        from .onnx_backend import find_export

        if wanted == "torch":
            return "torch", None
        int8 = wanted == "onnx-int8"
        path, why = find_export(self.cfg, self.folder, int8)
        if path is not None:
            return wanted if wanted != "auto" else "onnx", path
        if wanted == "auto":
            return "torch", None
        raise SentmtlError(f"backend {wanted}: {why}")

    # ---- the backbone is built on first use, so `info` and config errors stay fast ----------
    @property
    def backbone(self):
        if self._backbone is None:
            if self.backend.startswith("onnx"):
                from .onnx_backend import OnnxBackbone

                self._backbone = OnnxBackbone(self.onnx_path, self.threads, self.num_layers, self.cfg.backbone)
                return self._backbone
            import torch

            from .backbone import TorchBackbone

            torch.manual_seed(self.cfg.seed)
            if self.threads:
                torch.set_num_threads(self.threads)
            self._backbone = TorchBackbone(self.cfg.backbone, self.folder)
        return self._backbone

    @backbone.setter
    def backbone(self, value) -> None:
        self._backbone = value

    @property
    def name(self) -> str:
        b = self.cfg.backbone
        return b.package or b.name or str(b.path)

    def resolve_tasks(self, tasks: Iterable[str] | str | None) -> list[str]:
        """Task names (a list, or one string: "ner" or "cls,sent"); None means every head."""
        if tasks is None:
            if not self.heads:
                raise SentmtlError(f"the config {self.cfg.source or self.cfg.name} has no task heads to predict with "
                                   "(add heads: to it; `sentmtl info` shows what it has)")
            return list(self.heads)
        if isinstance(tasks, str):
            tasks = tasks.split(",")
        tasks = [t.strip() for t in tasks if isinstance(t, str) and t.strip()]
        if not tasks:
            raise SentmtlError("no task given (the task list is empty)")
        unknown = [t for t in tasks if t not in self.heads]
        if unknown:
            raise SentmtlError(
                f"unknown task {', '.join(map(repr, unknown))}: this config has {', '.join(self.heads) or 'no tasks'}"
            )
        return list(dict.fromkeys(tasks))

    # ---- the one forward path ---------------------------------------------------------------
    def run(
        self,
        texts: list[str],
        tasks: list[str],
        batch_size: int = BATCH_SIZE,
        top_k: int = 1,
        want_embeddings: bool = True,
        progress: Callable[[int], None] | None = None,
        offset: int = 0,
        word_tags: bool = False,
    ) -> tuple[np.ndarray | None, list[dict]]:
        """Embeddings [N, dim] and one result dict per text, in input order.

        Texts are sorted by length so a batch holds similar lengths (little padding), then put
        back. `offset` is the index of texts[0] in the whole input, for warnings."""
        texts = check_texts(texts)
        if batch_size < 1:
            raise SentmtlError("--batch-size must be at least 1")
        from threadpoolctl import threadpool_limits

        # The heads' small matrix products run in numpy; BLAS threads left spinning after them
        # would compete with the backbone's own threads, so numpy gets one thread here.
        with threadpool_limits(limits=1, user_api="blas"):
            return self._run(texts, tasks, batch_size, top_k, want_embeddings, progress, offset, word_tags)

    def _run(self, texts, tasks, batch_size, top_k, want_embeddings, progress, offset, word_tags):
        heads = [self.heads[t] for t in tasks]
        layers = {i for h in heads if h.level == "token" for i in h.layer_indices()}
        # tokenize once, then batch texts of similar token counts: little padding to compute
        raw = self.tokenizer.encode_raw(texts)
        order = sorted(range(len(texts)), key=lambda i: len(raw[i][0]))
        emb = np.zeros((len(texts), self.dim), dtype=np.float32) if want_embeddings else None
        results: list[dict] = [{"text": t} for t in texts]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            chunk = [texts[i] for i in idx]
            batch = self.tokenizer.pad([raw[i] for i in idx])
            warn_truncated(batch, [offset + i for i in idx], self.tokenizer.max_seq_length)
            feats = self.backbone.encode(batch, layers)
            if emb is not None:
                emb[idx] = feats["sentence_embedding"]
            words = None
            for head in heads:
                if head.level == "sentence":
                    probs = head.probabilities(head.logits(feats))
                    for i, out in zip(idx, decode_sentences(head.outputs, probs, top_k, head.cfg.multi_label)):
                        out["untrained"] = not head.trained
                        results[i][head.task] = out
                    continue
                if words is None:  # each word's span and first sub-token, shared by token heads
                    words = []
                    for b, text in enumerate(chunk):
                        spans = split_words(text)
                        first = align_first_subtokens(spans, batch.offsets[b], batch.special[b])
                        words.append([(sp, t) for sp, t in zip(spans, first) if t >= 0])
                # the head runs on first sub-tokens only, not on padding and word pieces
                rows_b = np.array([b for b, ws in enumerate(words) for _ in ws], dtype=np.int64)
                rows_t = np.array([t for ws in words for _, t in ws], dtype=np.int64)
                tokens = head.token_features(feats, (rows_b, rows_t))
                probs = head.probabilities(head.mlp(tokens)) if len(tokens) else np.zeros((0, len(head.outputs)))
                lengths = [len(ws) for ws in words]
                paths = bio_paths(probs, lengths, head.outputs)
                path_probs = probs[np.arange(len(probs)), np.concatenate(paths)].tolist() if len(probs) else []
                pos = 0
                for b, i in enumerate(idx):
                    n = lengths[b]
                    out = self._decode_words(head, chunk[b], [sp for sp, _ in words[b]], paths[b].tolist(),
                                             path_probs[pos : pos + n], word_tags)
                    out["untrained"] = not head.trained
                    results[i][head.task] = out
                    pos += n
            if progress:
                progress(len(idx))
        return emb, results

    @staticmethod
    def _decode_words(head: Head, text: str, spans: list, path: list[int], probs: list[float], word_tags: bool = False) -> dict:
        """One text's entities from its words' BIO path and the probability of each chosen tag."""
        names = head.outputs
        tags = [names[k] for k in path]
        out = {"entities": decode_entities(text, spans, tags, probs)}
        if word_tags:  # per word (start, end, BIO tag): what evaluation scores
            out["words"] = [(s, e, t) for (s, e), t in zip(spans, tags)]
        return out

    # ---- the public API -----------------------------------------------------------------------
    def embed(self, texts: Iterable[str] | str, batch_size: int = BATCH_SIZE, progress=None, offset: int = 0) -> np.ndarray:
        """[N, dim] float32 for a list of texts; [dim] for one string (as sentence-transformers does)."""
        emb, _ = self.run(check_texts(texts), [], batch_size=batch_size, progress=progress, offset=offset)
        return emb[0] if isinstance(texts, str) else emb

    def similarity(self, texts_a, texts_b, metric: str = "cosine", batch_size: int = BATCH_SIZE) -> np.ndarray:
        """[len(a), len(b)] scores; a string on either side counts as one text."""
        a, b = check_texts(texts_a), check_texts(texts_b)
        emb = self.embed(a + b, batch_size=batch_size)
        return pairwise(emb[: len(a)], emb[len(a) :], metric)

    def predict(self, texts, tasks=None, top_k: int = 1, batch_size: int = BATCH_SIZE, progress=None,
                offset: int = 0) -> list[dict] | dict:
        """One result dict per text (the CLI's JSONL objects); one dict for one string."""
        _, res = self.run(
            check_texts(texts), self.resolve_tasks(tasks), batch_size=batch_size, top_k=top_k,
            want_embeddings=False, progress=progress, offset=offset,
        )
        return res[0] if isinstance(texts, str) else res

    def search(self, query: str, corpus: list[str], top_k: int = 5, batch_size: int = BATCH_SIZE, progress=None,
               line_numbers: list[int] | None = None):
        """The corpus texts nearest the query. `line_numbers` gives each text's line in its file (the
        CLI passes the file's own numbers, blank lines counted); by default a text's position, 1-based."""
        check_texts([query])
        corpus = check_texts(corpus)
        emb = self.embed([query] + corpus, batch_size=batch_size, progress=progress)
        scores = pairwise(emb[:1], emb[1:], "cosine")[0]
        top = np.argsort(-scores, kind="stable")[:top_k]
        lines = line_numbers or list(range(1, len(corpus) + 1))
        return [{"rank": r + 1, "score": float(scores[i]), "line": int(lines[i]), "text": corpus[i]} for r, i in enumerate(top)]


def pairwise(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":  # clipped: float32 rounding can put a text's self-similarity at 1.0000001
        return np.clip(normalize_numpy(a) @ normalize_numpy(b).T, -1.0, 1.0).astype(np.float32)
    if metric == "dot":
        return (a @ b.T).astype(np.float32)
    if metric == "euclidean":
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.sqrt(np.clip(d2, 0, None)).astype(np.float32)
    raise SentmtlError(f"unknown metric {metric!r} (use {', '.join(METRICS)})")


def load(config: str | Path | None = None, threads: int | None = None, backend: str | None = None) -> MultiTaskModel:
    """Load a model from a YAML config (default: the shipped one). backend: torch | onnx |
    onnx-int8 | auto (default: the config's, which defaults to auto)."""
    return MultiTaskModel(load_config(config), threads=threads, backend=backend)
