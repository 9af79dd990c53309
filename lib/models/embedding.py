"""The joint image-text embedding every later notebook decodes into: open_clip models from a local checkpoint, a
pretrained tag or this repo's small configs, their preprocessing, batched embedding, and saved embeddings."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib import distributed, fileio, runtime

CONFIG_DIR = Path(__file__).with_name("model_configs")
CHECKPOINT_FORMAT = "lib.embedding/1"
EMBEDDINGS_FORMAT = "lib.embedding.embeddings/1"


class EmbeddingError(ValueError):
    """A checkpoint, architecture or embedding file that cannot be used as asked."""


@functools.cache
def _open_clip():
    """open_clip with this repo's model configs registered (once per process)."""
    import open_clip  # lazy: open_clip: seconds to import

    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def architectures() -> list[str]:
    """Every architecture name open_clip knows, including this repo's ``mini-*`` configs."""
    return _open_clip().list_models()


def _check_arch(arch: str) -> None:
    if arch not in architectures():
        local = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise EmbeddingError(
            f"arch={arch!r}: not an open_clip architecture (this repo's: {local}; see open_clip.list_models())"
        )


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs a warning for every randomly initialised model; that is the point here."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class GrammarTokenizer:
    """open_clip's BPE tokenizer with its ids mapped onto a small vocabulary: ``vocab`` lists the BPE ids a
    caption grammar uses (ids 2, 3, ... in that order); padding stays 0, any other piece becomes 1 (unknown),
    start-of-text is V - 2 and end-of-text V - 1 (V = ``vocab_size``), so that the end token keeps the highest
    id, which open_clip's argmax pooling looks for. Shrinks a text tower's token table from 49,408 rows to V."""

    UNKNOWN = 1

    def __init__(self, vocab, vocab_size: int, context_length: int) -> None:
        from open_clip.tokenizer import SimpleTokenizer  # lazy: open_clip: seconds to import

        self.base = SimpleTokenizer(context_length=context_length)
        self.vocab = torch.as_tensor(np.asarray(vocab), dtype=torch.long)
        sot, eot = self.base.sot_token_id, self.base.eot_token_id
        if len(self.vocab) + 4 > vocab_size or torch.isin(self.vocab, torch.tensor([0, sot, eot])).any():
            raise EmbeddingError(
                f"vocab: {len(self.vocab)} ids do not fit vocab_size={vocab_size} (or hold 0/SOT/EOT)"
            )
        table = torch.full((len(self.base.encoder),), self.UNKNOWN, dtype=torch.long)
        table[0] = 0
        table[self.vocab] = torch.arange(2, 2 + len(self.vocab))
        table[sot], table[eot] = vocab_size - 2, vocab_size - 1
        self.table = table

    def __call__(self, texts) -> torch.Tensor:
        return self.table[self.base(texts)]


def grammar_vocab(texts: list[str]) -> np.ndarray:
    """The sorted BPE ids (without padding, start and end) that ``texts`` use: a :class:`GrammarTokenizer`'s
    vocabulary. CLIP's tokenizer never joins characters across whitespace (its cleaning, lower-casing and word
    pattern are local), so the ids of a text are those of its whitespace-separated words: each distinct word is
    encoded once, instead of every text (100,000 captions: 12 s before, a fraction of a second now)."""
    tok = _open_clip().tokenizer.SimpleTokenizer()
    words = {w for text in texts for w in text.split()}
    ids = {i for w in words for i in tok.encode(w)}
    return np.setdiff1d(np.array(sorted(ids), dtype=np.int64), [0, tok.sot_token_id, tok.eot_token_id])


