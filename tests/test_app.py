"""The real Gradio app on a free loopback port, driven through its named endpoints by gradio_client."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import typing

import psutil
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from assistant.config import DATA_HOME_ENV, BlendConfig
from storage.store import Store
from tests.conftest import BACKENDS, HANG, REPO, api_client, free_port, serving
from ui import OUTPUTS, UI, api_returns
from ui.views import unmarked

SETTINGS = dict(system_prompt="Be brief.", temperature=0, top_p=0.9, max_new_tokens=12)


@pytest.fixture(params=BACKENDS)
def running_app(request, tiny_model_dir, data_home):
    """The app on each backend: torch on the tiny GPT-2, llama.cpp on the tiny LLaMA."""
    model = tiny_model_dir if request.param == "torch" else request.getfixturevalue("tiny_llama_dir")
    with serving(["--model", str(model), "--data-dir", str(data_home), "--backend", request.param]) as started:
        assert (started[1].decoder is not None) == (request.param == "llamacpp")
        yield started


@pytest.fixture
def client(running_app) -> Client:
    return api_client(running_app[0], download_files=False)


def _dropdown(update: dict) -> tuple[list, str | None]:
    return [tuple(c) for c in update["choices"]], update["value"]


def named(api_name: str, result) -> dict:
    """An endpoint's result by output name (ui.OUTPUTS, less what Gradio does not send to clients)."""
    names = api_returns(api_name)
    return dict(zip(names, result if len(names) > 1 else (result,), strict=True))


def call(client: Client, api_name: str, *args) -> dict:
    return named(api_name, client.predict(*args, api_name=f"/{api_name}"))


def create_profile(client: Client, name: str) -> str:
    """The new profile's id."""
    return _dropdown(call(client, "create_profile", name)["profile"])[1]


def send(client: Client, profile_id, conversation_id, text, compare=False):
    job = client.submit(profile_id, conversation_id, text, compare, *SETTINGS.values(), api_name="/send")
    final = job.result()
    return named("send", final), job.outputs()


def status_of(result: dict) -> str:
    """The status line of a named result (a refusal is shown there, the event itself does not fail)."""
    status = result["status"]
    return status["value"] if isinstance(status, dict) else status


def last_text(chat: dict) -> str:
    """The last message's text as stored (without the small line the page adds under a reply)."""
    return unmarked(chat["value"][-1]["content"][0]["text"])


def test_create_chat_vote_compare_switch(client, running_app, data_home):
    _, service = running_app
    created = call(client, "create_profile", "Ann")
    (choices, ann) = _dropdown(created["profile"])
    assert choices == [("Ann", ann)] and created["conversation"]["value"] is None and created["chatbot"]["value"] == []

    final, outputs = send(client, ann, None, "Hello!")
    assert len(outputs) >= 3  # streamed: several updates before the final one
    conv = final["conversation"]["value"]
    messages = client.predict(ann, conv, api_name="/messages")
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert last_text(final["chatbot"]) == messages[1]["content"]

    feedback = client.predict(ann, messages[1]["id"], 1, "", api_name="/vote")
    assert feedback["value"] == 1 and feedback["kind"] == "thumbs"
    client.predict(ann, messages[1]["id"], -1, "too terse", api_name="/vote")  # voting again updates
    chat = call(client, "open_conversation", ann, conv)["chatbot"]
    assert chat["feedback_value"] == ["Dislike"]  # earlier votes come back when reopened

    send(client, ann, conv, "Compare please", compare=True)
    pending = client.predict(ann, conv, api_name="/pending")
    assert set(pending) == {"comparison_id", "a", "b"}
    assert "Choose between A and B" in status_of(send(client, ann, conv, "too early")[0])
    view = call(client, "choose_b", ann, conv)
    assert last_text(view["chatbot"]).split() == pending["b"].split()  # (the chat shows a tab as spaces)
    assert client.predict(ann, conv, api_name="/pending") == {}

    bob = create_profile(client, "Bob")
    view = call(client, "select_profile", bob)
    assert view["conversation"]["choices"] == [] and view["chatbot"]["value"] == []
    view = call(client, "select_profile", ann)
    assert view["conversation"]["value"] == conv and len(view["chatbot"]["value"]) == 4

    store = Store(data_home / "attune.db")
    assert store.counts() == {"profiles": 2, "conversations": 1, "messages": 5, "comparisons": 1, "feedback": 2}
    events = store.feedback(ann)
    assert [(e["kind"], e["value"], e["choice"], e["comment"]) for e in events] == [
        ("thumbs", -1, None, "too terse"), ("comparison", None, "b", "")]


