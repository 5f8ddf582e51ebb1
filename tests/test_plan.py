"""The export plan: status checks, which files an instance wrote, their order, and clear failures."""

from __future__ import annotations

import pytest

from pipeline.plan import (
    JobInstance,
    NotThereYet,
    PlanError,
    check_done,
    file_patterns,
    natural_key,
    plan_export,
)
from pipeline.settings import SettingError
from pipeline.sources import SourceFileNotFound, UnsafeName, open_source
from tests.fake_alma import make_instance

STEM = "BIBS_nightly_8816243980004146"


def folder(tmp_path, names):
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    return open_source(f"file://{tmp_path}")


def test_instance_parsing_takes_job_id_from_job_info_not_the_m0_link():
    data = make_instance("S5139276810004146", "8816243980004146", stem=STEM)
    assert data["link"].startswith("/almaws/v1/conf/jobs/M0/")
    instance = JobInstance.from_api(data)
    assert instance.job_id == "S5139276810004146"
    assert instance.instance_id == "8816243980004146"
    assert instance.stem == STEM
    assert instance.progress == 101.3
    assert instance.counters["c.jobs.bibExport.exported"] == "3"  # string counters stay strings
    assert instance.status == "COMPLETED_SUCCESS"


def test_instance_parsing_survives_missing_parts():
    instance = JobInstance.from_api({"id": "1", "link": "/almaws/v1/conf/jobs/S9/instances/1",
                                     "counter": {"type": {"value": "x"}, "value": 5}})
    assert (instance.job_id, instance.stem, instance.counters) == ("S9", None, {"x": "5"})
    with pytest.raises(PlanError, match="no id"):
        JobInstance.from_api({"status": {"value": "COMPLETED_SUCCESS"}})


def test_split_files_in_numeric_order(tmp_path):
    names = [f"{STEM}_{n}.xml" for n in (10, 2, 1, 11, 3)]
    source = folder(tmp_path, names + [f"{STEM}0_1.xml", "BIBS_other_1.xml", f"x{STEM}_1.xml"])
    plan = plan_export(make_instance("S1", "I1", stem=STEM), source, statuses=["COMPLETED_SUCCESS"])
    assert [f.name for f in plan.files] == [f"{STEM}_{n}.xml" for n in (1, 2, 3, 10, 11)]
    assert plan.to_dict()["files"][0] == {"name": f"{STEM}_1.xml", "size": len(f"{STEM}_1.xml")}
    assert plan.to_dict()["job_id"] == "S1"


def test_natural_key_orders_digits_by_value():
    assert sorted(["a_10", "a_2", "a_1", "a_02b"], key=natural_key) == ["a_1", "a_2", "a_02b", "a_10"]


def test_tar_gz_export(tmp_path):
    source = folder(tmp_path, [f"{STEM}.tar.gz", f"{STEM}x.tar.gz", "unrelated.tar.gz"])
    plan = plan_export(make_instance("S1", "I1", stem=STEM), source, statuses=["COMPLETED_SUCCESS"])
    assert [f.name for f in plan.files] == [f"{STEM}.tar.gz"]


def test_publishing_pattern_with_placeholders(tmp_path):
    names = ["PRIMO_2026_I7_new_2.xml", "PRIMO_2026_I7_new_1.xml", "PRIMO_2026_I7_delete_1.xml",
             "PRIMO_2026_I8_new_1.xml"]
    source = folder(tmp_path, names)
    instance = make_instance("S1", "I7", stem=None)
    plan = plan_export(instance, source, pattern="PRIMO_*_{instance_id}_new_*.xml", statuses=["COMPLETED_SUCCESS"])
    assert [f.name for f in plan.files] == ["PRIMO_2026_I7_new_1.xml", "PRIMO_2026_I7_new_2.xml"]
    assert plan.patterns == ["PRIMO_*_I7_new_*.xml"]


