"""Memory measurement for tests and benchmarks (imports nothing heavy, so it measures only its caller)."""


def peak_rss_bytes(reset: bool = False) -> int:
    """This process's peak resident memory (VmHWM), in bytes; Linux only.

    Unlike `resource.getrusage().ru_maxrss`, VmHWM is not inherited from the parent across exec,
    so a child process measures itself. `reset=True` first sets the peak to the current RSS.
    """
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
