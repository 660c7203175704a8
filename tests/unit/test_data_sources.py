"""Source files as users have them: CSV cells that look like missing values, a UTF-8 byte-order mark, Arrow IPC files,
compressed JSON/JSONL/CSV, names with `[`, and dataset options (`field:`, `split:`) that cannot apply to a source.
Read through the real readers (`read_rows`, `check_exists`, the data build), in memory and streamed."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import sys
from pathlib import Path

import pytest

from tests.unit.test_data_reference import build
from tunekit.data import encode, sources
from tunekit.data.cache import file_sha256, source_fingerprints
from tunekit.data.schema import DataConfig, DatasetSpec
from tunekit.data.sources import check_exists, read_rows
from tunekit.errors import UserError

BOM = b"\xef\xbb\xbf"
ALPACA = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
          {"instruction": "Name a colour.", "output": "Blue."},
          {"instruction": "Say hi.", "input": "politely", "output": "Hello!"}]


@pytest.fixture(params=["in-memory", "streamed"])
def csv_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """CSV read whole (`Dataset.from_csv`) or with `load_dataset(..., streaming=True)` (files from STREAM_BYTES)."""
    if request.param == "streamed":
        monkeypatch.setattr(sources, "STREAM_BYTES", 0)
        monkeypatch.setattr(sources, "STREAM_BATCH", 2)
    return request.param


def _rows(path: Path, fmt: str = "alpaca", **kw: object) -> list[dict]:
    return read_rows(DatasetSpec(path=str(path), format=fmt, **kw)).rows  # type: ignore[arg-type]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# --- CSV: every cell is text -------------------------------------------------------------------------------------

def test_csv_cells_that_look_missing_stay_text_and_an_empty_cell_is_empty_text(tmp_path: Path, csv_mode: str) -> None:
    """pandas reads `NA`, `None`, `null`, `nan`, `N/A` as missing by default: the prompt silently lost them."""
    f = tmp_path / "na.csv"
    f.write_text('instruction,input,output\nISO code?,NA,Namibia\nTranslate,None,Aucun\nQ,null,N/A\n'
                 'Q2,nan,#N/A\nQ3,,empty\nQ4,"",quoted empty\n')
    assert [(r["input"], r["output"]) for r in _rows(f)] == [
        ("NA", "Namibia"), ("None", "Aucun"), ("null", "N/A"), ("nan", "#N/A"), ("", "empty"), ("", "quoted empty")]


def test_a_csv_na_cell_is_trained_as_its_text(tmp_path: Path) -> None:
    f = tmp_path / "na2.csv"
    f.write_text("prompt,completion\nWhat is the ISO 3166 code for Namibia?,NA\n")
    train, _, _ = build({"train": [{"path": str(f), "format": "prompt_completion"}]}, tmp_path / "c")
    from transformers import AutoTokenizer

    from tunekit.model.builtin import TOKENIZER_DIR

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    row = train[0]
    assert tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]) == "NA<|im_end|>\n"


# --- UTF-8 byte-order mark --------------------------------------------------------------------------------------

def test_a_csv_with_a_byte_order_mark_names_its_first_column_right(tmp_path: Path, csv_mode: str) -> None:
    f = tmp_path / "bom.csv"
    f.write_bytes(BOM + b"instruction,input,output\nq1,,a1\n")
    assert _rows(f) == [{"instruction": "q1", "input": "", "output": "a1"}]


def test_json_and_jsonl_with_a_byte_order_mark_are_read_and_lines_stay_right(tmp_path: Path) -> None:
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(BOM + _jsonl(ALPACA))
    rows = read_rows(DatasetSpec(path=str(jsonl), format="alpaca"))
    assert rows.rows == ALPACA and rows.where[0] == f"{jsonl}: row 1 (line 1)"
    whole = tmp_path / "bom.json"
    whole.write_bytes(BOM + json.dumps(ALPACA, indent=1).encode())
    assert _rows(whole) == ALPACA
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(BOM + b'{"a": 1}\n\n{"a": \n')
    with pytest.raises(UserError, match=r"bad.jsonl:3: malformed JSON"):
        _rows(bad)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(BOM + b'{"a": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin.jsonl:1:11: byte 0xe9 is not UTF-8"):  # columns after the mark
        _rows(latin)


# --- Arrow IPC file (Feather v2) --------------------------------------------------------------------------------

@pytest.mark.parametrize("stream_bytes", [256 * 2**20, 0])
def test_an_arrow_ipc_file_reads_like_the_stream_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        stream_bytes: int) -> None:
    import pyarrow as pa

    monkeypatch.setattr(sources, "STREAM_BYTES", stream_bytes)
    table = pa.table({"text": ["arrow row one", "arrow row two", "three"]})
    for name, new in (("file.arrow", pa.ipc.new_file), ("stream.arrow", pa.ipc.new_stream)):
        with pa.OSFile(str(tmp_path / name), "wb") as sink, new(sink, table.schema) as writer:
            writer.write_table(table)
    got = read_rows(DatasetSpec(path=str(tmp_path / "file.arrow"), format="text"))
    assert got.rows == _rows(tmp_path / "stream.arrow", "text") == table.to_pylist()
    assert got.fetch([2, 0])[1] == [f"{tmp_path / 'file.arrow'}: row 3", f"{tmp_path / 'file.arrow'}: row 1"]


# --- compressed files -------------------------------------------------------------------------------------------

COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_compressed_json_lines_read_as_the_plain_file_in_any_order(tmp_path: Path, kind: str) -> None:
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(BOM + b"\n" + _jsonl(ALPACA))  # a blank line: row 1 is on line 2
    packed = tmp_path / f"a.jsonl.{kind}"
    packed.write_bytes(COMPRESS[kind](plain.read_bytes()))
    want = read_rows(DatasetSpec(path=str(plain), format="alpaca")).fetch([2, 0, 2, 1])
    got = read_rows(DatasetSpec(path=str(packed), format="alpaca")).fetch([2, 0, 2, 1])  # backwards: reopened
    assert got[0] == want[0] == [ALPACA[2], ALPACA[0], ALPACA[2], ALPACA[1]]
    assert got[1] == [w.replace(str(plain), str(packed)) for w in want[1]]
    assert got[1][0] == f"{packed}: row 3 (line 4)"


def test_compressed_json_and_csv_read_as_the_plain_files(tmp_path: Path, csv_mode: str) -> None:
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps({"data": ALPACA}).encode()))
    assert _rows(tmp_path / "a.json.gz", field="data") == ALPACA
    (tmp_path / "b.json.bz2").write_bytes(bz2.compress(_jsonl(ALPACA)))  # JSON Lines under a .json name
    assert _rows(tmp_path / "b.json.bz2") == ALPACA
    text = "instruction,input,output\nq1,NA,a1\nq2,,a2\n"
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(BOM + text.encode()))
    (tmp_path / "c.csv.xz").write_bytes(lzma.compress(text.encode()))
    want = [{"instruction": "q1", "input": "NA", "output": "a1"}, {"instruction": "q2", "input": "", "output": "a2"}]
    assert _rows(tmp_path / "c.csv.gz") == _rows(tmp_path / "c.csv.xz") == want


def test_errors_in_compressed_files_name_the_same_line_and_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"instruction": "q", "output": "a"}\n\n{"instruction": \n'))
    with pytest.raises(UserError, match=r"bad.jsonl.gz:3: malformed JSON"):
        _rows(bad)
    typed = tmp_path / "typed.jsonl.gz"
    typed.write_bytes(gzip.compress(b'{"instruction": "q", "output": "a"}\n\n{"instruction": "q", "output": 7}\n'))
    with pytest.raises(UserError, match=r"typed.jsonl.gz: row 2 \(line 3\).*`output` must be a string"):
        build({"train": [{"path": str(typed), "format": "alpaca"}]}, tmp_path / "c")
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(_jsonl(ALPACA))[:-12])  # truncated
    with pytest.raises(UserError, match=r"broken.jsonl.gz: could not decompress it as gzip"):
        _rows(broken)
    (tmp_path / "t.parquet.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(UserError, match=r"gzip-compressed .parquet file is not read.*decompress it"):
        _rows(tmp_path / "t.parquet.gz", "text")


def test_a_compressed_build_equals_the_plain_one_on_two_processes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each forked process reads the compressed file from its own cursor; the cache key is the file's sha256."""
    monkeypatch.setattr(encode, "MIN_SHARD", 1)
    rows = [{"instruction": f"Add {i} and {i}.", "output": str(2 * i)} for i in range(40)]
    (tmp_path / "p.jsonl").write_bytes(_jsonl(rows))
    (tmp_path / "z.jsonl.gz").write_bytes(gzip.compress(_jsonl(rows)))
    plain = build({"train": [{"path": str(tmp_path / "p.jsonl"), "format": "alpaca", "samples": 50}]}, tmp_path / "a",
                  num_proc=2)
    packed = build({"train": [{"path": str(tmp_path / "z.jsonl.gz"), "format": "alpaca", "samples": 50}]},
                   tmp_path / "b", num_proc=2)
    assert plain[0] == packed[0]
    cfg = DataConfig(train=[{"path": str(tmp_path / "z.jsonl.gz"), "format": "alpaca"}])  # type: ignore[list-item]
    gz = tmp_path / "z.jsonl.gz"
    assert source_fingerprints(cfg) == {str(gz): {str(gz): file_sha256(gz)}}


