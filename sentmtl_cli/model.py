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
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from .backbone.folder import read_model_config, resolve_folder
from .choices import Metric, Overflow
from .config.model import ModelConfig, load_config
from .defaults import BATCH_SIZE
from .errors import SentmtlError
from .heads.base import BatchView, Head
from .registry import BACKENDS, HEADS
from .text.inputs import check_texts
from .text.tokenizer import Tokenizer, warn_truncated
from .text.windows import Piece, pieces_of

METRICS = tuple(m.value for m in Metric)  # similarity metrics
OVERFLOWS = tuple(o.value for o in Overflow)
# a batch is cut where padding would pass this share of its real tokens (see length_batches): a
# forward pass over padding costs as much as over text, and a server's batches mix lengths
MAX_PADDING = 0.1


def length_batches(
    lengths: list[int], batch_size: int, max_padding: float = MAX_PADDING, min_batch: int = 2
) -> list[tuple[int, int]]:
    """(start, stop) of each batch over token counts sorted ascending: at most batch_size texts,
    cut early (once it holds min_batch) where the next text would make padding more than
    max_padding of the batch's real tokens. A corpus sorted whole gives full batches; a few dozen
    mixed texts (a server's merged requests) are not all padded to the longest one."""
    out: list[tuple[int, int]] = []
    start, real = 0, 0
    for i, n in enumerate(lengths):
        size = i - start
        if size and (size >= batch_size or (size >= min_batch and (size + 1) * n > (1 + max_padding) * (real + n))):
            out.append((start, i))
            start, real = i, 0
        real += n
    if start < len(lengths):
        out.append((start, len(lengths)))
    return out


