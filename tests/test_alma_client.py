"""The Alma client against a fake Alma API speaking the documented wire formats over real HTTP."""

from __future__ import annotations

import logging

import pytest

from pipeline.alma import AlmaClient, AlmaError, base_url_from_settings, parse_error_body
from pipeline.settings import SettingError
from tests.fake_alma import FakeAlma, error_body

KEY = "l8xx-secret-test-key"


@pytest.fixture(scope="module")
def alma():
    with FakeAlma(api_key=KEY, slow_seconds=2.0) as server:
        server.add_instance("S123", "I1", stem="BIBS_nightly_I1")
        yield server


@pytest.fixture
def fresh(alma):
    alma.calls.clear()
    alma._faults.clear()
    return alma


def client(alma, **kwargs) -> AlmaClient:
    options = {"timeout": 5, "backoff": 0.01, "backoff_cap": 0.05, "max_attempts": 4, "max_total": 30}
    options.update(kwargs)
    return AlmaClient(alma.url, KEY, **options)


def test_gets_instance_with_auth_header_and_real_shape(fresh):
    with client(fresh) as c:
        data = c.get_job_instance("S123", "I1")
    assert data["counter"][0]["value"] == "BIBS_nightly_I1"
    assert data["progress"] == 101.3
    call = fresh.calls[-1]
    assert call.path == "/almaws/v1/conf/jobs/S123/instances/I1"
    assert call.headers["Authorization"] == f"apikey {KEY}"
    assert call.headers["Accept"] == "application/json"


