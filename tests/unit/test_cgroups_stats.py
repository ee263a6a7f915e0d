"""Stats from v1 and v2 cgroup files, the nano-core rate and /proc/net/dev parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisp.cgroups.host import CgroupHost, CgroupMode
from crisp.cgroups.netdev import parse_net_dev
from crisp.cgroups.stats import CpuRateTracker, read_stats, read_stats_many
from crisp.errors import NotFound


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def _v1_host(root: Path) -> CgroupHost:
    return CgroupHost(
        CgroupMode.HYBRID,
        v1_mounts={name: str(root / name) for name in ("cpu", "cpuacct", "memory", "pids")},
        unified_mount=str(root / "unified"),
    )


def test_v1_stats(tmp_path: Path) -> None:
    host = _v1_host(tmp_path)
    _write(tmp_path / "cpuacct/p/c", {"cpuacct.usage": "1234567\n"})
    _write(tmp_path / "memory/p/c", {
        "memory.usage_in_bytes": "10000\n",
        "memory.limit_in_bytes": "50000\n",
        "memory.memsw.limit_in_bytes": "60000\n",
        "memory.stat": "cache 1\nrss 2\ntotal_rss 4000\ntotal_inactive_file 3000\n"
                       "total_pgfault 77\ntotal_pgmajfault 3\ntotal_swap 500\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    })
    _write(tmp_path / "pids/p/c", {"pids.current": "5\n", "cgroup.procs": "1\n2\n3\n"})
    stats = read_stats(host, "/p/c")
    assert stats.cpu_usage_core_ns == 1234567
    assert stats.memory_usage_bytes == 10000
    assert stats.memory_working_set_bytes == 7000
    assert stats.memory_available_bytes == 43000
    assert stats.memory_rss_bytes == 4000
    assert (stats.page_faults, stats.major_page_faults) == (77, 3)
    assert stats.swap_usage_bytes == 500
    assert stats.swap_available_bytes == 60000 - 10000 - 500
    assert stats.process_count == 3
    assert stats.oom_kills == 2
    assert stats.timestamp_ns > 0


def test_v1_unlimited_memory_has_no_available_bytes(tmp_path: Path) -> None:
    host = _v1_host(tmp_path)
    _write(tmp_path / "memory/p", {
        "memory.usage_in_bytes": "100\n",
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.stat": "total_inactive_file 500\n",
    })
    stats = read_stats(host, "/p")
    assert stats.memory_available_bytes is None
    assert stats.memory_working_set_bytes == 0  # inactive file above usage clamps to zero
    assert stats.cpu_usage_core_ns is None
    assert stats.swap_usage_bytes is None


def test_v2_stats(tmp_path: Path) -> None:
    host = CgroupHost(
        CgroupMode.UNIFIED,
        unified_mount=str(tmp_path),
        unified_controllers=frozenset({"cpu", "memory", "pids"}),
    )
    _write(tmp_path / "kubepods/pod/c", {
        "cpu.stat": "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        "memory.current": "8192\n",
        "memory.max": "max\n",
        "memory.stat": "anon 4096\nfile 4096\ninactive_file 1024\npgfault 9\npgmajfault 1\n",
        "memory.swap.current": "0\n",
        "memory.swap.max": "4096\n",
        "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        "pids.current": "2\n",
        "cgroup.procs": "7\n8\n",
    })
    stats = read_stats(host, "/kubepods/pod/c")
    assert stats.cpu_usage_core_ns == 2_500_000
    assert stats.memory_working_set_bytes == 8192 - 1024
    assert stats.memory_available_bytes is None
    assert stats.memory_rss_bytes == 4096
    assert (stats.page_faults, stats.major_page_faults) == (9, 1)
    assert (stats.swap_usage_bytes, stats.swap_available_bytes) == (0, 4096)
    assert stats.process_count == 2
    assert stats.oom_kills == 1


def test_process_count_counts_the_subtree_without_pids_controller(tmp_path: Path) -> None:
    host = CgroupHost(CgroupMode.LEGACY, v1_mounts={"memory": str(tmp_path)})
    _write(tmp_path / "pod", {"cgroup.procs": ""})
    _write(tmp_path / "pod/a", {"cgroup.procs": "10\n11\n"})
    _write(tmp_path / "pod/b", {"cgroup.procs": "12\n"})
    assert read_stats(host, "/pod").process_count == 3


def test_process_count_goes_below_the_first_level(tmp_path: Path) -> None:
    host = CgroupHost(CgroupMode.LEGACY, v1_mounts={"pids": str(tmp_path)})
    _write(tmp_path / "pod", {"cgroup.procs": "1\n"})
    _write(tmp_path / "pod/leaf", {"cgroup.procs": "2\n3\n"})
    _write(tmp_path / "pod/nested", {"cgroup.procs": ""})
    _write(tmp_path / "pod/nested/inner", {"cgroup.procs": "4\n"})
    _write(tmp_path / "pod/nested/inner/deeper", {"cgroup.procs": "5\n6\n"})
    (tmp_path / "pod/not-a-cgroup").write_text("")  # a file, not a cgroup below
    assert read_stats(host, "/pod").process_count == 6
    assert read_stats(host, "/pod/nested").process_count == 3


def test_oom_kills_are_read_only_when_asked(tmp_path: Path) -> None:
    host = _v1_host(tmp_path)
    _write(tmp_path / "memory/c", {
        "memory.usage_in_bytes": "100\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    })
    assert read_stats(host, "/c").oom_kills == 3
    assert read_stats(host, "/c", oom_kills=False).oom_kills is None


def test_an_existing_cgroup_without_its_files_reads_as_unknowns(tmp_path: Path) -> None:
    host = _v1_host(tmp_path)
    (tmp_path / "memory/empty").mkdir(parents=True)
    stats = read_stats(host, "/empty", processes=False)
    assert stats.memory_usage_bytes is None and stats.cpu_usage_core_ns is None


def test_flat_keyed_files_with_odd_lines_keep_the_good_ones(tmp_path: Path) -> None:
    host = _v1_host(tmp_path)
    _write(tmp_path / "memory/c", {
        "memory.usage_in_bytes": "100\n",
        "memory.stat": "total_rss 40\nodd line here\ntotal_pgfault 7\n",
    })
    stats = read_stats(host, "/c")
    assert (stats.memory_rss_bytes, stats.page_faults) == (40, 7)


def test_large_files_are_read_to_their_end(tmp_path: Path) -> None:
    text = "".join(f"{pid}\n" for pid in range(100_000, 130_000))  # well past one read
    host = CgroupHost(CgroupMode.LEGACY, v1_mounts={"pids": str(tmp_path)})
    _write(tmp_path / "big", {"cgroup.procs": text})
    assert read_stats(host, "/big").process_count == 30_000


def test_a_missing_cgroup_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="/nope"):
        read_stats(_v1_host(tmp_path), "/nope")


async def test_many_leaves_out_cgroups_that_are_gone(tmp_path: Path) -> None:
    host = _v1_host(tmp_path)
    _write(tmp_path / "memory/here", {"memory.usage_in_bytes": "1\n"})
    result = await read_stats_many(host, ["/here", "/gone"])
    assert list(result) == ["/here"]


def test_rate_needs_two_readings_and_is_in_nano_cores() -> None:
    tracker = CpuRateTracker(min_interval_ns=0)
    assert tracker.observe("c", 0, 1_000_000_000) is None
    # Half a core for two seconds.
    assert tracker.observe("c", 1_000_000_000, 3_000_000_000) == 500_000_000
    assert tracker.observe("c", 3_000_000_000, 4_000_000_000) == 2_000_000_000


def test_readings_too_close_together_repeat_the_known_rate() -> None:
    tracker = CpuRateTracker(min_interval_ns=1_000_000_000)
    tracker.observe("c", 0, 0)
    assert tracker.observe("c", 10, 500_000_000) is None
    assert tracker.observe("c", 1_000_000_000, 2_000_000_000) == 500_000_000
    assert tracker.observe("c", 9_000_000_000, 2_100_000_000) == 500_000_000


def test_a_counter_going_back_starts_over() -> None:
    tracker = CpuRateTracker(min_interval_ns=0)
    tracker.observe("c", 5_000, 1)
    assert tracker.observe("c", 10, 2_000_000_000) is None
    tracker.forget("c")
    assert tracker.keys() == set()


NET_DEV = "\n".join([
    "Inter-|   Receive                                                |  Transmit",
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
    "drop fifo colls carrier compressed",
    "    lo:     140       2    0    0    0     0          0         0      140       2    0 "
    "   0    0     0       0          0",
    "  eth0: 1296845    1001    3    4    0     0          0         0    52000     500    5 "
    "   6    0     0       0          0",
])


def test_net_dev_parsing() -> None:
    lo, eth0 = parse_net_dev(NET_DEV)
    assert lo.name == "lo" and lo.rx_bytes == 140
    assert (eth0.rx_bytes, eth0.rx_packets) == (1296845, 1001)
    assert (eth0.rx_errors, eth0.rx_dropped) == (3, 4)
    assert (eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors, eth0.tx_dropped) == (52000, 500, 5, 6)
