"""`evaluate` and `check_extraction` return dataclasses that still read as the old dicts."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest

from fsm_probe.extraction import FSMExtractor, check_extraction, save_extraction
from fsm_probe.extraction.checks import ExtractionReport
from fsm_probe.models import predict_logits
from fsm_probe.models.compiled import compile_rnn
from fsm_probe.tasks import get_task
from fsm_probe.tasks.datasets import eval_set
from fsm_probe.training.evaluation import (
    EvaluationReport,
    LengthAccuracy,
    accuracy_report,
    evaluate,
)

# the old dict's keys, in its order, with a task (purity and interchange on a recurrent state)
WITH_TASK = [
    "method", "site", "n_states", "n_states_raw", "conflicts_resolved", "validation_fidelity",
    "segment_length", "capped", "cap", "geometry", "fidelity", "fidelity_by_length", "accuracy",
    "accuracy_by_length", "equivalent_to_task", "counterexample", "state_mapping", "n_states_task",
    "empty_word_agrees", "purity", "nmi", "interchange_accuracy", "interchange", "finite_state",
    "finite_state_evidence", "curve", "seconds",
]
NO_TASK_ONLY = {"n_states_task", "empty_word_agrees", "purity", "nmi"}


@pytest.fixture(scope="module")
def tomita6():
    task = get_task("tomita6")
    return task, compile_rnn(task.automaton)


@pytest.fixture(scope="module")
def fitted(tomita6):
    task, model = tomita6
    return FSMExtractor().fit(model, task)


def _mapping_reads(result: dict, old: dict) -> None:
    """Every read of the old dict gives the same answer on `result`."""
    assert isinstance(result, dict) and type(result.to_dict()) is dict
    assert result.to_dict() == old and result == old and old == result
    assert list(result) == list(old) and list(result.keys()) == list(old.keys())
    assert list(result.items()) == list(old.items()) and len(result) == len(old)
    assert {**result} == old and dict(result) == old
    for k in old:
        assert k in result and result.get(k) == old[k] and result[k] == old[k]
    assert "no such key" not in result and result.get("no such key", 7) == 7
    assert json.dumps(result) == json.dumps(old) == json.dumps(result.to_dict())
    assert json.dumps(result, indent=2, sort_keys=True) == json.dumps(old, indent=2, sort_keys=True)
    assert pickle.loads(pickle.dumps(result)) == old and copy.deepcopy(result) == old
    assert type(pickle.loads(pickle.dumps(result))) is type(result)
    result.to_dict().clear()  # a fresh dict each time
    assert len(result) == len(old)


def _read_only(result: dict, key) -> None:
    with pytest.raises(TypeError, match="read-only"):
        result[key] = 1
    with pytest.raises(TypeError, match="read-only"):
        result.update({key: 1})
    with pytest.raises(TypeError, match="read-only"):
        result.pop(key)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.seconds = 1.0


def test_evaluation_report_fields_dict_and_json(tomita6) -> None:
    task, model = tomita6
    report = evaluate(model, task, [5, 20], n=32)
    assert isinstance(report, EvaluationReport) and report.lengths == [5, 20]
    old = {}
    for length in (5, 20):
        batch = eval_set(task, length, n=32, seed=12345)
        old[length] = accuracy_report(predict_logits(model, batch.tokens).argmax(-1).numpy(), batch.labels)
        r = report[length]
        assert isinstance(r, LengthAccuracy) and r is report.by_length[length]
        assert (r.accuracy, r.final_accuracy, r.sequence_accuracy) == tuple(old[length].values())
        _mapping_reads(r, old[length])
    _mapping_reads(report, old)
    assert all(type(v) is dict for v in report.to_dict().values())
    # how the trainer's log, `fsm-probe eval --json` and the demo embed it
    assert json.dumps({str(k): v for k, v in report.items()}) == json.dumps({str(k): v for k, v in old.items()})
    assert EvaluationReport.from_dict(json.loads(json.dumps(report))) == report
    assert report[5].replace(accuracy=0.5).to_dict() == {**old[5], "accuracy": 0.5}
    _read_only(report, 5)


def test_extraction_report_fields_dict_and_json(tomita6, fitted, tmp_path) -> None:
    task, model = tomita6
    report = check_extraction(model, fitted, task, lengths=(20, 40), n=50)
    assert isinstance(report, ExtractionReport)
    old = report.to_dict()
    assert list(old) == WITH_TASK
    for k, v in old.items():
        assert getattr(report, k) == v
    assert report.fidelity == 1.0 and report.equivalent_to_task is True and report.counter_machine is None
    assert report.fidelity_by_length["40"]["per_position"] == 1.0 and report.interchange["n_pairs"] > 0
    _mapping_reads(report, old)
    assert ExtractionReport.from_dict(old) == report
    assert report.replace(seconds=-1.0) == {**old, "seconds": -1.0}
    _read_only(report, "seconds")
    paths = save_extraction(tmp_path / "a", fitted, report)
    save_extraction(tmp_path / "b", fitted, old)  # a plain dict, as before
    assert paths["extraction.json"].read_bytes() == (tmp_path / "b" / "extraction.json").read_bytes()
    assert json.loads(paths["extraction.json"].read_text()) == json.loads(json.dumps(old))


def test_extraction_report_without_task_leaves_keys_out(tomita6) -> None:
    _, model = tomita6
    ex = FSMExtractor().fit(model)
    report = check_extraction(model, ex, lengths=(20,), n=50)
    assert list(report) == [k for k in WITH_TASK if k not in NO_TASK_ONLY]
    assert report.accuracy is None and report.equivalent_to_task is None and report.purity is None
    assert "purity" not in report and report.get("n_states_task") is None
    _mapping_reads(report, report.to_dict())