def test_every_endpoint_returns_its_named_outputs(client):
    """ui.OUTPUTS names each event endpoint's outputs; a client gets those, less layout, as those components."""
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {f"/{name}" for name in OUTPUTS} | {"/messages", "/vote", "/choose", "/pending",
                                                                  "/learning"}
    kinds = typing.get_type_hints(UI)
    for api_name in OUTPUTS:
        returned = [r["component"].lower() for r in endpoints[f"/{api_name}"]["returns"]]
        assert returned == [kinds[name].__name__.lower() for name in api_returns(api_name)], api_name


@pytest.mark.parametrize("args, api, message", [
    (("",), "create_profile", "cannot be empty"),
    (("x" * 41,), "create_profile", "at most 40"),
    (("a/b",), "create_profile", "cannot contain '/'"),
    (("..",), "create_profile", "'..'"),
    (("bad\x00name",), "create_profile", "NUL"),
    (("0" * 32,), "select_profile", "profile does not exist"),
    (("0" * 32, "0" * 32), "open_conversation", "profile does not exist"),
])
def test_a_page_event_shows_a_refusal_in_the_status_line_without_failing(client, args, api, message):
    assert message in status_of(call(client, api, *args))


@pytest.mark.parametrize("args, api, message", [
    (("0" * 32, 1, ""), "/vote", "message does not exist"),
    (("0" * 32, "a"), "/choose", "comparison does not exist"),
    (("0" * 32, 1, ""), "/vote?stranger", "profile does not exist"),
])
def test_bad_requests_to_the_data_api_get_clear_errors(client, args, api, message):
    profile = "0" * 32 if api.endswith("?stranger") else create_profile(client, "Ann")
    with pytest.raises(AppError, match=message):
        client.predict(profile, *args, api_name=api.split("?")[0])


def test_a_wrongly_typed_api_argument_gets_a_clear_error(client, data_home):
    ann = create_profile(client, "Ann")
    settings = list(SETTINGS.values())
    with pytest.raises(AppError, match="Expected a `float`.*'hot'"):
        client.predict(ann, None, "Hello", False, settings[0], "hot", *settings[2:], api_name="/send")
    with pytest.raises(AppError, match=r"must be \+1 \(up\) or -1"):
        client.predict(ann, "0" * 32, "up", "", api_name="/vote")
    assert Store(data_home / "attune.db").counts()["messages"] == 0


