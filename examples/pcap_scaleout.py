"""Running one XDP program over many captures in parallel, with multiprocessing or a local Dask
cluster: the loaded program (a ``VM``, with its maps and their contents) is pickled to each
worker, which runs it with the JIT over the packets of its capture in one native batch.

    python examples/pcap_scaleout.py a.pcap b.pcap c.pcap        # multiprocessing, a worker per core
    python examples/pcap_scaleout.py --dask --workers 4 *.pcap   # a local Dask cluster
    python examples/pcap_scaleout.py --demo 4                    # four generated captures

The program is the firewall of ``xdp_firewall.c`` (built with clang), blocking 192.168.0.1. Each
worker reports its packets per second; every worker sees the map contents the parent set, but
updates a worker's program makes stay in that worker. Dask is an optional extra
(``pip install jitbpf[dask]``).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import ipaddress
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt

from jitbpf import testing
from jitbpf.linux.elf import load_elf
from jitbpf.pcap import read_packets, verdict_name
from jitbpf.vm import VM

HERE = Path(__file__).resolve().parent
BLOCKED = "192.168.0.1"


@dataclass(frozen=True)
class WorkerResult:
    """One capture's run in one worker."""

    capture: str
    worker: int  # the worker's process id
    packets: int
    seconds: float  # time in the program runs (reading the capture excluded)
    verdicts: dict[str, int]

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0


def firewall() -> VM:
    """The firewall program, JIT-compiled, with BLOCKED in its map."""
    obj = load_elf(testing.compile_c(HERE / "xdp_firewall.c", include=[HERE / "include"]))
    obj["BLOCKED_IPS"][int(ipaddress.IPv4Address(BLOCKED))] = 1
    vm = obj.program("xdp_firewall").vm()
    vm.jit_compile()
    return vm


def run_capture(vm: VM, capture: str) -> WorkerResult:
    """Run ``vm`` over every packet of ``capture`` (in the worker that received it)."""
    packets = [packet for packet, _fraction in read_packets(capture)]
    start = time.perf_counter()
    outcome = vm.run_batch(packets, engine="jit")
    seconds = time.perf_counter() - start
    verdicts = collections.Counter(verdict_name(vm.prog_type, r0) or str(r0) for r0 in outcome.results)
    return WorkerResult(capture, os.getpid(), len(packets), seconds, dict(verdicts))


def with_multiprocessing(vm: VM, captures: Sequence[str], workers: int) -> list[WorkerResult]:
    """One task per capture over a pool of ``workers`` processes (spawned: nothing is inherited,
    the VM travels pickled)."""
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.starmap(run_capture, [(vm, c) for c in captures])


def with_dask(vm: VM, captures: Sequence[str], workers: int) -> list[WorkerResult]:
    """The same over a local Dask cluster of ``workers`` single-threaded processes."""
    distributed: Any = importlib.import_module("dask.distributed")  # an optional extra: imported when used
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        shared = client.scatter(vm, broadcast=True)  # pickled once per worker, not once per task
        futures = client.map(run_capture, [shared] * len(captures), captures, pure=False)
        return list(client.gather(futures))


def make_captures(directory: Path, files: int, packets: int) -> list[str]:
    """``files`` captures of ``packets`` UDP frames each, one in eight from BLOCKED."""
    paths = []
    for n in range(files):
        path = directory / f"capture-{n}.pcap"
        with path.open("wb") as f:
            writer = dpkt.pcap.Writer(f)
            for i in range(packets):
                src = BLOCKED if i % 8 == 0 else f"10.0.{n}.{i % 250 + 1}"
                ip = dpkt.ip.IP(src=ipaddress.IPv4Address(src).packed, dst=bytes([10, 9, 9, 9]), p=dpkt.ip.IP_PROTO_UDP,
                                data=dpkt.udp.UDP(sport=40000, dport=53, data=b"query"))
                ip.len = len(ip)
                eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
                writer.writepkt(bytes(eth), ts=i * 1e-3)
        paths.append(str(path))
    return paths


def report(results: Sequence[WorkerResult], wall: float) -> str:
    """Per capture and per worker: packets, packets/s; then the total over the wall time."""
    lines = [f"{'capture':<24} {'worker':>8} {'packets':>9} {'packets/s':>12}  verdicts"]
    for r in results:
        verdicts = ", ".join(f"{v}: {n}" for v, n in sorted(r.verdicts.items()))
        lines.append(f"{Path(r.capture).name:<24} {r.worker:>8} {r.packets:>9} {r.packets_per_s:>12,.0f}  {verdicts}")
    by_worker: dict[int, list[WorkerResult]] = collections.defaultdict(list)
    for r in results:
        by_worker[r.worker].append(r)
    for worker, rs in sorted(by_worker.items()):
        packets, seconds = sum(r.packets for r in rs), sum(r.seconds for r in rs)
        lines.append(f"worker {worker}: {packets} packets, {packets / seconds if seconds else 0:,.0f} packets/s")
    total = sum(r.packets for r in results)
    lines.append(f"all: {total} packets in {wall:.2f} s of wall time (process start-up included)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("captures", nargs="*", help="pcap or pcapng files")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--dask", action="store_true", help="run on a local Dask cluster")
    parser.add_argument("--demo", type=int, metavar="N", default=0, help="generate N captures to run over")
    parser.add_argument("--packets", type=int, default=100_000, help="packets per generated capture")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jitbpf-scaleout-") as tmp:
        captures = list(args.captures) + make_captures(Path(tmp), args.demo, args.packets)
        if not captures:
            parser.error("give captures, or --demo N")
        vm = firewall()
        run = with_dask if args.dask else with_multiprocessing
        start = time.perf_counter()
        results = run(vm, captures, args.workers)
        print(report(results, time.perf_counter() - start))
        vm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
