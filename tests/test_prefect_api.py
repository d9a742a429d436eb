"""The shared Prefect API: queued log lines reach it when flushed, not seconds later or never."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent('''
    import sys
    from prefect import flow, get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.context import FlowRunContext
    from taxi_hpo.prefect_api import flush_to_api

    @flow
    def probe(flush: bool) -> int:
        get_run_logger().info("queued marker line")
        if flush:
            assert flush_to_api()
        run_id = FlowRunContext.get().flow_run.id
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return sum(log.message == "queued marker line" for log in logs)

    print("marker lines in the API:", probe(sys.argv[1] == "flush"))
''')


@pytest.mark.integration
def test_flush_to_api_sends_queued_lines_before_returning(prefect_api_url, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    # A batch interval far longer than the probe: without a flush the line is still queued.
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "60"}

    def lines_seen(mode: str) -> str:
        proc = subprocess.run([sys.executable, str(script), mode], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip().splitlines()[-1]

    assert lines_seen("hold") == "marker lines in the API: 0"
    assert lines_seen("flush") == "marker lines in the API: 1"