def test_bad_chat_input_is_refused_and_nothing_is_lost(client, data_home):
    ann = create_profile(client, "Ann")
    assert "already exists" in status_of(call(client, "create_profile", "ANN"))
    final, _ = send(client, ann, None, "Keep me")
    conv = final["conversation"]["value"]
    store = Store(data_home / "attune.db")
    before = store.counts()
    for text, message in [("", "empty"), ("   ", "empty"), ("y" * 200_000, "200,000 characters"),
                          ("bell\x07", "control character")]:
        assert message in status_of(send(client, ann, conv, text)[0])
    assert "conversation does not exist" in status_of(send(client, ann, "f" * 32, "hello")[0])
    assert "profile does not exist" in status_of(send(client, "f" * 32, conv, "hello")[0])
    assert store.counts() == before
    bob = create_profile(client, "Bob")
    ann_reply = client.predict(ann, conv, api_name="/messages")[1]["id"]
    with pytest.raises(AppError, match="message does not exist for this profile"):
        client.predict(bob, ann_reply, 1, "", api_name="/vote")  # Bob cannot vote on Ann's reply
    with pytest.raises(AppError, match="conversation does not exist for this profile"):
        client.predict(bob, conv, api_name="/messages")
    user_msg = client.predict(ann, conv, api_name="/messages")[0]["id"]
    with pytest.raises(AppError, match="Only assistant replies"):
        client.predict(ann, user_msg, 1, "", api_name="/vote")
    with pytest.raises(AppError, match=r"\+1"):
        client.predict(ann, ann_reply, 7, "", api_name="/vote")
    assert store.counts()["feedback"] == 0
    before = store.counts()
    with pytest.raises(AppError, match="less than minimum value 1"):  # the slider's own range check
        client.submit(ann, conv, "Repeat?", False, *SETTINGS.values(), 0.5, api_name="/send").result()
    assert store.counts() == before
    client.submit(ann, conv, "Repeat?", False, *SETTINGS.values(), 1.3, api_name="/send").result()
    stored = store.get_message(ann, client.predict(ann, conv, api_name="/messages")[-1]["id"])
    assert stored.role == "assistant" and stored.settings["repetition_penalty"] == 1.3
    emoji = "Emoji 🎉 and accents: crème brûlée"
    final, _ = send(client, ann, conv, emoji)
    assert client.predict(ann, conv, api_name="/messages")[4]["content"] == emoji


def test_retry_rename_and_delete_with_confirmation(client, data_home):
    ann = create_profile(client, "Ann")
    conv = send(client, ann, None, "Hi")[0]["conversation"]["value"]
    client.submit(ann, conv, False, *SETTINGS.values(), api_name="/retry").result()
    store = Store(data_home / "attune.db")
    assert store.counts()["messages"] == 3 and len(store.transcript(ann, conv)) == 2
    call(client, "ask_delete_conversation", ann, conv)
    assert len(store.transcript(ann, conv)) == 2  # asking deletes nothing
    assert call(client, "delete_conversation", ann, conv)["conversation"]["value"] is None
    assert store.counts()["conversations"] == 0
    renamed = call(client, "rename_profile", ann, "Annie")
    assert _dropdown(renamed["profile"])[0] == [("Annie", ann)]
    asked = call(client, "ask_delete_profile", ann)  # shows the confirmation row (layout: not returned)
    assert "Delete profile **Annie**" in asked["confirm_text"]
    assert store.counts()["profiles"] == 1  # asking deletes nothing
    view = call(client, "delete_profile", ann)
    assert view["profile"]["choices"] == [] and store.counts() == {
        "profiles": 0, "conversations": 0, "messages": 0, "comparisons": 0, "feedback": 0}


def test_two_clients_streaming_at_once_stay_separate(running_app):
    url, _ = running_app
    clients = [api_client(url) for _ in range(2)]
    users = [create_profile(c, name) for c, name in zip(clients, ["A1", "B2"])]
    texts = ["Tell me a joke.", "What is the capital of France?"]
    alone = [last_text(send(c, u, None, t)[0]["chatbot"]) for c, u, t in zip(clients, users, texts)]
    jobs = [c.submit(u, None, t, False, *SETTINGS.values(), api_name="/send")
            for c, u, t in zip(clients, users, texts)]
    finals = [named("send", j.result()) for j in jobs]
    assert [last_text(f["chatbot"]) for f in finals] == alone
    for final, user, text in zip(finals, users, texts):
        assert [m["content"][0]["text"] for m in final["chatbot"]["value"] if m["role"] == "user"] == [text]
        assert final["profile"]["value"] == user