def test_zstd_files_are_read_or_name_the_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "a.jsonl.zst"
    try:
        import zstandard

        f.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(ALPACA)))
        assert _rows(f) == ALPACA
    except ImportError:
        f.write_bytes(b"(a zstd frame would be here)")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # the package not installed
    monkeypatch.setitem(sys.modules, "compression", None)  # nor Python 3.14's compression.zstd
    with pytest.raises(UserError, match=r"a.jsonl.zst: reading .zst files needs the `zstandard` package.*pip install "
                                        r"zstandard"):
        check_exists([DatasetSpec(path=str(f), format="alpaca")])


# --- names, globs and per-entry statistics ----------------------------------------------------------------------

def test_an_existing_file_with_brackets_in_its_name_is_that_file_not_a_glob(tmp_path: Path) -> None:
    f = tmp_path / "alpaca[v2].jsonl"
    f.write_bytes(_jsonl(ALPACA))
    spec = DatasetSpec(path=str(f), format="alpaca")
    check_exists([spec])
    assert read_rows(spec).rows == ALPACA
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "a.jsonl").write_bytes(_jsonl(ALPACA[:1]))
    (tmp_path / "mix" / "b.jsonl").write_bytes(_jsonl(ALPACA[1:]))
    assert _rows(tmp_path / "mix" / "[ab].jsonl") == ALPACA  # still a glob where no such file exists