class MultiTaskModel:
    def __init__(self, cfg: ModelConfig, threads: int | None = None, backend: str | None = None, soon: bool = False):
        """soon: start building the backbone now, in a thread (open_backbone_soon), for a
        command that will run it."""
        self.cfg = cfg
        self.folder = resolve_folder(cfg.backbone)
        mcfg = read_model_config(self.folder)
        self.dim = int(mcfg.get("hidden_size", 0))
        self.num_layers = int(mcfg.get("num_hidden_layers", 0))
        limit = int(mcfg.get("max_position_embeddings") or 0)
        if limit and cfg.backbone.max_seq_length > limit:
            # the transformer has no position vectors past its limit: longer inputs would crash it
            print(
                f"warning: backbone.max_seq_length={cfg.backbone.max_seq_length} is past the model's "
                f"{limit} positions; using {limit}",
                file=sys.stderr,
            )
            cfg.backbone.max_seq_length = limit
        self.threads = threads
        self._backbone = None
        self._opening: Future | None = None
        self.backend, self.onnx_path = self._choose_backend(str(backend or cfg.backbone.backend))
        if soon:
            self.open_backbone_soon()
        self.tokenizer = Tokenizer(self.folder, cfg.backbone.max_seq_length)
        self.heads: dict[str, Head] = {}
        for task, hcfg in cfg.heads.items():
            head = HEADS.get(hcfg.type)(task, hcfg, self.dim, self.num_layers)
            if hcfg.weights is not None:
                head.load(hcfg.weights)
            else:
                head.init_params(cfg.seed)
            head.threads = threads
            head.attach(self.embed_for_heads, self.token_states)
            head.bind_tokenizer(self.tokenizer)
            self.heads[task] = head
        # what run() does with a text past max_seq_length unless told (batch and index set it)
        self.overflow: str = Overflow.window

    def _choose_backend(self, wanted: str) -> tuple[str, Path | None]:
        """auto: the ONNX export when a fresh one exists, else torch. Any other name: that backend,
        or an error saying why it cannot run here."""
        for name in ["onnx", "torch"] if wanted == "auto" else [wanted]:
            why = BACKENDS.get(name).unavailable(self.cfg, self.folder)
            if why is None:
                return name, getattr(BACKENDS.get(name), "export_path", lambda c, f: None)(self.cfg, self.folder)
            if wanted != "auto":
                raise SentmtlError(f"backend {wanted}: {why}")
        raise SentmtlError("no backend can run this config")  # torch always can: not reached

    # ---- the backbone is built on first use, so `info` and config errors stay fast ----------
    def _open_backbone(self, spin: bool = True):
        return BACKENDS.get(self.backend).open(self.cfg, self.folder, self.threads, self.num_layers, spin=spin)

    def open_backbone_soon(self) -> None:
        """Build the ONNX backbone in a thread while the caller goes on (reading the tokenizer and
        the heads' weights, importing lance): ONNX Runtime builds its session without holding the
        GIL, so the two overlap. The first use of `backbone` waits for it and raises what it met.
        The thread is not a daemon: a command that fails first still waits for it (tens of ms)
        before the interpreter shuts down under it. torch builds with the GIL held: nothing gained.
        This is for a command's few runs: the backbone's threads sleep between runs, not spin."""
        if self._backbone is not None or self._opening is not None or self.backend == "torch":
            return
        done: Future = Future()

        def work() -> None:
            try:
                done.set_result(self._open_backbone(spin=False))
            except BaseException as e:  # noqa: BLE001 - raised again where the backbone is used
                done.set_exception(e)

        self._opening = done
        threading.Thread(target=work, name="sentmtl-backbone").start()

    @property
    def backbone(self):
        if self._backbone is None:
            opening, self._opening = self._opening, None
            self._backbone = opening.result() if opening is not None else self._open_backbone()
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
                raise SentmtlError(
                    f"the config {self.cfg.source or self.cfg.name} has no task heads to predict with "
                    "(add heads: to it; `sentmtl info` shows what it has)"
                )
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
        encoded: list | None = None,
        warn: bool = True,
        overflow: str | list[str] | None = None,
        extra: list | None = None,
    ) -> tuple[np.ndarray | None, list[dict]]:
        """Embeddings [N, dim] and one result dict per text, in input order.

        Texts are sorted by length so a batch holds similar lengths (little padding), then put
        back. `offset` is the index of texts[0] in the whole input, for warnings. `encoded`: the
        texts' `tokenizer.encode_raw` output (truncated or not), when the caller has it already
        (the server does). `warn`: a stderr line per text cut at max_seq_length (the server counts
        them instead). `overflow` (one for all texts, or one per text): what a text longer than
        max_seq_length gets (text/windows.py): `window` reads all of it in overlapping windows
        and the heads merge them (the result says how many, under "windows"); `truncate` cuts it;
        `error` refuses it. None: the model's `overflow` (window unless set). `extra`: heads that
        are not the model's, run beside `tasks` in the same pass, each text's result under the
        head's own task name (a server request's zero-shot labels, a probe of token states)."""
        texts = check_texts(texts)
        if batch_size < 1:
            raise SentmtlError("--batch-size must be at least 1")
        overflow = self.overflow if overflow is None else overflow
        modes = [str(overflow)] * len(texts) if isinstance(overflow, str) else [str(o) for o in overflow]
        if len(modes) != len(texts) or not set(modes) <= set(OVERFLOWS):
            raise SentmtlError(f"overflow: one of {', '.join(OVERFLOWS)} for each text")
        from threadpoolctl import threadpool_limits

        # The heads' small matrix products run in numpy; BLAS threads left spinning after them
        # would compete with the backbone's own threads, so numpy gets one thread here.
        with threadpool_limits(limits=1, user_api="blas"):
            heads = [self.heads[t] for t in tasks] + list(extra or [])
            return self._run(
                texts, heads, batch_size, top_k, want_embeddings, progress, offset, word_tags, encoded, warn, modes
            )

    def _pieces(self, texts: list[str], encoded: list | None, modes: list[str]) -> list[Piece]:
        """Every backbone input: a whole text, or the windows of a long one read in windows."""
        L = self.tokenizer.max_seq_length
        full_needed = [i for i, m in enumerate(modes) if m != Overflow.truncate]
        if encoded is None:  # whole, when some text may be read in windows (pieces_of cuts the rest)
            encoded = self.tokenizer.encode_raw(texts, truncate=not full_needed)
        raw = list(encoded)
        if len(raw) != len(texts):
            raise SentmtlError(f"{len(raw)} encodings for {len(texts)} texts")
        # a text the caller's encoding cut is tokenized again, whole, when it is to be read in windows
        again = [i for i in full_needed if raw[i][3]]
        for i, item in zip(again, self.tokenizer.encode_raw([texts[i] for i in again], truncate=False)):
            raw[i] = item
        overlap = self.cfg.backbone.window_overlap
        return [p for i, t in enumerate(texts) for p in pieces_of(i, t, raw[i], L, modes[i], overlap)]

    def _run(self, texts, heads, batch_size, top_k, want_embeddings, progress, offset, word_tags, encoded, warn, modes):
        layers = {i for h in heads for i in h.hidden_layers()}
        pieces = self._pieces(texts, encoded, modes)
        emb = np.zeros((len(texts), self.dim), dtype=np.float32) if want_embeddings else None
        results: list[dict] = [{"text": t} for t in texts]
        # windows go in batches of their own (full windows are all max_seq_length long): a whole
        # text's batch is the one it had before windows existed
        whole = sorted((p for p in pieces if p.window is None), key=lambda p: len(p.item[0]))
        parts = sorted((p for p in pieces if p.window is not None), key=lambda p: len(p.item[0]))
        for start, stop in length_batches([len(p.item[0]) for p in whole], batch_size):
            group = whole[start:stop]
            idx = [p.text for p in group]
            batch = self.tokenizer.pad([p.item for p in group])
            if warn:
                warn_truncated(batch, [offset + i for i in idx], self.tokenizer.max_seq_length)
            feats = self.backbone.encode(batch, layers)
            if emb is not None:
                emb[idx] = feats["sentence_embedding"]
            view = BatchView([texts[i] for i in idx], batch, feats)
            for head in heads:
                for i, out in zip(idx, head.predict_batch(view, top_k=top_k, word_tags=word_tags)):
                    out["untrained"] = not head.trained
                    results[i][head.task] = out
            if progress:
                progress(len(idx))
        if parts:
            self._run_windows(texts, parts, heads, layers, batch_size, top_k, word_tags, emb, results, progress)
        return emb, results

    def _run_windows(self, texts, parts, heads, layers, batch_size, top_k, word_tags, emb, results, progress):
        """The windows of long texts through the backbone; each head merges a text's windows."""
        from .text.words import split_words

        count = {p.text: p.window[1] for p in parts}
        outputs: dict[int, dict[str, list]] = {i: {h.task: [None] * n for h in heads} for i, n in count.items()}
        sizes = {i: [0] * n for i, n in count.items()}
        words = {i: split_words(texts[i]) for i in count} if any(h.reads_words() for h in heads) else {}
        starts = {i: [s for s, _ in w] for i, w in words.items()}
        acc = {i: np.zeros(self.dim, dtype=np.float64) for i in count} if emb is not None else {}
        left = dict(count)
        for start, stop in length_batches([len(p.item[0]) for p in parts], batch_size):
            group = parts[start:stop]
            batch = self.tokenizer.pad([p.item for p in group])
            feats = self.backbone.encode(batch, layers)
            spans = None
            if words:  # each window's words: those whose start lies between its first and last token
                spans = []
                for p in group:
                    offs = [o for o, sp in zip(p.item[1], p.item[2]) if not sp]
                    lo, hi = bisect_left(starts[p.text], offs[0][0]), bisect_left(starts[p.text], offs[-1][1])
                    spans.append(words[p.text][lo:hi])
            view = BatchView([texts[p.text] for p in group], batch, feats, word_spans=spans)
            for head in heads:
                for p, out in zip(group, head.window_outputs(view)):
                    outputs[p.text][head.task][p.window[0]] = out
            done = 0
            for b, p in enumerate(group):
                sizes[p.text][p.window[0]] = p.window[2]
                if p.text in acc:
                    acc[p.text] += p.window[2] * feats["sentence_embedding"][b].astype(np.float64)
                left[p.text] -= 1
                done += left[p.text] == 0
            if progress and done:
                progress(done)
        for i, n in count.items():
            results[i]["windows"] = n
            for head in heads:
                out = head.merge_windows(texts[i], outputs[i][head.task], sizes[i], top_k=top_k, word_tags=word_tags)
                out["untrained"] = not head.trained
                results[i][head.task] = out
            if emb is not None:  # the token-weighted mean of the windows' vectors
                v = acc[i] / max(sum(sizes[i]), 1)
                if self.cfg.backbone.normalize:
                    v = v / max(float(np.linalg.norm(v)), 1e-12)
                emb[i] = v.astype(np.float32)

    def head_inputs(self, texts: list[str], head, batch_size: int = BATCH_SIZE, progress=None) -> np.ndarray:
        """The rows [N, features] a sentence head reads for each text, by the inference path
        itself (the same backend, batching and pooling): what `sentmtl fit` trains on."""
        x, _, _ = self.fit_views(texts, head, None, batch_size, progress)
        assert x is not None
        return x

    def token_rows(self, texts: list[str], head, batch_size: int = BATCH_SIZE, progress=None):
        """An attention-pooled head's inputs by the inference path: each text's real tokens, one
        row each, its hidden_layers' vectors side by side ([sum(counts), L*D] float32), and how
        many rows each text has, in the texts' order (what `sentmtl fit` trains such a head on)."""
        _, rows, counts = self.fit_views(texts, None, head, batch_size, progress)
        return rows, counts

    def fit_views(self, texts: list[str], head=None, attention=None, batch_size: int = BATCH_SIZE, progress=None):
        """From one backbone pass over texts: `head`'s rows (head_inputs) and `attention`'s token
        rows and their counts (token_rows); None for a head not given. `sentmtl fit` reads both
        when it chooses between the two heads by their folds."""
        texts = check_texts(texts)
        raw = self.tokenizer.encode_raw(texts)
        order = sorted(range(len(texts)), key=lambda i: len(raw[i][0]))
        layers = set(head.hidden_layers() if head is not None else [])
        layers |= set(attention.hidden_layers() if attention is not None else [])
        out: np.ndarray | None = None
        per_text: list[np.ndarray | None] = [None] * len(texts)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            for start, stop in length_batches([len(raw[i][0]) for i in order], batch_size):
                idx = order[start:stop]
                batch = self.tokenizer.pad([raw[i] for i in idx])
                states = self.backbone.encode(batch, layers)
                if head is not None:
                    x = head.inputs_numpy(states, batch.attention_mask, batch.input_ids)
                    if out is None:
                        out = np.zeros((len(texts), x.shape[1]), dtype=np.float32)
                    out[idx] = x
                if attention is not None:
                    hidden = states["hidden_states"]
                    for j, i in enumerate(idx):
                        real = batch.attention_mask[j] > 0
                        per_text[i] = np.concatenate([hidden[L][j][real] for L in attention.hidden_layers()], 1).astype(
                            np.float32
                        )
                if progress:
                    progress(len(idx))
        if attention is None:
            return out, None, None
        rows = [r for r in per_text if r is not None]
        return out, np.concatenate(rows), [len(r) for r in rows]

    def embed_for_heads(self, texts: list[str]) -> np.ndarray:
        """Embeddings of a head's own texts (a zero-shot head's prompts), with no warnings."""
        emb, _ = self.run(texts, [], warn=False)
        assert emb is not None
        return emb

    def token_states(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's last-layer token vectors (unit rows, special tokens left out; cut at
        max_seq_length): what a zero-shot head matches its label names with."""
        from .heads.zero_shot import TokenStates

        probe = TokenStates("token_states", self.num_layers)
        _, results = self.run(texts, [], want_embeddings=False, warn=False, overflow=Overflow.truncate, extra=[probe])
        return [r[probe.task]["states"] for r in results]

    def build_head(self, task: str, hcfg) -> Head:
        """A head for this backbone made on the fly, checked as a config's would be, not added to
        the model: untrained unless its type needs no training (zero_shot)."""
        problem = HEADS.get(hcfg.type).check_config(hcfg)
        if problem:
            raise SentmtlError(f"{task}: {problem}")
        head = HEADS.get(hcfg.type)(task, hcfg, self.dim, self.num_layers)
        head.init_params(self.cfg.seed)
        head.threads = self.threads
        head.attach(self.embed_for_heads, self.token_states)
        head.bind_tokenizer(self.tokenizer)
        return head

    def add_head(self, task: str, hcfg) -> Head:
        """build_head, then the head is one of the model's tasks (`predict --labels`)."""
        if task in self.heads:
            raise SentmtlError(f"the config already has a task named {task!r}")
        head = self.build_head(task, hcfg)
        self.heads[task] = head
        self.cfg.heads[task] = hcfg
        return head

    # ---- the public API -----------------------------------------------------------------------
    def embed(
        self,
        texts: Iterable[str] | str,
        batch_size: int = BATCH_SIZE,
        progress=None,
        offset: int = 0,
        overflow: str = Overflow.truncate,
    ) -> np.ndarray:
        """[N, dim] float32 for a list of texts; [dim] for one string (as sentence-transformers does).
        A text past max_seq_length is cut to it, as the model was trained (`overflow="window"`:
        the token-weighted mean of its windows' vectors, normalized)."""
        emb, _ = self.run(
            check_texts(texts), [], batch_size=batch_size, progress=progress, offset=offset, overflow=overflow
        )
        assert emb is not None  # run() returns embeddings unless told not to
        return emb[0] if isinstance(texts, str) else emb

    def similarity(
        self, texts_a, texts_b, metric: str = "cosine", batch_size: int = BATCH_SIZE, overflow: str = Overflow.truncate
    ) -> np.ndarray:
        """[len(a), len(b)] scores; a string on either side counts as one text."""
        a, b = check_texts(texts_a), check_texts(texts_b)
        emb = self.embed(a + b, batch_size=batch_size, overflow=overflow)
        return pairwise(emb[: len(a)], emb[len(a) :], metric)

    def predict(
        self,
        texts,
        tasks=None,
        top_k: int = 1,
        batch_size: int = BATCH_SIZE,
        progress=None,
        offset: int = 0,
        overflow: str = Overflow.window,
    ) -> list[dict] | dict:
        """One result dict per text (the CLI's JSONL objects); one dict for one string. A text past
        max_seq_length is read whole, in windows (see run)."""
        _, res = self.run(
            check_texts(texts),
            self.resolve_tasks(tasks),
            batch_size=batch_size,
            top_k=top_k,
            want_embeddings=False,
            progress=progress,
            offset=offset,
            overflow=overflow,
        )
        return res[0] if isinstance(texts, str) else res

    def search(
        self,
        query: str,
        corpus: list[str],
        top_k: int = 5,
        batch_size: int = BATCH_SIZE,
        progress=None,
        line_numbers: list[int] | None = None,
    ):
        """The corpus texts nearest the query. `line_numbers` gives each text's line in its file (the
        CLI passes the file's own numbers, blank lines counted); by default a text's position, 1-based."""
        check_texts([query])
        corpus = check_texts(corpus)
        emb = self.embed([query] + corpus, batch_size=batch_size, progress=progress)
        scores = pairwise(emb[:1], emb[1:], "cosine")[0]
        top = np.argsort(-scores, kind="stable")[:top_k]
        lines = line_numbers or list(range(1, len(corpus) + 1))
        return [
            {"rank": r + 1, "score": float(scores[i]), "line": int(lines[i]), "text": corpus[i]}
            for r, i in enumerate(top)
        ]

    # ---- description and the model folder -------------------------------------------------------
    def describe(self) -> dict:
        """What `sentmtl info` shows, as data: the config, the backbone, the backend in use, the
        int8 encoding this CPU gets, and each head."""
        from .backbone.cpu import int8_status

        b = self.cfg.backbone
        return {
            "config": str(self.cfg.source),
            "name": self.cfg.name,
            "backbone": {
                "source": self.name,
                "folder": str(self.folder),
                "dimension": self.dim,
                "layers": self.num_layers,
                "pooling": b.pooling,
                "normalize": b.normalize,
                "max_seq_length": b.max_seq_length,
                "backend": b.backend,
                "backend_in_use": self.backend,
                "onnx": str(self.onnx_path) if self.onnx_path else None,
                "fine_tuned_weights": str(b.weights) if b.weights else None,
            },
            "int8": int8_status(),
            "heads": {
                task: {
                    "type": h.registry_name,
                    "labels": list(h.cfg.labels),
                    "outputs": len(h.outputs),
                    "parameters": h.parameter_count(),
                    "trained": h.trained,
                    "weights": str(h.cfg.weights) if h.cfg.weights else None,
                }
                for task, h in self.heads.items()
            },
        }

    def save(self, folder: Path, backbone_weights: dict[str, np.ndarray] | None = None) -> None:
        """Write a model folder: model.yaml (the config, weights paths relative to the folder),
        heads/<task>.safetensors for each trained head, and backbone.safetensors when given (a
        fine-tuned backbone's float tensors). `sentmtl_cli.load(folder / "model.yaml")` reads it."""
        import yaml

        from .files.atomic import atomic_write_bytes, atomic_write_text, safetensors_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        doc = self.cfg.model_dump(mode="json", exclude={"source"})
        doc["backbone"] = {k: v for k, v in doc["backbone"].items() if v is not None}
        if backbone_weights is not None:
            atomic_write_bytes(
                folder / "backbone.safetensors", safetensors_bytes(backbone_weights, {"format": "sentmtl-backbone/1"})
            )
            doc["backbone"]["weights"] = "backbone.safetensors"
        for task, head in self.heads.items():
            hd = {k: v for k, v in doc["heads"][task].items() if v is not None}
            if head.saves_weights():
                head.save(folder / "heads" / f"{task}.safetensors")
                hd["weights"] = f"heads/{task}.safetensors"
            else:
                hd.pop("weights", None)
            doc["heads"][task] = hd
        atomic_write_text(folder / "model.yaml", MODEL_FOLDER_MARK + "\n" + yaml.safe_dump(doc, sort_keys=False))


MODEL_FOLDER_MARK = "# written by sentmtl train"  # the first line of a saved model.yaml


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def pairwise(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    metric = str(metric)
    if metric == "cosine":  # clipped: float32 rounding can put a text's self-similarity at 1.0000001
        return np.clip(normalize_rows(a) @ normalize_rows(b).T, -1.0, 1.0).astype(np.float32)
    if metric == "dot":
        return (a @ b.T).astype(np.float32)
    if metric == "euclidean":
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.sqrt(np.clip(d2, 0, None)).astype(np.float32)
    raise SentmtlError(f"unknown metric {metric!r} (use {', '.join(METRICS)})")


def load(
    config: str | Path | None = None, threads: int | None = None, backend: str | None = None, soon: bool = False
) -> MultiTaskModel:
    """Load a model from a YAML config (default: the shipped one). backend: torch | onnx |
    onnx-int8 | auto (default: the config's, which defaults to auto). soon: start building the
    backbone now, in a thread, for a caller that will run it (MultiTaskModel.open_backbone_soon)."""
    return MultiTaskModel(load_config(config), threads=threads, backend=backend, soon=soon)