def _start_cli(args, home, port=None):
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", DATA_HOME_ENV: str(home)}
    cmd = [sys.executable, "app.py", *args] + (["--port", str(port)] if port else [])
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def cli_app(tiny_model_dir, tmp_path):
    """`python app.py` as a person starts it: its own process, the training worker beside it."""
    home, port = tmp_path / "cli-home", free_port()
    proc = _start_cli(["--model", str(tiny_model_dir)], home, port)
    try:
        deadline = time.monotonic() + HANG
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the app did not start listening"
                time.sleep(0.3)
        yield api_client(f"http://127.0.0.1:{port}/"), home, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=HANG)


def test_command_line_app_serves_with_generation_on_its_main_thread(cli_app):
    client, home, proc = cli_app
    ann = create_profile(client, "Ann")
    conv = send(client, ann, None, "Hello from the command line")[0]["conversation"]["value"]
    assert [m["role"] for m in client.predict(ann, conv, api_name="/messages")] == ["user", "assistant"]
    assert Store(home / "attune.db").counts()["messages"] == 2  # ATTUNE_HOME chose the data home
    workers = [c for c in psutil.Process(proc.pid).children() if "adapters.worker" in " ".join(c.cmdline())]
    assert len(workers) == 1  # the training worker runs beside the app
    proc.send_signal(signal.SIGTERM)  # as a service manager stops it
    output = proc.communicate(timeout=HANG)[0]
    assert proc.returncode == 0, output
    assert "Stopping." in output
    psutil.wait_procs(workers, timeout=HANG)
    assert not workers[0].is_running()


def test_a_killed_worker_is_started_again_and_stops_with_the_app(cli_app):
    _, _, proc = cli_app

    def workers():  # the live ones (the killed one is a zombie until the app reaps it)
        found = []
        for child in psutil.Process(proc.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "adapters.worker" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:  # gone, or a zombie, between the listing and the look
                pass
        return found

    first = workers()
    assert len(first) == 1
    first[0].send_signal(signal.SIGKILL)
    deadline = time.monotonic() + HANG
    while not (again := [w for w in workers() if w.pid != first[0].pid]):
        assert time.monotonic() < deadline, "the worker was not started again"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=HANG)[0]
    assert proc.returncode == 0 and "The training worker exited (code -9); starting it again in 1 s." in output
    psutil.wait_procs(again, timeout=HANG)
    assert not any(w.is_running() for w in again)


def test_votes_train_a_new_version_that_the_next_reply_uses(cli_app):
    """End to end: A/B choices → a queued job → the worker publishes → the next reply records that version."""
    client, home, _ = cli_app
    ann = create_profile(client, "Ann")
    conv = None
    for i in range(4):  # M = 4 new events trigger the personal update
        final, _ = send(client, ann, conv, f"Question number {i}?", compare=True)
        conv = final["conversation"]["value"]
        client.predict(ann, conv, api_name="/choose_a")
    deadline = time.monotonic() + HANG
    while True:
        status = client.predict(ann, api_name="/learning")
        # The worker publishes the version, then marks its job done: wait for both (a loaded machine showed the gap).
        if status["personal"] and status["job"]["status"] == "done":
            break
        job = status["job"]
        assert job is None or job["status"] in ("queued", "running", "done"), job
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["personal"]["version"] == "v0001" and status["feedback"]["comparison"] == 4
    assert status["job"]["status"] == "done"
    first = send(client, ann, conv, "And now?")[0]
    last = client.predict(ann, conv, api_name="/messages")[-1]
    # Served at α = 4/(4+k), unless its held-out accuracy fell below the global adapter's (then α = 0, with the reason).
    k = BlendConfig().k
    first_served = last["adapter_versions"]["personal"] == "v0001"
    assert last["adapter_versions"]["alpha"] == pytest.approx(4 / (4 + k), abs=1e-4) or (
        last["adapter_versions"]["alpha"] == 0 and "below the global" in last["adapter_versions"]["alpha_reason"])
    client.predict(ann, False, 1.0, api_name="/set_alpha")  # "just me"
    second = send(client, ann, conv, "And with just my taste?")[0]
    last = client.predict(ann, conv, api_name="/messages")[-1]
    assert last["adapter_versions"] == {"global": None, "personal": "v0001", "alpha": 1.0, "alpha_reason": "set by you"}
    # The chat says so once, with the first reply the new version writes (the first, unless the gate held it back).
    said = ["Attune has learned from your 4 votes so far (version 1)" in status_of(reply) for reply in (first, second)]
    assert (said == [True, False]) if first_served else (said == [False, True]), (first_served, status_of(first), status_of(second))
    assert (home / "adapters" / f"profile_{ann}" / "v0001" / "adapter_model.safetensors").exists()


