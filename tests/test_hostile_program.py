"""The real program against a hostile local environment: run directories it must
refuse, and the warning for an unauthenticated QMP listener on the network."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nvshell(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("XDG_RUNTIME_DIR", None)
    return subprocess.run([sys.executable, "-m", "nvshell", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def test_a_symlinked_run_dir_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    link = tmp_path / "run"
    link.symlink_to(target)
    done = nvshell("--run-dir", str(link))
    assert done.returncode == 1
    assert "is a symbolic link" in done.stderr, done.stderr
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o755) and os.listdir(target) == []


def test_a_group_or_world_accessible_run_dir_is_refused_not_chmodded(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    done = nvshell("--run-dir", str(shared))
    assert done.returncode == 1
    assert "open to group or others (mode 1777)" in done.stderr, done.stderr
    assert os.stat(shared).st_mode & 0o7777 == 0o1777 and os.listdir(shared) == []


def test_a_run_dir_that_is_not_a_directory_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    done = nvshell("--run-dir", str(f))
    assert done.returncode == 1 and "not a directory" in done.stderr, done.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="creating a directory owned by another user needs root")
def test_a_run_dir_of_another_user_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    done = nvshell("--run-dir", str(other))
    assert done.returncode == 1 and "belongs to another user (uid 65534)" in done.stderr, done.stderr


def test_a_fresh_run_dir_is_created_owner_only_and_an_own_private_one_reused(tmp_path):
    old = os.umask(0)
    try:
        run = tmp_path / "a" / "run"
        done = nvshell("--run-dir", str(run))
        assert done.returncode == 0, done.stderr
        assert os.stat(run).st_mode & 0o777 == 0o700
        done = nvshell("--run-dir", str(run))
        assert done.returncode == 0, done.stderr
    finally:
        os.umask(old)


def test_qmp_on_a_network_address_warns_and_loopback_does_not(tmp_path):
    run = tmp_path / "run"
    done = nvshell("--run-dir", str(run), "-qmp", "tcp:0.0.0.0:0,server=on,wait=off")
    assert done.returncode == 0, done.stderr
    assert "warning: QMP on tcp:0.0.0.0:" in done.stderr and "no authentication" in done.stderr, done.stderr
    done = nvshell("--run-dir", str(run), "-qmp", "tcp:127.0.0.1:0,server=on,wait=off")
    assert done.returncode == 0, done.stderr
    assert "no authentication" not in done.stderr, done.stderr
