"""The Redis users (ladder.redisacl) against the one place key names are built
(ladder.state.keys.Keys): every key family is some service's, each user reaches its
families with the right it was given and nothing else of consequence, the key names
the code (services, Lua scripts) builds are families of Keys, and docs/bus-security.md
shows the rules the code renders."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from ladder import redisacl
from ladder.redisacl import READ, READ_WRITE
from ladder.state import scripts
from ladder.state.keys import Keys
from ladder.testing import redisusers
from ladder.testing.redisusers import sample_keys

ROOT = Path(__file__).resolve().parents[2]
KEYS = Keys.for_prefix("t1.")


def access(acl: redisacl.AclUser, key: str, keys: Keys = KEYS) -> str:
    return redisusers.access(acl, key, keys)


def test_every_key_family_belongs_to_some_service() -> None:
    granted = {b for name in redisacl.SERVICE_USERS for b in redisacl.user(name).keys}
    missing = set(redisacl.builders()) - granted
    assert not missing, (f"key families no service user is granted: {sorted(missing)} "
                         "(grant them in ladder.redisacl.USERS)")
    unknown = granted - set(redisacl.builders())
    assert not unknown, f"grants of key families Keys does not build: {sorted(unknown)}"


@pytest.mark.parametrize("name", redisacl.SERVICE_USERS)
def test_each_service_reaches_its_keys_with_its_right(name: str) -> None:
    acl = redisacl.user(name)
    for builder, right in acl.keys.items():
        for key in sample_keys(KEYS, builder):
            got = access(acl, key)
            assert got == READ_WRITE or got == right, (name, builder, key, got)


def test_the_operator_reaches_every_key_of_every_prefix() -> None:
    admin = redisacl.user(redisacl.ADMIN)
    for keys in (KEYS, Keys.for_prefix("other.")):
        for builder in redisacl.builders():
            for key in sample_keys(keys, builder):
                assert access(admin, key, keys) == READ_WRITE, key


def test_no_service_reaches_another_stacks_keys_or_what_it_does_not_need() -> None:
    other = Keys.for_prefix("other.")
    for name in redisacl.SERVICE_USERS:
        acl = redisacl.user(name)
        for builder in redisacl.builders():
            assert all(access(acl, key, KEYS) == "" for key in sample_keys(other, builder)), name
    earlystop, lineage = redisacl.user("earlystop"), redisacl.user("lineage")
    for builder in redisacl.builders():
        for key in sample_keys(KEYS, builder):
            assert access(earlystop, key) in ("", READ) and access(lineage, key) in ("", READ)
            if not key.startswith(KEYS.root + "trial:"):
                assert access(earlystop, key) == "", key
            if builder.startswith(("suggest_", "partition_")):
                assert access(redisacl.user("evaluate"), key) == "", key
            if builder in ("tenants", "tokens"):
                # Only the operator issues tokens and sets quotas.
                assert all(access(redisacl.user(n), key) != READ_WRITE
                           for n in redisacl.SERVICE_USERS), key
    assert access(redisacl.user("suggest"), KEYS.last_sweep) == ""
    assert access(redisacl.user("evaluate"), KEYS.studies) == ""


def test_commands_exclude_the_dangerous_ones() -> None:
    for acl in redisacl.USERS:
        rules = redisacl.rules(acl, KEYS)
        assert rules[rules.index("resetchannels") + 1] == "-@all", acl.name
        assert "+@all" not in rules and "-@dangerous" in rules and "-@admin" in rules
        assert {"-scan", "-function"} <= set(rules)
        granted = {r for r in rules if r.startswith("+") and "|" not in r} - {
            "+@read", "+@write", "+@connection", "+@transaction", "+evalsha", "+eval", "+time"}
        assert not granted, (acl.name, granted)
    for name in ("earlystop", "lineage"):
        assert "+@write" not in redisacl.rules(redisacl.user(name), KEYS)


def test_the_default_user_is_off_and_every_user_starts_from_nothing() -> None:
    lines = redisacl.acl_lines(KEYS, {name: f"pw-{name}" for name in redisacl.USER_NAMES})
    assert lines[0].split()[:3] == ["user", "default", "off"]
    assert ">" not in lines[0] and "nopass" not in lines[0]
    for line, acl in zip(lines[1:], redisacl.USERS, strict=True):
        words = line.split()
        assert words[:4] == ["user", acl.name, "reset", "on"]
        assert words[4] == "#" + redisacl.password_hash(f"pw-{acl.name}")
        assert not any(w.startswith(">") for w in words), "no password in clear"
    setuser = redisacl.setuser_commands(KEYS)
    assert setuser[-1].startswith("ACL SETUSER default off")


def test_urls_carry_the_user_and_the_anonymous_one_nothing() -> None:
    url = redisacl.user_url("redis://:old@127.0.0.1:6379/0", "suggest", "p/w@x")
    assert url == "redis://suggest:p%2Fw%40x@127.0.0.1:6379/0"
    assert redisacl.anonymous_url(url) == "redis://127.0.0.1:6379/0"


def test_each_process_is_given_its_own_user_and_an_older_or_external_redis_its_url() -> None:
    stack = "redis://admin:a@127.0.0.1:6379/0"
    passwords = {name: f"pw-{name}" for name in redisacl.USER_NAMES}
    assert redisacl.service_url(stack, "lineage", passwords) == (
        "redis://lineage:pw-lineage@127.0.0.1:6379/0")
    assert redisacl.service_url(stack, "dashboard", passwords) == "redis://127.0.0.1:6379/0"
    assert redisacl.service_url(stack, "suggest", None) == stack
    before_users = "redis://:one@127.0.0.1:6379/0"
    assert redisacl.service_url(before_users, "suggest", passwords) == before_users


def test_passwords_are_owner_only_files_made_once(tmp_path: Path) -> None:
    first = redisacl.ensure_passwords(tmp_path / "users")
    assert set(first) == set(redisacl.USER_NAMES) and len(set(first.values())) == len(first)
    assert redisacl.ensure_passwords(tmp_path / "users") == first
    assert (tmp_path / "users").stat().st_mode & 0o777 == 0o700
    for name in redisacl.USER_NAMES:
        assert (tmp_path / "users" / name).stat().st_mode & 0o777 == 0o600
    conf = tmp_path / "redis-auth.conf"
    redisacl.write_server_config(conf, KEYS, first)
    assert conf.stat().st_mode & 0o777 == 0o600
    assert all(secret not in conf.read_text() for secret in first.values())


def _key_attributes(path: Path) -> set[str]:
    """The Keys builders a module names (``x.keys.trial(...)``, ``Keys...(...).trial``,
    ``keys.leases``)."""
    names = set(redisacl.builders())
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in names:
            base = ast.unparse(node.value)
            if re.search(r"(^|\.)keys$|^k$|Keys\b", base):
                found.add(node.attr)
    return found


# Modules whose key names only one service's process uses.
_OWN_MODULES = {
    "suggest": ["services/suggest", "libs/ladder/state/leases.py"],
    "evaluate": ["services/evaluate", "libs/ladder/state/offsets.py"],
    "earlystop": ["services/earlystop", "libs/ladder/trialcheck.py"],
    "lineage": ["services/lineage"],
}


@pytest.mark.parametrize("name", redisacl.SERVICE_USERS)
def test_every_key_family_a_service_names_is_granted_to_it(name: str) -> None:
    used: set[str] = set()
    for place in _OWN_MODULES[name]:
        path = ROOT / place
        for module in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            used |= _key_attributes(module)
    missing = used - set(redisacl.user(name).keys)
    assert not missing, f"{name} names key families it is not granted: {sorted(missing)}"


def test_the_lua_scripts_build_only_keys_of_families_keys_builds() -> None:
    source = inspect.getsource(scripts)
    literals = set(re.findall(r"root \.\. '([^']+)'", source))
    assert {"tenants", "study:", "trial:"} <= literals
    samples = [key for b in redisacl.builders() for key in sample_keys(KEYS, b)]
    for literal in literals:
        assert any(key.startswith(KEYS.root + literal) for key in samples), literal


def test_the_docs_show_the_rules_the_code_renders() -> None:
    text = (ROOT / "docs" / "bus-security.md").read_text()
    block = re.search(r"```text\n(user default .*?)```", text, re.S)
    assert block, "docs/bus-security.md lost its ACL file block"
    expected = redisacl.acl_lines(Keys.for_prefix("ladder."))
    assert block.group(1).splitlines() == expected, (
        "docs/bus-security.md: paste the output of `ladder redis-acl --topic-prefix ladder.`")



def test_passwords_from_the_environment_are_each_users_and_checked() -> None:
    env = {redisacl.password_variable(n): f"{n}-0123456789abcdef" for n in redisacl.USER_NAMES}
    assert redisacl.passwords_from_env(env) == {
        n: f"{n}-0123456789abcdef" for n in redisacl.USER_NAMES}
    assert redisacl.password_variable("earlystop") == "REDIS_PASSWORD_EARLYSTOP"
    bad = {**env, "REDIS_PASSWORD_ADMIN": "short", "REDIS_PASSWORD_LINEAGE": "a" * 20 + "@/"}
    del bad["REDIS_PASSWORD_SUGGEST"]
    with pytest.raises(ValueError) as error:
        redisacl.passwords_from_env(bad)
    message = str(error.value)
    assert "REDIS_PASSWORD_SUGGEST is not set" in message
    assert "REDIS_PASSWORD_ADMIN is shorter than 16" in message
    assert "REDIS_PASSWORD_LINEAGE is not made of letters" in message
    assert "EVALUATE" not in message and "EARLYSTOP" not in message
    fresh = redisacl.new_password()
    assert len(fresh) == 48 and redisacl.passwords_from_env(
        {redisacl.password_variable(n): fresh for n in redisacl.USER_NAMES})


def test_the_cli_prints_env_lines_and_writes_the_acl_file_from_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ladder import cli

    assert cli.main(["redis-acl", "--env"]) == 0
    env = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert set(env) == {redisacl.password_variable(n) for n in redisacl.USER_NAMES}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "users.acl"
    assert cli.main(["redis-acl", "--topic-prefix", "t1.", "--passwords-from-env",
                     "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    passwords = redisacl.passwords_from_env(env)
    assert out.read_text().splitlines() == redisacl.acl_lines(KEYS, passwords)
    assert out.stat().st_mode & 0o777 == 0o600
    assert cli.main(["redis-acl", "--passwords-from-env", "--urls", "redis://r:6379/0"]) == 0
    urls = capsys.readouterr().out.splitlines()
    assert urls[0] == f"redis-url-suggest=redis://suggest:{passwords['suggest']}@r:6379/0"
    monkeypatch.delenv("REDIS_PASSWORD_ADMIN")
    with pytest.raises(SystemExit, match="REDIS_PASSWORD_ADMIN is not set"):
        cli.main(["redis-acl", "--passwords-from-env"])
