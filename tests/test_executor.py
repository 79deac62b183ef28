"""Generation on the main thread when it serves, on a thread of its own when it is busy or not serving."""

from __future__ import annotations

import threading

from assistant.config import GenerationSettings
from assistant.executor import GenerationExecutor
from assistant.generation import ReplyStream
from assistant.prompts import build_prompt
from tests.conftest import HANG



def _stream(loaded, executor, text="Tell me a joke.", tokens=30):
    prompt = build_prompt(loaded, "", [{"role": "user", "content": text}], tokens)
    return ReplyStream(loaded, prompt, GenerationSettings(temperature=0, max_new_tokens=tokens), executor=executor)


def _serve_while(executor, consumers, stagger=lambda: True):
    """Serve on this (main) thread while `consumers` run on threads started once serving has begun; the
    second and later consumers start once `stagger()` is true (e.g. the first job is on the main thread)."""
    threads = [threading.Thread(target=c) for c in consumers]

    def start():
        while not executor._serving.is_set():
            pass
        threads[0].start()
        for t in threads[1:]:
            while not stagger():
                pass
            t.start()

    starter = threading.Thread(target=start)
    starter.start()
    executor.serve_forever(should_stop=lambda: not starter.is_alive() and not any(t.is_alive() for t in threads),
                           poll_seconds=0.01)


def test_generate_runs_on_the_serving_main_thread(tiny_loaded, monkeypatch):
    ran_on = []
    original = tiny_loaded.model.generate

    def recording_generate(*args, **kwargs):
        ran_on.append(threading.current_thread() is threading.main_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_loaded.model, "generate", recording_generate)
    alone = _stream(tiny_loaded, None)
    list(alone)
    executor = GenerationExecutor()
    served = _stream(tiny_loaded, executor)
    _serve_while(executor, [lambda: list(served)])
    assert ran_on == [False, True]  # the plain stream used a thread; the served one, this main thread
    assert served.texts == alone.texts
    assert executor.main_thread_jobs == 1 and executor.thread_jobs == 0


def test_busy_main_thread_hands_the_next_job_to_a_thread(tiny_loaded):
    executor = GenerationExecutor()
    first, second = _stream(tiny_loaded, executor, tokens=60), _stream(tiny_loaded, executor, "Hi", 20)
    _serve_while(executor, [lambda: list(first), lambda: list(second)], stagger=lambda: executor.main_thread_jobs)
    assert executor.main_thread_jobs + executor.thread_jobs == 2 and executor.thread_jobs >= 1
    assert first.finished and second.finished


def test_jobs_accepted_before_stop_still_run(tiny_loaded):
    executor = GenerationExecutor()
    executor._serving.set()  # as if serving, then it stops before picking the job up
    stream = _stream(tiny_loaded, executor)
    consumer = threading.Thread(target=lambda: list(stream))
    consumer.start()
    while executor.main_thread_jobs == 0:
        pass
    executor.serve_forever(should_stop=lambda: True)
    consumer.join(timeout=HANG)
    assert stream.finished