def test_entries_sharing_a_path_get_a_statistics_row_each_and_names_print_literally(tmp_path: Path) -> None:
    from rich.console import Console

    from tunekit.data.preview import stats_tables

    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "a.jsonl").write_bytes(_jsonl(ALPACA))
    f, glob = str(tmp_path / "mix" / "a.jsonl"), str(tmp_path / "mix" / "[ab].*")
    _, _, stats = build({"train": [{"path": f, "format": "alpaca", "system": "A"},
                                   {"path": f, "format": "alpaca", "system": "B", "samples": 5},
                                   {"path": glob, "format": "alpaca"}]}, tmp_path / "c")
    per = stats["train"]["datasets"]
    assert [(d["rows_in"], d["rows_out"], d["repeated"]) for d in per.values()] == [(3, 3, 0), (3, 5, 2), (3, 3, 0)]
    assert list(per) == [f"{f} (data.train[0])", f"{f} (data.train[1])", glob]
    console = Console(record=True, width=400)
    console.print(stats_tables({**stats, "cache": "built", "cache_dir": "x"})[0])
    shown = console.export_text()
    assert "mix/[ab].*" in shown and "a.jsonl (data.train[1])" in shown


# --- options that cannot apply ----------------------------------------------------------------------------------

def test_field_on_anything_but_a_json_object_file_is_an_error(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(_jsonl(ALPACA))
    lines_as_json = tmp_path / "b.json"
    lines_as_json.write_bytes(_jsonl(ALPACA))
    for path, what in ((jsonl, "a .jsonl file"), (lines_as_json, "JSON Lines")):
        spec = DatasetSpec(path=str(path), format="alpaca", field="data")
        with pytest.raises(UserError, match=rf"{path.name}: `field: data` is set.*{what}.*remove `field:`"):
            read_rows(spec)
    with pytest.raises(UserError, match=r"a.jsonl: `field: data` is set.*a .jsonl file"):  # tunekit validate
        check_exists([DatasetSpec(path=str(jsonl), format="alpaca", field="data")])
    with pytest.raises(UserError, match=r"hub:org/name: `field: data` is set.*a hub dataset"):
        check_exists([DatasetSpec(path="hub:org/name", format="alpaca", field="data")])


def test_split_on_a_saved_single_dataset_must_be_the_default_or_its_own(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict, NamedSplit

    Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "single"))
    Dataset.from_list(ALPACA, split=NamedSplit("test")).save_to_disk(str(tmp_path / "saved_test"))
    DatasetDict({"train_sft": Dataset.from_list(ALPACA)}).save_to_disk(str(tmp_path / "dd"))
    single = str(tmp_path / "single")
    assert len(read_rows(DatasetSpec(path=single, format="alpaca"))) == 3  # no split named: the whole dataset
    for check in (lambda s: read_rows(s), lambda s: check_exists([s])):  # the build and tunekit validate
        with pytest.raises(UserError, match=r"single: `split: test` is set, but the directory holds one Dataset.*"
                                            r"remove `split:`"):
            check(DatasetSpec(path=single, format="alpaca", split="test"))
        with pytest.raises(UserError, match=r"dd: no split `test`; found train_sft"):
            check(DatasetSpec(path=str(tmp_path / "dd"), format="alpaca", split="test"))
    spec = DatasetSpec(path=str(tmp_path / "saved_test"), format="alpaca", split="test")
    check_exists([spec])
    assert len(read_rows(spec)) == 3
    with pytest.raises(UserError, match=r"saved_test: `split: validation`.*saved by Dataset.save_to_disk as split "
                                        r"`test`"):
        check_exists([DatasetSpec(path=str(tmp_path / "saved_test"), format="alpaca", split="validation")])


def test_a_byte_order_mark_is_not_template_or_reward_text(tmp_path: Path) -> None:
    """A chat template or reward file saved with a BOM (Windows editors) rendered U+FEFF in front of every example
    (trained as text) / failed to parse as Python."""
    from tunekit.data.templates import load_template
    from tunekit.trainers.reft_schema import check_reward_signature

    (tmp_path / "t.jinja").write_bytes(b"\xef\xbb\xbf{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert load_template(str(tmp_path / "t.jinja")).startswith("{% for")
    (tmp_path / "r.py").write_bytes(b"\xef\xbb\xbfdef reward(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    check_reward_signature(tmp_path / "r.py", "reward")
