"""Failure records (srnet_core/outcome.py): a pair's failure as a recorded outcome."""

import json

import pytest

from srnet_core.errors import InputError
from srnet_core.h5io import read_field, read_prepared, read_prepared_attrs
from srnet_core.outcome import failure_of, read_failure, usable
from srnet_core.record import failure_recorded, pass_on, write_failure


def test_records_of_every_output_kind_and_readers_refuse_them(tmp_path):
    outputs = [tmp_path / n for n in ("p.h5", "t.json", "w.csv", "o.png", "s.tif")]
    write_failure(outputs, "/d/m.jpg: corrupt or truncated image", "prepare", full_width=1164, full_height=None)
    assert read_failure(outputs[0]) == {"reason": "/d/m.jpg: corrupt or truncated image", "stage": "prepare",
                                        "full_width": 1164}
    assert json.loads(outputs[1].read_text())["failed"] == "/d/m.jpg: corrupt or truncated image"
    assert outputs[2].read_text() == ",X,Y\n"                 # no warped points: ANHIR's missing result
    import pyvips
    for card in outputs[3:]:
        assert pyvips.Image.new_from_file(str(card)).width > 100
    for reader in (read_prepared, read_prepared_attrs, read_field):
        with pytest.raises(InputError, match=r"holds no result: prepare failed \(/d/m.jpg: corrupt"):
            reader(outputs[0])
    assert failure_of(None, "", tmp_path / "absent.h5", outputs[1])["stage"] == "prepare"
    assert not list(tmp_path.glob("*.tmp-*"))


def test_stages_pass_a_failure_on_and_learners_leave_it_out(tmp_path, caplog):
    record, good = tmp_path / "bad.h5", tmp_path / "good.json"
    write_failure([record], "m.jpg: no tissue found", "prepare")
    good.write_text(json.dumps({"matrix": [[1, 0, 0], [0, 1, 0]]}))
    assert not pass_on([good, None], [tmp_path / "x.json"], "affine")
    assert pass_on([good, record], [tmp_path / "a.json", tmp_path / "f.h5"], "affine")
    assert read_failure(tmp_path / "a.json") == {"reason": "m.jpg: no tissue found", "stage": "prepare"}
    assert read_failure(tmp_path / "f.h5")["stage"] == "prepare"     # the stage that failed, passed on
    with caplog.at_level("WARNING"):
        kept = usable([{"f": good}, {"f": record}], "training srnet", files=lambda p: list(p.values()),
                      name=lambda p: p["f"].name)
    assert kept == [{"f": good}] and "training srnet: leaving out bad.h5 (failed at prepare)" in caplog.text
    with pytest.raises(InputError, match="every input failed"):
        usable([record], "codebook")


def test_bad_input_becomes_the_outcome_other_errors_still_fail(tmp_path, caplog):
    out = tmp_path / "a.json"
    with caplog.at_level("ERROR"):
        with failure_recorded([out], "affine"):
            raise InputError("p.h5", "no tissue in the prepared image")
    assert read_failure(out)["reason"] == "p.h5: no tissue in the prepared image"
    assert caplog.text.count("bad input: p.h5: no tissue") == 1
    with pytest.raises(ZeroDivisionError):
        with failure_recorded([tmp_path / "b.json"], "affine"):
            1 / 0
    assert not (tmp_path / "b.json").exists()
