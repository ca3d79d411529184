"""The machine description every benchmark writes next to its figures."""
import os
import platform


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()



def busy_cpu_seconds() -> float | None:
    """CPU-seconds all processes of the machine have run since boot (user, nice, system, irq,
    softirq; from /proc/stat), None where there is no /proc/stat. Minus a process's own
    CPU time over an interval: what the rest of a shared machine took meanwhile."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = ticks
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
