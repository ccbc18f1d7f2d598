"""``--threads auto``: the free cores at start, read from /proc/stat (drifting.threads)."""

import argparse

import pytest
import torch

import drifting.cli as cli
from drifting import threads
from drifting.cli.args import threads_arg

# two snapshots of /proc/stat, 0.2 s apart on 2 cores: cpu0 all idle (20 ticks), cpu1 busy 18 of 20
STAT0 = """cpu  300 0 100 1000 10 0 0 0 0 0
cpu0 100 0 50 500 5 0 0 0 0 0
cpu1 200 0 50 500 5 0 0 0 0 0
intr 1 2 3
"""
STAT1 = """cpu  318 0 100 1022 10 0 0 0 0 0
cpu0 100 0 50 518 7 0 0 0 0 0
cpu1 218 0 50 502 5 0 0 0 0 0
intr 1 2 3
"""


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(cli, "usable_cores", lambda: [0, 1])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_idle_ticks_sums_idle_and_iowait_of_the_usable_cores():
    assert threads._idle_ticks(STAT0, [0, 1]) == (1010, 1410)
    assert threads._idle_ticks(STAT0, [1]) == (505, 755)  # the aggregate "cpu" line is not a core


def test_free_cores_counts_other_processes_idle_time(two_cores):
    snaps = iter([STAT0, STAT1])
    slept = []
    free = threads.free_cores(0.2, read=lambda: next(snaps), sleep=slept.append)
    # cpu0: 20 idle of 20; cpu1: 2 idle of 20 -> 2 * 22 / 40 = 1.1 cores free
    assert free == pytest.approx(1.1) and slept == [0.2]
    assert threads.free_cores(read=lambda: "garbage", sleep=lambda s: None) is None  # no cpu lines: 0 ticks
    assert threads.free_cores(read=_raise_oserror, sleep=lambda s: None) is None


def _raise_oserror():
    raise OSError("no /proc here")


@pytest.mark.parametrize("free, want", [(1.9, 2), (1.1, 1), (0.9, 1), (0.05, 1), (7.0, 2)])
def test_auto_rounds_free_cores_within_one_and_the_usable_cores(two_cores, free, want):
    k, why = threads.choose_threads("auto", free=free)
    assert k == want and f"{free:.1f} of 2 cores free" in why


def test_explicit_threads_and_the_environment_win_over_auto(two_cores, monkeypatch):
    assert threads.choose_threads(3, free=0.0) == (3, "--threads")
    assert threads.choose_threads(None)[0] is None
    monkeypatch.setattr(threads, "free_cores", lambda: None)
    assert threads.choose_threads("auto")[0] is None  # /proc/stat unreadable: torch's default
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads("auto", free=0.5) == (None, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert threads.choose_threads("auto", free=0.5)[0] is None


def test_threads_argument_accepts_auto_or_a_positive_integer():
    assert threads_arg("auto") == "auto" and threads_arg("3") == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer or 'auto'"):
            threads_arg(bad)
    p = cli.build_parser()
    assert p.parse_args(["fit-points", "8gaussians", "--out", "x"]).threads == "auto"  # the default


def test_main_applies_the_auto_choice_and_says_so(two_cores, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(threads, "free_cores", lambda: 1.0)  # one core busy elsewhere
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    rc = cli.main(["fit-points", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "o")])
    assert rc == 2  # the missing file, after the threads were set
    assert calls[0] == 1 and "1 torch thread(s) (auto: 1.0 of 2 cores free" in capsys.readouterr().err
    assert calls[-1] == torch.get_num_threads()  # restored for the caller