def fit_to_model(x: torch.Tensor, size: int, clamp: bool = True) -> torch.Tensor:
    """The one image-to-embedding geometry of the project, differentiable: float images in [0, 1]
    (N, 3, H, W) -> (N, 3, size, size), the shortest side resized to ``size`` (bicubic, antialiased; ``clamp``:
    the overshoot clipped to [0, 1], as a uint8 resize does) and the centre cropped, as open_clip's transform
    (torchvision's Resize(int) then CenterCrop). Used by :meth:`Embedder.preprocess` and, unclamped so that every
    pixel keeps a gradient, by the generator's differentiable view (:class:`lib.models.gan.EmbeddingView`)."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)  # the long side is truncated
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    x = x.clamp(0, 1) if clamp else x
    top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))  # as torchvision's center_crop
    return x[..., top : top + size, left : left + size]


@dataclass
class Embedder:
    """An open_clip model with its tokenizer and preprocessing, on one device.

    ``key`` identifies the weights (architecture, image size and the checkpoint file or pretrained tag), so that
    embeddings saved with it can be checked against the model that later code loads.
    """

    model: torch.nn.Module
    tokenizer: object
    arch: str
    device: torch.device
    key: str
    source: str  # "random init", a checkpoint path or a pretrained tag
    meta: dict = field(default_factory=dict)  # what a lib checkpoint recorded of its origin

    def to_launch(self, folder: Path, name: str) -> dict:
        """To a launched trainer (:class:`lib.distributed.Portable`): its weights, and its key as it is here."""
        save_checkpoint(folder / f"{name}.pt", self, meta=self.meta)
        return {"checkpoint": f"{name}.pt", "key": self.key, "device": self.device.type}

    @classmethod
    def from_launch(cls, spec: dict, folder: Path) -> Embedder:
        emb = load(checkpoint=folder / spec["checkpoint"], device=distributed.device(spec["device"]))
        emb.key = spec["key"]  # the same weights: the caller's key, so that the state file is the caller's
        return emb

    @property
    def dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=torch.float32)
        return mean.view(1, 3, 1, 1).to(self.device), std.view(1, 3, 1, 1).to(self.device)

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float (N, 3, S, S) on the device: shortest side resized to the
        model's size S (bicubic, antialiased), centre crop, CLIP mean and std (as open_clip's transform)."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if x.dim() != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
            raise EmbeddingError(f"images: expected uint8 (N, H, W, 3), got {tuple(x.shape)} {x.dtype}")
        x = fit_to_model(x.to(self.device).permute(0, 3, 1, 2).float() / 255, self.image_size)
        mean, std = self.mean_std
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    @torch.no_grad()
    def embed_images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """L2-normalised image embeddings, float32 (N, dim)."""
        self.model.eval()
        out = [
            F.normalize(self.model.encode_image(self.preprocess(images[i : i + batch_size])).float(), dim=-1)
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 512) -> np.ndarray:
        """L2-normalised text embeddings, float32 (N, dim)."""
        self.model.eval()
        out = [
            F.normalize(self.model.encode_text(self.tokenize(texts[i : i + batch_size])).float(), dim=-1)
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, self.dim), np.float32)

    def embed_captions(self, captions: list[list[str]], n_each: int | None = None,
                       batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Per image: the mean of all its captions' normalised embeddings, renormalised (N, dim); and the
        embeddings of its first ``n_each`` captions (N, n_each, dim; default: the smallest count)."""
        counts = np.array([len(c) for c in captions])
        if len(counts) and counts.min() == 0:
            raise EmbeddingError(f"captions: image rows {np.flatnonzero(counts == 0)[:5].tolist()} have none")
        n_each = int(counts.min()) if n_each is None and len(counts) else (n_each or 0)
        if len(counts) and n_each > counts.min():
            raise EmbeddingError(f"n_each={n_each}: some images have only {counts.min()} captions")
        flat = self.embed_texts([t for cs in captions for t in cs], batch_size)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
        mean = np.add.reduceat(flat, first, axis=0) / counts[:, None] if len(counts) else flat[:0]
        each = flat[first[:, None] + np.arange(n_each)] if len(counts) else np.zeros((0, n_each, self.dim))
        return mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(1e-12), each


