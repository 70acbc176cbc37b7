"""The model directory `jizhi train` writes and the serving path, profiler and tuner read.

Written into a temporary sibling directory and renamed into place, so a reader never sees a
half-written model; read back with checks that turn an incomplete or incompatible directory into
one InputError line. The layout is documented in docs/models.md.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, ValidationError

from serving.models._formats import QualityCurve, read_json_model, write_json_atomic
from serving.models._model import (
    FeatureSchema,
    ModelConfig,
    RankerModel,
    export_dense_torchscript,
    load_dense_torchscript,
)
from simulator.errors import InputError

__all__ = [
    "FORMAT_VERSION",
    "ModelArtifact",
    "ModelMetadata",
    "check_output_dir",
    "read_artifact",
    "write_artifact",
]

FORMAT = "jizhi.model"
FORMAT_VERSION = 1
FILES = {
    "dense_torchscript": "dense.pt",
    "dense_state": "dense_state.pt",
    "embeddings": "embeddings.npy",
    "popularity_rank": "popularity_rank.npy",
    "training_report": "training_report.json",
    "quality_vs_cutoff": "quality_vs_cutoff.json",
}
METADATA = "metadata.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparseField(_Frozen):
    name: str
    vocab_size: int
    offset: int


class ModelMetadata(_Frozen):
    """`metadata.json`: what a reader needs to rebuild the model and feed it."""

    format: Literal["jizhi.model"]
    format_version: int
    vocab_size: int
    embedding_dim: int
    bottom_hidden: list[int]
    top_hidden: list[int]
    sparse_fields: list[SparseField]
    dense_features: list[str]
    popularity_domain: str
    files: dict[str, str]
    training: dict[str, Any]

    @property
    def config(self) -> ModelConfig:
        schema = FeatureSchema(
            tuple(f.vocab_size for f in self.sparse_fields), len(self.dense_features)
        )
        return ModelConfig(
            schema, self.embedding_dim, tuple(self.bottom_hidden), tuple(self.top_hidden)
        )


@dataclass(frozen=True)
class ModelArtifact:
    """A checked model directory; files are opened on demand (the table memory-mapped)."""

    path: Path
    metadata: ModelMetadata

    @property
    def config(self) -> ModelConfig:
        return self.metadata.config

    def file(self, key: str) -> Path:
        return self.path / self.metadata.files[key]

    def embeddings(self) -> np.memmap[Any, np.dtype[np.float32]]:
        """The [vocab, dim] float32 table, memory-mapped read-only."""
        table: np.memmap[Any, np.dtype[np.float32]] = np.load(
            self.file("embeddings"), mmap_mode="r"
        )
        return table

    def popularity_rank(self) -> NDArray[np.int64]:
        rank: NDArray[np.int64] = np.load(self.file("popularity_rank"))
        return rank

    def quality_curve(self) -> QualityCurve:
        return read_json_model(self.file("quality_vs_cutoff"), QualityCurve)

    def training_report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.file("training_report").read_text())
        return report

    def dense_torchscript(self, device: str = "cpu") -> torch.jit.ScriptModule:
        """What a ranker replica runs: forward(pooled [B,F,D], dense [B,Dd]) → probabilities [B]."""
        return load_dense_torchscript(self.file("dense_torchscript"), device)

    def ranker(self, device: str = "cpu") -> RankerModel:
        """The whole eager model (tables copied into memory), e.g. for offline evaluation."""
        model = RankerModel(self.config, seed=0)
        state = torch.load(self.file("dense_state"), map_location="cpu", weights_only=True)
        model.dense.load_state_dict(state)
        with torch.no_grad():
            model.sparse.table.weight.copy_(torch.from_numpy(np.array(self.embeddings())))
        return model.to(device).eval()


def _metadata(model: RankerModel, training: dict[str, Any]) -> dict[str, Any]:
    config = model.config
    schema = config.schema
    fields = zip(schema.sparse_columns, schema.field_vocab_sizes, schema.offsets, strict=True)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vocab_size": schema.vocab_size,
        "embedding_dim": config.embedding_dim,
        "bottom_hidden": list(config.bottom_hidden),
        "top_hidden": list(config.top_hidden),
        "sparse_fields": [{"name": n, "vocab_size": v, "offset": int(o)} for n, v, o in fields],
        "dense_features": list(schema.dense_columns),
        "popularity_domain": "target",
        "files": dict(FILES),
        "training": training,
    }


def _is_model_dir(path: Path) -> bool:
    try:
        return bool(json.loads((path / METADATA).read_text()).get("format") == FORMAT)
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail early (before any training) when `out` cannot receive a model directory."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out}: already exists; pass --force to replace it")
        if not _is_model_dir(out):
            raise InputError(
                f"{out}: exists and is not a jizhi model directory; refusing to replace it"
            )


def write_artifact(
    out: Path,
    model: RankerModel,
    popularity_rank: NDArray[np.int64],
    *,
    quality: QualityCurve,
    report: dict[str, Any],
    training: dict[str, Any],
    overwrite: bool = False,
    before_rename: Callable[[Path], None] | None = None,
) -> ModelArtifact:
    """Write every file into a temporary sibling of `out`, then rename it to `out`.

    On any failure the temporary directory is removed and `out` is left as it was.
    `before_rename` is a hook for tests (called with the temporary directory).
    """
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        tmp.chmod(0o755)
        dense = copy.deepcopy(model.dense).to("cpu")
        export_dense_torchscript(dense, tmp / FILES["dense_torchscript"])
        torch.save(dense.state_dict(), tmp / FILES["dense_state"])
        table = model.sparse.table.weight.detach().to("cpu", torch.float32).numpy()
        np.save(tmp / FILES["embeddings"], table)
        np.save(tmp / FILES["popularity_rank"], popularity_rank.astype(np.int64))
        write_json_atomic(tmp / FILES["quality_vs_cutoff"], quality.model_dump(mode="json"))
        write_json_atomic(tmp / FILES["training_report"], report)
        write_json_atomic(tmp / METADATA, _metadata(model, training))
        if before_rename is not None:
            before_rename(tmp)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_artifact(out)


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and restored on failure."""
    if not out.exists():
        tmp.replace(out)
        return
    aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    out.replace(aside / out.name)
    try:
        tmp.replace(out)
    except BaseException:
        (aside / out.name).replace(out)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    return array.shape, array.dtype


