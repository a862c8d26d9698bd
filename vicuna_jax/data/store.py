"""Prepared conversations as a tensorflow-datasets dataset in ArrayRecord files, read without TensorFlow.

Each example keeps the text (`id`, `conversations` as JSON) next to its tokens (`input_ids`, `loss_mask`), so
a dataset can be inspected and re-checked, and the loader never re-tokenizes. `as_data_source` gives random
access for grain; `as_dataset`/`tfds.load` would need TensorFlow and parquet lost records (DESIGN.md), so
neither is used. Alongside the tfds files, `lengths_<split>.npy` holds every example's token count in data
source order (shuffling is disabled so that order is the write order): packing is planned from it alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from vicuna_jax.fileio import atomic_open

BUILDER_NAME = "vicuna_chat"
_BYTES = tfds.features.Encoding.BYTES
META_FILE = "meta.json"

# (id, record, input_ids, loss_mask) examples for one split, produced on demand while tfds writes; `record`
# may be the JSON text of its "conversations" already (made in a worker process).
ExampleSource = Callable[[], Iterator[tuple[str, dict, np.ndarray, np.ndarray]]]


class VicunaChat(tfds.core.GeneratorBasedBuilder):
    """Tokenized chat conversations. Splits and their examples are handed in by `prepare.py`."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Conversations with vicuna-template tokens and assistant-only loss masks.",
                     "1.1.0": "Token arrays stored as raw bytes (4.5x faster to write than int64 lists)."}

    def __init__(
        self, *, splits: dict[str, ExampleSource] | None = None, metadata: dict | None = None, **kwargs
    ):
        self._splits = splits or {}
        self._metadata = metadata or {}
        self.lengths: dict[str, list[int]] = {}
        self.ids: dict[str, list[str]] = {}
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds's default probes package resources through `importlib_resources`, a backport that is not
        # installed with Python 3.11; the answer is simply this file.
        return epath.Path(__file__)

    @classmethod
    def _get_name(cls) -> str:  # a stable dataset name, independent of the class name
        return BUILDER_NAME

    # tfds prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and prepared"; a
    # local build downloads nothing, so say what happens instead.
    def _log_download_bytes(self) -> None:
        print(f"prepare: writing the prepared dataset to {self.data_dir} (nothing is downloaded)", flush=True)

    def _log_download_done(self) -> None:
        print(f"prepare: wrote {self.data_dir}", flush=True)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Vicuna-style chat conversations tokenized with a chat template (see meta.json).",
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "conversations": tfds.features.Text(),
                    # Raw bytes, not tf.train int64 lists: serialising is the serial part of a
                    # many-process prepare (132 -> 29 us per 1000-token example).
                    "input_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=_BYTES),
                    "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.bool_, encoding=_BYTES),
                }
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(self._metadata),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {name: self._generate_examples(name) for name in self._splits}

    def _generate_examples(self, split: str):
        lengths = self.lengths.setdefault(split, [])
        ids = self.ids.setdefault(split, [])
        for k, (rec_id, record, input_ids, loss_mask) in enumerate(self._splits[split]()):
            lengths.append(len(input_ids))
            ids.append(rec_id)
            text = record if isinstance(record, str) else json.dumps(record["conversations"],
                                                                      ensure_ascii=False)
            example = {
                "id": rec_id,
                "conversations": text,
                "input_ids": np.asarray(input_ids, np.int32),
                "loss_mask": np.asarray(loss_mask, bool),
            }
            yield k, example


def write_dataset(
    dataset_dir: str, splits: dict[str, ExampleSource], metadata: dict
) -> dict[str, np.ndarray]:
    """Write the tfds dataset and the per-split length files; returns the lengths."""
    builder = VicunaChat(splits=splits, metadata=metadata, data_dir=dataset_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=dataset_dir))
    out = {}
    for split in splits:
        lengths = np.asarray(builder.lengths.get(split, []), np.int32)
        with atomic_open(os.path.join(dataset_dir, f"lengths_{split}.npy"), "wb") as f:
            np.save(f, lengths)
        out[split] = lengths
        _check_order(builder, split, builder.ids.get(split, []))
    return out


def _check_order(builder: VicunaChat, split: str, ids: list[str]) -> None:
    """The length file is only valid if the data source keeps write order: spot-check it."""
    if not ids:
        return
    source = builder.as_data_source(split)
    for k in sorted({0, len(ids) // 2, len(ids) - 1}):
        got = source[k]["id"]
        got = got.decode() if isinstance(got, bytes) else got
        if got != ids[k]:
            raise RuntimeError(f"tfds reordered split {split!r}: example {k} is {got!r}, expected {ids[k]!r}")


class PreparedDataset:
    """A prepared dataset directory: metadata, per-split lengths, and ArrayRecord data sources."""

    def __init__(self, dataset_dir: str):
        self.dataset_dir = os.fspath(dataset_dir)
        meta_path = os.path.join(self.dataset_dir, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"no prepared dataset at {self.dataset_dir} (missing {META_FILE}); run "
                "`python -m vicuna_jax.data.prepare --input=RAW --output_dir=DIR --tokenizer=...` first"
            )
        with open(meta_path) as f:
            self.meta: dict = json.load(f)
        version = os.path.join(self.dataset_dir, BUILDER_NAME, str(VicunaChat.VERSION))
        if self.meta.get("splits") and not os.path.isdir(version):
            raise FileNotFoundError(
                f"{self.dataset_dir} was prepared by an older vicuna_jax (it has no "
                f"{BUILDER_NAME}/{VicunaChat.VERSION}); prepare it again from the raw data")
        self._builder = VicunaChat(data_dir=self.dataset_dir, file_format="array_record")
        self._sources: dict = {}

    @property
    def splits(self) -> list[str]:
        return list(self.meta.get("splits", {}))

    def lengths(self, split: str) -> np.ndarray:
        """Token count of every example of `split`, in data-source order."""
        self._check_split(split)
        return np.load(os.path.join(self.dataset_dir, f"lengths_{split}.npy"))

    def source(self, split: str):
        """Random-access data source (`len`, `[i]`, `__getitems__`) over decoded examples."""
        self._check_split(split)
        if split not in self._sources:
            self._sources[split] = self._builder.as_data_source(split)
        return self._sources[split]

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise KeyError(
                f"split {split!r} not in {self.dataset_dir} (has: {', '.join(self.splits) or 'none'})"
            )