def _tokenizer(arch: str, model, vocab) -> object:
    """open_clip's tokenizer of ``arch``, or a :class:`GrammarTokenizer` over ``vocab`` for a shrunk text tower."""
    if vocab is None:
        return _open_clip().get_tokenizer(arch)
    return GrammarTokenizer(vocab, int(model.vocab_size), int(model.context_length))


def create(arch: str, image_size: int | None = None, device: str = "auto", seed: int | None = None,
           vocab=None) -> Embedder:  # fmt: skip
    """A randomly initialised open_clip model of ``arch`` (to train), optionally at another ``image_size``;
    ``vocab`` (BPE ids, see :func:`grammar_vocab`) for an architecture whose text tower has a small vocabulary."""
    _check_arch(arch)
    oc = _open_clip()
    dev = torch.device(runtime.pick_device(device))
    if seed is not None:
        torch.manual_seed(seed)
    with _quiet_open_clip():
        model = oc.create_model(arch, pretrained=None, force_image_size=image_size, device=dev)
    model.visual.to(memory_format=torch.channels_last)
    emb = Embedder(model, _tokenizer(arch, model, vocab), arch, dev, "", "random init")
    emb.key = fileio.content_key({"arch": arch, "image_size": emb.image_size, "seed": seed, "weights": "random",
                              "vocab": None if vocab is None else np.asarray(vocab).tolist()})  # fmt: skip
    return emb


#: keys of OpenAI's TorchScript CLIP that are not parameters (``jit.load(f).state_dict()`` keeps them)
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


