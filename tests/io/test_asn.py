"""Level-3 associations: reading, writing, and inputs given as files or globs."""

import json

import pytest

from image3_dask.errors import InputError
from image3_dask.io.asn import load_association, make_association, resolve_inputs, write_association


def test_round_trip_relative_members(tmp_path):
    (tmp_path / "data").mkdir()
    files = [tmp_path / "data" / f"jw_{i}_cal.fits" for i in range(3)]
    asn = make_association(files, "myprod", relative_to=tmp_path)
    path = write_association(asn, tmp_path / "asn.json")
    raw = json.loads(path.read_text())
    assert raw["asn_type"] == "image3" and raw["products"][0]["members"][0]["expname"] == "data/jw_0_cal.fits"
    back = load_association(path)
    assert back.product_name == "myprod" and back.asn_id == "a3001"
    assert back.members == [f.resolve() for f in files]


def test_non_science_members_are_ignored_with_a_warning(tmp_path, caplog):
    asn = make_association(["a_cal.fits", "b_cal.fits"], "p")
    asn["products"][0]["members"][1]["exptype"] = "background"
    path = write_association(asn, tmp_path / "asn.json")
    back = load_association(path)
    assert [m.name for m in back.members] == ["a_cal.fits"]
    assert "ignoring background member b_cal.fits" in caplog.text


@pytest.mark.parametrize(
    "content,message",
    [
        ("not json", "not a valid association JSON"),
        ('{"asn_type": "spec3", "products": [{"members": []}]}', "asn_type is 'spec3'"),
        ('{"asn_type": "image3", "products": [{"members": []}]}', "no science member"),
        ('{"asn_type": "image3"}', "no 'products'"),
    ],
)
def test_bad_associations_name_the_file(tmp_path, content, message):
    p = tmp_path / "x_asn.json"
    p.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        load_association(p)
    assert str(p) in str(err.value)


def test_glob_and_file_list(tmp_path):
    for i in range(3):
        (tmp_path / f"e{i}_cal.fits").write_bytes(b"")
    asn = resolve_inputs(str(tmp_path / "*_cal.fits"), product_name="prod")
    assert len(asn.members) == 3 and asn.product_name == "prod"
    with pytest.raises(InputError, match="no file matches"):
        resolve_inputs(str(tmp_path / "*_nothing.fits"))
