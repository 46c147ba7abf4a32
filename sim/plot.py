"""The two-panel figure of ``rpcproxy simulate --plot``.

matplotlib is imported inside :func:`save_plot` so that the simulator and
the rest of the CLI work without it; only asking for a plot needs it.
"""

from __future__ import annotations

from rpcproxy.sim.fleet import BUCKET_S, FleetResult


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def save_plot(result: FleetResult, path: str) -> None:
    """Write rebalances per server per minute and load share per server over time.

    The rate panel draws the per-server cap (``conns_per_sec_per_server`` per
    second, as a per-minute count) so a burst above it stands out; the share
    panel draws the fair share 1/live servers that rebalancing converges to.

    Raises:
        PlotUnavailableError: matplotlib cannot be imported.
    """
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency, see module docstring

        matplotlib.use("Agg")  # files only: no display needed, none assumed
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise PlotUnavailableError(f"--plot needs matplotlib ({exc})") from exc

    config = result.config
    boundaries = list(range(config.minutes + 1))
    live = config.servers - config.dead
    fig, (rates, shares) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    try:
        for name, counts in zip(result.server_names, result.per_minute, strict=True):
            rates.stairs(counts, boundaries, label=name)
        cap = config.timing.conns_per_sec_per_server * BUCKET_S
        rates.axhline(cap, color="red", linestyle="--", linewidth=1, label="cap per server")
        rates.set_ylabel("rebalances per minute")
        rates.set_title(_title(result))
        rates.legend(loc="upper right", fontsize="small", ncol=2)

        for s, name in enumerate(result.server_names):
            share = [heads[s] / config.clients for heads in result.heads_by_minute]
            shares.plot(boundaries, share, label=name)
        shares.axhline(1 / live, color="grey", linestyle="--", linewidth=1, label="1 / live")
        shares.set_ylabel("share of clients on server")
        shares.set_xlabel("minute")
        shares.set_ylim(0, 1)
        shares.legend(loc="upper right", fontsize="small", ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _title(result: FleetResult) -> str:
    config = result.config
    flags = config.mode_names + ([f"{config.dead} dead"] if config.dead else [])
    extra = f" ({', '.join(flags)})" if flags else ""
    return (
        f"{config.clients:,} clients, {config.servers} servers, "
        f"min reuse {config.timing.min_reuse_s:g} s{extra}"
    )
