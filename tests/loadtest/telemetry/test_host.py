from __future__ import annotations

from capplan.loadtest.telemetry.host import HostSource


def test_cpu_share_is_left_blank_until_a_window_has_passed() -> None:
    now = [1000.0]
    source = HostSource(now=lambda: now[0])
    assert source.open()
    first = source.sample(0.0)
    assert "host_cpu_pct" not in first and "client_cpu_pct" not in first
    assert first["host_mem_total_mib"] > first["host_mem_used_mib"] > 0  # type: ignore[operator]
    assert first["client_rss_mib"] > 0  # type: ignore[operator]
    now[0] += 0.5
    second = source.sample(0.5)
    assert 0.0 <= second["host_cpu_pct"] <= 100.0  # type: ignore[operator]
    assert second["client_cpu_pct"] >= 0.0  # type: ignore[operator]
    assert set(second) == set(source.columns())
