"""/metrics labels come from closed sets: made-up methods and paths do not add series."""

from __future__ import annotations

import uuid


def test_made_up_methods_and_paths_share_one_series(client):
    for _ in range(3):
        client.open(f"/v1/{uuid.uuid4().hex}", method=f"X{uuid.uuid4().hex[:8].upper()}")
        client.get(f"/nowhere/{uuid.uuid4().hex}")
    text = client.get("/metrics").get_data(as_text=True)
    lines = [line for line in text.splitlines() if line.startswith("eta_http_requests_total{")]
    assert not any("method=\"X" in line for line in lines), lines
    assert any('method="other",route="unmatched"' in line for line in lines), lines
    assert sum('route="unmatched"' in line for line in lines) == 2  # (other, 404) and (GET, 404)
