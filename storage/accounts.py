"""Accounts for `--auth`: a JSON file of names and salted scrypt password hashes, and its command line.

    python -m storage.accounts --file accounts.json add NAME      (asks for the password twice)
    python -m storage.accounts --file accounts.json remove NAME
    python -m storage.accounts --file accounts.json list
    python -m storage.accounts --file accounts.json adopt NAME --data-dir DIR   (household profiles → NAME)

The file holds no password, only `scrypt$n$r$p$salt$hash` (hashlib's scrypt: memory-hard, salted per account). It is
written to a temporary file and renamed, readable by its owner only; the app reads it again when it changes, so an
account added while it runs can log in at once. An account owns profiles by its key (`account_key`), kept in the
database beside each profile; removing an account keeps its profiles (invisible until the account is added again).
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

from storage.errors import AttuneError, Conflict, InvalidInput, NotFound
from storage.text import require_encodable

log = logging.getLogger(__name__)

MAX_ACCOUNT_NAME = 40
MIN_PASSWORD = 8
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
"""scrypt's cost (16 MiB of memory, about 50 ms a check on one core): OWASP's minimum for scrypt."""


def account_key(name: str) -> str:
    """What identifies an account: its name after NFKC normalization and case folding ("Ann" and "ANN" are one)."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def validate_account_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("An account name must be non-empty text.")
    cleaned = require_encodable(name, "The account name").strip()
    if len(cleaned) > MAX_ACCOUNT_NAME:
        raise InvalidInput(f"An account name can be at most {MAX_ACCOUNT_NAME} characters.")
    if any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in cleaned):
        raise InvalidInput("An account name cannot contain control, formatting or unusual space characters.")
    return cleaned


def hash_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InvalidInput(f"A password needs at least {MIN_PASSWORD} characters.")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                            p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Whether `password` matches the stored hash (compared in constant time)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        found = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=bytes.fromhex(salt), n=int(n),
                               r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, bytes.fromhex(digest))


class Accounts:
    """The accounts file. Reads are cached by the file's modification time and size."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._cache: tuple[tuple[int, int], dict] | None = None

    def _read(self) -> dict:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._cache is None or self._cache[0] != stamp:
            try:
                accounts = json.loads(self.path.read_text(encoding="utf-8"))["accounts"]
            except (ValueError, KeyError, TypeError) as exc:
                raise AttuneError(f"The accounts file {self.path.name} is not readable ({exc}).") from exc
            self._cache = (stamp, accounts)
        return self._cache[1]

    def _write(self, accounts: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "accounts": accounts}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)

    def add(self, name: object, password: str) -> str:
        cleaned = validate_account_name(name)
        accounts = dict(self._read())
        if account_key(cleaned) in accounts:
            raise Conflict(f"An account named '{cleaned}' already exists.")
        accounts[account_key(cleaned)] = {"name": cleaned, "hash": hash_password(password),
                                          "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._write(accounts)
        return account_key(cleaned)

    def remove(self, name: str) -> None:
        accounts = dict(self._read())
        if accounts.pop(account_key(name), None) is None:
            raise NotFound(f"No account is named '{name}'.")
        self._write(accounts)

    def names(self) -> list[str]:
        return sorted(entry["name"] for entry in self._read().values())

    def check(self, name: str, password: str) -> str | None:
        """The account's key if `password` is its password, else None (an unknown name costs the same time)."""
        entry = self._read().get(account_key(name or ""))
        ok = check_password(password or "", entry["hash"] if entry else _DUMMY_HASH)
        return account_key(name) if ok and entry else None


_DUMMY_HASH = "scrypt$16384$8$1$" + "00" * 16 + "$" + "00" * 64
"""Checked against when the name is unknown, so a wrong name and a wrong password take equally long."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m storage.accounts", description="Manage Attune's accounts.")
    parser.add_argument("--file", type=Path, required=True, help="the accounts file given to app.py --auth")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add an account (asks for its password)")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    commands.add_parser("remove", help="remove an account (its profiles stay, hidden)").add_argument("name")
    commands.add_parser("list", help="list the accounts")
    adopt = commands.add_parser("adopt", help="give every household profile (made without --auth) to an account")
    adopt.add_argument("name")
    adopt.add_argument("--data-dir", type=Path, required=True)
    return parser.parse_args(argv)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != password:
        raise InvalidInput("The two passwords differ; nothing was changed.")
    return password


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parse(argv)
    accounts = Accounts(args.file)
    try:
        if args.command == "add":
            accounts.add(args.name, _password(args.password_stdin))
            log.info("Account '%s' added.", args.name)
        elif args.command == "remove":
            accounts.remove(args.name)
            log.info("Account '%s' removed; its profiles stay in the data home.", args.name)
        elif args.command == "list":
            for name in accounts.names():
                sys.stdout.write(name + "\n")
        else:
            from storage.db import DB_FILENAME
            from storage.store import Store

            if account_key(args.name) not in {account_key(n) for n in accounts.names()}:
                raise NotFound(f"No account is named '{args.name}'.")
            moved = Store(args.data_dir / DB_FILENAME).adopt_household_profiles(account_key(args.name))
            log.info("%d household profile(s) now belong to '%s'.", moved, args.name)
    except AttuneError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
