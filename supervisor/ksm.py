"""The host's same-page merging (KSM), as the supervisor reports it.

Forked workers' inherited memory is offered for merging
(worker/page_merging.py), but only the host's ksmd merges it, and running
ksmd is the operator's choice (docs/operations.md, "Same-page merging"). The
supervisor says at start which of the two it found, so that an operator
reading the log knows whether idle workers cost ~1 MiB or ~5.
"""

from __future__ import annotations

# Where the kernel says whether ksmd runs: "1" runs, "0" stopped, "2" stopped
# and everything merged undone.
KSM_RUN_PATH = "/sys/kernel/mm/ksm/run"


def host_merges_pages(path: str = KSM_RUN_PATH) -> bool | None:
    """True if the host's ksmd is running, False if not, None where the
    kernel has no KSM (or /sys cannot be read)."""
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def start_note(merge_pages: bool, worker_start: str, running: bool | None) -> str:
    """The start log's line on merging, for the configured `merge_pages` and
    `worker_start` and the host's ksmd (`running`, see host_merges_pages)."""
    if worker_start != "fork":
        return "same-page merging: not offered (workers are exec-started and share nothing to merge)"
    if not merge_pages:
        return "same-page merging: off ([sandbox] merge_pages = false)"
    if running is None:
        return "same-page merging: offered, but this kernel has no KSM"
    if not running:
        return ("same-page merging: offered, but the host's ksmd is not running "
                f"({KSM_RUN_PATH} is not 1): idle workers' identical pages are not merged")
    return "same-page merging: on (the host's ksmd merges idle workers' identical pages)"
