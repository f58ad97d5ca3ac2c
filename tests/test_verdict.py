import pytest

from fsm_probe.errors import InputError
from fsm_probe.training.verdict import length_verdict


def report(**acc):
    return {int(k[1:]): {"final_accuracy": v, "accuracy": v} for k, v in acc.items()}


def test_generalises():
    v = length_verdict(report(L20=1.0, L40=0.995, L100=1.0, L400=0.999), 40)
    assert (v.status, v.longest_ok, v.breaks_at_length) == ("generalises", 400, None)
    assert v.text == "learned; generalises to 400"


def test_fails_from_the_first_length_below_threshold():
    v = length_verdict(report(L40=1.0, L41=0.995, L100=0.6, L200=1.0), 40)
    assert (v.status, v.longest_ok, v.breaks_at_length) == ("fails_beyond", 41, 100)
    assert v.text == "learned up to 41; fails from 100"
    assert v.to_dict()["learned"] is True


def test_not_learned_is_read_at_the_training_length_only():
    v = length_verdict(report(L10=1.0, L40=0.98, L400=1.0), 40)
    assert v.status == "not_learned" and not v.learned
    assert v.text.startswith("did not learn in distribution (0.980 at its training length 40")


def test_the_training_length_must_be_measured():
    with pytest.raises(InputError, match="training length 40"):
        length_verdict(report(L10=1.0, L100=1.0), 40)


def test_nothing_longer_tested_is_not_called_generalising():
    v = length_verdict(report(L8=1.0, L16=1.0), 16)
    assert v.status == "untested_beyond" and v.learned and v.breaks_at_length is None
    assert v.text == "learned up to 16; no longer length tested"