def test_remaining_quota_logged_at_debug_and_key_never_logged(fresh, caplog):
    caplog.set_level(logging.DEBUG)
    fresh.fail_next("per_second")
    with client(fresh) as c:
        c.get_job_instance("S123", "I1")
        assert c.remaining == fresh.remaining
    assert any("x-exl-api-remaining" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert all(KEY not in r.getMessage() for r in caplog.records)


def test_per_second_threshold_is_retried_then_succeeds(fresh):
    fresh.fail_next("per_second", 2)
    with client(fresh) as c:
        assert c.get_job_instance("S123", "I1")["id"] == "I1"
    assert fresh.instance_calls() == 3


def test_server_error_is_retried_then_succeeds(fresh):
    fresh.fail_next("server_error")
    fresh.fail_next("unavailable")
    with client(fresh) as c:
        assert c.get_job_instance("S123", "I1")["id"] == "I1"
    assert fresh.instance_calls() == 3


def test_retries_stop_at_max_attempts(fresh):
    fresh.fail_next("server_error", 10)
    with client(fresh, max_attempts=3) as c, pytest.raises(AlmaError) as err:
        c.get_job_instance("S123", "I1")
    assert err.value.code == "GENERAL_ERROR" and err.value.status == 500 and err.value.attempts == 3
    assert err.value.retryable  # a queue retry later may succeed
    assert fresh.instance_calls() == 3


def test_retries_stop_when_total_time_would_be_exceeded(fresh):
    fresh.fail_next("per_second", 10)
    # a zero time budget: any pause would exceed it, so the first answer is final
    with client(fresh, backoff=5, backoff_cap=5, max_total=0.0, max_attempts=10) as c, pytest.raises(AlmaError):
        c.get_job_instance("S123", "I1")
    assert fresh.instance_calls() == 1


@pytest.mark.parametrize(
    ("fault", "code", "status"),
    [
        ("daily", "DAILY_THRESHOLD", 429),
        ("unauthorized", "UNAUTHORIZED", 401),
        ("forbidden", "FORBIDDEN", 403),
        ("bad_request", "INVALID_REQUEST", 400),
    ],
)
def test_errors_that_a_retry_cannot_fix_are_not_retried(fresh, fault, code, status):
    fresh.fail_next(fault, 5)
    with client(fresh) as c, pytest.raises(AlmaError) as err:
        c.get_job_instance("S123", "I1")
    assert (err.value.code, err.value.status, err.value.retryable) == (code, status, False)
    assert fresh.instance_calls() == 1  # no retry storm against a daily limit or a bad key
    assert KEY not in str(err.value)


def test_wrong_key_gives_unauthorized_from_xml_body(fresh):
    with AlmaClient(fresh.url, "wrong-key", backoff=0.01) as c, pytest.raises(AlmaError) as err:
        c.get_job_instance("S123", "I1")
    assert err.value.code == "UNAUTHORIZED" and "API-key" in err.value.message
    assert fresh.instance_calls() == 1


def test_unknown_instance_carries_almas_code_and_message(fresh):
    with client(fresh) as c, pytest.raises(AlmaError) as err:
        c.get_job_instance("S123", "nope")
    assert err.value.code == "402218" and "Invalid job instance ID" in err.value.message
    assert "402218" in str(err.value)


def test_slow_answer_past_the_timeout_is_retried_then_fails_clearly(fresh):
    fresh.fail_next("slow", 2)
    with client(fresh, timeout=0.3, max_attempts=2) as c, pytest.raises(AlmaError) as err:
        c.get_job_instance("S123", "I1")
    assert err.value.code == "TIMEOUT" and err.value.retryable and err.value.attempts == 2


def test_slow_answer_then_success(fresh):
    fresh.fail_next("slow")
    with client(fresh, timeout=0.3) as c:
        assert c.get_job_instance("S123", "I1")["id"] == "I1"


def test_connection_refused_is_a_connection_error():
    with FakeAlma() as gone:
        url = gone.url
    with AlmaClient(url, KEY, timeout=2, backoff=0.01, max_attempts=2) as c, pytest.raises(AlmaError) as err:
        c.get_job_instance("S123", "I1")
    assert err.value.code == "CONNECTION" and err.value.attempts == 2


@pytest.mark.parametrize("shape", ["json", "json_wsr", "xml"])
def test_all_three_error_shapes_parse(shape):
    body, ctype = error_body("402218", "Invalid job instance ID", shape)
    assert parse_error_body(body, ctype) == ("402218", "Invalid job instance ID")


def test_error_parsing_survives_garbage():
    assert parse_error_body(b"", "") is None
    assert parse_error_body(b"<html>oops", "text/html") is None
    assert parse_error_body(b"{not json", "application/json") is None
    assert parse_error_body(b'{"errorList": {"error": []}}', "application/json") is None
    # entities are not expanded (no billion laughs, no external files)
    bomb = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><a><error><errorCode>&e;</errorCode></error></a>'
    assert parse_error_body(bomb, "application/xml") is None


def test_non_json_success_is_a_clear_error(fresh):
    with client(fresh) as c, pytest.raises(AlmaError) as err:
        c.get("/almaws/v1/not-a-route")
    assert err.value.code == "ROUTING_ERROR"


def test_base_url_from_region_and_override():
    assert base_url_from_settings({}) == "https://api-na.hosted.exlibrisgroup.com"
    assert base_url_from_settings({"ALMA_REGION": "EU"}) == "https://api-eu.hosted.exlibrisgroup.com"
    assert base_url_from_settings({"ALMA_REGION": "eu", "ALMA_API_BASE_URL": "https://alma.example/"}) == (
        "https://alma.example")
    with pytest.raises(SettingError, match="ALMA_REGION: must be one of"):
        base_url_from_settings({"ALMA_REGION": "mars"})
    with pytest.raises(SettingError, match="ALMA_API_BASE_URL"):
        base_url_from_settings({"ALMA_API_BASE_URL": "api-eu.hosted.exlibrisgroup.com"})


def test_from_settings_requires_the_key(fresh):
    with pytest.raises(SettingError, match="ALMA_API_KEY: is not set"):
        AlmaClient.from_settings({"ALMA_API_BASE_URL": fresh.url})
    env = {"ALMA_API_BASE_URL": fresh.url, "ALMA_API_KEY": KEY, "ALMA_API_TIMEOUT": "5"}
    with AlmaClient.from_settings(env) as c:
        assert c.timeout == 5.0
        assert c.get_job_instance("S123", "I1")["id"] == "I1"
