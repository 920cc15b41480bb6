"""results.json contract, results.md numbers and verdicts, PNG plots, TensorBoard scalars, stage summaries."""

import copy
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from alad_jax.errors import AladError
from alad_jax.metrics import bootstrap
from alad_train import cases
from alad_train.report import (
    ScalarLogger,
    statistics,
    alignment_series,
    format_summary,
    gap_recovered,
    plot_curves,
    plot_results,
    write_results,
)

CHECKER = Path(__file__).resolve().parents[2] / "shared" / "check_results.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _identity(name):
    """The (case, window) fields of a row of these fixtures, from the case table."""
    rows = [cases.RowId(c) for c in cases.CASES if not c.windowed]
    rows += [cases.RowId(c, k) for c in cases.WINDOWED for k in (1, 3, 5)]
    return next(row.record() for row in rows if row.name == name)


def _row(name, dev, test, total=22_700_000, trainable=1_000, adapter=0, latency=2.0, cosine=None, **extra):
    return {"name": name, **_identity(name), "dev": dev, "test": test,
            "params": {"total": total, "trainable": trainable, "adapter": adapter},
            "latency_ms": latency, "cosine": cosine, **extra}


def _pos_results(frozen=0.84, noalign=0.79, joint=0.86, student_ft=0.85):
    """Teacher 0.9 and probe 0.7 on test, so a row at 0.8 recovers half the gap."""
    return {
        "task": "pos", "metric": "accuracy",
        "teacher": "sentence-transformers/all-MiniLM-L6-v2",
        "student": "sentence-transformers/all-MiniLM-L6-v2 (first 2 layers)",
        "notes": ["train subsampled to 2000 of 6700 sentences", "stage 1 budget:\n 3 epochs"],
        "rows": [
            _row("teacher", 0.91, 0.9, total=22_700_000, trainable=22_700_000, latency=12.0, train_seconds=80.1,
                 dev_metrics={"accuracy": 0.91}),
            _row("student_probe", 0.71, 0.7, total=11_000_000, trainable=6_000, latency=4.0),
            _row("student_ft", 0.86, student_ft, total=11_000_000, trainable=11_000_000, latency=4.0),
            _row("alad_w3_head", 0.81, 0.8, total=12_500_000, trainable=10_000, adapter=1_500_000, latency=5.0,
                 cosine=0.91),
            _row("alad_w3_frozen", 0.85, frozen, total=12_500_000, trainable=1_510_000, adapter=1_500_000,
                 latency=5.0, cosine=0.92),
            _row("alad_w3_joint", 0.87, joint, total=12_500_000, trainable=12_500_000, adapter=1_500_000,
                 latency=5.0, cosine=0.90),
            _row("alad_w3_noalign_frozen", 0.8, noalign, total=12_500_000, trainable=1_510_000, adapter=1_500_000,
                 latency=5.0, cosine=0.35),
        ],
    }


def _table_rows(markdown):
    """Row name -> list of cells of the results table."""
    out = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| row "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells
    return out


def _section(markdown, title):
    return markdown.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _assert_contract(data, windows=(3,)):
    for key in ("task", "metric", "teacher", "student", "rows"):
        assert key in data
    names = ["teacher", "student_probe", "student_ft"]
    for k in windows:
        names += [f"alad_w{k}_head", f"alad_w{k}_frozen", f"alad_w{k}_joint", f"alad_w{k}_noalign_frozen"]
    rows = {r["name"]: r for r in data["rows"]}
    assert sorted(rows) == sorted(names)
    for name, row in rows.items():
        for key in ("dev", "test", "params", "latency_ms", "cosine"):
            assert key in row, (name, key)
        assert set(row["params"]) >= {"total", "trainable", "adapter"}
        assert (row["cosine"] is not None) == name.startswith("alad_")


