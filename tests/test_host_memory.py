"""A freed layer-sized tensor leaves the resident set once `return_freed_blocks_to_os` is set, also after glibc
would have raised its mmap threshold. Run in a child so that the allocator settings of the test process stay."""

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import sys
    import torch
    from rlhf.host_memory import return_freed_blocks_to_os

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    # Freeing a 24 MiB block makes glibc serve later blocks up to that size from its heaps (dynamic threshold).
    big = torch.ones(24 << 18)
    del big
    if sys.argv[1] == "set":
        assert return_freed_blocks_to_os()
    kept = []
    for _ in range(8):
        kept.append(torch.ones(2 << 20))  # 8 blocks of 8 MiB, each touched
    before_free = rss_mb()
    del kept[:7]  # the last one stays, so that the freed blocks are not at the top of the heap
    print(before_free - rss_mb())
""")


def freed_mb(mode: str) -> float:
    completed = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(completed.stdout.strip().splitlines()[-1])


def test_freed_tensors_leave_the_resident_set():
    assert freed_mb("set") > 50  # 7 x 8 MiB returned
    assert freed_mb("default") < 10  # kept by the allocator: the behaviour the setting exists for