def test_unavailable_model_exits_with_one_clear_message(tmp_path):
    proc = _start_cli(["--model", "no-such-org/no-such-model"], tmp_path / "home")
    output = proc.communicate(timeout=HANG)[0]
    assert proc.returncode == 2
    assert "Model 'no-such-org/no-such-model' is not available on this machine" in output
    assert "Traceback" not in output


def test_a_conversation_is_titled_by_its_first_message_listed_with_its_time_and_renamable(client, data_home):
    ann = create_profile(client, "Ann")
    opened = call(client, "new_conversation", ann)
    conv = opened["conversation"]["value"]
    assert _dropdown(opened["conversation"])[0][0][0].startswith("New conversation · ")
    send(client, ann, conv, "  How do   tides work?\nAsking for a friend.")
    send(client, ann, conv, "And the moon?")  # only the first message titles it
    store = Store(data_home / "attune.db")
    assert store.get_conversation(ann, conv)["title"] == "How do tides work? Asking for a friend."
    second = call(client, "new_conversation", ann)
    labels = [label for label, _ in _dropdown(second["conversation"])[0]]
    assert len(labels) == 2 and labels[1].startswith("How do tides work?") and re.search(r" · \w{3} \d+, \d\d:\d\d$",
                                                                                             labels[1])
    renamed = call(client, "rename_conversation", ann, conv, "  Tides  ")
    assert store.get_conversation(ann, conv)["title"] == "Tides" and renamed["conversation_title"] == ""
    assert renamed["conversation"]["value"] == conv and "Conversation renamed." in status_of(renamed)
    refused = call(client, "rename_conversation", ann, conv, "   ")
    assert "cannot be empty" in status_of(refused) and store.get_conversation(ann, conv)["title"] == "Tides"
    assert "at most 80" in status_of(call(client, "rename_conversation", ann, conv, "t" * 81))


def test_words_reach_the_api_a_choice_a_retry_and_the_note(client, data_home):
    ann = create_profile(client, "Ann")
    final, _ = send(client, ann, None, "Compare please", compare=True)
    conv = final["conversation"]["value"]
    pending = client.predict(ann, conv, api_name="/pending")
    client.predict(ann, pending["comparison_id"], "a", "B rambled.", api_name="/choose")
    send(client, ann, conv, "And now?")
    reply = client.predict(ann, conv, api_name="/messages")[-1]
    client.predict(ann, reply["id"], -1, "", api_name="/vote")
    job = client.submit(ann, conv, "Too long.", *SETTINGS.values(), api_name="/retry_with_comment")  # the last
    job.result()
    again = client.predict(ann, conv, api_name="/messages")[-1]
    assert again["id"] != reply["id"] and again["settings"]["probe_instruction"] == "Too long."
    store = Store(data_home / "attune.db")
    assert store.own_words(ann) == [("Too long.", "down"), ("B rambled.", "down")]
    view = call(client, "save_note", ann, "Keep it short.")
    assert view["note"] == "Keep it short." and "Your note" in view["learning_status"]
    assert client.predict(ann, api_name="/learning")["note"]["text"] == "Keep it short."
