"""The streaming build: `data.num_proc` changes nothing in the output (rows compared one by one), the first bad
row in file order is the one reported whatever the sharding, the cached splits are read memory-mapped, and
sources read with `load_dataset(..., streaming=True)` (large local files, hub datasets) give the same output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_data_reference import CASES, FIX, REFERENCE, build, outcome
from tunekit.data import encode, sources
from tunekit.data.encode import shard_plans
from tunekit.data.schema import DatasetSpec
from tunekit.data.sources import read_rows
from tunekit.errors import UserError


@pytest.fixture
def tiny_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "MIN_SHARD", 1)  # shard even the small test datasets


@pytest.mark.parametrize("case", ["quickstart-holdout-truncate", "mixture-samples", "qwen3-per-turn", "text"])
@pytest.mark.parametrize("packing", [False, True])
def test_num_proc_gives_the_same_rows_and_statistics(case: str, packing: bool, tmp_path: Path,
                                                     tiny_shards: None) -> None:
    data = {**CASES[case], "packing": packing}
    one = build(data, tmp_path / "one", num_proc=1)
    for n in (2, 3):
        many = build(data, tmp_path / f"n{n}", num_proc=n)
        assert len(many[0]) == len(one[0]) and len(many[1]) == len(one[1])
        for a, b in zip([*one[0], *one[1]], [*many[0], *many[1]]):
            assert a == b
        assert json.dumps(many[2]) == json.dumps(one[2])  # statistics, key order included


def test_the_first_bad_row_is_reported_whatever_the_sharding(tmp_path: Path, tiny_shards: None) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [good] * 40
    rows[25] = {"messages": [{"role": "user", "content": "no answer"}]}
    rows[33] = {"text": "wrong column"}
    f = tmp_path / "bad.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    errors = []
    for n in (1, 2, 4):
        with pytest.raises(UserError) as e:
            build({"train": [{"path": str(f), "format": "messages"}]}, tmp_path / f"c{n}", num_proc=n)
        errors.append(str(e.value))
    assert errors[0] == errors[1] == errors[2] and f"{f}: row 26 (line 26)" in errors[0]
    assert not [p for p in (tmp_path / "c2").iterdir() if p.is_dir()]  # no half-built entry left behind


def test_cached_splits_are_memory_mapped(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tunekit.data.build import build_datasets
    from tunekit.data.schema import DataConfig
    from tunekit.model.builtin import TOKENIZER_DIR

    cfg = DataConfig(**CASES["quickstart"], packing=True, cache_dir=str(tmp_path))
    train, evals, stats = build_datasets(cfg, AutoTokenizer.from_pretrained(TOKENIZER_DIR), seed=0)
    for ds in (train, evals):
        assert ds.cache_files and ds.cache_files[0]["filename"].startswith(stats["cache_dir"])
        assert type(ds.data).__name__ == "MemoryMappedTable"
    assert str(train.features["input_ids"].feature) == "Value('int32')"


def test_jsonl_rows_are_read_on_demand_in_any_order(tmp_path: Path) -> None:
    f = tmp_path / "rows.jsonl"
    f.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}\n')
    rows = read_rows(DatasetSpec(path=str(f), format="text"))
    assert len(rows) == 3
    got, where = rows.fetch([2, 0, 2])
    assert got == [{"a": 3}, {"a": 1}, {"a": 3}]
    assert where == [f"{f}: row 3 (line 4)", f"{f}: row 1 (line 1)", f"{f}: row 3 (line 4)"]


def test_shard_plans_cut_the_rows_into_contiguous_runs() -> None:
    assert shard_plans([5, 3], 2) == [[(0, 0, 4)], [(0, 4, 5), (1, 0, 3)]]
    assert shard_plans([2], 1) == [[(0, 0, 2)]]


@pytest.mark.parametrize("packing", [False, True])
def test_the_trainer_reads_the_cached_rows_memory_mapped(packing: bool, tmp_path: Path) -> None:
    """tunekit's SFT trainer keeps the cache entry's memory-mapped table (no copy per rank) and batches its
    int32 rows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import tiny_recipe
    from tunekit.data.build import build_datasets
    from tunekit.model.builtin import TOKENIZER_DIR, materialize
    from tunekit.recipe.load import load_recipe
    from tunekit.trainers import sft

    recipe = load_recipe(tiny_recipe(tmp_path, data={"packing": packing, "cache_dir": str(tmp_path / "cache")}))
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    train, _, _ = build_datasets(recipe.data, tok, seed=0)
    model = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-llama", 0), dtype=torch.float32)
    trainer = sft.build(recipe, model, tok, train, None, str(tmp_path / "ckpt"), [])
    assert type(trainer.train_dataset.data).__name__ == "MemoryMappedTable"
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].dtype == torch.int64 and (batch["labels"] != -100).any()


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CSV/Parquet/Arrow file read with load_dataset(..., streaming=True), two rows per batch."""
    monkeypatch.setattr(sources, "STREAM_BYTES", 0)
    monkeypatch.setattr(sources, "STREAM_BATCH", 2)


@pytest.mark.parametrize("case", ["csv/unpacked", "text/packed", "mixture-weights/unpacked",
                                  "mixture-weights/packed"])
@pytest.mark.parametrize("num_proc", [1, 2])
def test_streamed_sources_build_the_recorded_reference(case: str, num_proc: int, tmp_path: Path, streamed: None,
                                                       tiny_shards: None) -> None:
    """The upsampled mixture (weights 3:1 over an Arrow file) fetches rows out of order: the stream restarts."""
    name, packing = case.split("/")
    expected = json.loads(REFERENCE.read_text())[case]
    assert outcome({**CASES[name], "packing": packing == "packed"}, tmp_path, num_proc=num_proc) == expected


def test_a_streamed_file_is_counted_and_fetched_in_any_order(streamed: None) -> None:
    rows = read_rows(DatasetSpec(path=str(FIX / "text.parquet"), format="text"))
    assert isinstance(rows.parts[0], sources.StreamPart) and len(rows) == 5
    got, where = rows.fetch([4, 1, 1, 3])
    assert [r["text"][:10] for r in got] == ["Document 4", "Document 1", "Document 1", "Document 3"]
    assert where[0] == f"{FIX / 'text.parquet'}: row 5"


def test_hub_datasets_stream_through_the_same_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hub:NAME` passes NAME to load_dataset(..., streaming=True) where a local file passes its builder: a local
    dataset directory stands in for a hub repository (no network here; the reachability probe answers yes)."""
    import shutil

    from tunekit import hub

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    shutil.copy(FIX / "text.parquet", repo / "data" / "train-00000-of-00001.parquet")
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    via_hub = build({"train": [{"path": f"hub:{repo}", "format": "text"}], "max_length": 16}, tmp_path / "a")
    local = build(CASES["text"], tmp_path / "b")
    hub_rows = read_rows(DatasetSpec(path=f"hub:{repo}", format="text"))
    assert isinstance(hub_rows.parts[0], sources.StreamPart)
    assert via_hub[0] == local[0] and via_hub[2]["train"]["tokens"] == local[2]["train"]["tokens"]
