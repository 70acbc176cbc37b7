"""The served models: a transfer-learned CTR ranker, its training data, artifact and profiles.

The sparse part (embedding tables) and the dense part (`DenseRanker`) are separate: in serving the
tables live in a parameter store (`ModelArtifact.embeddings()`, a memory-mapped .npy) and ranker
replicas run only the dense part (`ModelArtifact.dense_torchscript()`).

>>> from serving.models import FeatureSchema, GeneratorConfig, generate_domains
>>> schema = FeatureSchema.split(vocab_size=1000, num_fields=4, num_dense=2)
>>> data = generate_domains(GeneratorConfig(schema, source_rows=200, target_rows=50, test_rows=50))
>>> len(data.source), schema.offsets.tolist()
(200, [0, 250, 500, 750])
"""

from serving.models._artifact import (
    FORMAT_VERSION,
    ModelArtifact,
    ModelMetadata,
    check_output_dir,
    read_artifact,
    write_artifact,
)
from serving.models._cutoff import cutoff_grid, quality_vs_cutoff
from serving.models._data import ClickLogs, DomainData, GeneratorConfig, generate_domains
from serving.models._formats import LatencyProfile, QualityCurve, QualityPoint, write_json_atomic
from serving.models._logs import load_domains, read_click_logs, write_click_logs
from serving.models._model import (
    DenseRanker,
    FeatureSchema,
    ModelConfig,
    RankerModel,
    SparseTables,
    export_dense_torchscript,
    load_dense_torchscript,
)
from serving.models._pipeline import TrainJob, TrainOutcome, format_summary, train_pipeline
from serving.models._profile import DEFAULT_BATCH_ROWS, profile_dense
from serving.models._train import Metrics, TrainSettings, evaluate, fit
from serving.models._transfer import Strategy, TransferSettings, train_strategy

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "FORMAT_VERSION",
    "ClickLogs",
    "DenseRanker",
    "DomainData",
    "FeatureSchema",
    "GeneratorConfig",
    "LatencyProfile",
    "Metrics",
    "ModelArtifact",
    "ModelConfig",
    "ModelMetadata",
    "QualityCurve",
    "QualityPoint",
    "RankerModel",
    "SparseTables",
    "Strategy",
    "TrainJob",
    "TrainOutcome",
    "TrainSettings",
    "TransferSettings",
    "check_output_dir",
    "cutoff_grid",
    "evaluate",
    "export_dense_torchscript",
    "fit",
    "format_summary",
    "generate_domains",
    "load_dense_torchscript",
    "load_domains",
    "profile_dense",
    "quality_vs_cutoff",
    "read_artifact",
    "read_click_logs",
    "train_pipeline",
    "train_strategy",
    "write_artifact",
    "write_click_logs",
    "write_json_atomic",
]
