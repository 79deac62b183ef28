"""Accounts (`--auth`): the accounts file and its command line, logins and their lock-out, household mode's host
rule, and the real app proving that one account cannot list, read or change another's profiles through any
endpoint `view_api()` lists."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from assistant.config import AppConfig
from storage.accounts import Accounts, check_password, hash_password
from storage.errors import Conflict, InvalidInput, NotFound
from storage.owners import acting_as
from storage.store import Store
from tests.conftest import REPO, api_client, serving
from tests.test_app import create_profile, send

ANN, BOB = ("Ann", "ann-password-1"), ("bob", "bob-password-2")


def test_passwords_are_salted_hashes_checked_in_constant_time():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and "correct horse" not in first  # a salt of its own each time
    assert check_password("correct horse", first) and not check_password("correct hors", first)
    assert not check_password("x", "md5$abc") and not check_password("x", "garbage")
    with pytest.raises(InvalidInput, match="at least 8"):
        hash_password("short")


def test_the_accounts_file_is_private_and_names_ignore_case(tmp_path):
    accounts = Accounts(tmp_path / "accounts.json")
    accounts.add(*ANN)
    assert stat.S_IMODE((tmp_path / "accounts.json").stat().st_mode) == 0o600
    assert "ann-password-1" not in (tmp_path / "accounts.json").read_text()
    with pytest.raises(Conflict):
        accounts.add("ANN", "another-password")
    assert accounts.check("aNN", ANN[1]) == "ann" and accounts.check("ann", "wrong-password") is None
    assert accounts.check("nobody", ANN[1]) is None
    accounts.remove("ann")
    assert accounts.names() == [] and accounts.check(*ANN) is None
    with pytest.raises(NotFound):
        accounts.remove("ann")


def test_the_command_line_adds_lists_removes_and_adopts_household_profiles(tmp_path, store, data_home):
    store.create_profile("Kept from before")
    file = str(tmp_path / "accounts.json")

    def run(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "storage.accounts", "--file", file, *args], cwd=REPO,
                              input=stdin, capture_output=True, text=True)

    assert run("add", "Ann", "--password-stdin", stdin=ANN[1] + "\n").returncode == 0
    assert run("add", "bob", "--password-stdin", stdin="short\n").returncode == 2  # refused, said why
    assert run("list").stdout.split() == ["Ann"]
    adopted = run("adopt", "ann", "--data-dir", str(data_home))
    assert adopted.returncode == 0 and "1 household profile" in adopted.stderr
    with acting_as("ann"):
        assert [p["name"] for p in store.list_profiles()] == ["Kept from before"]
    with acting_as(""):
        assert store.list_profiles() == []
    assert run("remove", "Ann").returncode == 0 and run("list").stdout == ""


def test_household_mode_refuses_a_network_interface_unless_told():
    with pytest.raises(InvalidInput, match="--auth"):
        AppConfig(host="0.0.0.0")
    assert AppConfig(host="0.0.0.0", insecure_household=True).host == "0.0.0.0"
    assert AppConfig(host="0.0.0.0", auth=REPO / "accounts.json").auth is not None
    assert AppConfig(host="::1").host == "::1" and AppConfig(host="localhost").host == "localhost"


@pytest.fixture
def auth_app(tiny_model_dir, data_home, tmp_path):
    accounts = Accounts(tmp_path / "accounts.json")
    for name, password in (ANN, BOB):
        accounts.add(name, password)
    with serving(["--model", str(tiny_model_dir), "--data-dir", str(data_home), "--auth",
                  str(accounts.path)]) as started:
        yield started


def _as_text(client: Client, endpoint: str, args: list) -> str:
    try:
        return json.dumps(client.predict(*args, api_name=endpoint), ensure_ascii=False)
    except AppError as exc:
        return f"refused: {exc}"


def _snapshot(store: Store, profile_id: str) -> dict:
    """Everything of the profile that anyone could change (and every row but profiles: Bob makes one)."""
    with acting_as("ann"):
        return {"profile": store.get_profile(profile_id), "preferences": store.preferences(profile_id),
                "feedback": store.feedback(profile_id), "conversations": store.list_conversations(profile_id),
                "counts": {k: v for k, v in store.counts().items() if k != "profiles"}}


def test_one_account_cannot_reach_another_accounts_profiles_through_any_endpoint(auth_app, data_home):
    url, _ = auth_app
    ann = api_client(url, auth=ANN, download_files=False)
    profile = create_profile(ann, "Ann's secrets")
    final, _ = send(ann, profile, None, "my secret recipe")
    conversation = final["conversation"]["value"]
    reply = ann.predict(profile, conversation, api_name="/messages")[1]
    ann.predict(profile, reply["id"], -1, "private comment", api_name="/vote")
    send(ann, profile, conversation, "compare these", compare=True)
    comparison = ann.predict(profile, conversation, api_name="/pending")["comparison_id"]
    store = Store(data_home / "attune.db")
    before = _snapshot(store, profile)

    bob = api_client(url, auth=BOB, download_files=False)
    ids = {"profile_id": profile, "conversation_id": conversation, "message_id": reply["id"],
           "comparison_id": comparison, "remembered": {"profile_id": profile, "conversation_id": conversation}}
    defaults = {"str": "Bob's", "float": 0.5, "bool": False, "int": -1}
    endpoints = bob.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert len(endpoints) >= 30
    for endpoint, info in endpoints.items():
        names = [p["parameter_name"] for p in info["parameters"]]
        args = [ids[p["parameter_name"]] if p["parameter_name"] in ids
                else p["parameter_default"] if p.get("parameter_has_default")
                else defaults.get(p["python_type"]["type"], "a") for p in info["parameters"]]
        text = _as_text(bob, endpoint, args)
        for secret in ("Ann's secrets", "my secret recipe", "private comment", profile, conversation):
            assert secret not in text, (endpoint, text)
        if "profile_id" in names:
            assert "profile does not exist" in text or "not in the list of choices" in text, (endpoint, text)
    assert _snapshot(store, profile) == before  # nothing of Ann's changed
    # Ann still sees and uses her profile; Bob's own profile (made by /create_profile above) is his alone
    assert [p["name"] for p in _listed(ann)] == ["Ann's secrets"]
    assert [p["name"] for p in _listed(bob)] == ["Bob's"]


def _listed(client: Client) -> list[dict]:
    from tests.test_app import named
    choices = named("load", client.predict({}, api_name="/load"))["profile"]["choices"]
    return [{"name": name, "id": profile_id} for name, profile_id in choices]


def _login(url: str, name: str, password: str) -> int:
    data = urllib.parse.urlencode({"username": name, "password": password}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}login", data=data), timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_nobody_gets_in_without_logging_in_and_failed_logins_lock_the_name(auth_app):
    url, service = auth_app
    with pytest.raises(Exception, match="(?i)login|auth|401"):
        api_client(url).predict("x", api_name="/create_profile")
    assert _login(url, *ANN) == 200
    for _ in range(service.config.limits.failed_login_burst):
        assert _login(url, ANN[0], "wrong-password") == 400
    assert _login(url, *ANN) == 400  # locked for a while: the right password too
    assert _login(url, *BOB) == 200  # another name is not


def test_token_buckets_refuse_with_the_wait_and_refill():
    from assistant.config import LimitsConfig
    from assistant.limits import MESSAGES, PROFILES, RateLimited, RateLimits

    clock = [0.0]
    limits = RateLimits(LimitsConfig(messages_per_minute=6, message_burst=2, account_messages_per_minute=60,
                                     profiles_per_hour=1, profile_burst=1), clock=lambda: clock[0])
    limits.check(MESSAGES, "ann", "p1")
    limits.check(MESSAGES, "ann", "p1")
    with pytest.raises(RateLimited, match="wait 10 s"):
        limits.check(MESSAGES, "ann", "p1")
    limits.check(MESSAGES, "ann", "p2")  # another profile has its own bucket
    clock[0] = 10.0
    limits.check(MESSAGES, "ann", "p1")  # one token back after 60/6 s
    limits.check(PROFILES, "ann")
    with pytest.raises(RateLimited, match="wait 60 min"):
        limits.check(PROFILES, "ann")
    limits.check(PROFILES, "bob")


def test_the_app_refuses_too_many_votes_and_profiles_with_a_clear_message(tiny_model_dir, data_home):
    from tests.test_app import call, status_of

    with serving(["--model", str(tiny_model_dir), "--data-dir", str(data_home), "--set", "limits.vote_burst=2",
                  "--set", "limits.votes_per_minute=1", "--set", "limits.max_profiles=2"]) as (url, _):
        client = api_client(url, download_files=False)
        ann = create_profile(client, "Ann")
        final, _ = send(client, ann, None, "Hello")
        reply = client.predict(ann, final["conversation"]["value"], api_name="/messages")[1]["id"]
        client.predict(ann, reply, 1, "", api_name="/vote")
        client.predict(ann, reply, -1, "", api_name="/vote")
        with pytest.raises(AppError, match="Too many votes .* wait 60 s"):
            client.predict(ann, reply, 1, "", api_name="/vote")
        assert client.predict(ann, final["conversation"]["value"], api_name="/messages")[1]["vote"] == -1
        create_profile(client, "Bo")
        assert "2 profiles, the most" in status_of(call(client, "create_profile", "Cy"))
        assert len(Store(data_home / "attune.db").list_profiles()) == 2


def test_many_profiles_of_one_account_supply_no_more_of_a_global_update_than_one(store, tiny_loaded, app_config):
    from dataclasses import replace

    from adapters.jobs import global_ready, global_update
    from assistant.service import ChatService
    from tests.test_worker import LEARNING, _choices

    service = ChatService(store, tiny_loaded, app_config, learning=LEARNING)
    config = replace(LEARNING, max_share=0.25, max_per_profile=32, min_per_profile=2)
    honest = [service.create_profile(name)["id"] for name in ("Ann", "Bo", "Cy")]
    for profile in honest:
        _choices(service, profile, 8)
    with acting_as("mallory"):
        hostile = [service.create_profile(f"Fake {i}")["id"] for i in range(10)]
        for profile in hostile:
            _choices(service, profile, 12)
    data = global_update(store, None, config, seed=0)
    ids = [ex.feedback_id for ex in (*data.train.pairs, *data.train.unpaired)]
    hostile_ids = {e["id"] for p in hostile for e in store.feedback(p)}
    share = len({i for i in ids if i in hostile_ids}) / len(set(ids))
    assert share <= 0.25  # (as ten household profiles its share would be 120 / 144)

    quiet = service.create_profile("Quiet")["id"]
    _choices(service, quiet, 3)  # fewer than global_min_events: not yet a contributor
    assert quiet not in {ex.profile_id for ex in (*global_update(store, None, config, 0).train.pairs,)}
    assert global_ready(store, config)
    assert not global_ready(store, replace(config, global_min_age_hours=1.0))  # all were made a moment ago