def read_artifact(path: Path) -> ModelArtifact:
    """Open and check a model directory; an InputError names the first problem found."""
    if not path.is_dir():
        raise InputError(f"{path}: no such model directory (write one with `jizhi train`)")
    meta_path = path / METADATA
    if not meta_path.is_file():
        raise InputError(f"{path}: incomplete model directory: {METADATA} is missing")
    try:
        raw = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputError(f"{meta_path}: not a jizhi model (format must be '{FORMAT}')")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"{path}: model format version {version!r} is not supported "
            f"(this jizhi reads version {FORMAT_VERSION}); retrain with `jizhi train`"
        )
    try:
        metadata = ModelMetadata.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{meta_path}: {where}: {first['msg']}") from None
    for key, name in FILES.items():
        if metadata.files.get(key) != name:
            raise InputError(f"{meta_path}: files.{key} must be '{name}'")
        if not (path / name).is_file():
            raise InputError(f"{path}: incomplete model directory: {name} is missing")
    vocab, dim = metadata.vocab_size, metadata.embedding_dim
    if sum(f.vocab_size for f in metadata.sparse_fields) != vocab:
        raise InputError(f"{meta_path}: sparse_fields vocab sizes do not add up to vocab_size")
    shape, dtype = _npy_header(path / FILES["embeddings"])
    if shape != (vocab, dim) or dtype != np.float32:
        raise InputError(
            f"{path / FILES['embeddings']}: expected float32 [{vocab}, {dim}], "
            f"got {dtype} {list(shape)}"
        )
    shape, dtype = _npy_header(path / FILES["popularity_rank"])
    if shape != (vocab,) or dtype != np.int64:
        raise InputError(
            f"{path / FILES['popularity_rank']}: expected int64 [{vocab}], "
            f"got {dtype} {list(shape)}"
        )
    return ModelArtifact(path, metadata)
