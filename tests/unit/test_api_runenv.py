"""The run environment a worker captures (``ladder.runenv``): pure parts with fixed
inputs, git in a scratch repository, and the whole capture within the field limits."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import pytest
from ladder import limits, runenv
from ladder.v1 import trial_pb2


class Dist:
    def __init__(self, name: str, version: str) -> None:
        self.metadata = {"Name": name}
        self.version = version


def test_packages_are_normalised_sorted_and_unique() -> None:
    found = runenv.package_list([Dist("Torch", "2.1"), Dist("scikit_learn", "1.5"),
                                 Dist("torch", "2.1"), Dist("zope.interface", "6")])
    assert found == ["scikit-learn==1.5", "torch==2.1", "zope-interface==6"]


def test_the_package_hash_ignores_order_and_sees_versions() -> None:
    assert runenv.packages_hash(["a==1", "b==2"]) == runenv.packages_hash(["b==2", "a==1"])
    assert runenv.packages_hash(["a==1"]) != runenv.packages_hash(["a==2"])
    assert len(runenv.packages_hash([])) == 64


def test_this_interpreter_lists_its_packages() -> None:
    packages = runenv.package_list()
    version = importlib.metadata.version("grpcio")
    assert f"grpcio=={version}" in packages


def test_the_dataset_hash_follows_content_and_names_not_location(tmp_path: Path) -> None:
    for root in ("a", "b"):
        (tmp_path / root / "data").mkdir(parents=True)
        (tmp_path / root / "data" / "x.csv").write_text("1,2\n")
        (tmp_path / root / "data" / "y.csv").write_text("3,4\n")
    first = runenv.dataset_hash([tmp_path / "a" / "data"])
    assert first.startswith("sha256:")
    assert first == runenv.dataset_hash([tmp_path / "b" / "data"])
    (tmp_path / "b" / "data" / "y.csv").write_text("3,5\n")
    assert runenv.dataset_hash([tmp_path / "b" / "data"]) != first
    (tmp_path / "a" / "data" / "y.csv").rename(tmp_path / "a" / "data" / "z.csv")
    assert runenv.dataset_hash([tmp_path / "a" / "data"]) != first
    with pytest.raises(FileNotFoundError, match="missing"):
        runenv.dataset_hash([tmp_path / "missing"])


def test_nvidia_smi_output() -> None:
    assert runenv.parse_nvidia_smi("NVIDIA A100\nNVIDIA A100\n") == ("NVIDIA A100", 2)
    assert runenv.parse_nvidia_smi("A\nB\nA\n") == ("A + B", 3)
    assert runenv.parse_nvidia_smi("") == ("", 0)


def test_the_cpu_model_comes_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 3GHz\n")
    assert runenv.cpu_model(cpuinfo) == "Example CPU @ 3GHz"


def test_entry_points(tmp_path: Path) -> None:
    assert runenv.entry_point(["-m", "--lr", "3"], main_module="pkg.train.__main__") == \
        "python -m pkg.train --lr 3"
    script = tmp_path / "repo" / "sub" / "train.py"
    assert runenv.entry_point([str(script), "a b"], main_module="__main__",
                              root=tmp_path / "repo") == "python sub/train.py 'a b'"
    # A spawned worker of ladder.optimize runs the script as __mp_main__.
    assert runenv.entry_point([str(script)], main_module="__mp_main__") == f"python {script}"


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


def test_the_code_state_of_a_work_tree(tmp_path: Path) -> None:
    assert runenv.code_state(tmp_path) == runenv.CodeState("", False, None)
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "train.py").write_text("print(1)\n")
    git(tmp_path, "add", "train.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    (tmp_path / "sub").mkdir()
    clean = runenv.code_state(tmp_path / "sub")
    assert len(clean.commit) == 40 and not clean.dirty and clean.root == tmp_path.resolve()
    (tmp_path / "untracked.txt").write_text("output")
    assert not runenv.code_state(tmp_path).dirty  # outputs do not make it dirty
    (tmp_path / "train.py").write_text("print(2)\n")
    assert runenv.code_state(tmp_path).dirty


def test_a_capture_is_complete_and_within_the_limits(tmp_path: Path) -> None:
    (tmp_path / "d.bin").write_bytes(b"\x00" * 10)
    env = runenv.capture(dataset_files=[tmp_path / "d.bin"], folder=tmp_path,
                         argv=["train.py", "--x", "1"])
    assert env.python and env.os and env.hostname and env.cpu_count > 0
    assert env.packages and env.packages_hash == runenv.packages_hash(list(env.packages))
    assert env.dataset_id == runenv.dataset_hash([tmp_path / "d.bin"])
    assert env.entry_point.startswith("python ") and env.entry_point.endswith("--x 1")
    limits.check(env)
    assert runenv.capture(dataset_id="given", folder=tmp_path).dataset_id == "given"


def test_texts_and_lists_over_their_limits_are_cut() -> None:
    env = trial_pb2.RunEnvironment(cpu_model="x" * 10_000,
                                   packages=[f"p{i}==1" + "v" * 300 for i in range(5000)])
    clipped = runenv._clip(env)
    limits.check(clipped)
    assert len(clipped.packages) == limits.PACKAGES
