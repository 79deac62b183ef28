"""Load: many people at once against the real app (`python app.py --auth …` on loopback, driven by gradio_client).

    python -m bench.load [--clients 20] [--seconds 150] [--model tiny|embedded|ID] [--output FILE]

Each client has an account of its own and one profile; it sends messages, reads its conversation back and votes
on each reply, as fast as the server answers, for the given time. Reported: requests, errors, lost votes (a vote the
server acknowledged that the database does not hold afterwards), mix-ups (a client reading a message that is not
its own), and latency percentiles of a reply (sent to fully streamed) and of a vote. The tiny random model makes the
server, not the model, the bottleneck; rate limits are raised for the run (they are tested on their own).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gradio_client import Client

from bench.provenance import REPO, write_result
from storage.accounts import Accounts
from storage.db import DB_FILENAME
from storage.store import Store

log = logging.getLogger("bench.load")

PASSWORD = "load-test-password"
UNLIMITED = ["limits.messages_per_minute=100000", "limits.message_burst=100000",
             "limits.account_messages_per_minute=100000", "limits.votes_per_minute=100000",
             "limits.vote_burst=100000", "limits.account_votes_per_minute=100000"]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(home: Path, model: str, accounts: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "app.py", "--model", model, "--data-dir", str(home), "--port", str(port),
               "--auth", str(accounts), "--no-worker", *(a for s in UNLIMITED for a in ("--set", s))]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    app = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(1200):  # up to 10 min on a busy machine (the first start converts the embedded model)
        try:
            Client(url, auth=("client0", PASSWORD), verbose=False)
            return app, url
        except Exception:  # not up yet
            if app.poll() is not None:
                raise RuntimeError(f"the app exited: {app.stderr.read()[-2000:]}")
            time.sleep(0.5)
    raise RuntimeError("the app did not start")


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.replies: list[float] = []
        self.votes: list[float] = []
        self.acknowledged: dict[str, int] = {}  # message id → the vote value the server acknowledged
        self.errors: list[str] = []
        self.mixups: list[str] = []


def client_loop(url: str, index: int, until: float, tally: Tally) -> None:
    client = Client(url, auth=(f"client{index}", PASSWORD), verbose=False, download_files=False)
    created = client.predict(f"Load {index}", api_name="/create_profile")
    profile = created[0]["value"]
    conversation, turn = None, 0
    while time.monotonic() < until:
        text = f"client-{index} message-{turn}: what is a good name for a cat?"
        try:
            began = time.perf_counter()
            final = client.submit(profile, conversation, text, False, "", 0.0, 1.0, 16, 1.0,
                                  api_name="/send").result()
            took = time.perf_counter() - began
            conversation = final[1]["value"]
            messages = client.predict(profile, conversation, api_name="/messages")
            foreign = [m["content"] for m in messages if m["role"] == "user"
                       and not m["content"].startswith(f"client-{index} ")]
            reply = messages[-1]
            value = 1 if turn % 2 else -1
            began_vote = time.perf_counter()
            client.predict(profile, reply["id"], value, "", api_name="/vote")
            voted = time.perf_counter() - began_vote
        except Exception as exc:  # counted, and the client goes on
            with tally.lock:
                tally.errors.append(f"client {index}: {type(exc).__name__}: {exc}"[:300])
            continue
        with tally.lock:
            tally.replies.append(took)
            tally.votes.append(voted)
            tally.acknowledged[reply["id"]] = value
            tally.mixups += foreign
        turn += 1


def _percentiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {"n": len(values)}
    cuts = statistics.quantiles(values, n=100)
    return {"n": len(values), "p50_s": round(cuts[49], 3), "p95_s": round(cuts[94], 3), "max_s": round(max(values), 3)}


def lost_votes(home: Path, acknowledged: dict[str, int]) -> int:
    """Acknowledged votes the database does not hold with the acknowledged value (read as trusted code: no acting
    account, so every profile)."""
    store = Store(home / DB_FILENAME)
    stored = {}
    for profile in store.list_profiles():
        stored |= {e["message_id"]: e["value"] for e in store.feedback(profile["id"]) if e["kind"] == "thumbs"}
    return sum(stored.get(message_id) != value for message_id, value in acknowledged.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--model", default="tiny", help="tiny (a random GPT-2 made on the fly), embedded, or an id")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # (one line per request otherwise)
    with tempfile.TemporaryDirectory(prefix="attune-load-") as folder:
        home = Path(folder) / "home"
        model = args.model
        if model == "tiny":
            from bench.tiny_model import make_tiny_gpt2
            model = str(make_tiny_gpt2(Path(folder) / "tiny"))
        accounts = Accounts(Path(folder) / "accounts.json")
        for index in range(args.clients):
            accounts.add(f"client{index}", PASSWORD)
        app, url = start_app(home, model, accounts.path)
        tally = Tally()
        try:
            until = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client_loop, args=(url, i, until, tally)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            app.terminate()
            app.wait(timeout=60)
        result = {"benchmark": "load", "clients": args.clients, "seconds": args.seconds, "model": args.model,
                  "turns": len(tally.replies), "errors": len(tally.errors), "error_samples": tally.errors[:5],
                  "lost_votes": lost_votes(home, tally.acknowledged), "mixups": len(tally.mixups),
                  "reply": _percentiles(tally.replies), "vote": _percentiles(tally.votes)}
    log.info("%s", {k: v for k, v in result.items() if k != "error_samples"})
    if args.output:
        write_result(args.output, result, vars(args) | {"output": str(args.output)})
    return 0 if not (result["errors"] or result["lost_votes"] or result["mixups"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
