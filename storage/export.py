"""Export a profile's feedback as TRL-format records.

    python -m storage.export --user NAME --format dpo|kto|jsonl [--data-dir DIR] [--output FILE]

- dpo: `prompt` / `chosen` / `rejected` (conversational: lists of role/content dicts) from comparisons
  A or B. Ties carry no preference and are skipped; "both bad" is no preference between the two either.
- kto: `prompt` / `completion` / `label` from thumbs (up = True), plus each decided comparison as the chosen
  reply (True) and the rejected one (False); "both bad" gives both replies as False; ties are skipped.
- jsonl: every event as stored, with its texts, for audits and other tools.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from storage.db import DB_FILENAME
from storage.errors import AttuneError
from storage.store import Store

log = logging.getLogger(__name__)

FORMATS = ("dpo", "kto", "jsonl")
DATA_HOME_ENV = "ATTUNE_HOME"


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def dpo_records(events: Iterable[dict]) -> Iterator[dict]:
    for e in events:
        if e["kind"] == "comparison" and e["choice"] in ("a", "b"):
            chosen, rejected = (e["a"], e["b"]) if e["choice"] == "a" else (e["b"], e["a"])
            yield {"prompt": e["prompt"], "chosen": _assistant(chosen), "rejected": _assistant(rejected)}


def kto_records(events: Iterable[dict]) -> Iterator[dict]:
    for e in events:
        if e["kind"] == "thumbs":
            yield {"prompt": e["prompt"], "completion": _assistant(e["completion"]), "label": e["value"] > 0}
        elif e["choice"] in ("a", "b"):
            chosen, rejected = (e["a"], e["b"]) if e["choice"] == "a" else (e["b"], e["a"])
            yield {"prompt": e["prompt"], "completion": _assistant(chosen), "label": True}
            yield {"prompt": e["prompt"], "completion": _assistant(rejected), "label": False}
        elif e["choice"] == "both_bad":
            for text in (e["a"], e["b"]):
                yield {"prompt": e["prompt"], "completion": _assistant(text), "label": False}


def records(store: Store, profile_id: str, fmt: str) -> Iterator[dict]:
    events = store.feedback(profile_id)
    if fmt == "dpo":
        return dpo_records(events)
    if fmt == "kto":
        return kto_records(events)
    if fmt == "jsonl":
        return iter(events)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attune-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", "--user", dest="profile", required=True,
                        help="profile name (case-insensitive); --user is its former name")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get(DATA_HOME_ENV, "data")))
    parser.add_argument("--output", type=Path, help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    db_path = args.data_dir / DB_FILENAME
    if not db_path.exists():
        log.error("No database at %s (set --data-dir or %s).", db_path, DATA_HOME_ENV)
        return 2
    store = Store(db_path)
    try:
        profile = store.find_profile_by_name(args.profile)
    except AttuneError as exc:
        log.error("%s", exc)
        return 2
    out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    count = 0
    try:
        for record in records(store, profile["id"], args.format):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    finally:
        if args.output:
            out.close()
    log.info("Wrote %d %s records for profile %s.", count, args.format, profile["name"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
