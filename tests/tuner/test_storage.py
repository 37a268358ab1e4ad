"""`--storage-path` as a URI (what several machines share): an object store here is moto's real S3 endpoint,
started in this process; pyarrow talks HTTP to it as it would to S3 or MinIO."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.tuner.conftest import search_in_subprocess, sequential_search_args, wait_for
from tuner.report import main as report_main
from tuner.search import main as search_main
from tuner.storage import StoragePath, location, write_json_atomic, write_text_atomic

moto_server = pytest.importorskip("moto.server", reason="moto[server] comes with the test extra")

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",  # no cloud metadata server to ask here
}


@pytest.fixture(scope="module")
def s3():
    """``(URI of an empty folder in a bucket, its query)`` on a local S3 endpoint, with credentials in the environment
    as a user sets them."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    query = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    with pytest.MonkeyPatch.context() as env:
        for key, value in CREDENTIALS.items():
            env.setenv(key, value)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True).create_dir("runs")
        try:
            yield f"s3://runs/experiments?{query}", query
        finally:
            server.stop()


def test_a_local_folder_and_a_file_uri_are_plain_paths():
    assert location("tune_results") == Path("tune_results")
    assert location("file:///srv/shared/tune_results") == Path("/srv/shared/tune_results")


def test_a_uri_keeps_its_query_through_names_and_parents(s3):
    uri, query = s3
    trial = location(uri) / "exp" / "trial_0"
    assert isinstance(trial, StoragePath) and trial.name == "trial_0"
    assert str(trial.parent) == f"s3://runs/experiments/exp?{query}"
    assert str(trial.parent.parent) == uri


def test_files_written_to_an_object_store_read_back_whole(s3):
    exp = location(s3[0]) / "roundtrip"
    write_json_atomic(exp / "t1" / "params.json", {"head_lr": 1e-2, "ce": float("nan")})
    write_text_atomic(exp / "t2" / "params.json", "{}")
    write_text_atomic(exp / "experiment_state-1.json", "{}")
    assert json.loads((exp / "t1" / "params.json").read_text()) == {"head_lr": 1e-2, "ce": None}
    assert [p.parent.name for p in sorted(exp.glob("*/params.json"))] == ["t1", "t2"]
    assert [p.name for p in exp.glob("experiment_state-*.json")] == ["experiment_state-1.json"]
    assert exp.is_dir() and not (exp / "t3").exists()


BAD_STORAGE = {
    "unknown scheme": (lambda q: "nfs4://server/share", "unknown storage scheme 'nfs4://'"),
    "unreachable endpoint": (
        lambda q: "s3://runs/x?endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1",
        "no answer within 5 s; check the endpoint",
    ),
    "no such bucket": (lambda q: f"s3://no-such-bucket/x?{q}", "The specified bucket does not exist"),
    "no permission": (lambda q: "file:///proc/reid-tune-results", "cannot be created or written"),
    "malformed uri": (lambda q: f"s3://runs/x?{q}&endpoint=1", "is not a storage URI pyarrow.fs reads"),
}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c == "unreachable endpoint" else c for c in BAD_STORAGE]  # its 5 s
)
def test_unusable_storage_is_one_line_and_exit_2_before_ray_starts(case, s3, capsys):
    make_uri, message = BAD_STORAGE[case]
    code = search_main(["--storage-path", make_uri(s3[1]), "--name", "x", "--skip-preflight"])
    assert code == 2  # at once: the unreachable endpoint's own message says it waited its 5 s, no more
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "--storage-path" in err
    assert message in err


def test_report_on_a_missing_uri_is_one_line(s3, capsys):
    assert report_main([f"{s3[0].split('?')[0]}/nothing-here?{s3[1]}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


@pytest.mark.ray
def test_a_search_on_s3_resumes_from_there_and_reports_without_ray(ray_session, s3, tmp_path):
    """Ctrl-C a search writing to the bucket, resume it from the bucket, read the tables from the bucket."""
    uri, query = s3
    points = [{"head_lr": 3e-3}, {"head_lr": 2e-3}]
    budget = ["--max-steps", "40", "--grace-steps", "40", "--chance-margin", "0.02"]  # both complete
    args, _ = sequential_search_args(tmp_path, "shared", points, extra=budget)
    args += ["--storage-path", uri]  # the last --storage-path wins
    exp = location(uri) / "shared"
    with search_in_subprocess(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as driver:
        wait_for(lambda: any(exp.glob("*/end_reason.json")), driver, "a trial's end recorded in the bucket")
        driver.send_signal(2)  # SIGINT, what Ctrl-C sends
        out, _ = driver.communicate(timeout=600)  # a hang guard: Ray saves its state and stops the trials first
    assert driver.returncode == 130, out
    assert f"--storage-path '{uri}'" in out.strip().splitlines()[-1]  # the resume line names the URI, quoted

    assert search_main(["--resume", "--name", "shared", "--storage-path", uri]) == 0
    table = pd.read_csv(io.StringIO((exp / "results.csv").read_text()), dtype={"trial_id": str})
    assert len(table) == 2 and table.trial_id.is_unique  # the interrupted trial ran again, once
    assert sorted(table.head_lr) == [2e-3, 3e-3] and set(table.end_reason) == {"completed"}
    best = json.loads((exp / "best_config.json").read_text())
    assert best["config"]["head_lr"] in (2e-3, 3e-3) and best["experiment"] == str(exp)

    local = tmp_path / "table.csv"  # --out is a local file; the pictures go beside the experiment
    argv = [str(exp), "--format", "csv", "--out", str(local)]
    code = f"import sys, tuner.report; sys.exit(tuner.report.main({argv!r}) or ('ray' in sys.modules) * 10 + ('torch' in sys.modules) * 20)"
    report = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert report.returncode == 0, report.stdout + report.stderr  # read the bucket, imported neither Ray nor torch
    assert sorted(pd.read_csv(local, dtype={"trial_id": str}).head_lr) == sorted(table.head_lr)
    assert (exp / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (exp / "hyperparams.png").is_file()
