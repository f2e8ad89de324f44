"""Signing and verification of the events only their owning service may publish."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from ladder import signing
from ladder.config import Topics
from ladder.signing import Keyring, parse_keys

SECRET = bytes(range(32))
RING = Keyring({"k1": SECRET}, "k1")


def test_a_signed_record_verifies() -> None:
    headers = RING.sign("ladder.decisions", b"trial-1", b"value")
    assert [name for name, _ in headers] == [signing.KID_HEADER, signing.SIG_HEADER]
    assert RING.problem("ladder.decisions", b"trial-1", b"value", headers) is None


@pytest.mark.parametrize(
    ("topic", "key", "value", "why"),
    [
        ("ladder.decisions", b"trial-1", b"value!", "bad signature"),
        ("ladder.decisions", b"trial-2", b"value", "bad signature"),
        ("ladder.studies", b"trial-1", b"value", "bad signature"),
    ],
)
def test_a_signature_does_not_move_to_another_value_key_or_topic(
    topic: str, key: bytes, value: bytes, why: str
) -> None:
    headers = RING.sign("ladder.decisions", b"trial-1", b"value")
    problem = RING.problem(topic, key, value, headers)
    assert problem is not None and why in problem


def test_key_and_value_boundary_is_part_of_the_mac() -> None:
    # "ab" + "c" and "a" + "bc" concatenate alike: the lengths keep them apart.
    headers = RING.sign("t", b"ab", b"c")
    assert RING.problem("t", b"a", b"bc", headers) is not None


def test_unsigned_and_unknown_key_records_are_refused() -> None:
    unsigned = RING.problem("ladder.decisions", b"k", b"v", [("traceparent", b"00-")])
    assert unsigned is not None and unsigned.startswith("unsigned record")
    other = Keyring({"k9": bytes(32)}, "k9").sign("ladder.decisions", b"k", b"v")
    unknown = RING.problem("ladder.decisions", b"k", b"v", other)
    assert unknown is not None and "unknown key id 'k9'" in unknown
    forged = [(signing.KID_HEADER, b"k1"), (signing.SIG_HEADER, b"\0" * 32)]
    bad = RING.problem("ladder.decisions", b"k", b"v", forged)
    assert bad is not None and bad.startswith("bad signature")


def test_rotation_old_key_still_verifies_new_key_signs() -> None:
    old = Keyring({"k1": SECRET}, "k1")
    rotated = parse_keys(f"k2:{'ab' * 32},k1:{SECRET.hex()}")
    assert rotated.current == "k2"
    by_old = old.sign("t", b"k", b"v")
    assert rotated.problem("t", b"k", b"v", by_old) is None  # during the rotation
    by_new = rotated.sign("t", b"k", b"v")
    assert dict(by_new)[signing.KID_HEADER] == b"k2"
    assert old.problem("t", b"k", b"v", by_new) is not None  # a process not rotated yet


def test_no_key_signs_nothing_and_checks_nothing() -> None:
    empty = Keyring()
    assert not empty.enabled
    assert empty.sign("t", b"k", b"v") == []
    assert empty.problem("t", b"k", b"v", []) is None


@pytest.mark.parametrize("spec", ["k1", "k1:nothex", f":{SECRET.hex()}", "k1:00ff"])
def test_bad_key_settings_are_refused(spec: str) -> None:
    with pytest.raises(signing.KeyError_):
        parse_keys(spec)


def test_keyring_from_env_or_state_folder(tmp_path: Path) -> None:
    spec = signing.ensure_keyring(tmp_path)
    keys = tmp_path / signing.KEYS_FILE
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    assert signing.ensure_keyring(tmp_path) == spec  # made once, then read
    current = json.loads(keys.read_text())["current"]
    assert signing.keyring(tmp_path, env={}).current == current
    assert parse_keys(spec).keys == signing.keyring(tmp_path, env={}).keys
    env = {"LADDER_BUS_SIGNING_KEY": SECRET.hex()}
    assert signing.keyring(tmp_path, env=env).keys == {signing.DEFAULT_KID: SECRET}
    assert not signing.keyring(tmp_path / "none", env={}).enabled


def test_signed_topics_are_the_owned_ones() -> None:
    topics = Topics("p.")
    assert signing.signed_topics(topics) == {
        topics.decisions, topics.rungs, topics.studies, topics.trials
    }


def test_the_embedded_redis_password_is_in_its_url_and_a_file_not_on_the_command_line(
    tmp_path: Path,
) -> None:
    from ladder.stack import components, ports

    assert ports.redis_url(6380, password="pw") == "redis://:pw@127.0.0.1:6380/0"
    assert ports.redacted_url("redis://:pw@127.0.0.1:6380/0") == "redis://:***@127.0.0.1:6380/0"
    assert ports.redacted_url("redis://127.0.0.1:6380/0") == "redis://127.0.0.1:6380/0"
    conf = tmp_path / "redis-auth.conf"
    secret = signing.ensure_secret_file(conf, lambda: "requirepass s3cret\n")
    assert secret == "requirepass s3cret" and stat.S_IMODE(os.stat(conf).st_mode) == 0o600
    assert signing.ensure_secret_file(conf, lambda: "requirepass other\n") == secret
    argv = components.redis_argv(6399, tmp_path, config_file=conf)
    assert argv[1] == str(conf) and not any("s3cret" in arg for arg in argv)
