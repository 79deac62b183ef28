"""Shared fixtures: a tiny random GPT-2 saved to disk and loaded through the real loading code, a tiny random LLaMA
that both backends decode (`BACKENDS`), temp data homes."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from assistant.config import DATA_HOME_ENV, AppConfig, ModelConfig
from assistant.model import LoadedModel, load_model
from assistant.llamacpp import available as llamacpp_available
from bench.tiny_model import TINY_CONTEXT, make_tiny_gpt2, make_tiny_llama  # noqa: F401  (TINY_CONTEXT: used by tests)
import app as attune_app
from storage.db import DB_FILENAME
from storage.store import Store

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
HANG = float(os.environ.get("ATTUNE_TEST_HANG", "1800"))
"""Seconds after which a test takes a process, thread, page or server as hung: a guard against a hang, never the
verdict (a busy machine may be ten times slower than a quiet one). ATTUNE_TEST_HANG shortens it while debugging."""
EMBEDDED_CACHE = REPO / ".cache" / "models"  # converted once, reused by later runs (git-ignored)

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir) -> LoadedModel:
    return load_model(ModelConfig(model=str(tiny_model_dir)), cache_root=tiny_model_dir.parent / "cache")


BACKENDS = ["torch", pytest.param("llamacpp", marks=pytest.mark.skipif(
    not llamacpp_available(), reason="llama-cpp-python is not installed (make llamacpp)"))]
"""Parametrise a test with these to run it on both decoders: torch on the tiny GPT-2, llama.cpp on the tiny LLaMA
(`tiny_llama`)."""


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    """(loaded tiny LLaMA, its llama.cpp decoder: an F32 GGUF of the same weights, two contexts)."""
    from assistant.backend import choose_decoder

    config = ModelConfig(model=str(tiny_llama_dir), backend="llamacpp")
    loaded = load_model(config, cache_root=tiny_llama_dir.parent / "cache")
    decoder = choose_decoder(config, loaded, cache_root=tiny_llama_dir.parent / "cache")
    yield loaded, decoder
    decoder.close()


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own data home through the one environment variable the app reads."""
    home = tmp_path / "home"
    monkeypatch.setenv(DATA_HOME_ENV, str(home))
    return home


@pytest.fixture
def store(data_home) -> Store:
    return Store(data_home / DB_FILENAME)


@pytest.fixture
def app_config(data_home, tiny_model_dir) -> AppConfig:
    return AppConfig(data_dir=data_home, model=ModelConfig(model=str(tiny_model_dir)), max_message_chars=16_000)


def api_client(url: str, **options):
    """A gradio_client `Client` of the app at `url` whose requests wait up to `HANG` (httpx's default 5 s is a tight
    wall-clock limit on a busy machine); `options` as `Client` takes them."""
    from gradio_client import Client

    return Client(url, verbose=False, httpx_kwargs={"timeout": HANG}, **options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(args: list[str]) -> Iterator[tuple[str, object]]:
    """app.py's own service and UI, started exactly as `main` does with these arguments, on 127.0.0.1 at a free
    port: (address, service)."""
    config = attune_app.parse_args([*args, "--port", str(free_port())])
    service = attune_app.create_service(config)
    demo = attune_app.build_app(service, config)
    url = attune_app.launch(demo, service, config, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield url, service
    finally:
        demo.close()


@pytest.fixture
def running_app(tiny_model_dir, data_home):
    with serving(["--model", str(tiny_model_dir), "--data-dir", str(data_home)]) as started:
        yield started


@pytest.fixture
def page(tmp_path):
    """A desktop browser tab (1280×1000) in Debian's Chromium; its last state is saved as final.png."""
    from tests.browser import browser_page

    with browser_page(tmp_path, width=1280, height=1000) as page:
        yield page


@pytest.fixture
def phone(tmp_path):
    """A phone-sized tab (390×844, touch) in Debian's Chromium."""
    from tests.browser import browser_page

    with browser_page(tmp_path, width=390, height=844, is_mobile=True, has_touch=True) as page:
        yield page