def test_pattern_from_setting_and_bad_patterns(tmp_path):
    source = folder(tmp_path, [f"{STEM}_new.xml.tar.gz", f"{STEM}_1.xml"])
    env = {"EXPORT_FILE_PATTERN": "{stem}_new*.xml.tar.gz", "EXPORT_JOB_STATUSES": "COMPLETED_SUCCESS"}
    plan = plan_export(make_instance("S1", "I1", stem=STEM), source, environ=env)
    assert [f.name for f in plan.files] == [f"{STEM}_new.xml.tar.gz"]
    instance = JobInstance.from_api(make_instance("S1", "I1", stem=STEM))
    with pytest.raises(SettingError, match="EXPORT_FILE_PATTERN: unknown placeholder {institution}"):
        file_patterns(instance, "{institution}_*")
    with pytest.raises(SettingError, match="EXPORT_FILE_PATTERN: must be a file-name glob without folders"):
        file_patterns(instance, "../{stem}_*")


def test_glob_characters_in_the_stem_are_literal():
    instance = JobInstance.from_api(make_instance("S1", "I1", stem="BIBS[1]*"))
    assert file_patterns(instance) == ["BIBS[[]1][*]_*", "BIBS[[]1][*].*"]


def test_no_files_yet_is_retryable_then_a_clear_final_failure(tmp_path):
    source = folder(tmp_path, ["something_else.xml"])
    instance = make_instance("S1", "I1", stem=STEM)
    with pytest.raises(NotThereYet, match="Alma may still be writing"):
        plan_export(instance, source, statuses=["COMPLETED_SUCCESS"])
    with pytest.raises(PlanError) as err:
        plan_export(instance, source, statuses=["COMPLETED_SUCCESS"], last_attempt=True)
    message = str(err.value)
    assert STEM in message and str(tmp_path) in message  # names the stem and where it looked


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        ("RUNNING", NotThereYet, "not finished yet"),
        ("FINALIZING", NotThereYet, "not finished yet"),
        ("COMPLETED_FAILED", PlanError, "ended with status COMPLETED_FAILED"),
        ("SYSTEM_ABORTED", PlanError, "ended with status SYSTEM_ABORTED"),
    ],
)
def test_job_status_decides_whether_it_is_done(status, error, text):
    instance = JobInstance.from_api(make_instance("S1", "I1", stem=STEM, status=status))
    with pytest.raises(error, match=text):
        check_done(instance, environ={})


def test_both_warning_spellings_are_accepted_by_default():
    for status in ("COMPLETED_WARNING", "COMPLETED_WARNINGS", "COMPLETED_SUCCESS"):
        check_done(JobInstance.from_api(make_instance("S1", "I1", stem=STEM, status=status)), environ={})


def test_missing_stem_counter_is_a_clear_failure(tmp_path):
    with pytest.raises(PlanError, match="no c.jobs.bibExport.link counter.*EXPORT_FILE_PATTERN"):
        plan_export(make_instance("S1", "I1", stem=None), folder(tmp_path, []), statuses=["COMPLETED_SUCCESS"])


@pytest.mark.parametrize("stem", ["../x", "/etc/passwd", "a/b", "..", "a\\b"])
def test_hostile_stems_are_refused(tmp_path, stem):
    with pytest.raises(PlanError, match="is a path, not a file name"):
        plan_export(make_instance("S1", "I1", stem=stem), folder(tmp_path, ["x_1.xml"]),
                    statuses=["COMPLETED_SUCCESS"])


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b"])
def test_hostile_file_names_cannot_be_opened(tmp_path, name):
    (tmp_path / "exports").mkdir()
    (tmp_path / "x").write_text("outside")
    source = open_source(f"file://{tmp_path / 'exports'}")
    with pytest.raises(UnsafeName):
        source.open(name)


def test_file_that_disappears_between_plan_and_open(tmp_path):
    source = folder(tmp_path, [f"{STEM}_1.xml", f"{STEM}_2.xml"])
    plan = plan_export(make_instance("S1", "I1", stem=STEM), source, statuses=["COMPLETED_SUCCESS"])
    (tmp_path / f"{STEM}_2.xml").unlink()
    with source.open(plan.files[0].name) as fh:
        assert fh.read() == f"{STEM}_1.xml".encode()
    with pytest.raises(SourceFileNotFound, match=f"{STEM}_2.xml"):
        source.open(plan.files[1].name)