def _run_checker(workdir):
    if not CHECKER.exists():
        return
    done = subprocess.run([sys.executable, str(CHECKER), str(workdir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_results_json_round_trips_and_meets_contract(tmp_path):
    results = _pos_results()
    results["rows"][4]["test"] = np.float32(0.84)  # numpy scalars are what metrics code tends to hand over
    results["rows"][4]["params"]["adapter"] = np.int64(1_500_000)
    write_results(tmp_path, results)
    data = json.loads((tmp_path / "results.json").read_text())
    expected = _pos_results()
    expected["notes"] = results["notes"]
    assert data["rows"][4]["test"] == pytest.approx(0.84, abs=1e-7)
    data["rows"][4]["test"] = 0.84
    assert data == expected
    assert (tmp_path / "results.json").read_text().startswith('{\n  "task": "pos"')  # indent 2
    _assert_contract(data)
    _run_checker(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]  # no temp files left


def test_bad_row_raises_naming_row_and_keeps_previous_files(tmp_path):
    write_results(tmp_path, _pos_results())
    before = (tmp_path / "results.json").read_text()
    broken = _pos_results()
    del broken["rows"][2]["latency_ms"]
    with pytest.raises(AladError, match=r"row 'student_ft' lacks 'latency_ms'"):
        write_results(tmp_path, broken)
    nan = _pos_results()
    nan["rows"][1]["test"] = float("nan")
    with pytest.raises(AladError, match=r"row 'student_probe'\.test is nan"):
        write_results(tmp_path, nan)
    assert (tmp_path / "results.json").read_text() == before


def test_non_finite_extra_is_written_as_null(tmp_path):
    results = _pos_results()
    results["rows"][0]["train_loss"] = float("nan")
    write_results(tmp_path, results)
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["train_loss"] is None


def test_markdown_gap_recovered_for_known_case(tmp_path):
    assert gap_recovered(0.8, 0.7, 0.9) == pytest.approx(50.0)
    write_results(tmp_path, _pos_results())
    md = (tmp_path / "results.md").read_text()
    assert md.splitlines()[0] == ("# pos: accuracy, teacher sentence-transformers/all-MiniLM-L6-v2, "
                                  "student sentence-transformers/all-MiniLM-L6-v2 (first 2 layers)")
    assert "- train subsampled to 2000 of 6700 sentences\n- stage 1 budget: 3 epochs\n" in md
    table = _table_rows(md)
    assert list(table) == [r["name"] for r in _pos_results()["rows"]]
    assert table["alad_w3_head"] == ["alad_w3_head", "0.8100", "0.8000", "50.0%", "-", "-", "12,500,000", "10,000",
                                     "1,500,000 (6.61%)", "5.00", "0.910"]
    assert table["alad_w3_frozen"][3] == "70.0%"          # (0.84 - 0.7) / 0.2
    assert table["alad_w3_noalign_frozen"][3] == "45.0%"  # (0.79 - 0.7) / 0.2
    assert table["teacher"][3] == "-" and table["student_probe"][3] == "-"
    assert table["teacher"][8] == "0" and table["teacher"][10] == "-"


def _with_intervals(results, half_width=0.01, **widths):
    """Give results the comparisons of "Did alignment help?": each point difference -+ ``half_width`` (metric
    units), or -+ ``widths[a]`` for comparisons of row ``a``."""
    metric = results["metric"]
    test = {r["name"]: r["test"][metric] if isinstance(r["test"], dict) else r["test"] for r in results["rows"]}
    results["comparisons"] = []
    for a, b in statistics.pairs([3]):
        diff, width = test[a] - test[b], widths.get(a, half_width)
        results["comparisons"].append({"a": a, "b": b, "diff": diff, "ci_low": diff - width, "ci_high": diff + width,
                                       "verdict": bootstrap.verdict(diff - width, diff + width),
                                       "unit": "sentences", "resamples": 10_000})
    return results


def _with_histories(results, curves, stopped="plateau"):
    """Give every row a stopping record; ``curves`` maps row name -> (dev history, how it stopped); by default
    a plateau two epochs after the best (patience 2)."""
    for row in results["rows"]:
        dev, how = curves.get(row["name"], ([0.5, row["dev"], row["dev"], row["dev"]], stopped))
        row.update(history=[{"epoch": i + 1, "dev": d} for i, d in enumerate(dev)], epochs_run=len(dev),
                   best_epoch=int(max(range(len(dev)), key=lambda i: dev[i])) + 1, stopped=how)
    return results


def test_settled_comparison_says_so_and_shows_epochs(tmp_path):
    write_results(tmp_path, _with_intervals(_with_histories(_pos_results(), {})))
    md = (tmp_path / "results.md").read_text()
    table = _table_rows(md)
    assert table["alad_w3_frozen"][4:6] == ["4 (2)", "plateau"]
    assert "- Yes: every row reached its plateau" in _section(md, "Is the comparison fair?")
    assert "- Verdict: yes:" in _section(md, "Did alignment help?")


def test_row_at_its_cap_while_rising_makes_the_verdict_unsettled(tmp_path):
    results = _with_histories(_pos_results(), {"alad_w3_noalign_frozen": ([0.70, 0.76, 0.80], "cap"),
                                               "student_ft": ([0.80, 0.86, 0.861], "cap")})  # +0.1 point: settled
    write_results(tmp_path, _with_intervals(results))
    md = (tmp_path / "results.md").read_text()
    table = _table_rows(md)
    assert table["alad_w3_noalign_frozen"][5] == "cap **still rising**"
    assert table["student_ft"][5] == "cap"
    assert "- No: alad_w3_noalign_frozen stopped at the epoch cap while still improving on dev." in md
    assert "- Verdict: unsettled (alad_w3_noalign_frozen stopped at the epoch cap" in md


def test_row_above_the_teacher_on_dev_voids_the_gap_column(tmp_path):
    results = _pos_results()
    results["rows"][5]["dev"] = 0.95  # alad_w3_joint above the teacher's 0.91
    write_results(tmp_path, _with_intervals(_with_histories(results, {})))
    md = (tmp_path / "results.md").read_text()
    assert all(cells[3] == "-" for cells in _table_rows(md).values())
    assert "alad_w3_joint beat the teacher on dev: the teacher is under-trained" in _section(md, "Is the comparison fair?")
    assert "- Verdict: unsettled (" in _section(md, "Did alignment help?")


def test_gap_is_dash_when_teacher_equals_probe(tmp_path):
    results = _pos_results()
    results["rows"][1]["test"] = 0.9
    write_results(tmp_path, results)
    table = _table_rows((tmp_path / "results.md").read_text())
    assert all(cells[3] == "-" for cells in table.values())


def test_alignment_verdict_reports_a_gain(tmp_path):
    write_results(tmp_path, _with_intervals(_pos_results(frozen=0.84, noalign=0.79, joint=0.86, student_ft=0.85),
                                            alad_w3_joint=0.005))
    help_ = _section((tmp_path / "results.md").read_text(), "Did alignment help?")
    assert "paired bootstrap 95% interval of the difference, 10,000 resamples of sentences." in help_
    assert "- alad_w3_frozen vs student_probe: +14.00 points [+13.00, +15.00] (0.8400 vs 0.7000), better" in help_
    assert "- alad_w3_frozen vs alad_w3_noalign_frozen: +5.00 points [+4.00, +6.00] (0.8400 vs 0.7900), better" in help_
    assert "- alad_w3_joint vs student_ft: +1.00 points [+0.50, +1.50] (0.8600 vs 0.8500), better" in help_
    assert "- Verdict: yes:" in help_


def test_a_positive_difference_whose_interval_holds_zero_is_no_detectable_difference(tmp_path):
    """The issue's case: +0.16 points with interval [-0.33, +0.65] is not "better", and the verdict is no."""
    results = _with_intervals(_pos_results(frozen=0.8683, noalign=0.8667), alad_w3_frozen=0.0049)
    results["comparisons"][0].update(ci_low=0.1, ci_high=0.2, verdict="better")  # vs the probe: clear
    write_results(tmp_path, results)
    help_ = _section((tmp_path / "results.md").read_text(), "Did alignment help?")
    assert ("- alad_w3_frozen vs alad_w3_noalign_frozen: +0.16 points [-0.33, +0.65] (0.8683 vs 0.8667), "
            "no detectable difference") in help_
    assert "- Verdict: no: alad_w3_frozen does not beat alad_w3_noalign_frozen (no detectable difference)\n" in help_


def test_without_intervals_no_comparison_is_called_better(tmp_path):
    write_results(tmp_path, _pos_results(frozen=0.84, noalign=0.79))
    help_ = _section((tmp_path / "results.md").read_text(), "Did alignment help?")
    assert ("- alad_w3_frozen vs alad_w3_noalign_frozen: +5.00 points (0.8400 vs 0.7900), no interval (the rows "
            "saved no test predictions)") in help_
    assert "- Verdict: cannot tell without intervals" in help_
    assert "better" not in help_


def test_alignment_verdict_reports_a_loss_when_frozen_is_below_probe(tmp_path):
    write_results(tmp_path, _with_intervals(_pos_results(frozen=0.65, noalign=0.79, joint=0.80, student_ft=0.85)))
    help_ = _section((tmp_path / "results.md").read_text(), "Did alignment help?")
    assert "- alad_w3_frozen vs student_probe: -5.00 points [-6.00, -4.00] (0.6500 vs 0.7000), worse" in help_
    assert "- alad_w3_frozen vs alad_w3_noalign_frozen: -14.00 points [-15.00, -13.00] (0.6500 vs 0.7900), worse" in help_
    assert "- alad_w3_joint vs student_ft: -5.00 points [-6.00, -4.00] (0.8000 vs 0.8500), worse" in help_
    assert ("- Verdict: no: alad_w3_frozen does not beat student_probe (worse) and alad_w3_noalign_frozen (worse)"
            in help_)
    assert ", better" not in help_ and "yes" not in help_


def test_verdict_names_only_the_comparison_that_failed(tmp_path):
    write_results(tmp_path, _with_intervals(_pos_results(frozen=0.75, noalign=0.79)))
    help_ = _section((tmp_path / "results.md").read_text(), "Did alignment help?")
    assert "- Verdict: no: alad_w3_frozen does not beat alad_w3_noalign_frozen (worse)\n" in help_


def test_gap_column_carries_its_interval(tmp_path):
    results = _pos_results()
    results["gap_recovered"] = [{"row": "alad_w3_frozen", "value": 70.0, "ci_low": 61.25, "ci_high": 78.5,
                                 "resamples": 10_000}]
    write_results(tmp_path, results)
    md = (tmp_path / "results.md").read_text()
    assert _table_rows(md)["alad_w3_frozen"][3] == "70.0% [61.2, 78.5]"
    assert _table_rows(md)["alad_w3_head"][3] == "50.0%"
    assert "on test [its paired bootstrap 95% interval]." in md


def test_teacher_with_its_best_in_its_last_two_epochs_is_not_the_ceiling(tmp_path):
    """Stopped by patience 1 (best at 7 of 8): not shown to be finished, and the verdict is unsettled."""
    results = _with_histories(_pos_results(), {"teacher": ([0.6, 0.8, 0.85, 0.88, 0.9, 0.905, 0.91, 0.909],
                                                           "plateau")})
    write_results(tmp_path, _with_intervals(results))
    md = (tmp_path / "results.md").read_text()
    assert "- No: teacher's best dev epoch (7 of 8) is one of its last two" in _section(md, "Is the comparison fair?")
    assert "- Verdict: unsettled (" in _section(md, "Did alignment help?")


def test_several_seeds_show_mean_and_spread_and_per_seed_differences(tmp_path):
    results = _with_intervals(_pos_results())
    results["seeds"] = [0, 1, 2]
    for c in results["comparisons"]:
        c.update(unit="seeds x sentences", seeds=[0, 1, 2])
    results["rows"][4].update(dev_std=0.004, test_std=0.0123)
    results["seed_comparisons"] = [{**results["comparisons"][1], "seed": 2, "diff": 0.02, "ci_low": -0.001,
                                    "ci_high": 0.04, "verdict": "no detectable difference"}]
    write_results(tmp_path, results)
    md = (tmp_path / "results.md").read_text()
    assert _table_rows(md)["alad_w3_frozen"][1:3] == ["0.8500 ± 0.0040", "0.8400 ± 0.0123"]
    help_ = _section(md, "Did alignment help?")
    assert ("resamples of seeds x sentences; 3 seeds (0, 1, 2): each resample draws seeds, then each drawn seed's "
            "test sentences, so the interval includes seed-to-seed variation") in help_
    assert ("- seed 2: alad_w3_frozen vs alad_w3_noalign_frozen: +2.00 points [-0.10, +4.00], "
            "no detectable difference") in help_


def test_cost_section_reports_adapter_share_and_latency_ratio(tmp_path):
    write_results(tmp_path, _pos_results())
    cost = _section((tmp_path / "results.md").read_text(), "What did it cost?")
    # 1.5M / 11M = 13.64 %, 1.5M / 22.7M = 6.61 %; 5 ms / 4 ms = 1.25x, 5 / 12 = 0.42x
    assert ("- adapter: 1,500,000 parameters = 13.64% of the student (student_probe total 11,000,000) "
            "and 6.61% of the teacher (22,700,000)") in cost
    assert "- latency: alad_w3_frozen 5.00 ms = 1.25x student_probe (4.00 ms), 0.42x teacher (12.00 ms)" in cost


def _qa_results():
    results = _pos_results()
    results.update(task="qa", metric="f1")
    tests = {"teacher": 80.0, "student_probe": 40.0, "student_ft": 55.0, "alad_w3_head": 60.0,
             "alad_w3_frozen": 62.0, "alad_w3_joint": 58.0, "alad_w3_noalign_frozen": 50.0}
    for row in results["rows"]:
        row["test"] = {"f1": tests[row["name"]], "exact": tests[row["name"]] - 10.0}
        row["dev"] = {"exact": tests[row["name"]] - 9.0, "f1": tests[row["name"]] + 1.0}
    return results


def test_qa_dict_metrics_use_the_headline_on_a_percent_scale(tmp_path):
    write_results(tmp_path, _with_intervals(_qa_results(), half_width=1.0))
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["rows"][4]["test"] == {"f1": 62.0, "exact": 52.0}
    _assert_contract(data)
    _run_checker(tmp_path)
    md = (tmp_path / "results.md").read_text()
    table = _table_rows(md)
    assert table["alad_w3_frozen"][1:4] == ["63.00 (exact 53.00)", "62.00 (exact 52.00)", "55.0%"]  # 22 / 40
    help_ = _section(md, "Did alignment help?")
    assert "(1 point = 1 f1)" in help_
    assert "- alad_w3_frozen vs student_probe: +22.00 points [+21.00, +23.00] (62.00 vs 40.00), better" in help_
    assert "- alad_w3_joint vs student_ft: +3.00 points [+2.00, +4.00] (58.00 vs 55.00), better" in help_


def test_dict_metric_without_headline_is_an_error(tmp_path):
    results = _qa_results()
    del results["rows"][3]["test"]["f1"]
    with pytest.raises(AladError, match=r"row 'alad_w3_head'\.test has metrics \['exact'\] but not the headline 'f1'"):
        write_results(tmp_path, results)


def _histories():
    align = [{"epoch": e, "step": 10 * e, "train_loss": 1.0 / e, "dev": 1.0 / e, "mse": 1.0 / e,
              "cosine": 0.6 + 0.05 * e} for e in (1, 2, 3)]
    continual = [{"epoch": e, "step": 5 * e, "train_loss": 0.3 / e, "dev": 0.3 / e, "mse": 0.3 / e,
                  "cosine": 0.8 + 0.01 * e} for e in (1, 2)]
    task = [{"epoch": e, "step": 40 * e, "train_loss": 0.8 / e, "dev": 0.6 + 0.1 * e, "accuracy": 0.6 + 0.1 * e}
            for e in (1, 2)]
    return {"align_w3": align, "continual_w3": continual, "alad_w3_frozen": task, "teacher": task}


def _assert_real_png(path, min_bytes=10_000):
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE
    assert len(raw) > min_bytes
    width, height = struct.unpack(">II", raw[16:24])  # IHDR
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # drawn, not blank
    return width, height


def test_plots_are_valid_pngs(tmp_path):
    written = plot_curves(tmp_path, _histories())
    assert written == [tmp_path / "plots" / "alignment.png", tmp_path / "plots" / "task_curves.png"]
    align_w, align_h = _assert_real_png(written[0])
    task_w, _ = _assert_real_png(written[1])
    assert align_w > align_h  # two panels side by side
    bars = plot_results(tmp_path, _pos_results())
    assert bars == tmp_path / "plots" / "metric_by_row.png"
    _assert_real_png(bars)


def test_continual_epochs_continue_after_stage_one():
    series = alignment_series(_histories())
    assert list(series) == ["align_w3", "continual_w3"]
    assert series["align_w3"]["epoch"] == [1.0, 2.0, 3.0]
    assert series["continual_w3"]["epoch"] == [4.0, 5.0]
    assert series["continual_w3"]["mse"] == pytest.approx([0.3, 0.15])
    assert series["align_w3"]["cosine"] == pytest.approx([0.65, 0.70, 0.75])


def test_plot_curves_skips_figures_and_panels_without_data(tmp_path):
    assert plot_curves(tmp_path, {}) == []
    histories = _histories()
    only_task = {"teacher": histories["teacher"]}
    assert plot_curves(tmp_path / "a", only_task) == [tmp_path / "a" / "plots" / "task_curves.png"]
    no_cosine = {"align_w3": [{k: v for k, v in r.items() if k != "cosine"} for r in histories["align_w3"]]}
    assert "cosine" not in alignment_series(no_cosine)["align_w3"]
    [one_panel] = plot_curves(tmp_path / "b", no_cosine)
    width, height = _assert_real_png(one_panel)
    two_width, _ = _assert_real_png(plot_curves(tmp_path / "c", histories)[0])
    assert width < two_width


def _read_events(logdir):
    """(tag, step, value) of every scalar in the TFRecord event files, checking each record's CRCs."""
    out = []
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            header = raw[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", raw[pos + 8:pos + 12])[0] == masked_crc32c(header)
            data = raw[pos + 12:pos + 12 + length]
            assert struct.unpack("<I", raw[pos + 12 + length:pos + 16 + length])[0] == masked_crc32c(data)
            pos += 16 + length
            event = event_pb2.Event.FromString(data)
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_scalar_logger_events_read_back(tmp_path):
    logdir = tmp_path / "tensorboard"
    with ScalarLogger(logdir) as logger:
        logger.log("align_w3", 10, {"loss": 0.5, "eval/cosine": np.float32(0.75)})
        logger.log("alad_w3_frozen", 20, {"loss": 1.25})
    events = _read_events(logdir)
    assert events == [("align_w3/loss", 10, 0.5), ("align_w3/eval/cosine", 10, 0.75),
                      ("alad_w3_frozen/loss", 20, 1.25)]


def test_disabled_scalar_logger_writes_nothing(tmp_path):
    logger = ScalarLogger(tmp_path / "tensorboard", enabled=False)
    logger.log("align_w3", 10, {"loss": 0.5})
    logger.close()
    assert not (tmp_path / "tensorboard").exists()


def test_scalar_logger_rejects_non_numbers(tmp_path):
    with ScalarLogger(tmp_path / "tb") as logger, pytest.raises(AladError, match=r"'align_w3/note' at step 3"):
        logger.log("align_w3", 3, {"note": "hello"})


def test_format_summary_lines():
    task = {"metric": "accuracy", "dev": 0.83124, "test": 0.84006, "steps": 252, "seconds": 41.23,
            "tokens_per_s": 7912.0, "cosine": 0.8714}
    assert format_summary("alad_w3_frozen", task) == (
        "[alad_w3_frozen] dev accuracy 0.8312 test 0.8401 | 252 steps 41.2 s | 7.9k tok/s | cosine 0.871")
    assert format_summary("teacher", {"metric": "accuracy", "dev": 0.9, "test": 0.88, "train_seconds": 80.06}) == (
        "[teacher] dev accuracy 0.9000 test 0.8800 | 80.1 s")
    qa = {"metric": "f1", "dev": {"exact": 52.0, "f1": 61.234}, "test": {"f1": 60.0, "exact": 50.5}, "steps": 10}
    assert format_summary("student_ft", qa) == (
        "[student_ft] dev f1 61.23 exact 52.00 test f1 60.00 exact 50.50 | 10 steps")
    align = {"mse": 12.34567, "cosine": 0.8201, "steps": 300, "seconds": 60.0, "tokens_per_s": 1_250_000.0}
    assert format_summary("align_w3", align) == (
        "[align_w3] val mse 12.3457 | 300 steps 60.0 s | 1.2M tok/s | cosine 0.820")


def test_write_results_does_not_mutate_its_input(tmp_path):
    results = _pos_results()
    snapshot = copy.deepcopy(results)
    write_results(tmp_path, results)
    plot_results(tmp_path, results)
    assert results == snapshot


def test_a_partial_run_meets_the_contract_and_says_what_it_cannot_conclude(tmp_path):
    """cases = ["frozen", "joint"]: the teacher and two rows; the missing comparisons are named, not faked."""
    results = _pos_results()
    results["rows"] = [r for r in results["rows"] if r["name"] in ("teacher", "alad_w3_frozen", "alad_w3_joint")]
    results["cases"] = ["frozen", "joint"]
    write_results(tmp_path, results)
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["teacher", "alad_w3_frozen", "alad_w3_joint"]
    text = (tmp_path / "results.md").read_text()
    section = _section(text, "What this run cannot conclude")
    assert "This run trained the teacher and frozen, joint (config key `cases`)." in section
    assert [line for line in section.splitlines() if line.startswith("- ")] == [
        "- gap recovered: not computed, student_probe (its lower end) was not trained",
        "- alignment's gain vs a fresh adapter (the no-alignment ablation): not measured, "
        "alad_w3_noalign_frozen was not trained",
        "- the frozen AlAd's gain over a linear probe on the same student: not measured, student_probe was not trained",
        "- training student and AlAd together vs fine-tuning the student alone: not measured, student_ft was not "
        "trained",
    ]
    assert _table_rows(text)["alad_w3_frozen"][3] == "-"  # no probe: no gap recovered
    assert "cannot tell, a row it needs was not trained in this run" in _section(text, "Did alignment help?")


def test_a_full_run_has_nothing_it_cannot_conclude(tmp_path):
    write_results(tmp_path, _pos_results())
    assert "What this run cannot conclude" not in (tmp_path / "results.md").read_text()