def _read_weights(path: Path) -> dict:
    """A state dict from a torch file read with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise EmbeddingError(
            f"{path}: not a state dict readable with torch.load(weights_only=True) ({type(e).__name__}); "
            "OpenAI's TorchScript .pt: save torch.jit.load(f, map_location='cpu').state_dict() with torch.save"
        ) from None


def load(arch: str | None = None, checkpoint: str | Path | None = None, pretrained: str | None = None,
         image_size: int | None = None, device: str = "auto") -> Embedder:  # fmt: skip
    """An embedding model from a local ``checkpoint`` file or open_clip's ``pretrained`` tag (downloads).

    ``checkpoint`` is a file written by :func:`save_checkpoint` (``arch`` and image size are read from it) or any
    open_clip state dict (``arch`` then required), as ``.safetensors`` or a torch file read with
    ``weights_only=True``, so that no pickled code runs. OpenAI's weights need a QuickGELU architecture
    (``ViT-B-32-quickgelu``). The key hashes the file's contents: a copied or moved file keeps its key.
    """
    oc = _open_clip()
    dev = torch.device(runtime.pick_device(device))
    vocab, meta = None, {}  # a lib checkpoint's text vocabulary and origin
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise EmbeddingError(
                f"checkpoint={str(path)!r}: no such file (a local open_clip or lib checkpoint)"
            )
        state = _from_safetensors(path) if path.suffix == ".safetensors" else _read_weights(path)
        if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
            vocab, meta = state.get("vocab"), dict(state.get("meta") or {})
            if arch is not None and arch != state["arch"]:
                raise EmbeddingError(f"{path}: holds arch {state['arch']!r}, not arch={arch!r}")
            if image_size is not None and image_size != (state.get("image_size") or image_size):
                raise EmbeddingError(
                    f"{path}: trained at {state['image_size']} px, not image_size={image_size}"
                )
            arch, image_size, state = state["arch"], state.get("image_size"), state["state_dict"]
        elif arch is None:
            raise EmbeddingError(f"checkpoint={str(path)!r}: a plain open_clip state dict needs arch=")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise EmbeddingError(f"{path}: expected a state dict, got {type(state).__name__}")
        state = fileio.cast_floats(
            {k.removeprefix("module."): v for k, v in state.items() if k not in _NON_PARAMETER_KEYS},
            torch.float32,
        )
        _check_arch(arch)
        with _quiet_open_clip():
            model = oc.create_model(arch, pretrained=None, force_image_size=image_size, device="cpu")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[:2]
            raise EmbeddingError(f"{path}: does not fit arch={arch!r}: {' '.join(first)[:300]}") from None
        source = str(path)
        weights = fileio.file_sha256(path)
    elif pretrained is not None:
        if arch is None:
            raise EmbeddingError(f"pretrained={pretrained!r}: needs arch= (e.g. ViT-B-32)")
        _check_arch(arch)
        try:
            model = oc.create_model(arch, pretrained=pretrained, force_image_size=image_size, device="cpu")
        except Exception as e:  # noqa: BLE001 - network, hub or tag errors all mean the same here
            raise EmbeddingError(
                f"pretrained={pretrained!r} for arch={arch!r} could not be loaded ({type(e).__name__}: {e}); "
                "offline, pass a local checkpoint= file instead"
            ) from None
        source = f"open_clip:{arch}:{pretrained}"
        weights = source
    else:
        raise EmbeddingError("load(): give checkpoint= (a local file) or pretrained= (an open_clip tag)")
    model = model.to(dev).eval()
    model.visual.to(memory_format=torch.channels_last)
    emb = Embedder(model, _tokenizer(arch, model, vocab), arch, dev, "", source, meta)
    emb.key = fileio.content_key({"arch": arch, "image_size": emb.image_size, "weights": weights})
    return emb


def _from_safetensors(path: Path) -> dict:
    """A :data:`CHECKPOINT_FORMAT` dict from a ``.safetensors`` file written by :func:`save_checkpoint` (its
    header metadata names the format, architecture and image size), or the plain state dict of any other."""
    tensors, meta = fileio.read_safetensors(path, EmbeddingError)
    if meta.get("format") != CHECKPOINT_FORMAT:
        return tensors
    vocab = tensors.pop(_VOCAB_KEY, None)
    size = meta.get("image_size")
    return {"format": CHECKPOINT_FORMAT, "arch": meta["arch"], "image_size": int(size) if size else None,
            "state_dict": tensors, "vocab": vocab, "meta": json.loads(meta.get("meta", "{}"))}  # fmt: skip


_VOCAB_KEY = "tokenizer.vocab"  # a shrunk text tower's BPE ids, stored beside the weights


def save_checkpoint(
    path: str | Path, embedder: Embedder, meta: dict | None = None, half: bool = False
) -> Path:
    """Write the model's weights with its architecture and image size (atomically), loadable by :func:`load`:
    a torch file, or with a ``.safetensors`` suffix a safetensors file (``half``: float16 weights, loaded back as
    float32), the vocabulary of a :class:`GrammarTokenizer` stored with it."""
    size = embedder.image_size
    default = _open_clip().get_model_config(embedder.arch)["vision_cfg"].get("image_size")
    weights = {k: v.detach().cpu().contiguous() for k, v in embedder.model.state_dict().items()}
    vocab = embedder.tokenizer.vocab if isinstance(embedder.tokenizer, GrammarTokenizer) else None
    if Path(path).suffix == ".safetensors":
        header = {"format": CHECKPOINT_FORMAT, "arch": embedder.arch,
                  "image_size": "" if size == default else str(size), "meta": json.dumps(meta or {})}  # fmt: skip
        extra = {} if vocab is None else {_VOCAB_KEY: vocab}
        return fileio.write_bytes(path, fileio.safetensors_bytes({**weights, **extra}, header, half))
    if half:
        weights = fileio.cast_floats(weights, torch.float16)
    state = {
        "format": CHECKPOINT_FORMAT,
        "arch": embedder.arch,
        "image_size": None if size == default else size,
        "state_dict": weights,
        "vocab": vocab,
        "meta": meta or {},
    }
    return fileio.write_bytes(path, fileio.torch_bytes(state))


def save_embeddings(path: str | Path, ids: np.ndarray, image: np.ndarray, text: np.ndarray, model_key: str,
                    text_each: np.ndarray | None = None, **extra: np.ndarray) -> Path:  # fmt: skip
    """Save image and caption embeddings of stimuli ``ids`` (0-based nsdId) with the key of the model."""
    ids = np.asarray(ids)
    if not (len(ids) == len(image) == len(text)):
        raise EmbeddingError(
            f"ids, image and text embeddings differ in length: {len(ids)}, {len(image)}, {len(text)}"
        )
    arrays = {"ids": ids, "image": image.astype(np.float32), "text": text.astype(np.float32), **extra}
    if text_each is not None:
        arrays["text_each"] = text_each.astype(np.float32)
    with fileio.atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, format=np.array(EMBEDDINGS_FORMAT), model_key=np.array(model_key), **arrays)
    return Path(path)


def load_embeddings(path: str | Path, model_key: str | None = None) -> dict[str, np.ndarray]:
    """Arrays written by :func:`save_embeddings`; with ``model_key``, refuse embeddings made by another model."""
    path = Path(path)
    with np.load(path) as f:
        if "format" not in f or str(f["format"]) != EMBEDDINGS_FORMAT:
            raise EmbeddingError(
                f"{path}: not an embeddings file written by lib.models.embedding.save_embeddings"
            )
        out = {k: f[k] for k in f.files if k != "format"}
    out["model_key"] = str(out["model_key"])
    if model_key is not None and out["model_key"] != model_key:
        raise EmbeddingError(
            f"{path}: made by model {out['model_key']}, expected {model_key}; rerun notebook 01"
        )
    return out


def embed_stimuli(emb: Embedder, ds, ids: np.ndarray, chunk: int = 1024) -> dict[str, np.ndarray]:
    """Image embeddings, caption embeddings (mean over all of each image's captions) and the embeddings of each
    image's first C captions (C = the smallest caption count among ``ids``) of stimuli ``ids``, reading images
    from NSD's brick in chunks (real NSD's 425 px images do not fit in memory at once)."""
    captions = ds.captions(ids)
    n_each = min((len(c) for c in captions), default=0)
    if n_each == 0 and len(ids):
        bad = [int(i) for i, c in zip(ids, captions, strict=True) if not c][:5]
        raise EmbeddingError(f"stimuli {bad}: no captions")
    image, text, each = [], [], []
    for i in runtime.progress(range(0, len(ids), chunk), desc="embed stimuli"):
        image.append(emb.embed_images(ds.images(ids[i : i + chunk])))
        m, e = emb.embed_captions(captions[i : i + chunk], n_each)
        text.append(m)
        each.append(e)
    return {"image": np.concatenate(image), "text": np.concatenate(text), "text_each": np.concatenate(each)}


def top_captions(image: np.ndarray, captions_emb: np.ndarray, captions: list[str], owner: np.ndarray,
                 rows: np.ndarray, k: int = 3) -> list[list[tuple[str, bool, float]]]:  # fmt: skip
    """For each image embedding, its ``k`` most similar captions: (text, whether ``owner`` of the caption is the
    image's row ``rows[i]``, cosine similarity)."""
    sim = image @ captions_emb.T
    out = []
    for i, s in enumerate(sim):
        top = np.argsort(-s)[:k]
        out.append([(captions[j], bool(owner[j] == rows[i]), float(s[j])) for j in top])
    return out


def random_like(emb: Embedder, seed: int = 0) -> Embedder:
    """A randomly initialised model of ``emb``'s architecture, image size and vocabulary (the probes' floor)."""
    vocab = emb.tokenizer.vocab if isinstance(emb.tokenizer, GrammarTokenizer) else None
    return create(emb.arch, emb.image_size, str(emb.device), seed, vocab=vocab)
