"""Campaign files: every error names its field before any work starts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hts.cli import app
from hts.spec import CampaignError, KeepRule, load_campaign, parse_campaign
from tests.conftest import REPO, lj_campaign, write_campaign


def _error(data: dict) -> str:
    with pytest.raises(CampaignError) as info:
        parse_campaign(data, source="c.yaml")
    return str(info.value)


def test_shipped_campaigns_validate():
    from hts.distill.config import load_distill

    for path in (REPO / "workflows").glob("*.yaml"):
        if path.name.startswith("distill"):
            d = load_distill(path)
            assert d.load_campaign().name
            continue
        c = load_campaign(path)
        assert c.name
        assert len(c.content_hash()) == 16
        if c.stages.prefilter.distillation is not None:  # the shipped student's report answers
            from hts.campaign import preflight

            preflight(c)


def test_demo_ships_its_student_and_validates():
    """`hts run` with no argument must work on a fresh checkout: the student and its report ship."""
    from hts.campaign import preflight, resolve
    from hts.cli import DEMO
    from hts.models import load_model

    c = load_campaign(DEMO)
    preflight(c)
    stage = resolve(c).stages["prefilter"]
    assert stage.keep.terms[0][0] == "e_above_hull"
    model = load_model(stage.model)
    assert model.name == "student" and model.unsupported([11, 17]) is None
    assert c.stages.prefilter.direct  # the shipped student is a direct one
    from hts.candidates.sampling import space_size

    assert space_size(c) >= 1000


def test_embedded_default_is_the_demo():
    from hts.cli import DEMO

    assert DEMO.resolve() == (REPO / "workflows" / "demo.yaml").resolve()
    c = load_campaign(DEMO)
    assert c.stages.prefilter.model.name == "student"
    assert c.stages.rescore.model.name == "sevennet-0"


def test_unknown_field_is_named(tmp_path):
    data = lj_campaign(tmp_path)
    data["stages"]["prefilter"]["relax"] = {"fmax": 0.05, "steps": 10}
    msg = _error(data)
    assert "stages.prefilter.relax.steps" in msg and "unknown field" in msg


def test_wrong_type_is_named(tmp_path):
    msg = _error(lj_campaign(tmp_path, chunk_size="many"))
    assert "chunk_size" in msg and "'many'" in msg


def test_out_of_range_is_named(tmp_path):
    data = lj_campaign(tmp_path)
    data["stages"]["prefilter"]["relax"] = {"fmax": -1}
    msg = _error(data)
    assert "stages.prefilter.relax.fmax" in msg and "greater than 0" in msg


def test_all_problems_reported_at_once(tmp_path):
    data = lj_campaign(tmp_path, chunk_size=0, seed=-1)
    msg = _error(data)
    assert "chunk_size" in msg and "seed" in msg and "2 problem(s)" in msg


def test_bad_element_and_prototype(tmp_path):
    data = lj_campaign(tmp_path)
    data["candidates"]["elements"]["A"] = ["Li", "Xx"]
    assert "'Xx' is not a chemical element" in _error(data)
    data = lj_campaign(tmp_path)
    data["candidates"]["prototypes"] = ["rocksalt", "nosuch"]
    assert "unknown prototype 'nosuch'" in _error(data)


def test_missing_role_elements(tmp_path):
    data = lj_campaign(tmp_path)
    data["candidates"]["prototypes"] = ["perovskite"]
    assert "role 'B'" in _error(data)


def test_mace_needs_path(tmp_path):
    data = lj_campaign(tmp_path)
    data["stages"]["prefilter"]["model"] = {"name": "mace"}
    assert "path: required" in _error(data)


def test_keep_rule():
    rule = KeepRule.parse("e_above_hull <= 0.1 and converged")
    assert rule({"e_above_hull": 0.05, "converged": True})
    assert not rule({"e_above_hull": 0.05, "converged": False})
    assert not rule({"e_above_hull": float("nan"), "converged": True})
    with pytest.raises(ValueError, match="unknown field 'ehull'"):
        KeepRule.parse("ehull < 0.1")


def test_bad_keep_rule_is_named(tmp_path):
    data = lj_campaign(tmp_path)
    data["stages"]["prefilter"]["keep"] = "e_above_hull << 1"
    assert "stages.prefilter.keep" in _error(data)


def test_hash_ignores_site_and_store(tmp_path):
    a = parse_campaign(lj_campaign(tmp_path))
    b = parse_campaign(lj_campaign(tmp_path, site="workstation", store="elsewhere.zarr"))
    c = parse_campaign(lj_campaign(tmp_path, seed=3))
    assert a.content_hash() == b.content_hash() != c.content_hash()


def test_hash_ignores_how_batches_are_cut(tmp_path):
    a = parse_campaign(lj_campaign(tmp_path))
    data = lj_campaign(tmp_path)
    data["stages"]["prefilter"]["model"]["batch_atoms"] = 4096
    b = parse_campaign(data)
    assert b.stages.prefilter.model.batch_atoms == 4096
    assert a.content_hash() == b.content_hash()
    data["stages"]["prefilter"]["model"]["batch_atoms"] = 0
    assert "stages.prefilter.model.batch_atoms" in _error(data)


def test_validate_command(tmp_path):
    runner = CliRunner()
    good = write_campaign(tmp_path, lj_campaign(tmp_path))
    res = runner.invoke(app, ["validate", str(good)])
    assert res.exit_code == 0, res.output
    bad = write_campaign(tmp_path, lj_campaign(tmp_path, chunk_size=-5, colour="blue"), "bad.yaml")
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2
    assert "chunk_size" in res.output and "colour" in res.output


def test_empty_file_source_fails_before_work(tmp_path):
    (tmp_path / "empty").mkdir()
    data = lj_campaign(tmp_path, candidates={"kind": "files", "path": "empty"})
    path = write_campaign(tmp_path, data)
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2
    assert "candidates.path" in res.output and "matches no" in res.output


def test_unreadable_campaign_file(tmp_path):
    with pytest.raises(CampaignError, match="cannot read campaign file"):
        load_campaign(tmp_path / "missing.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(CampaignError, match="not valid YAML"):
        load_campaign(p)


def test_validate_stage_fields_are_checked(tmp_path):
    data = lj_campaign(tmp_path)
    data["stages"]["validate"] = {"code": "abinit", "gpaw": {"ecut": 50}, "top": 0}
    msg = _error(data)
    assert "stages.validate.code" in msg and "'gpaw' or 'vasp'" in msg
    assert "stages.validate.gpaw.ecut" in msg and "stages.validate.top" in msg
    data["stages"]["validate"] = {"vasp": {"incar": {}}}
    assert "stages.validate.vasp.incar: unknown field" in _error(data)


def test_validate_stage_round_trips_through_the_store_yaml(tmp_path):
    import yaml

    data = lj_campaign(tmp_path)
    data["stages"]["validate"] = {"code": "vasp", "top": 5, "keep": "e_above_hull <= 0.1"}
    c = parse_campaign(data)
    assert c.stages.names() == ["prefilter", "validate"]
    assert c.stages.get("validate").top == 5
    dumped = yaml.safe_load(yaml.safe_dump(c.model_dump(mode="json", exclude={"base_dir"})))
    assert "validate" in dumped["stages"] and "validate_" not in dumped["stages"]
    again = parse_campaign(dumped)
    assert again.content_hash() == c.content_hash()
    data["stages"]["validate"]["top"] = 6
    assert parse_campaign(data).content_hash() != c.content_hash()


def _full_campaign(tmp_path) -> dict:
    data = lj_campaign(tmp_path)
    data["stages"]["rescore"] = {"model": {"name": "emt"}, "keep": "e_above_hull <= 0.05"}
    data["stages"]["validate"] = {"code": "gpaw", "workflow": "static", "top": 1}
    return data


# (path in the campaign file, another value, does it change results?)
_FIELDS = [
    ("site", "workstation", False),
    ("store", "elsewhere.zarr", False),
    ("description", "notes", False),
    ("limits.max_in_flight", 7, False),
    ("limits.task_retries", 3, False),
    ("stages.prefilter.resource", "cpu", False),
    ("stages.prefilter.model.device", "cpu", False),
    ("stages.prefilter.model.threads", 8, False),
    ("stages.prefilter.model.batch_size", 256, False),
    ("stages.prefilter.model.batch_atoms", 4096, False),
    ("stages.rescore.model.threads", 4, False),
    ("stages.rescore.model.device", "cuda", False),
    ("stages.validate.ranks", 64, False),
    ("stages.validate.walltime_s", 86400, False),
    ("stages.validate.resource", "cpu", False),
    ("seed", 3, True),
    ("chunk_size", 5, True),
    ("limits.max_atoms", 12, True),
    ("stages.prefilter.model.name", "emt", True),
    ("stages.prefilter.model.dtype", "float32", True),
    ("stages.prefilter.relax.fmax", 0.01, True),
    ("stages.prefilter.relax.pressure_tol", 0.5, True),
    ("stages.rescore.relax.pressure_tol", 0.1, True),
    ("stages.prefilter.keep", "e_above_hull <= 0.2", True),
    ("stages.rescore.model.name", "lennard-jones", True),
    ("stages.validate.top", 5, True),
    ("stages.validate.retries", 0, True),
]


@pytest.mark.parametrize(("path", "value", "changes"), _FIELDS, ids=[f[0] for f in _FIELDS])
def test_hash_covers_what_changes_results_and_nothing_else(tmp_path, path, value, changes):
    """A store moves between machines (laptop → GPU node) and resumes; changed science is refused."""
    base = _full_campaign(tmp_path)
    data = _full_campaign(tmp_path)
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    a, b = parse_campaign(base), parse_campaign(data)
    assert (a.content_hash() != b.content_hash()) == changes


def test_a_store_hashed_by_an_older_hts_is_resumed_and_relabelled(tmp_path):
    """hts 2026.11 hashed devices, threads, batch sizes: its stores still resume, and take the new hash."""
    from hts.campaign import open_store, results_hash
    from hts.store import Store, StoreReader

    c = parse_campaign(_full_campaign(tmp_path))
    old = results_hash(c, legacy=True)
    assert old != results_hash(c)
    Store.open(
        c.store, campaign_name=c.name, campaign_hash=old, campaign_yaml="", stages=c.stages.names()
    ).close()
    open_store(c).close()
    assert StoreReader(c.store).attrs["campaign_hash"] == results_hash(c)


def test_fields_added_since_keep_the_hash_of_a_campaign_that_does_not_use_them(tmp_path):
    """Its store, written before they existed, still resumes (hashes taken before they were added)."""
    c = parse_campaign(_full_campaign(tmp_path))
    assert c.content_hash() == "1e91432677dfebf8"
    assert c.legacy_hash() == "fe6d5b1981a2e941"


def _with_model(tmp_path, model: dict, relax: dict | None = None) -> dict:
    data = _full_campaign(tmp_path)
    data["stages"]["rescore"]["model"] = model
    if relax is not None:
        data["stages"]["rescore"]["relax"] = relax
    return data


def test_an_ase_model_names_its_calculator_factory(tmp_path):
    emt = {"name": "ase", "calculator": "ase.calculators.emt:EMT"}
    c = parse_campaign(_with_model(tmp_path, emt))
    assert c.stages.rescore.model.calculator == "ase.calculators.emt:EMT"
    assert c.stages.rescore.model.kwargs == {} and c.stages.rescore.model.elements is None
    lj = {
        "name": "ase",
        "calculator": "ase.calculators.lj:LennardJones",
        "kwargs": {"sigma": 2.3, "epsilon": 0.05},
        "elements": ["Cu", "Au"],
    }
    d = parse_campaign(_with_model(tmp_path, lj))
    assert d.stages.rescore.model.kwargs == {"sigma": 2.3, "epsilon": 0.05}
    # which calculator, its kwargs and its elements change results
    hashes = {c.content_hash(), d.content_hash()}
    for change in ({"kwargs": {"sigma": 2.4, "epsilon": 0.05}}, {"elements": ["Cu"]}):
        hashes.add(parse_campaign(_with_model(tmp_path, {**lj, **change})).content_hash())
    assert len(hashes) == 4


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"name": "ase"}, "stages.rescore.model.calculator: required for name 'ase'"),
        (
            {"name": "ase", "calculator": "ase.calculators.emt.EMT"},
            "stages.rescore.model.calculator: 'ase.calculators.emt.EMT' is not "
            "'package.module:factory'",
        ),
        (
            {"name": "ase", "calculator": "ase calculators:EMT"},
            "is not 'package.module:factory'",
        ),
        (
            {"name": "emt", "calculator": "ase.calculators.emt:EMT"},
            "stages.rescore.model.calculator: only used with name 'ase', not 'emt'",
        ),
        (
            {"name": "emt", "kwargs": {"a": 1}},
            "stages.rescore.model.kwargs: only used with name 'ase'",
        ),
        (
            {"name": "ase", "calculator": "a.b:c", "kwargs": {"not a name": 1}},
            "stages.rescore.model.kwargs: 'not a name' is not a keyword argument name",
        ),
        (
            {"name": "ase", "calculator": "a.b:c", "elements": ["Cu", "Qq"]},
            "stages.rescore.model.elements: 'Qq' is not a chemical element",
        ),
        (
            {"name": "ase", "calculator": "a.b:c", "elements": []},
            "stages.rescore.model.elements: empty",
        ),
        (
            {"name": "chgnet", "elements": ["Cu"]},
            "stages.rescore.model.elements: only used with name",
        ),
        (
            {"name": "ase", "calculator": "a.b:c", "device": "cuda"},
            "device: not used with name 'ase'",
        ),
        (
            {"name": "ase", "calculator": "a.b:c", "path": "m.model"},
            "path: only used with name 'mace'",
        ),
    ],
)
def test_bad_ase_model_sections_are_named(tmp_path, model, words):
    assert words in " ".join(_error(_with_model(tmp_path, model)).split())


def test_pressure_tol(tmp_path):
    data = _full_campaign(tmp_path)
    assert parse_campaign(data).stages.prefilter.relax.pressure_tol is None
    data["stages"]["prefilter"]["relax"] = {"pressure_tol": 0.5}
    assert parse_campaign(data).stages.prefilter.relax.pressure_tol == 0.5
    for bad in (0, -1.0, "high"):
        data["stages"]["prefilter"]["relax"] = {"pressure_tol": bad}
        assert "stages.prefilter.relax.pressure_tol" in _error(data)
    data["stages"]["prefilter"]["relax"] = {"pressure_tol": 0.5, "cell": False}
    assert "pressure_tol: only with cell: true" in _error(data)
